"""Mixed precision for matmuls: bfloat16 operands, float32 products, float32 params and gradients.

``matmul(a, w, compute_dtype=jnp.bfloat16)`` is ``a @ w`` with both operands rounded to bfloat16 and
the products accumulated in the result type (``a``'s dtype, float32), as Flax's ``dtype=bfloat16``,
Keras's ``mixed_bfloat16`` and PyTorch's ``autocast`` do for their matmuls. Its backward pass rounds
the cotangent too, so both gradient matmuls also run on bfloat16 operands; the gradients come back in
the params' own dtype (float32). Everything but the matmuls (activations, states, losses, optimizer)
stays in float32. On CPUs with AMX or AVX-512 BF16 (and on GPUs) such matmuls run 2-3x faster; the
results differ from float32 by bfloat16's rounding (8 bits of mantissa, a relative error of ~0.4%).

Layers take ``compute_dtype`` (``None``: plain ``a @ w`` in the operands' own dtype). A layer that
calls ``matmul`` inside a ``lax.scan`` should round its weights once before the loop
(``round_weights``): XLA does not hoist the conversion out of the loop body.

    >>> import jax.numpy as jnp
    >>> a, w = jnp.ones((2, 3)), jnp.full((3, 4), 0.1)
    >>> matmul(a, w, jnp.bfloat16).dtype, bool(jnp.allclose(matmul(a, w, jnp.bfloat16), a @ w, rtol=1e-2))
    (dtype('float32'), True)
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def compute_dtype_of(layer: str, compute_dtype: Any) -> Any:
    """``compute_dtype`` as a NumPy dtype (``None``, ``""`` and ``"none"`` stay ``None``); raises unless floating.

    >>> compute_dtype_of("dense", "bfloat16")
    dtype(bfloat16)
    """
    if compute_dtype is None or (isinstance(compute_dtype, str) and compute_dtype.lower() in ("", "none")):
        return None
    message = f"{layer}: compute_dtype must be a floating dtype such as 'bfloat16', got {compute_dtype!r}"
    try:
        dtype = jnp.dtype(compute_dtype)
    except TypeError as e:
        raise TypeError(message) from e
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(message)
    return dtype


def matmul(a: jax.Array, w: jax.Array, compute_dtype: Any = None) -> jax.Array:
    """``a [..., F] @ w [F, N]``; with ``compute_dtype``, on rounded operands with products in ``a``'s dtype.

    Args:
      a: ``[..., F]``, floating.
      w: ``[F, N]``, floating (may already be in ``compute_dtype``: see ``round_weights``).
      compute_dtype: the operands' dtype for the product (e.g. ``jnp.bfloat16``); ``None``, or the dtype
        both operands already have, gives ``a @ w``.

    Returns:
      ``[..., N]`` in ``a``'s dtype. Reverse-mode differentiable (``jax.grad``, ``jax.vjp``): the
      cotangent is rounded to ``compute_dtype`` and both gradient products accumulate in float32.
      Forward mode (``jax.jvp``) needs plain products (``compute_dtype=None``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> a, w = jnp.ones((2, 3)), jnp.ones((3, 4))
      >>> jax.grad(lambda w: matmul(a, w, jnp.bfloat16).sum())(w).dtype  # float32 gradients
      dtype('float32')
    """
    if compute_dtype is None or jnp.dtype(compute_dtype) == jnp.result_type(a, w):
        return a @ w  # nothing to round: the plain product, differentiable in both modes
    return _mixed(a, w, jnp.dtype(compute_dtype))


def round_weights(params: Any, compute_dtype: Any) -> Any:
    """``params`` with every floating leaf of rank >= 2 (the matmul weights) cast to ``compute_dtype``.

    Vectors (biases) keep their dtype. ``None`` returns ``params`` unchanged.

    >>> import jax.numpy as jnp
    >>> rounded = round_weights({"u": jnp.ones((3, 4)), "b": jnp.ones(4)}, jnp.bfloat16)
    >>> str(rounded["u"].dtype), str(rounded["b"].dtype)
    ('bfloat16', 'float32')
    """
    if compute_dtype is None:
        return params

    def cast(p):
        floating = jnp.issubdtype(jnp.result_type(p), jnp.floating)
        return p.astype(compute_dtype) if floating and jnp.ndim(p) >= 2 else p

    return jax.tree.map(cast, params)


def rounded_dot(a: jax.Array, w: jax.Array, contracting: tuple, dtype: Any, out: Any) -> jax.Array:
    """``lax.dot_general`` of ``a`` and ``w`` rounded to ``dtype`` (no-ops if already), products in ``out``.

    ``contracting``: ``(a's axes, w's axes)``; no batch axes.

    >>> import jax.numpy as jnp
    >>> rounded_dot(jnp.ones((2, 3)), jnp.ones((3, 4)), ((1,), (0,)), jnp.bfloat16, jnp.float32).dtype
    dtype('float32')
    """
    return lax.dot_general(a.astype(dtype), w.astype(dtype), (contracting, ((), ())), preferred_element_type=out)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mixed(a, w, dtype):
    return rounded_dot(a, w, ((a.ndim - 1,), (0,)), dtype, a.dtype)


def _mixed_fwd(a, w, dtype):
    low_a, low_w = a.astype(dtype), w.astype(dtype)
    zeros = (jnp.zeros((0,), a.dtype), jnp.zeros((0,), w.dtype))  # carry the primal dtypes, not the arrays
    return rounded_dot(low_a, low_w, ((a.ndim - 1,), (0,)), dtype, a.dtype), (low_a, low_w, zeros)


def _mixed_bwd(dtype, residuals, g):
    low_a, low_w, (a_like, w_like) = residuals
    low_g = g.astype(dtype)
    d_a = rounded_dot(low_g, low_w, ((g.ndim - 1,), (1,)), dtype, jnp.float32)
    # Contracted over a leading unit axis too: XLA's CPU backend ran a 2-D [M, F]^T @ [M, N] bfloat16
    # product several times slower than the same product with a 3-D [1, M, F] operand (a one-off probe,
    # jax 0.10.2; see experiments/results/treelstm.md).
    flat_a, flat_g = low_a.reshape(1, -1, low_a.shape[-1]), low_g.reshape(1, -1, low_g.shape[-1])
    d_w = rounded_dot(flat_a, flat_g, ((0, 1), (0, 1)), dtype, jnp.float32)
    return d_a.astype(a_like.dtype), d_w.astype(w_like.dtype)


_mixed.defvjp(_mixed_fwd, _mixed_bwd)
