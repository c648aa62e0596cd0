"""Tree cells and scans: the step scan against the node-scan oracle and Python recursion, padding, traces, errors."""

from __future__ import annotations

import collections
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from funcnet import parse_trees as trees
from funcnet.errors import DTypeError, ParamsError, ShapeError
from funcnet.layers.tree import node_scan, recursive, tree
from funcnet.layers.tree_cells import TreeCarry, binary_tree_lstm_cell, child_sum_tree_lstm_cell, tree_rnn_cell
from funcnet.parse_trees import Tree
from funcnet.tree_schedule import Buckets, postorder, schedule

# float32, hidden 4, trees up to 6 levels: the three implementations run the same per-node operations
# in different batch groupings and orders of summation, which moves results by a few ulps. Observed:
# forward <= 4e-6 absolute on per-tree sums of size ~10 (~4e-7 relative), gradients <= 8e-6 on
# entries up to ~75. A wrong child, gate, mask or row changes results by ~1e-2 or more.
TOL = {"rtol": 1e-5, "atol": 1e-5}
GRAD_TOL = {"rtol": 5e-5, "atol": 5e-5}
F, H, WORDS, LABELS = 3, 4, 12, 5
CELLS = {
    "binary_tree_lstm": (lambda: binary_tree_lstm_cell(H), 2),
    "child_sum_tree_lstm": (lambda: child_sum_tree_lstm_cell(H), 3),  # variable arity 1..3, masked
    "tree_rnn": (lambda: tree_rnn_cell(H), 2),
}


# --- random trees and hand-built layouts ------------------------------------------------------------


def random_tree(rng, n_leaves, max_children, unary_ok=True):
    """A random tree with ``n_leaves`` leaves; nodes have 2..max_children children, sometimes 1 (masked)."""
    label = int(rng.integers(LABELS))
    if n_leaves == 1:
        return Tree(label, token=f"w{rng.integers(WORDS)}")
    low = 1 if (unary_ok and rng.random() < 0.15) else 2
    k = int(rng.integers(low, min(max_children, n_leaves) + 1))
    cuts = sorted(rng.choice(np.arange(1, n_leaves), k - 1, replace=False).tolist())
    sizes = np.diff([0, *cuts, n_leaves])
    return Tree(label, tuple(random_tree(rng, int(s), max_children, k > 1) for s in sizes))


def chain(n, left, label=1):
    """A degenerate binary tree of height n-1 leaning left or right."""
    node = Tree(label, token="w1")
    for i in range(n - 1):
        leaf = Tree(label, token=f"w{i % WORDS}")
        node = Tree(label, (node, leaf) if left else (leaf, node))
    return node


def mixed_trees(seed, arity, count=6):
    """Trees of mixed shapes: a single leaf, left and right chains, and random trees of 2..6 leaves."""
    rng = np.random.default_rng(seed)
    fixed = [Tree(2, token="w3"), chain(5, True), chain(4, False)]
    return fixed + [random_tree(rng, int(rng.integers(2, 7)), arity) for _ in range(count - len(fixed))]


def post_order(tree_):
    """The nodes of one tree, children left to right before the node."""
    out = []

    def visit(node):
        for child in node.children:
            visit(child)
        out.append(node)

    visit(tree_)
    return out


def random_layout(trees_, vocab, arity, seed, *, pad_trees=0, size=None, slack=True):
    """A hand-built TreeBatch: leaves in shuffled slots, each internal node in a random slot of a random
    valid step (any step after its children's; ``slack`` adds idle steps). ``size=(L, S, W)`` pads to
    that shape; by default 2 spare leaf slots and 1 spare slot per step."""
    rng = np.random.default_rng(seed)
    nodes, step, tree_of = [], {}, {}
    for t, tr in enumerate(trees_):
        for node in post_order(tr):
            nodes.append(node)
            tree_of[id(node)] = t
            kids = [step[id(c)] for c in node.children]
            step[id(node)] = max(kids) + 1 + int(slack and rng.random() < 0.3) if kids else -1
    num_leaves = sum(not n.children for n in nodes)
    per_step = [[n for n in nodes if step[id(n)] == s] for s in range(max(step.values()) + 1)]
    leaves, steps, width = size or (num_leaves + 2, len(per_step), max([len(p) for p in per_step] + [0]) + 1)
    assert leaves >= num_leaves and steps >= len(per_step) and width >= max([len(p) for p in per_step] + [0])
    rows, leaf_rows = {}, iter(rng.permutation(leaves))
    for n in nodes:
        if not n.children:
            rows[id(n)] = int(next(leaf_rows))
    for s, group in enumerate(per_step):
        for n, w in zip(group, rng.permutation(width)[: len(group)], strict=False):
            rows[id(n)] = leaves + s * width + int(w)
    r = leaves + steps * width + 1
    b = {
        "leaf_tokens": np.zeros(leaves, np.int32),
        "leaf_mask": np.zeros(leaves, np.float32),
        "children": np.full((steps, width, arity), r - 1, np.int32),
        "child_mask": np.zeros((steps, width, arity), np.float32),
        "internal_mask": np.zeros((steps, width), np.float32),
        "labels": np.zeros(r, np.int32),
        "label_mask": np.zeros(r, np.float32),
        "node_tree": np.zeros(r, np.int32),
        "roots": np.array([rows[id(tr)] for tr in trees_] + [r - 1] * pad_trees, np.int32),
    }
    for n in nodes:
        row = rows[id(n)]
        b["labels"][row], b["label_mask"][row], b["node_tree"][row] = n.label, 1, tree_of[id(n)]
        if not n.children:
            b["leaf_tokens"][row], b["leaf_mask"][row] = vocab.encode(n.token), 1
            continue
        s, w = divmod(row - leaves, width)
        b["internal_mask"][s, w] = 1
        for k, child in enumerate(n.children):
            b["children"][s, w, k], b["child_mask"][s, w, k] = rows[id(child)], 1
    return b


# --- the three implementations, jitted, reduced to layout-free per-tree summaries -------------------


def readout(states, labels, mask, node_tree, roots, num_trees, v):
    """Per-tree summaries that do not depend on where nodes sit, and a loss over every real node.

    ``v: [LABELS, 2, H]`` weights each node's h and c by its label, so the loss's gradient reaches
    every node with a different weight.
    """
    keep = jnp.asarray(mask)[:, None]
    sums = [jax.ops.segment_sum(keep * a, node_tree, num_trees) for a in (states.h, states.c, states.h**2)]
    w = v[labels]
    loss = jnp.sum(keep * (states.h * w[:, 0] + states.c * w[:, 1]))
    return {"roots": TreeCarry(states.h[roots], states.c[roots]), "sums": sums}, loss


@functools.partial(jax.jit, static_argnums=0)
def run_tree(cell, params, table, v, b):
    def f(params, table):
        states, _ = tree(cell).apply(params, {}, table[b["leaf_tokens"]], b)
        num = b["roots"].shape[0]
        return readout(states, b["labels"], b["label_mask"], b["node_tree"], b["roots"], num, v)[::-1]

    (_, out), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(params, table)
    return out, grads


@functools.partial(jax.jit, static_argnums=0)
def run_node_scan(cell, params, table, v, o):
    def f(params, table):
        states, _ = node_scan(cell).apply(params, {}, table[o["tokens"]], o)
        n = o["labels"].shape[0]
        states = TreeCarry(states.h[:n], states.c[:n])
        num = o["roots"].shape[0]
        return readout(states, o["labels"], o["label_mask"], o["node_tree"], o["roots"], num, v)[::-1]

    (_, out), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(params, table)
    return out, grads


# The recursion unrolls every node into one program; XLA's backend optimizations only slow its compile
# (~35% here) without changing what is computed.
@functools.partial(jax.jit, static_argnums=(0, 4, 5), compiler_options={"xla_backend_optimization_level": 0})
def run_recursive(cell, params, table, v, trees_, vocab_tokens):
    ids = {t: i for i, t in enumerate(vocab_tokens)}

    def f(params, table):
        per_tree = [recursive(cell, params, tr, lambda tok: table[ids.get(tok, 0)]) for tr in trees_]
        states = TreeCarry(*(jnp.concatenate(a) for a in zip(*per_tree, strict=True)))
        labels = np.array([n.label for tr in trees_ for n in post_order(tr)])
        node_tree = np.repeat(np.arange(len(trees_)), [len(post_order(tr)) for tr in trees_])
        roots = np.cumsum([len(post_order(tr)) for tr in trees_]) - 1
        mask = np.ones(len(labels), np.float32)
        return readout(states, labels, mask, node_tree, roots, len(trees_), v)[::-1]

    (_, out), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(params, table)
    return out, grads


def setup(name, seed=0):
    make, arity = CELLS[name]
    cell = make()
    trees_ = mixed_trees(seed, arity)
    vocab = trees.Vocabulary.from_trees(trees_)
    rng = np.random.default_rng(seed)
    table = jnp.asarray(rng.standard_normal((vocab.size, F)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((LABELS, 2, H)), jnp.float32)
    params, _ = cell.init(jax.random.key(seed), table)
    params["b"] = jnp.asarray(rng.standard_normal(params["b"].shape), jnp.float32)  # init's zeros would hide padding
    return cell, arity, trees_, vocab, params, table, v


@functools.cache
def reference(name):
    cell, _, trees_, vocab, params, table, v = setup(name)
    return run_recursive(cell, params, table, v, tuple(trees_), vocab.tokens)


# --- equivalence -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CELLS))
def test_step_scan_equals_node_scan_and_recursion_forward_and_gradients(name):
    cell, arity, trees_, vocab, params, table, v = setup(name)
    want = reference(name)
    order = postorder(trees_, vocab, arity=arity, num_nodes=60)  # with padding nodes
    got_oracle = run_node_scan(cell, params, table, v, order._asdict())
    chex.assert_trees_all_close(got_oracle[0], want[0], **TOL)
    chex.assert_trees_all_close(got_oracle[1], want[1], **GRAD_TOL)
    # list-scheduled narrow steps (most slots real) and one step per height (most slots padding);
    # random hand-made placements are tested below.
    for b in (schedule(trees_, vocab, width=3, arity=arity), schedule(trees_, vocab, arity=arity, mode="height")):
        got = run_tree(cell, params, table, v, b._asdict())
        chex.assert_trees_all_close(got[0], want[0], **TOL)
        chex.assert_trees_all_close(got[1], want[1], **GRAD_TOL)
    grads = jax.tree.leaves(want[1])
    assert all(bool(jnp.any(g != 0)) for g in grads), "every param and the table must get a gradient"


# --- padding, placement and retracing ---------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def forward(cell, params, x, b):
    return tree(cell).apply(params, {}, x, b)[0]


@pytest.mark.parametrize("name", ["binary_tree_lstm", "child_sum_tree_lstm"])
def test_padding_and_tree_order_cannot_leak(name):
    cell, arity, trees_, vocab, params, table, v = setup(name)
    base = run_tree(cell, params, table, v, random_layout(trees_, vocab, arity, 0, slack=False))
    # More padding trees, leaf slots, steps and wider steps: every real tree's outputs and the gradients stay.
    padded_b = random_layout(trees_, vocab, arity, 1, pad_trees=3, size=(40, 14, 9))
    padded = run_tree(cell, params, table, v, padded_b)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[: len(trees_)], padded[0]), base[0], **TOL)
    chex.assert_trees_all_close(padded[1], base[1], **GRAD_TOL)
    # The same trees in another order: each tree's outputs move with it.
    perm = np.random.default_rng(0).permutation(len(trees_))
    shuffled = run_tree(cell, params, table, v, random_layout([trees_[i] for i in perm], vocab, arity, 2))
    chex.assert_trees_all_close(shuffled[0], jax.tree.map(lambda a: a[perm], base[0]), **TOL)
    # NaN inputs in padding leaf slots and padding internal slots that read real rows: no effect,
    # every padding row (and the dummy row) exactly zero.
    b = dict(padded_b)
    x = jnp.where(b["leaf_mask"][:, None] > 0, table[b["leaf_tokens"]], jnp.nan)
    pad_slots = b["internal_mask"] == 0
    real_leaf = int(np.argmax(b["leaf_mask"]))
    b["children"] = np.where(pad_slots[..., None], real_leaf, b["children"]).astype(np.int32)
    b["child_mask"] = np.where(pad_slots[..., None], 1, b["child_mask"]).astype(np.float32)
    states = forward(cell, params, x, b)
    chex.assert_tree_all_finite(states)
    padding_rows = b["label_mask"] == 0
    assert padding_rows.sum() > 100 and padding_rows[-1]
    chex.assert_trees_all_equal(*(jax.tree.map(lambda a: a[padding_rows], t) for t in (states, zeros_like(states))))
    roots = b["roots"][: len(trees_)]
    chex.assert_trees_all_close(TreeCarry(states.h[roots], states.c[roots]), base[0]["roots"], **TOL)


def zeros_like(tree_):
    return jax.tree.map(jnp.zeros_like, tree_)


def test_many_batches_of_varied_trees_with_one_bucket_shape_trace_once():
    cell, arity, _, _, params, _, _ = setup("binary_tree_lstm")
    vocab = trees.Vocabulary.from_trees([Tree(0, token=f"w{i}") for i in range(WORDS)])
    table = jnp.asarray(np.random.default_rng(0).standard_normal((vocab.size, F)), jnp.float32)
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def roots_of(params, table, b):
        states, _ = tree(cell).apply(params, {}, table[b.leaf_tokens], b)
        return states.h[b.roots]

    rng = np.random.default_rng(1)
    heights = set()
    for _ in range(12):
        batch_trees = [random_tree(rng, int(rng.integers(1, 7)), arity) for _ in range(int(rng.integers(2, 5)))]
        heights.add(tuple(trees.height(t) for t in batch_trees))
        b = schedule(batch_trees, vocab, width=4, num_trees=4, buckets=Buckets(leaves=(24,), steps=(10,)))
        roots_of(params, table, b)
    assert len(heights) >= 10  # the batches really differ


def test_jit_and_eager_agree_and_a_namedtuple_batch_works():
    cell, arity, trees_, vocab, params, table, _ = setup("tree_rnn")
    b = random_layout(trees_, vocab, arity, 3)
    x = table[b["leaf_tokens"]]
    eager, _ = tree(cell).apply(params, {}, x, b)
    as_tuple = collections.namedtuple("Batch", list(b))(**b)
    chex.assert_trees_all_close(forward(cell, params, x, as_tuple), eager, **TOL)


# --- float64 gradient checks ------------------------------------------------------------------------


@pytest.mark.parametrize("custom_vjp", [True, False], ids=["custom_vjp", "autodiff"])
@pytest.mark.parametrize("name", list(CELLS))
def test_check_grads_float64(name, custom_vjp):
    make, arity = CELLS[name]
    a, b_, c = (Tree(0, token=t) for t in ("w0", "w1", "w2"))
    kids = (a, b_, c) if arity == 3 else (Tree(1, (a, b_)), c)
    tiny = [Tree(2, kids), Tree(3, (Tree(4, token="w1"),)), Tree(1, token="w2")]  # incl. a unary node
    vocab = trees.Vocabulary(("<unk>", "w0", "w1", "w2"), {"w0": 1, "w1": 2, "w2": 3})
    b = random_layout(tiny, vocab, arity, 0)
    with jax.enable_x64(True):
        cell = make()
        x = jnp.asarray(np.random.default_rng(0).standard_normal((len(b["leaf_tokens"]), F)))
        params, _ = cell.init(jax.random.key(0), x)
        assert params["u"].dtype == jnp.float64
        # Finite differences of float64 at eps ~1e-3 (check_grads' default): errors ~1e-6; 1e-4 is loose enough.
        # Jitted so that the many evaluations reuse one compiled program.
        level = jax.jit(lambda p, x: tree(cell, custom_vjp=custom_vjp).apply(p, {}, x, b)[0])
        modes = ("rev",) if custom_vjp else ("fwd", "rev")  # a custom VJP has no forward mode
        check_grads(level, (params, x), order=1, modes=modes, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("unroll", [1, 3])
@pytest.mark.parametrize("name", list(CELLS))
def test_custom_vjp_equals_autodiff_of_the_scan_with_padding(name, unroll):
    cell, arity, trees_, vocab, params, table, _ = setup(name)
    b = random_layout(trees_, vocab, arity, 1, pad_trees=2, size=(40, 14, 9))
    x = table[b["leaf_tokens"]]
    cotangent = TreeCarry(*np.random.default_rng(5).standard_normal((2, len(b["label_mask"]), H)).astype(np.float32))

    def pulled_back(custom_vjp):
        model = tree(cell, unroll=unroll, custom_vjp=custom_vjp)
        out, vjp = jax.vjp(lambda p, x: model.apply(p, {}, x, b)[0], params, x)
        return out, vjp(cotangent)  # every row gets a cotangent, padding and dummy rows included

    custom, autodiff = jax.jit(pulled_back, static_argnums=0)(True), jax.jit(pulled_back, static_argnums=0)(False)
    chex.assert_trees_all_close(custom, autodiff, **GRAD_TOL)
    assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(custom[1]))


# --- the cells' equations, against NumPy --------------------------------------------------------------


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def fixed_params(cell, seed):
    """The params init makes, filled with fixed N(0, 1) numbers (so every bias is non-zero)."""
    shapes, _ = jax.eval_shape(cell.init, jax.random.key(0), jax.ShapeDtypeStruct((1, F), jnp.float32))
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(s.shape).astype(np.float32) for name, s in shapes.items()}


def block(a, g):
    """Gate block ``g`` (columns g*H:(g+1)*H) of a kernel or bias, as float64."""
    return np.asarray(a, np.float64)[..., g * H : (g + 1) * H]


RNG = np.random.default_rng(7)
X = RNG.standard_normal((2, F)).astype(np.float32)  # two leaves
KIDS = TreeCarry(*RNG.standard_normal((2, 2, 3, H)).astype(np.float32))  # h, c of 2 nodes x 3 children


def test_binary_tree_lstm_matches_tai_et_al_eq_9_to_14():
    cell = binary_tree_lstm_cell(H)
    p = fixed_params(cell, 0)
    x, hk, ck = X.astype(np.float64), KIDS.h[:, :2].astype(np.float64), KIDS.c[:, :2].astype(np.float64)
    # leaf: gates i, o, g from x, no children
    i, o, g = (
        sigmoid(x @ block(p["w_leaf"], 0) + block(p["b"], 0)),
        sigmoid(x @ block(p["w_leaf"], 1) + block(p["b"], 1)),
        np.tanh(x @ block(p["w_leaf"], 2) + block(p["b"], 2)),
    )
    leaf = cell.leaf(p, jnp.asarray(X))
    chex.assert_trees_all_close(leaf, TreeCarry(o * np.tanh(i * g), i * g), **TOL)

    def z(gate):  # sum_l U^(l) h_l + b for one gate block
        return sum(hk[:, child] @ block(p["u"][child], gate) for child in range(2)) + block(p["b"], gate)

    i, o, g, f0, f1 = sigmoid(z(0)), sigmoid(z(1)), np.tanh(z(2)), sigmoid(z(3)), sigmoid(z(4))
    c = i * g + f0 * ck[:, 0] + f1 * ck[:, 1]
    got = cell.node(p, TreeCarry(*(a[:, :2] for a in KIDS)), jnp.ones((2, 2)))
    chex.assert_trees_all_close(got, TreeCarry(o * np.tanh(c), c), **TOL)
    # a masked child counts as absent, whatever its state (NaN included)
    nan_kids = TreeCarry(*(np.concatenate([a[:, :1], np.full_like(a[:, 1:2], np.nan)], 1) for a in KIDS))
    zero_kids = TreeCarry(*(np.concatenate([a[:, :1], np.zeros_like(a[:, 1:2])], 1) for a in KIDS))
    mask = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    chex.assert_trees_all_close(cell.node(p, nan_kids, mask), cell.node(p, zero_kids, jnp.ones((2, 2))), **TOL)


def test_child_sum_tree_lstm_matches_tai_et_al_eq_2_to_7_with_variable_arity():
    cell = child_sum_tree_lstm_cell(H)
    p = fixed_params(cell, 1)
    mask = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]], np.float32)  # node 0: 3 children, node 1: 2
    hk, ck = (np.asarray(a, np.float64) * mask[..., None] for a in KIDS)
    h_sum = hk.sum(1)
    i, o = sigmoid(h_sum @ block(p["u"], 0) + block(p["b"], 0)), sigmoid(h_sum @ block(p["u"], 1) + block(p["b"], 1))
    g = np.tanh(h_sum @ block(p["u"], 2) + block(p["b"], 2))
    f = sigmoid(hk @ p["u_f"] + block(p["b"], 3))  # one forget gate per child
    c = i * g + (f * ck * mask[..., None]).sum(1)
    got = cell.node(p, KIDS, jnp.asarray(mask))
    chex.assert_trees_all_close(got, TreeCarry(o * np.tanh(c), c), **TOL)
    # unordered: permuting the children (with their mask) changes nothing
    perm = np.array([2, 0, 1])
    permuted = cell.node(p, TreeCarry(*(a[:, perm] for a in KIDS)), jnp.asarray(mask[:, perm]))
    chex.assert_trees_all_close(permuted, got, **TOL)
    # a leaf: i * g with no forget term
    x = X.astype(np.float64)
    i, o = sigmoid(x @ block(p["w_leaf"], 0) + block(p["b"], 0)), sigmoid(x @ block(p["w_leaf"], 1) + block(p["b"], 1))
    c = i * np.tanh(x @ block(p["w_leaf"], 2) + block(p["b"], 2))
    chex.assert_trees_all_close(cell.leaf(p, jnp.asarray(X)), TreeCarry(o * np.tanh(c), c), **TOL)


def test_tree_rnn_by_hand():
    # tanh(1*0.5 + 0) for the leaves; the root tanh(h0 * 2 + h1 * (-1) + 0.1) with H = 1
    cell = tree_rnn_cell(1)
    p = {"w_leaf": jnp.array([[0.5], [0.0]]), "u": jnp.array([[[2.0]], [[-1.0]]]), "b": jnp.array([0.0])}
    leaves = cell.leaf(p, jnp.array([[1.0, 3.0], [-1.0, 3.0]]))
    chex.assert_trees_all_close(leaves.h, np.tanh([[0.5], [-0.5]]), **TOL)
    root = cell.node(dict(p, b=jnp.array([0.1])), jax.tree.map(lambda a: a[None], leaves), jnp.ones((1, 2)))
    want = np.tanh(2 * np.tanh(0.5) + np.tanh(0.5) + 0.1)
    chex.assert_trees_all_close(root, TreeCarry(np.array([[want]]), np.zeros((1, 1))), **TOL)
    relu = tree_rnn_cell(1, activation=jax.nn.relu)
    chex.assert_trees_all_close(relu.leaf(p, jnp.array([[-1.0, 0.0]])).h, np.zeros((1, 1)), **TOL)


def test_init_shapes_gate_biases_and_dtypes():
    x = jax.ShapeDtypeStruct((7, F), jnp.float32)
    for make, want in [
        (lambda: binary_tree_lstm_cell(H, arity=3), {"w_leaf": (F, 3 * H), "u": (3, H, 6 * H), "b": (6 * H,)}),
        (lambda: child_sum_tree_lstm_cell(H), {"w_leaf": (F, 3 * H), "u": (H, 3 * H), "u_f": (H, H), "b": (4 * H,)}),
        (lambda: tree_rnn_cell(H, arity=3), {"w_leaf": (F, H), "u": (3, H, H), "b": (H,)}),
    ]:
        params, state = tree(make()).init(jax.random.key(0), x)
        assert jax.tree.map(lambda a: a.shape, params) == want and state == {}
    params, _ = binary_tree_lstm_cell(H, forget_bias=2.0).init(jax.random.key(0), jnp.ones((1, F)))
    np.testing.assert_array_equal(params["b"], [0.0] * 3 * H + [2.0] * 2 * H)  # i, o, g, then f_0, f_1
    u = np.asarray(params["u"][1, :, 4 * H :])  # child 1's forget block: orthogonal
    np.testing.assert_allclose(u @ u.T, np.eye(H), atol=1e-5)
    half, _ = child_sum_tree_lstm_cell(H, dtype=jnp.bfloat16).init(jax.random.key(0), jnp.ones((1, F)))
    assert {a.dtype for a in jax.tree.leaves(half)} == {jnp.dtype(jnp.bfloat16)}
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        tree_rnn_cell(0)
    with pytest.raises(ValueError, match="arity must be a positive int"):
        binary_tree_lstm_cell(H, arity=0)


# --- errors at trace time -------------------------------------------------------------------------------


def small_batch(arity=2):
    return random_layout([Tree(1, (Tree(0, token="w1"), Tree(2, token="w2")))], VOCAB3, arity, 0)


VOCAB3 = trees.Vocabulary(("<unk>", "w1", "w2"), {"w1": 1, "w2": 2})


def test_errors_name_the_layer_and_say_what_was_expected():
    b = small_batch()
    x = jnp.ones((len(b["leaf_tokens"]), F))
    model = tree(binary_tree_lstm_cell(H))
    params, state = model.init(jax.random.key(0), x, b)

    def run(*args, model=model):
        return jax.eval_shape(lambda: model.apply(*args)[0])

    with pytest.raises(ShapeError, match=r"at tree: the 2-ary binary_tree_lstm cell needs children \[S, W, 2\]"):
        run(params, state, x, small_batch(arity=3))
    with pytest.raises(ShapeError, match=r"at tree: input \(4, 5\) float32 does not fit the params: 'w_leaf'"):
        run(params, state, jnp.ones((4, 5)), b)
    with pytest.raises(DTypeError, match=r"at tree: expected a floating-point input, got \(4, 3\) int32"):
        run(params, state, jnp.ones((4, F), jnp.int32), b)
    with pytest.raises(DTypeError, match="at tree: expected integer children indices"):
        run(params, state, x, dict(b, children=b["children"].astype(np.float32)))
    with pytest.raises(ShapeError, match=r"at tree: expected leaf_mask of shape \(4,\), got \(3,\)"):
        run(params, state, x, dict(b, leaf_mask=np.ones(3, np.float32)))
    with pytest.raises(ShapeError, match="at tree: expected a batch with the field 'internal_mask'"):
        run(params, state, x, {k: a for k, a in b.items() if k != "internal_mask"})
    with pytest.raises(ShapeError, match=r"at tree: expected input of rank 2 \(\[nodes, features\]\)"):
        run(params, state, jnp.ones((1, 4, F)), b)
    with pytest.raises(ParamsError, match="at tree: params do not belong to this binary_tree_lstm cell"):
        run({"w": x}, state, x, b)
    o = postorder([Tree(1, (Tree(0, token="w1"),) * 3)], VOCAB3, arity=3)
    oracle = node_scan(tree_rnn_cell(H))
    with pytest.raises(ShapeError, match=r"at node_scan: the 2-ary tree_rnn cell needs children \[N, 2\]"):
        run(oracle.init(jax.random.key(0), jnp.ones((4, F)))[0], {}, jnp.ones((4, F)), o, model=oracle)
    with pytest.raises(ValueError, match="the 2-ary tree_rnn cell got a node with 3 children"):
        cell = tree_rnn_cell(H)
        recursive(cell, cell.init(jax.random.key(0), x)[0], Tree(1, (Tree(0, token="w1"),) * 3), lambda t: x[0])
    with pytest.raises(TypeError, match="expected a TreeCell"):
        tree(binary_tree_lstm_cell)
