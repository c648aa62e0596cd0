"""Tree-structured recursion compiled once: a tree cell run bottom-up over a batch of trees with ``lax.scan``.

Every sentence has a different parse tree, yet ``tree(cell)`` runs a whole batch of them in one
compiled program, using the schedule ``funcnet.tree_schedule.schedule`` makes (padded to a few bucket
shapes, so an epoch compiles a few programs). Node states live in two buffers ``h, c: [R, H]``::

    rows 0 .. L-1            leaf slots (leaf slot i is row i)
    row  L + s*W + w         internal slot w of step s        (S steps of width W)
    row  R-1 = L + S*W       a dummy row that stays zero: absent children and padding point here

and the scan is::

    h[:L], c[:L] = cell.leaf(leaf_x)                          # all leaves in one batched call
    for s in range(S):                                        # lax.scan
        kids = TreeCarry(h[children[s]], c[children[s]])      # [W, K, H] gathered from the buffers
        h[L+s*W : L+(s+1)*W], c[...] = cell.node(kids, child_mask[s])   # dynamic_update_slice

A node is scheduled only after all its children, so each gather reads finished rows. Rows of
padding slots are set to exactly zero and no real node reads them: padding cannot leak into real
trees. ``node_scan(cell)`` is the node-by-node oracle (``lax.cond(is_leaf, leaf, node)`` for each
node of a post-order list) and ``recursive`` the plain Python recursion of define-by-run frameworks.
The cells (``binary_tree_lstm_cell``, ``child_sum_tree_lstm_cell``, ``tree_rnn_cell``) live in
``funcnet.layers.tree_cells``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ..core import Model
from ..errors import DTypeError, ParamsError, ShapeError, check_array, check_floating, check_rank, describe
from ..precision import round_weights
from ._scan import unroll_for
from .steps import scan_steps, zero_unless
from .tree_cells import TreeCarry, TreeCell


def _field(layer: str, batch: Any, name: str) -> Any:
    """``batch[name]`` or ``batch.name`` (a dict or a NamedTuple such as ``TreeBatch``)."""
    value = batch.get(name) if isinstance(batch, Mapping) else getattr(batch, name, None)
    if value is None:
        raise ShapeError(
            layer,
            f"expected a batch with the field {name!r}, got {describe(batch)}. Fix: pass what "
            "funcnet.tree_schedule makes: a TreeBatch to tree, a PostOrder to node_scan.",
        )
    check_array(layer, value)
    return value


def _check_schedule(layer: str, cell: TreeCell, batch: Any, nodes: int, index_rank: int) -> dict[str, Any]:
    """Validates ``children``, ``child_mask`` and the node masks; returns them by name.

    ``index_rank`` is 3 for ``tree`` (``[S, W, K]``) and 2 for ``node_scan`` (``[N, K]``).
    """
    children = _field(layer, batch, "children")
    if not jnp.issubdtype(children.dtype, jnp.integer):
        raise DTypeError(layer, f"expected integer children indices, got {describe(children)}.")
    axes = "[S, W, K]" if index_rank == 3 else "[N, K]"
    check_rank(layer, children, index_rank, index_rank, what=f"children {axes}")
    k = children.shape[-1]
    if cell.arity is not None and k != cell.arity:
        raise ShapeError(
            layer,
            f"the {cell.arity}-ary {cell.name} cell needs children {axes[:-2]}{cell.arity}], got {describe(children)}."
            f" Fix: schedule the trees with arity={cell.arity}, or use child_sum_tree_lstm_cell for any arity.",
        )
    fields = {"children": children}
    masks = {"child_mask": children.shape}
    masks.update({"leaf_mask": (nodes,), "internal_mask": children.shape[:-1]} if index_rank == 3 else {})
    masks.update({"is_leaf": (nodes,)} if index_rank == 2 else {})
    for name, shape in masks.items():
        value = _field(layer, batch, name)
        if tuple(value.shape) != tuple(shape):
            raise ShapeError(layer, f"expected {name} of shape {tuple(shape)}, got {describe(value)}.")
        fields[name] = value
    return fields


def _check_inputs(layer: str, cell: TreeCell, params: Any, state: Any, x: Any) -> None:
    """Raises unless ``x: [N, F]`` is floating and fits the params ``cell.init`` made."""
    check_rank(layer, x, 2, 2, what="[nodes, features]")
    check_floating(layer, x)
    if state:
        raise ParamsError(layer, f"{cell.name} has no state, got {sorted(state)}. Fix: pass the state init returned.")
    want, _ = jax.eval_shape(cell.init, jax.random.key(0), jax.ShapeDtypeStruct((1, x.shape[1]), x.dtype))
    if jax.tree.structure(want) != jax.tree.structure(params):
        raise ParamsError(
            layer,
            f"params do not belong to this {cell.name} cell: expected {jax.tree.map(describe, want)}, got "
            f"{jax.tree.map(describe, params)}. Fix: pass the params returned by this model's init.",
        )
    for name in want:
        if tuple(want[name].shape) != tuple(getattr(params[name], "shape", ())):
            raise ShapeError(
                layer,
                f"input {describe(x)} does not fit the params: {name!r} is {describe(params[name])}, this input needs "
                f"{tuple(want[name].shape)}. Fix: feed inputs with the feature size the {cell.name} cell was "
                "initialized with, or re-initialize it with this input.",
            )


def _init(layer: str, cell: TreeCell, index_rank: int, what: str) -> Callable[..., Any]:
    """``init(key, x, schedule=None)``: checks ``x: [N, F]`` (and the schedule, if given), then ``cell.init``."""

    def init(key, x, schedule=None):
        check_rank(layer, x, 2, 2, what=what)
        check_floating(layer, x)
        if schedule is not None:
            _check_schedule(layer, cell, schedule, x.shape[0], index_rank)
        return cell.init(key, x)

    return init


def _internal_nodes(cell: TreeCell, num_leaves: int, unroll: int | bool, params, buffers, schedule):
    """The steps through ``cell.node`` (plain autodiff differentiates this)."""
    children, child_mask, internal_mask = schedule
    node = lambda kids, mask: (cell.node(params, TreeCarry(*kids), mask), None)  # noqa: E731
    return scan_steps(node, num_leaves, buffers, children, internal_mask, child_mask, unroll=unroll)[0]


def _present(children: jax.Array, child_mask: jax.Array, rows: int) -> jax.Array:
    """``children`` with absent children (mask 0) pointing at the dummy row ``rows - 1``, which stays zero.

    Reading the zero row is what masking does, so the fast path needs no per-step mask.
    """
    return jnp.where(child_mask > 0, children, rows - 1).astype(jnp.int32)


def _fast_forward(cell: TreeCell, num_leaves: int, unroll: int | bool, params, buffers, schedule):
    """The steps through ``cell.pre``/``cell.post``: the final buffers, every step's ``z`` and the child rows read."""
    children, child_mask, internal_mask = schedule
    present = _present(children, child_mask, buffers[0].shape[0])
    weights = round_weights(params, cell.compute_dtype)  # once: XLA would convert them in every step

    def node(kids, _):
        kids = TreeCarry(*kids)
        z = cell.pre(weights, kids)
        return cell.post(z, kids), z

    out, zs = scan_steps(node, num_leaves, buffers, present, internal_mask, None, unroll=unroll)
    return out, zs, present


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _internal_custom_vjp(cell, num_leaves, unroll, params, buffers, schedule):
    """``_internal_nodes`` with a hand-written backward pass (see ``_internal_bwd``)."""
    return _fast_forward(cell, num_leaves, unroll, params, buffers, schedule)[0]


def _internal_fwd(cell, num_leaves, unroll, params, buffers, schedule):
    out, zs, present = _fast_forward(cell, num_leaves, unroll, params, buffers, schedule)
    _, child_mask, internal_mask = schedule
    return out, (params, out, (present, child_mask, internal_mask), zs)  # the final buffers hold every child state


def _internal_bwd(cell, num_leaves, unroll, residuals, cotangents):
    """The reverse scan over steps with in-place writes only; the params' gradient after it, in one call.

    A node's total cotangent is its own (from the loss) plus what its parent passed down. Every node has
    one parent slot ``(s, w, k)``, so the reverse scan keeps the cotangents parents pass to their children
    in a buffer laid out by parent slot, ``[S*W*K + 1, H]`` (last row zero: roots and padding): step ``s``
    writes its ``W*K`` rows contiguously (``dynamic_update_slice``, in place) and reads its own nodes'
    rows with one gather through ``parent_of``. (Scatter-adding into a row buffer instead made XLA copy
    the whole buffer every step.) Each step pulls its rows back through ``cell.post`` (with the saved
    ``z``) and ``cell.pre`` with respect to the children only; the params' gradient is ONE VJP of
    ``cell.pre`` over all internal slots after the loop (one large matmul instead of a small matmul
    and an accumulation per step; the cell is row-wise, so the sum of per-step VJPs is that one VJP).
    Padding rows get no cotangent (their outputs are constant zeros); absent children read the zero
    dummy row and their cotangents land in link rows nobody reads.
    """
    params, (h, c), (present, child_mask, internal_mask), zs = residuals
    steps, width, arity = present.shape
    rows, hidden = h.shape
    slots, links = steps * width, steps * width * arity
    real_links = jnp.where(child_mask.reshape(-1) > 0, present.reshape(-1), rows)  # absent: dropped below
    parent_of = jnp.full((rows,), links, jnp.int32).at[real_links].set(jnp.arange(links, dtype=jnp.int32), mode="drop")
    internal = internal_mask.reshape(slots, 1) > 0
    own = tuple(  # each internal slot's own cotangent [S, W, H]; zero for padding slots
        jnp.where(internal, d[num_leaves : num_leaves + slots], jnp.zeros_like(d[:slots])).reshape(steps, width, hidden)
        for d in cotangents
    )
    link_of = parent_of[num_leaves : num_leaves + slots].reshape(steps, width)
    weights = round_weights(params, cell.compute_dtype)

    def step(passed, xs):
        kids_of, own_h, own_c, link, s, z = xs
        d_rows = tuple(d + jnp.take(p, link, axis=0, mode="clip") for d, p in zip((own_h, own_c), passed, strict=True))
        kids = TreeCarry(*(jnp.take(a, kids_of, axis=0, mode="clip") for a in (h, c)))
        out, post_vjp = jax.vjp(cell.post, z, kids)
        d_z, d_kids = post_vjp(TreeCarry(*(d.astype(o.dtype) for d, o in zip(d_rows, out, strict=True))))
        d_kids_h = jax.vjp(lambda k: cell.pre(weights, k), kids)[1](d_z)[0].h  # linear: its forward is dead code
        written = tuple(
            lax.dynamic_update_slice(p, d.reshape(width * arity, hidden).astype(p.dtype), (s * width * arity, 0))
            for p, d in zip(passed, (d_kids.h + d_kids_h, d_kids.c), strict=True)
        )
        return written, d_z

    passed = tuple(jnp.zeros((links + 1, hidden), d.dtype) for d in cotangents)
    xs = (present, *own, link_of, jnp.arange(steps), zs)
    passed, d_zs = lax.scan(step, passed, xs, reverse=True, unroll=unroll_for(steps, unroll))
    kids = TreeCarry(*(jnp.take(a, present.reshape(slots, arity), axis=0, mode="clip") for a in (h, c)))
    d_zs = jax.tree.map(lambda a: a.reshape(slots, *a.shape[2:]), d_zs)
    d_params = jax.vjp(lambda p: cell.pre(p, kids), params)[1](d_zs)[0]
    link = parent_of[:num_leaves]
    d_leaves = tuple(
        d[:num_leaves] + jnp.take(p, link, axis=0, mode="clip") for d, p in zip(cotangents, passed, strict=True)
    )
    d_buffers = tuple(jnp.concatenate([d, jnp.zeros((rows - num_leaves, hidden), d.dtype)]) for d in d_leaves)
    return d_params, d_buffers, (None, None, None)


_internal_custom_vjp.defvjp(_internal_fwd, _internal_bwd)


def tree(cell: TreeCell, *, unroll: int | bool = 1, custom_vjp: bool = True) -> Model:
    """Runs ``cell`` bottom-up over a scheduled batch of trees: leaves at once, then ``lax.scan`` over steps.

    ``apply(params, state, leaf_x, batch) -> (TreeCarry [R, H], state)`` with ``leaf_x: [L, F]`` the
    inputs of the leaf slots (e.g. word embeddings of ``batch.leaf_tokens``) and ``batch`` a
    ``funcnet.tree_schedule.TreeBatch`` or a dict with its fields ``children: int [S, W, K]``,
    ``child_mask [S, W, K]``, ``leaf_mask [L]`` and ``internal_mask [S, W]``. Row ``r`` of the
    result is the state of the node in buffer row ``r`` (``batch.roots`` holds each tree's root row,
    ``batch.labels`` each row's label). Padding rows and the dummy row ``R-1`` are zero. One batched
    ``cell.leaf`` call, then one batched ``cell.node`` call per step; the params are the cell's.

    Args:
      cell: a TreeCell; an N-ary cell needs ``K == cell.arity``.
      unroll: steps per scan iteration (``True`` unrolls all: a few percent faster, longer compiles).
      custom_vjp: for cells with ``pre``/``post`` (the built-in ones), the hand-written backward
        pass: the forward saves each step's ``z``; a reverse scan writes each step's child cotangents
        in place; the params' gradient is one batched call after it. ``False``: plain autodiff of
        the scan, which also supports forward mode (``jax.jvp``) and higher derivatives.

    Returns:
      A Model named ``"tree"``.

    Raises:
      ShapeError: ``leaf_x`` is not ``[L, F]`` with the features the params were made for, the
        batch lacks a field, the masks do not match ``children``, or ``K`` is not the cell's arity.
      DTypeError: ``leaf_x`` is not floating point or ``children`` is not integer.

    Example (two leaves and their parent: L=2, S=W=1, K=2, so R=4 and row 3 is the dummy):
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from funcnet.layers.tree_cells import binary_tree_lstm_cell, tree_rnn_cell
      >>> batch = {"children": np.array([[[0, 1]]]), "child_mask": np.ones((1, 1, 2)),
      ...          "leaf_mask": np.ones(2), "internal_mask": np.ones((1, 1))}
      >>> model = tree(binary_tree_lstm_cell(4))
      >>> leaf_x = jnp.ones((2, 3))
      >>> params, state = model.init(jax.random.key(0), leaf_x, batch)
      >>> states, state = model.apply(params, state, leaf_x, batch)
      >>> states.h.shape, bool((states.h[3] == 0).all())
      ((4, 4), True)
    """
    if not isinstance(cell, TreeCell):
        raise TypeError(f"tree: expected a TreeCell (e.g. binary_tree_lstm_cell(150)), got {type(cell).__name__}")

    init = _init("tree", cell, 3, "[leaf slots, features]")

    def apply(params, state, leaf_x, batch, *, key=None, train=False):
        del key, train
        _check_inputs("tree", cell, params, state, leaf_x)
        b = _check_schedule("tree", cell, batch, leaf_x.shape[0], 3)
        num_leaves, (steps, width, _) = leaf_x.shape[0], b["children"].shape
        leaves = cell.leaf(params, leaf_x)
        dtype = leaves.h.dtype
        pad = jnp.zeros((steps * width + 1, cell.hidden), dtype)  # internal slots and the dummy row
        buffers = tuple(jnp.concatenate([zero_unless(b["leaf_mask"], a, dtype), pad]) for a in leaves)
        schedule = (jnp.asarray(b["children"]), b["child_mask"], b["internal_mask"])
        fast = custom_vjp and cell.pre is not None and cell.post is not None
        run = _internal_custom_vjp if fast else _internal_nodes
        h, c = run(cell, num_leaves, unroll, params, buffers, schedule)
        return TreeCarry(h, c), state

    return Model(init, apply, "tree")


def node_scan(cell: TreeCell) -> Model:
    """Runs ``cell`` node by node over a post-order list of nodes: the oracle for ``tree``.

    ``apply(params, state, x, order) -> (TreeCarry [N+1, H], state)`` with ``x: [N, F]`` each
    node's input (read for leaves only) and ``order`` a ``funcnet.tree_schedule.PostOrder`` or a dict with
    ``is_leaf: bool [N]``, ``children: int [N, K]`` (earlier nodes; absent children point at the
    dummy row ``N``) and ``child_mask [N, K]``. One ``lax.scan`` step per node, each a
    ``lax.cond(is_leaf, cell.leaf, cell.node)`` on one node: slow, and simple enough to trust.
    Padding nodes compute whatever the cell gives them (no real node reads them); row ``N`` is zero.

    Args:
      cell: a TreeCell; an N-ary cell needs ``K == cell.arity``.

    Returns:
      A Model named ``"node_scan"``.

    Raises:
      ShapeError, DTypeError: as for ``tree``.

    Example (leaves 0 and 1, then their parent 2; row 3 is the dummy):
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from funcnet.layers.tree_cells import binary_tree_lstm_cell, tree_rnn_cell
      >>> order = {"is_leaf": np.array([True, True, False]), "children": np.array([[3, 3], [3, 3], [0, 1]]),
      ...          "child_mask": np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])}
      >>> model = node_scan(binary_tree_lstm_cell(4))
      >>> x = jnp.ones((3, 5))
      >>> params, state = model.init(jax.random.key(0), x, order)
      >>> model.apply(params, state, x, order)[0].h.shape
      (4, 4)
    """
    if not isinstance(cell, TreeCell):
        raise TypeError(f"node_scan: expected a TreeCell, got {type(cell).__name__}")

    init = _init("node_scan", cell, 2, "[nodes, features]")

    def apply(params, state, x, order, *, key=None, train=False):
        del key, train
        _check_inputs("node_scan", cell, params, state, x)
        o = _check_schedule("node_scan", cell, order, x.shape[0], 2)
        dtype = jax.eval_shape(cell.leaf, params, x[:1]).h.dtype
        buffers = tuple(jnp.zeros((x.shape[0] + 1, cell.hidden), dtype) for _ in range(2))

        def step(buffers, xs):
            n, is_leaf, children, child_mask, x_n = xs

            def as_leaf():
                return tuple(a.astype(dtype) for a in cell.leaf(params, x_n[None]))

            def as_node():
                kids = TreeCarry(*(jnp.take(buf, children, axis=0, mode="clip")[None] for buf in buffers))
                return tuple(a.astype(dtype) for a in cell.node(params, kids, child_mask[None]))

            out = lax.cond(is_leaf, as_leaf, as_node)
            return tuple(lax.dynamic_update_slice(buf, a, (n, 0)) for buf, a in zip(buffers, out, strict=True)), None

        xs = (jnp.arange(x.shape[0]), jnp.asarray(o["is_leaf"]) > 0, o["children"], o["child_mask"], x)
        buffers, _ = lax.scan(step, buffers, xs)
        return TreeCarry(*buffers), state

    return Model(init, apply, "node_scan")


def recursive(cell: TreeCell, params: Any, tree: Any, leaf_x_of_token: Callable[[Any], jax.Array]) -> TreeCarry:
    """Plain Python recursion over one tree, one cell call per node: the reference, and what PyTorch users write.

    Args:
      cell: a TreeCell. N-ary cells take nodes with at most ``arity`` children (fewer are padded with
        absent, masked children).
      params: the cell's params.
      tree: a ``funcnet.parse_trees.Tree`` (any object with ``children``, a tuple, empty for leaves, and
        ``token``).
      leaf_x_of_token: maps a leaf's token to its input vector ``[F]``.

    Returns:
      ``TreeCarry [num_nodes, H]``: every node's state in post-order (children left to right, then
      the node), so the root's state is the last row.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcnet.layers.tree_cells import binary_tree_lstm_cell, tree_rnn_cell
      >>> from funcnet.parse_trees import parse_tree
      >>> cell = tree_rnn_cell(4)
      >>> params, _ = cell.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> states = recursive(cell, params, parse_tree("(1 (0 not) (3 (2 very) (4 good)))"), lambda t: jnp.ones(3))
      >>> states.h.shape
      (5, 4)
    """
    rows: list[TreeCarry] = []

    def visit(node) -> TreeCarry:
        if not node.children:
            out = cell.leaf(params, leaf_x_of_token(node.token)[None])
        else:
            kids = [visit(child) for child in node.children]
            k = cell.arity if cell.arity is not None else len(kids)
            if len(kids) > k:
                raise ValueError(f"recursive: the {k}-ary {cell.name} cell got a node with {len(kids)} children")
            absent = [TreeCarry(*(jnp.zeros_like(a) for a in kids[0]))] * (k - len(kids))
            stacked = TreeCarry(*(jnp.stack(arrays, 1) for arrays in zip(*(kids + absent), strict=True)))
            mask = jnp.asarray([[1.0] * len(kids) + [0.0] * (k - len(kids))], stacked.h.dtype)
            out = cell.node(params, stacked, mask)
        rows.append(out)
        return out

    visit(tree)
    return TreeCarry(*(jnp.concatenate(arrays) for arrays in zip(*rows, strict=True)))
