"""Pooling over channels-last inputs ``[batch, *spatial, channels]``: ``max_pool``, ``avg_pool``, ``global_avg_pool``.

A window given as an int applies to every spatial axis (``input.ndim - 2`` of them); a tuple
fixes the number of spatial axes. The work is done by ``lax.reduce_window``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from ..core import Model, function
from ..errors import DTypeError, ShapeError, check_array, check_floating, check_rank, describe
from ._spatial import Padding, check_spatial_rank, explicit_padding, padding_pairs, sizes


def _pool(
    name: str,
    window: int | Sequence[int],
    strides: int | Sequence[int] | None,
    padding: Padding,
    check_dtype: Callable,
    reduce: Callable,
) -> Model:
    """A parameter-free pooling model; ``reduce(x, window_dims, strides, pads)`` runs over all axes."""
    lengths = {len(v) for v in (window, strides, padding) if isinstance(v, Sequence) and not isinstance(v, str)}
    if len(lengths) > 1:
        raise ValueError(
            f"{name}: window={window!r}, strides={strides!r} and padding={padding!r} give different numbers "
            f"of spatial axes; give one entry per spatial axis in each, or ints that apply to all."
        )
    fixed = lengths.pop() if lengths else None

    def hyper(n):
        dims = sizes(name, window, n, "window")
        steps = dims if strides is None else sizes(name, strides, n, "strides")
        return dims, steps, padding_pairs(name, padding, n)

    hyper(fixed or 1)  # bad hyper-parameters fail at construction

    def prepare(x):
        check_array(name, x)
        if fixed is not None:
            check_spatial_rank(name, x, fixed)
        elif x.ndim < 3:
            fix = "add a batch axis with x[None] for a single example" if x.ndim == 2 else "channels go last"
            raise ShapeError(
                name, f"expected input of rank >= 3 ([batch, *spatial, channels]), got {describe(x)}. Fix: {fix}."
            )
        check_dtype(name, x)
        dims, steps, pads = hyper(x.ndim - 2)
        pads = explicit_padding(name, x, pads, dims, steps)
        return (1, *dims, 1), (1, *steps, 1), ((0, 0), *pads, (0, 0))

    return function(lambda x: reduce(x, *prepare(x)), name, check=prepare)


def _check_real(name: str, x) -> None:
    check_array(name, x)
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise DTypeError(name, f"expected a floating-point or integer input, got {describe(x)}.")


def max_pool(
    window: int | Sequence[int], strides: int | Sequence[int] | None = None, padding: Padding = "VALID"
) -> Model:
    """The maximum over each window of ``[batch, *spatial, channels]``, per channel.

    Padding never wins the maximum (it is -inf). The gradient flows to the maximal entry of each window.

    Args:
      window: window size per spatial axis (an int applies to every spatial axis).
      strides: step per spatial axis; defaults to ``window`` (non-overlapping windows).
      padding: ``"SAME"``, ``"VALID"``, an int (both sides of every spatial axis) or one
        ``(low, high)`` pair per spatial axis.

    Returns:
      A Model without params or state.

    Raises:
      ValueError: at construction, for bad hyper-parameters.
      ShapeError: the input has no spatial axis, the wrong number of them, or one smaller than the window.
      DTypeError: the input is neither floating point nor integer.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcnet.layers.pool import max_pool
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> max_pool(2).apply({}, {}, x)[0][0, :, :, 0]
      Array([[ 5.,  7.],
             [13., 15.]], dtype=float32)
    """

    def reduce(x, dims, steps, pads):
        lowest = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
        return lax.reduce_window(x, np.array(lowest, x.dtype), lax.max, dims, steps, pads)

    return _pool("max_pool", window, strides, padding, _check_real, reduce)


def avg_pool(
    window: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    count_include_pad: bool = True,
) -> Model:
    """The mean over each window of ``[batch, *spatial, channels]``, per channel.

    Args:
      window: window size per spatial axis (an int applies to every spatial axis).
      strides: step per spatial axis; defaults to ``window`` (non-overlapping windows).
      padding: ``"SAME"``, ``"VALID"``, an int (both sides of every spatial axis) or one
        ``(low, high)`` pair per spatial axis.
      count_include_pad: divide by the full window size, counting padding as zeros; with False,
        divide by the number of real (non-padding) entries in each window.

    Returns:
      A Model without params or state.

    Raises:
      ValueError: at construction, for bad hyper-parameters.
      ShapeError: the input has no spatial axis, the wrong number of them, or one smaller than the window.
      DTypeError: the input is not floating point.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcnet.layers.pool import avg_pool
      >>> x = jnp.array([1.0, 2.0, 3.0]).reshape(1, 3, 1)
      >>> avg_pool(2, strides=1, padding="SAME").apply({}, {}, x)[0][0, :, 0]
      Array([1.5, 2.5, 1.5], dtype=float32)
      >>> avg_pool(2, strides=1, padding="SAME", count_include_pad=False).apply({}, {}, x)[0][0, :, 0]
      Array([1.5, 2.5, 3. ], dtype=float32)
    """

    def reduce(x, dims, steps, pads):
        total = lax.reduce_window(x, np.array(0, x.dtype), lax.add, dims, steps, pads)
        if count_include_pad:
            return total / int(np.prod(dims))
        ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
        return total / lax.reduce_window(ones, np.array(0, x.dtype), lax.add, dims, steps, pads)

    return _pool("avg_pool", window, strides, padding, check_floating, reduce)


def global_avg_pool() -> Model:
    """The mean over every spatial axis: ``[batch, *spatial, channels] -> [batch, channels]``.

    Takes the keyword input ``lengths: int [batch]`` for padded sequences ``[batch, time, channels]``:
    the mean over each sequence's first ``lengths[b]`` positions (zeros for an empty sequence), so the
    padding changes nothing.

    Raises:
      ShapeError: the input has no spatial axis (rank below 3), or ``lengths`` is not ``[batch]`` of a
        rank-3 input.
      DTypeError: the input is not floating point, or ``lengths`` is not integer.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcnet.layers.pool import global_avg_pool
      >>> global_avg_pool().apply({}, {}, jnp.ones((2, 5, 5, 3)))[0].shape
      (2, 3)
      >>> xs = jnp.array([[1.0, 3.0, 100.0], [2.0, 4.0, 6.0]])[..., None]  # [batch 2, time 3, channels 1]
      >>> global_avg_pool().apply({}, {}, xs, lengths=jnp.array([2, 3]))[0][:, 0]
      Array([2., 4.], dtype=float32)
    """

    def check(x):
        check_rank("global_avg_pool", x, 3, what="[batch, *spatial, channels]")
        check_floating("global_avg_pool", x)

    def global_avg_pool(x, *, lengths=None):
        if lengths is None:
            return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
        _check_lengths(x, lengths)
        time = x.shape[1]
        valid = jnp.arange(time)[None, :] < lengths[:, None]  # [batch, time]
        total = jnp.sum(jnp.where(valid[..., None], x, jnp.zeros_like(x)), axis=1)  # [batch, channels]
        count = jnp.clip(lengths, 1, time).astype(x.dtype)[:, None]  # [batch, 1]
        return total / count

    return function(global_avg_pool, "global_avg_pool", check=check)


def _check_lengths(x, lengths) -> None:
    check_array("global_avg_pool", lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise DTypeError("global_avg_pool", f"expected integer lengths, got {describe(lengths)}.")
    if x.ndim != 3 or tuple(lengths.shape) != x.shape[:1]:
        raise ShapeError(
            "global_avg_pool",
            f"lengths need sequences [batch, time, channels] and one length per sequence: got input "
            f"{describe(x)}, lengths {describe(lengths)}. Fix: lengths of shape ({x.shape[0]},) for a rank-3 input.",
        )
