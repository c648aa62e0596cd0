"""Tree cells: how a tree node's state comes from its input (leaves) or from its children (internal nodes).

A ``TreeCell`` has two equations, both batched over nodes: ``leaf(params, x [N, F])`` and
``node(params, children [N, K, H], child_mask [N, K])``, each returning ``TreeCarry(h, c) [N, H]``.
``funcnet.layers.tree`` runs them over batches of trees (``tree``, ``node_scan``, ``recursive``).
Cells: the N-ary and the child-sum Tree-LSTM (Tai et al. 2015) and the plain tree-RNN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .. import initializers
from ..errors import ShapeError, check_floating, check_params, check_rank, describe
from ..initializers import Initializer
from ..precision import compute_dtype_of, matmul


class TreeCarry(NamedTuple):
    """The state of tree nodes: hidden output ``h`` and memory cell ``c`` (zeros for a tree-RNN).

    Example:
      >>> import jax.numpy as jnp
      >>> TreeCarry(h=jnp.zeros((3, 8)), c=jnp.zeros((3, 8))).h.shape
      (3, 8)
    """

    h: jax.Array  # [..., hidden]
    c: jax.Array  # [..., hidden]


class TreeCell(NamedTuple):
    """A tree cell: how leaves read their input and how a node combines its children.

    It keeps the model contract (``funcnet.core``): ``init`` and ``apply`` are a ``Model``'s, one
    step of the recursion for ``N`` nodes at once, and ``leaf``/``node`` are the two equations that
    step is made of, which ``tree`` calls separately (leaves first, then one ``node`` per scan step).

    Attributes:
      init: ``(key, x, children=None, child_mask=None) -> (params, state)``; ``x: [N, F]`` leaf
        inputs (array or ShapeDtypeStruct); the params depend on ``F`` only.
      leaf: ``(params, x [N, F]) -> TreeCarry [N, H]``.
      node: ``(params, children: TreeCarry [N, K, H], child_mask [N, K]) -> TreeCarry [N, H]``; masked
        children count as absent (zero state).
      hidden: ``H``.
      arity: ``K`` for N-ary cells (children ordered: child ``k`` has its own weights), ``None`` for
        child-sum cells (any number of children, masked).
      name: the cell's type name, used in error messages.
      pre, post: optional, ``node`` split in two for ``tree``'s fast backward pass:
        ``node(params, kids, mask) == post(pre(params, kids), kids)`` for masked ``kids``, where
        ``pre(params, kids)`` holds the matmuls (affine in ``kids.h`` for fixed params, and in the
        params for fixed kids; row-wise) and ``post(z, kids)`` the elementwise rest, without params.
        ``tree`` then saves ``z`` instead of recomputing it and computes the params' gradient in one
        batched call. The built-in cells provide them.
      compute_dtype: the dtype of the cell's matmul operands (``None``: the params' own dtype);
        ``tree`` rounds the weights to it once, before its loop (see ``funcnet.precision``).
      apply: ``(params, state, x, children=None, child_mask=None, *, key=None, train=False) ->
        (TreeCarry [N, H], state)``: ``leaf`` for nodes without children (every node when
        ``children`` is None), ``node`` for the others.

    Example (a two-leaf tree by hand):
      >>> import jax, jax.numpy as jnp
      >>> cell = binary_tree_lstm_cell(4)
      >>> params, _ = cell.init(jax.random.key(0), jnp.ones((2, 3)))
      >>> leaves = cell.leaf(params, jnp.ones((2, 3)))  # [2, H]
      >>> root = cell.node(params, jax.tree.map(lambda a: a[None], leaves), jnp.ones((1, 2)))
      >>> root.h.shape
      (1, 4)
      >>> step, _ = cell.apply(params, {}, jnp.ones((1, 3)), jax.tree.map(lambda a: a[None], leaves), jnp.ones((1, 2)))
      >>> bool(jnp.allclose(step.h, root.h))
      True
    """

    init: Callable[..., Any]
    leaf: Callable[..., Any]
    node: Callable[..., Any]
    hidden: int
    arity: int | None
    name: str = "tree_cell"
    pre: Callable[..., Any] | None = None
    post: Callable[..., Any] | None = None
    compute_dtype: Any = None
    apply: Callable[..., Any] | None = None


def _blocks(initializer: Initializer, key: jax.Array, shape: tuple[int, ...], count: int, dtype: Any) -> jax.Array:
    """``count`` independently initialized ``shape`` blocks concatenated along the last axis."""
    draw = jnp.promote_types(dtype, jnp.float32)  # the orthogonal init's QR has no bfloat16 kernel on CPU
    keys = jax.random.split(key, count)
    return jnp.concatenate([initializer(k, shape, draw) for k in keys], -1).astype(dtype)


def _sigmoid(z: jax.Array) -> jax.Array:
    """The logistic function as ``(1 + tanh(z / 2)) / 2``: the same values (within an ulp), and XLA's CPU
    ``tanh`` is several times cheaper than its ``exp``-and-divide logistic (measured in the tree scan's step)."""
    return 0.5 * jnp.tanh(0.5 * z) + 0.5


def _row(b: jax.Array, like: jax.Array) -> jax.Array:
    """``b: [n]`` reshaped to broadcast explicitly against ``like: [..., n]``."""
    return b.reshape((1,) * (like.ndim - 1) + (-1,))


def _masked(children: TreeCarry, child_mask: jax.Array) -> TreeCarry:
    """Children states with absent children (mask 0) set to exactly zero."""
    keep = child_mask[..., None] > 0
    return TreeCarry(*(jnp.where(keep, a, jnp.zeros_like(a)) for a in children))


def _make_cell(name, hidden, arity, shapes, init_params, leaf, pre, post, dtype, compute_dtype) -> TreeCell:
    """Wraps the equations with input validation; ``shapes(F)`` gives every param's shape."""
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
        raise ValueError(f"{name}: hidden must be a positive int, got {hidden!r}")
    if arity is not None and (not isinstance(arity, int) or arity < 1):
        raise ValueError(f"{name}: arity must be a positive int, got {arity!r}")

    def init(key, x, children=None, child_mask=None):
        del children, child_mask  # the params depend on the input's features only
        check_rank(name, x, 1, what="[N, features]")
        check_floating(name, x)
        return init_params(key, x.shape[-1], dtype or x.dtype), {}

    def check(params, features=None):
        f = features if features is not None else getattr(params.get("w_leaf"), "shape", (None,))[0]
        check_params(name, params, shapes(f))

    def checked_leaf(params, x):
        check_floating(name, x)
        check(params, x.shape[-1])
        return leaf(params, x)

    def checked_node(params, children, child_mask):
        check(params)
        h = children.h
        k = arity if arity is not None else h.shape[-2] if h.ndim >= 2 else None
        if h.ndim < 2 or h.shape[-2:] != (k, hidden) or children.c.shape != h.shape:
            want = f"[N, {arity}, {hidden}]" if arity is not None else f"[N, K, {hidden}]"
            raise ShapeError(name, f"expected children states {want}, got h {describe(h)}, c {describe(children.c)}.")
        if tuple(child_mask.shape) != h.shape[:-1]:
            raise ShapeError(name, f"expected child_mask of shape {h.shape[:-1]}, got {describe(child_mask)}.")
        kids = _masked(children, child_mask)
        return post(pre(params, kids), kids)

    def apply(params, state, x, children=None, child_mask=None, *, key=None, train=False):
        del key, train
        leaves = checked_leaf(params, x)
        if children is None:
            return leaves, state
        if child_mask is None:
            raise ShapeError(name, "children were given without child_mask. Fix: pass child_mask [N, K] (1 = present).")
        nodes = checked_node(params, children, child_mask)
        is_leaf = (jnp.sum(child_mask, axis=-1) == 0)[:, None]  # [N, 1]
        return TreeCarry(*(jnp.where(is_leaf, a, b) for a, b in zip(leaves, nodes, strict=True))), state

    return TreeCell(init, checked_leaf, checked_node, hidden, arity, name, pre, post, compute_dtype, apply)


def binary_tree_lstm_cell(
    hidden: int,
    *,
    arity: int = 2,
    forget_bias: float = 1.0,
    kernel_init: Initializer | None = None,
    recurrent_init: Initializer | None = None,
    dtype: Any = None,
    compute_dtype: Any = None,
) -> TreeCell:
    """The N-ary (binary for ``arity=2``) Tree-LSTM of Tai et al. 2015 (eq. 9-14), children ordered.

    With children states ``h_k, c_k`` (``k < K``, absent children zero) and ``x`` the input of a leaf::

        z = x @ w_leaf + b[:3H]                     (leaf: no children)
        z = concat_k(h_k) @ u + b                   (internal node: no input)
        i, o, g = sigmoid(z_i), sigmoid(z_o), tanh(z_g)      f_k = sigmoid(z_f_k)
        c = i * g + sum_k f_k * c_k          h = o * tanh(c)

    Gate blocks in the order ``i, o, g, f_0 .. f_{K-1}``, each ``[.., H]``; every ``[F, H]`` block of
    ``w_leaf`` is drawn with ``kernel_init`` (Glorot uniform) and every ``[H, H]`` block of ``u``
    with ``recurrent_init`` (orthogonal). ``b`` is shared by leaves and nodes, as in the paper; the
    forget blocks start at ``forget_bias``.

    Args:
      hidden: ``H``.
      arity: ``K``, the number of ordered children (2 for binarized parse trees).
      forget_bias: initial value of the forget gates' biases.
      kernel_init: initializer of ``w_leaf``'s blocks.
      recurrent_init: initializer of ``u``'s blocks.
      dtype: params dtype; defaults to the input's.
      compute_dtype: matmul operand dtype, e.g. ``"bfloat16"`` (mixed precision: float32 products,
        params, states and gradients; reverse mode only); ``None``: the params' dtype.

    Returns:
      A TreeCell named ``"binary_tree_lstm"`` with params ``w_leaf: [F, 3H]``, ``u: [K, H, (3+K)H]``
      (``u[k]`` reads child ``k``), ``b: [(3+K)H]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> params, _ = binary_tree_lstm_cell(4).init(jax.random.key(0), jnp.ones((5, 3)))
      >>> {k: v.shape for k, v in params.items()}
      {'w_leaf': (3, 12), 'u': (2, 4, 20), 'b': (20,)}
    """
    kernel_init = kernel_init or initializers.glorot_uniform()
    recurrent_init = recurrent_init or initializers.orthogonal()
    H, K = hidden, arity
    cd = compute_dtype_of("binary_tree_lstm", compute_dtype)

    def shapes(f):
        return {"w_leaf": None if f is None else (f, 3 * H), "u": (K, H, (3 + K) * H), "b": ((3 + K) * H,)}

    def init_params(key, f, dt):
        k_leaf, k_u = jax.random.split(key)
        u = jnp.stack([_blocks(recurrent_init, k, (H, H), 3 + K, dt) for k in jax.random.split(k_u, K)])
        b = jnp.concatenate([jnp.zeros((3 * H,), dt), jnp.full((K * H,), forget_bias, dt)])
        return {"w_leaf": _blocks(kernel_init, k_leaf, (f, H), 3, dt), "u": u, "b": b}

    def leaf(params, x):
        return _lstm_out(matmul(x, params["w_leaf"], cd) + _row(params["b"][: 3 * H], x), None, None)

    def pre(params, kids):
        flat = kids.h.reshape((*kids.h.shape[:-2], K * H))
        return matmul(flat, params["u"].reshape((K * H, -1)), cd) + _row(params["b"], flat)

    def post(z, kids):
        # One split into the 3 + K gate blocks (its transpose is one concatenate, where slices would give
        # a pad per block) and the forget terms added one child at a time (no reduction over K).
        z_i, z_o, z_g, *z_f = jnp.split(z, 3 + K, axis=-1)
        c = _sigmoid(z_i) * jnp.tanh(z_g)
        for k, z_fk in enumerate(z_f):
            c = c + _sigmoid(z_fk) * kids.c[..., k, :]
        return TreeCarry(_sigmoid(z_o) * jnp.tanh(c), c)

    return _make_cell("binary_tree_lstm", H, K, shapes, init_params, leaf, pre, post, dtype, cd)


def _lstm_out(z: jax.Array, f: jax.Array | None, c_kids: jax.Array | None) -> TreeCarry:
    """``c = i*g + sum_k f_k*c_k``, ``h = o*tanh(c)`` from ``z = [z_i | z_o | z_g]`` and forget gates."""
    z_i, z_o, z_g = jnp.split(z, 3, axis=-1)
    c = _sigmoid(z_i) * jnp.tanh(z_g)
    if f is not None:
        c = c + (f * c_kids).sum(-2)
    return TreeCarry(_sigmoid(z_o) * jnp.tanh(c), c)


def child_sum_tree_lstm_cell(
    hidden: int,
    *,
    forget_bias: float = 1.0,
    kernel_init: Initializer | None = None,
    recurrent_init: Initializer | None = None,
    dtype: Any = None,
    compute_dtype: Any = None,
) -> TreeCell:
    """The child-sum Tree-LSTM of Tai et al. 2015 (eq. 2-7): any number of unordered children.

    With the children present (mask 1) ``h_k, c_k`` and ``x`` the input of a leaf::

        z = x @ w_leaf + b[:3H]                     (leaf)
        z = (sum_k h_k) @ u + b[:3H]                (internal node)
        f_k = sigmoid(h_k @ u_f + b[3H:])           (one forget gate per child)
        i, o, g = sigmoid(z_i), sigmoid(z_o), tanh(z_g)
        c = i * g + sum_k f_k * c_k          h = o * tanh(c)

    Args:
      hidden: ``H``.
      forget_bias: initial value of the forget gate's bias ``b[3H:]``.
      kernel_init: initializer of ``w_leaf``'s ``[F, H]`` blocks (Glorot uniform).
      recurrent_init: initializer of the ``[H, H]`` blocks of ``u`` and ``u_f`` (orthogonal).
      dtype: params dtype; defaults to the input's.
      compute_dtype: matmul operand dtype, e.g. ``"bfloat16"`` (mixed precision: float32 products,
        params, states and gradients; reverse mode only); ``None``: the params' dtype.

    Returns:
      A TreeCell named ``"child_sum_tree_lstm"`` (``arity=None``) with params ``w_leaf: [F, 3H]``,
      ``u: [H, 3H]``, ``u_f: [H, H]``, ``b: [4H]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> cell = child_sum_tree_lstm_cell(4)
      >>> params, _ = cell.init(jax.random.key(0), jnp.ones((5, 3)))
      >>> kids = TreeCarry(jnp.ones((1, 3, 4)), jnp.ones((1, 3, 4)))  # one node, up to 3 children
      >>> cell.node(params, kids, jnp.array([[1.0, 1.0, 0.0]])).c.shape
      (1, 4)
    """
    kernel_init = kernel_init or initializers.glorot_uniform()
    recurrent_init = recurrent_init or initializers.orthogonal()
    H = hidden
    cd = compute_dtype_of("child_sum_tree_lstm", compute_dtype)

    def shapes(f):
        return {"w_leaf": None if f is None else (f, 3 * H), "u": (H, 3 * H), "u_f": (H, H), "b": (4 * H,)}

    def init_params(key, f, dt):
        k_leaf, k_u, k_f = jax.random.split(key, 3)
        return {
            "w_leaf": _blocks(kernel_init, k_leaf, (f, H), 3, dt),
            "u": _blocks(recurrent_init, k_u, (H, H), 3, dt),
            "u_f": _blocks(recurrent_init, k_f, (H, H), 1, dt),
            "b": jnp.concatenate([jnp.zeros((3 * H,), dt), jnp.full((H,), forget_bias, dt)]),
        }

    def leaf(params, x):
        return _lstm_out(matmul(x, params["w_leaf"], cd) + _row(params["b"][: 3 * H], x), None, None)

    def pre(params, kids):
        h_sum = kids.h.sum(-2)
        z = matmul(h_sum, params["u"], cd) + _row(params["b"][: 3 * H], h_sum)
        return z, matmul(kids.h, params["u_f"], cd) + _row(params["b"][3 * H :], kids.h)

    def post(z, kids):
        z, z_f = z
        return _lstm_out(z, _sigmoid(z_f), kids.c)  # absent children have c_k = 0, so their f_k drops out

    return _make_cell("child_sum_tree_lstm", H, None, shapes, init_params, leaf, pre, post, dtype, cd)


def tree_rnn_cell(
    hidden: int,
    *,
    arity: int = 2,
    activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
    kernel_init: Initializer | None = None,
    recurrent_init: Initializer | None = None,
    dtype: Any = None,
    compute_dtype: Any = None,
) -> TreeCell:
    """The plain recursive network (Socher et al. 2011): ``h = act(x @ w_leaf + sum_k h_k @ u[k] + b)``.

    Leaves read only ``x``, internal nodes only their ``K`` ordered children; ``c`` is always zero.

    Args:
      hidden: ``H``.
      arity: ``K``, the number of ordered children.
      activation: the nonlinearity (``tanh``).
      kernel_init: initializer of ``w_leaf: [F, H]`` (Glorot uniform).
      recurrent_init: initializer of each ``u[k]: [H, H]`` (orthogonal).
      dtype: params dtype; defaults to the input's.
      compute_dtype: matmul operand dtype, e.g. ``"bfloat16"`` (mixed precision: float32 products,
        params, states and gradients; reverse mode only); ``None``: the params' dtype.

    Returns:
      A TreeCell named ``"tree_rnn"`` with params ``w_leaf: [F, H]``, ``u: [K, H, H]``, ``b: [H]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> cell = tree_rnn_cell(4)
      >>> params, _ = cell.init(jax.random.key(0), jnp.ones((5, 3)))
      >>> leaves = cell.leaf(params, jnp.ones((5, 3)))
      >>> leaves.h.shape, bool((leaves.c == 0).all())
      ((5, 4), True)
    """
    kernel_init = kernel_init or initializers.glorot_uniform()
    recurrent_init = recurrent_init or initializers.orthogonal()
    H, K = hidden, arity
    cd = compute_dtype_of("tree_rnn", compute_dtype)

    def shapes(f):
        return {"w_leaf": None if f is None else (f, H), "u": (K, H, H), "b": (H,)}

    def init_params(key, f, dt):
        k_leaf, k_u = jax.random.split(key)
        u = jnp.stack([_blocks(recurrent_init, k, (H, H), 1, dt) for k in jax.random.split(k_u, K)])
        return {"w_leaf": _blocks(kernel_init, k_leaf, (f, H), 1, dt), "u": u, "b": jnp.zeros((H,), dt)}

    def leaf(params, x):
        h = activation(matmul(x, params["w_leaf"], cd) + _row(params["b"], x))
        return TreeCarry(h, jnp.zeros_like(h))

    def pre(params, kids):
        flat = kids.h.reshape((*kids.h.shape[:-2], K * H))
        return matmul(flat, params["u"].reshape((K * H, H)), cd) + _row(params["b"], flat)

    def post(z, kids):
        del kids
        h = activation(z)
        return TreeCarry(h, jnp.zeros_like(h))

    return _make_cell("tree_rnn", H, K, shapes, init_params, leaf, pre, post, dtype, cd)
