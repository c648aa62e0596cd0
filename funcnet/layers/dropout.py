"""Dropout: zero each entry with probability ``rate`` during training, scale the rest by 1/(1-rate)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from ..core import Model
from ..errors import KeyMissingError, ParamsError, check_array
from ._sharding import sharding_like


def dropout(rate: float, *, broadcast_axes: Sequence[int] = ()) -> Model:
    """Inverted dropout; ``rate`` is the probability of DROPPING an entry.

    Active only when ``train=True``, which needs a ``key``; at evaluation it is the identity, so
    the expected value of every output is the same in both modes.

    Args:
      rate: drop probability in [0, 1).
      broadcast_axes: axes along which one mask is shared (e.g. ``(1,)`` on ``[batch, time,
        features]`` drops the same features at every time step: variational dropout).

    Raises:
      ValueError: ``rate`` outside [0, 1).
      KeyMissingError: ``train=True`` without a ``key``; the message names the layer path.

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> drop = fn.dropout(0.5)
      >>> y, _ = drop.apply({}, {}, jnp.ones(6), key=jax.random.key(0), train=True)
      >>> sorted(set(y.tolist())) in ([0.0, 2.0], [2.0], [0.0])
      True
      >>> drop.apply({}, {}, jnp.ones(2))[0]  # evaluation: identity
      Array([1., 1.], dtype=float32)
    """
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"dropout: rate is the drop probability and must be in [0, 1), got {rate!r}")
    broadcast_axes = tuple(broadcast_axes)

    def init(key, x):
        del key
        check_array("dropout", x)
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        if params or state:
            raise ParamsError("dropout", f"dropout has no params or state, got {sorted(params)} / {sorted(state)}.")
        if not train or rate == 0.0:
            return x, state
        if key is None:
            raise KeyMissingError(
                "dropout",
                "train=True needs a PRNG key and none was given. Fix: call apply(..., key=jax.random.key(seed), "
                "train=True), or train=False for evaluation.",
            )
        mask_shape = tuple(
            1 if i % x.ndim in [a % x.ndim for a in broadcast_axes] else n for i, n in enumerate(x.shape)
        )
        keep = keep_mask(key, rate, x, mask_shape)
        return lax.select(jnp.broadcast_to(keep, x.shape), x / (1.0 - rate), jnp.zeros_like(x)), state

    return Model(init, apply, "dropout")


def keep_mask(key: jax.Array, rate: float, like: jax.Array, shape: Sequence[int] | None = None) -> jax.Array:
    """A boolean mask, True with probability ``1 - rate``, of ``shape`` (default ``like.shape``; it broadcasts
    against ``like``), drawn in ``like``'s sharding (``funcnet.layers._sharding``). Its bits depend on the key
    and the global shape only, not on how the array is split across devices.

    >>> import jax, jax.numpy as jnp
    >>> keep_mask(jax.random.key(0), 0.5, jnp.ones((4, 3)), (4, 1)).shape
    (4, 1)
    """
    shape = tuple(like.shape if shape is None else shape)
    return jax.random.bernoulli(key, 1.0 - rate, shape, out_sharding=sharding_like(like, shape))
