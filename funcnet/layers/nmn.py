"""Neural module networks: shared modules assembled into a different network per question, run compiled.

The modules (Andreas et al. 2016) work on an image's cells ``cells: [N, P, D]`` (``P`` positions, e.g. a
3x3 grid's 9, each with ``D`` features; ``grid_cells`` computes them from the image) and attention maps
``[N, P]`` with values in (0, 1):

- ``find_module``: cells and a word -> attention (``find[red]``: where the red things are);
- ``transform_module``: attention and a word -> attention (``transform[above]``: one learned ``P x P`` map
  per word);
- ``and_module`` / ``or_module``: two attentions -> their elementwise minimum / maximum;
- ``exists_module``: attention -> answer logits ``[N, 2]`` (no, yes).

``layout_executor`` runs a batch of layouts (``funcnet.layouts.layout_batch``) in one compiled program,
as ``funcnet.tree`` runs parse trees: every ``find`` leaf of the batch in one call; then a ``lax.scan``
over the scheduled steps (``funcnet.layers.steps.scan_steps``), where each slot holds one internal
instance and every slot runs the internal modules, each slot keeping its own module's output (a select,
not a branch: the modules are a few small matmuls, cheaper than the steps that typed scheduling would
add); then ``exists`` on each layout's body. ``interpret`` is the define-by-run oracle: a Python
recursion over one layout, calling the same modules.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..core import Model
from ..layouts import Layout, LayoutVocab
from .steps import scan_steps, zero_unless


def _glorot(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    fan_in, fan_out = shape[-2], shape[-1]
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def grid_cells(grid: int, features: int, hidden: int) -> Model:
    """An image's cells: ``apply(params, state, image [N, H, W, C]) -> cells [N, grid*grid, features]``, each
    cell's pixels through a two-layer ReLU MLP (a convolution whose kernel and stride are the cell), row by row.

    >>> model = grid_cells(3, features=8, hidden=16)
    >>> params, state = model.init(jax.random.key(0), jnp.ones((2, 30, 30, 3)))
    >>> model.apply(params, state, jnp.ones((2, 30, 30, 3)))[0].shape
    (2, 9, 8)
    """

    def cells_of(image):
        n, height, width, channels = image.shape
        if height % grid or width % grid:
            raise ValueError(f"grid_cells: a {height}x{width} image does not split into {grid}x{grid} cells")
        cells = image.reshape(n, grid, height // grid, grid, width // grid, channels).transpose(0, 1, 3, 2, 4, 5)
        return cells.reshape(n, grid * grid, -1)

    def init(key, image):
        k1, k2 = jax.random.split(key)
        pixels = jax.eval_shape(cells_of, image).shape[-1]
        params = {"hidden": _glorot(k1, (pixels, hidden)), "hidden_bias": jnp.zeros(hidden),
                  "out": _glorot(k2, (hidden, features)), "out_bias": jnp.zeros(features)}  # fmt: skip
        return params, {}

    def apply(params, state, image, *, key=None, train=False):
        del key, train
        h = jax.nn.relu(cells_of(image) @ params["hidden"] + params["hidden_bias"][None, None])
        return jax.nn.relu(h @ params["out"] + params["out_bias"][None, None]), state

    return Model(init, apply, "grid_cells")


def find_module(words: int, hidden: int) -> Model:
    """``find[w]``: ``apply(params, state, cells [N, P, D], word int [N]) -> attention [N, P]``,
    ``sigmoid(v . relu(cells W + e_w + b) + c)`` with ``e_w`` the word's row of a learned table.

    >>> model = find_module(words=3, hidden=4)
    >>> params, state = model.init(jax.random.key(0), jnp.ones((2, 9, 5)), jnp.array([1, 2]))
    >>> model.apply(params, state, jnp.ones((2, 9, 5)), jnp.array([1, 2]))[0].shape
    (2, 9)
    """

    def init(key, cells, word):
        del word
        k1, k2, k3 = jax.random.split(key, 3)
        params = {
            "cell": _glorot(k1, (cells.shape[-1], hidden)),
            "word": jax.random.normal(k2, (words, hidden)) * 0.5,
            "bias": jnp.zeros(hidden),
            "out": _glorot(k3, (hidden, 1))[:, 0],
            "out_bias": jnp.zeros(()),
        }
        return params, {}

    def apply(params, state, cells, word, *, key=None, train=False):
        del key, train
        h = jax.nn.relu(cells @ params["cell"] + params["word"][word][:, None, :] + params["bias"][None, None])
        return jax.nn.sigmoid(h @ params["out"] + params["out_bias"]), state

    return Model(init, apply, "find")


def transform_module(words: int) -> Model:
    """``transform[w]``: ``apply(params, state, attention [N, P], word int [N]) -> attention [N, P]``,
    ``sigmoid(M_w a + b_w)`` with one ``P x P`` matrix and bias per word.

    >>> model = transform_module(words=4)
    >>> params, state = model.init(jax.random.key(0), jnp.ones((2, 9)), jnp.array([0, 3]))
    >>> params["matrix"].shape, model.apply(params, state, jnp.ones((2, 9)), jnp.array([0, 3]))[0].shape
    ((4, 9, 9), (2, 9))
    """

    def init(key, attention, word):
        del word
        positions = attention.shape[-1]
        matrix = jax.random.normal(key, (words, positions, positions)) / np.sqrt(positions)
        return {"matrix": matrix, "bias": jnp.zeros((words, positions))}, {}

    def apply(params, state, attention, word, *, key=None, train=False):
        del key, train
        mixed = jnp.einsum("npq,nq->np", params["matrix"][word], attention) * 4.0  # attention is in (0, 1)
        return jax.nn.sigmoid(mixed + params["bias"][word]), state

    return Model(init, apply, "transform")


def _combine(name: str, op) -> Model:
    def init(key, a, b):
        del key, a, b
        return {}, {}

    def apply(params, state, a, b, *, key=None, train=False):
        del params, key, train
        return op(a, b), state

    return Model(init, apply, name)


def and_module() -> Model:
    """``and``: ``apply({}, {}, a [N, P], b [N, P]) -> minimum(a, b)``, the cells both attend to.

    >>> and_module().apply({}, {}, jnp.array([[0.9, 0.2]]), jnp.array([[0.8, 0.7]]))[0].tolist()
    [[0.800000011920929, 0.20000000298023224]]
    """
    return _combine("and", jnp.minimum)


def or_module() -> Model:
    """``or``: ``apply({}, {}, a [N, P], b [N, P]) -> maximum(a, b)``, the cells either attends to.

    >>> or_module().apply({}, {}, jnp.array([[0.0, 0.5]]), jnp.array([[1.0, 0.25]]))[0].tolist()
    [[1.0, 0.5]]
    """
    return _combine("or", jnp.maximum)


def exists_module() -> Model:
    """``exists``: ``apply(params, state, attention [N, P]) -> logits [N, 2]`` (no, yes): the yes logit is
    ``sum_k softplus(w_k) r_k + b`` over the attention values ranked from the largest, ``r``. It reads what is
    attended to, not where, and more attention never means less yes: ``find`` cannot learn an inverted
    code that ``exists`` undoes but ``and`` and ``transform`` would not.

    >>> model = exists_module()
    >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 9)))
    >>> logits, _ = model.apply(params, state, jnp.array([[0.0] * 9, [0.0] * 8 + [1.0]]))
    >>> bool(logits[1, 1] > logits[0, 1])
    True
    """

    def init(key, attention):
        del key
        positions = attention.shape[-1]
        return {"weight": jnp.full(positions, -2.0).at[0].set(2.0), "bias": jnp.array(-2.0)}, {}

    def apply(params, state, attention, *, key=None, train=False):
        del key, train
        ranked = -jnp.sort(-attention, axis=-1)
        yes = ranked @ jax.nn.softplus(params["weight"]) + params["bias"]
        return jnp.stack([jnp.zeros_like(yes), yes], -1), state

    return Model(init, apply, "exists")


class Modules(NamedTuple):
    """The modules of a vocabulary, each a Model (params under its name in the executor's params)."""

    find: Model
    transform: Model
    and_: Model
    or_: Model
    exists: Model

    @classmethod
    def create(cls, vocab: LayoutVocab, hidden: int) -> Modules:
        """Modules for ``vocab``'s words, ``hidden`` units in ``find``."""
        return cls(find_module(vocab.find.size, hidden), transform_module(max(1, len(vocab.words("transform")))),
                   and_module(), or_module(), exists_module())  # fmt: skip


def init_modules(modules: Modules, key: jax.Array, cells_dim: int, positions: int) -> dict[str, Any]:
    """The params of every module (``{"find": ..., "transform": ..., "exists": ...}``)."""
    keys = jax.random.split(key, 3)
    cells, attention, word = jnp.zeros((1, positions, cells_dim)), jnp.zeros((1, positions)), jnp.zeros(1, jnp.int32)
    return {
        "find": modules.find.init(keys[0], cells, word)[0],
        "transform": modules.transform.init(keys[1], attention, word)[0],
        "exists": modules.exists.init(keys[2], attention)[0],
    }


def layout_executor(modules: Modules, vocab: LayoutVocab, *, unroll: int | bool = 1) -> Model:
    """Answers a scheduled batch of layouts over their images' cells in one compiled program.

    ``apply(params, state, cells [B, P, D], batch) -> (logits [T, 2], state)`` with ``batch`` a
    ``funcnet.layouts.layout_batch`` (a ``TreeBatch`` or a dict of its fields) whose ``node_tree`` indexes
    ``cells`` (layout ``t`` asks about image ``t``). Padding layouts get the logits of an empty attention.

    >>> from funcnet.layouts import LayoutVocab, layout_batch, parse_layout
    >>> vocab = LayoutVocab.create({"find": ["red", "circle"], "transform": ["above"]})
    >>> texts = ("exists(find[red])", "exists(and(find[red], transform[above](find[circle])))")
    >>> layouts = [parse_layout(t) for t in texts]
    >>> executor = layout_executor(Modules.create(vocab, hidden=8), vocab)
    >>> cells = jnp.ones((2, 9, 5))
    >>> batch = layout_batch(layouts, vocab, width=4)
    >>> params, state = executor.init(jax.random.key(0), cells, batch)
    >>> executor.apply(params, state, cells, batch)[0].shape
    (2, 2)
    """
    kinds_np, words_np = vocab.instance_table()
    internal = vocab.internal_modules()

    def init(key, cells, batch):
        del batch
        return init_modules(modules, key, cells.shape[-1], cells.shape[-2]), {}

    def apply(params, state, cells, batch, *, key=None, train=False):
        del key, train
        b = batch._asdict() if hasattr(batch, "_asdict") else batch
        leaf_tokens, node_tree = b["leaf_tokens"], b["node_tree"]
        num_leaves, (steps, width, _) = leaf_tokens.shape[0], b["children"].shape
        leaf_att, _ = modules.find.apply(params["find"], {}, cells[node_tree[:num_leaves]], leaf_tokens)
        pad = jnp.zeros((steps * width + 1, leaf_att.shape[-1]), leaf_att.dtype)
        buffer = jnp.concatenate([zero_unless(b["leaf_mask"], leaf_att, leaf_att.dtype), pad])
        instances = b["labels"][num_leaves : num_leaves + steps * width].reshape(steps, width)
        kinds, words = jnp.asarray(kinds_np), jnp.asarray(words_np)

        def node(kids, ids):
            a, c = kids[0][:, 0], kids[0][:, 1]  # [W, P]: first and second child (the dummy row if absent)
            outputs = {
                "transform": lambda: modules.transform.apply(params["transform"], {}, a, words[ids])[0],
                "and": lambda: modules.and_.apply({}, {}, a, c)[0],
                "or": lambda: modules.or_.apply({}, {}, a, c)[0],
            }
            stacked = jnp.stack([outputs[name]() for name in internal])  # [modules, W, P]
            kind = jnp.maximum(kinds[ids], 0)  # padding slots (-1) are zeroed by scan_steps
            return (jnp.take_along_axis(stacked, kind[None, :, None], axis=0)[0],), None

        (buffer,), _ = scan_steps(node, num_leaves, (buffer,), b["children"], b["internal_mask"], instances,
                                  unroll=unroll)  # fmt: skip
        return modules.exists.apply(params["exists"], {}, buffer[b["roots"]])[0], state

    return Model(init, apply, "layout_executor")


def interpret(modules: Modules, params: dict[str, Any], cells: jax.Array, layout: Layout,
              vocab: LayoutVocab) -> jax.Array:  # fmt: skip
    """The define-by-run oracle: ``layout`` run module by module on one image's ``cells [P, D]`` by Python
    recursion -> logits ``[2]``. The layout must pass ``funcnet.layouts.check_layout``.

    >>> from funcnet.layouts import LayoutVocab, parse_layout
    >>> vocab = LayoutVocab.create({"find": ["red"]})
    >>> modules = Modules.create(vocab, hidden=4)
    >>> params = init_modules(modules, jax.random.key(0), 5, 9)
    >>> interpret(modules, params, jnp.ones((9, 5)), parse_layout("exists(find[red])"), vocab).shape
    (2,)
    """
    transform_words = vocab.words("transform")

    def run(node: Layout) -> jax.Array:  # [1, P]
        if node.module == "find":
            word = jnp.array([vocab.find.encode(node.word)])
            return modules.find.apply(params["find"], {}, cells[None], word)[0]
        inputs = [run(child) for child in node.children]
        if node.module == "transform":
            word = jnp.array([transform_words.index(node.word)])
            return modules.transform.apply(params["transform"], {}, inputs[0], word)[0]
        if node.module == "and":
            return modules.and_.apply({}, {}, *inputs)[0]
        if node.module == "or":
            return modules.or_.apply({}, {}, *inputs)[0]
        return modules.exists.apply(params["exists"], {}, inputs[0])[0]

    return run(layout)[0]
