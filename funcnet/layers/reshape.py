"""Shape-only layers: ``flatten`` and ``reshape``, which keep the leading batch axis."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core import Model, function
from ..errors import ShapeError, check_rank, describe


def flatten() -> Model:
    """Flattens every axis but the first: ``[batch, d1, d2, ...] -> [batch, d1 * d2 * ...]``.

    Example:
      >>> import jax.numpy as jnp, funcnet as fn
      >>> fn.flatten().apply({}, {}, jnp.ones((2, 3, 4)))[0].shape
      (2, 12)
    """
    return function(lambda x: x.reshape(x.shape[0], -1), "flatten", check=lambda x: check_rank("flatten", x, 1))


def reshape(shape: Sequence[int]) -> Model:
    """Reshapes every axis but the first to ``shape`` (one entry may be -1).

    Raises:
      ShapeError: the input's size per example does not fit ``shape``.

    Example:
      >>> import jax.numpy as jnp, funcnet as fn
      >>> fn.reshape((4, -1)).apply({}, {}, jnp.ones((2, 12)))[0].shape
      (2, 4, 3)
    """
    shape = tuple(int(n) for n in shape)
    if sum(n == -1 for n in shape) > 1 or any(n < -1 or n == 0 for n in shape):
        raise ValueError(f"reshape: shape may hold positive sizes and at most one -1, got {shape}")

    def check(x):
        check_rank("reshape", x, 1)
        size, known = int(np.prod(x.shape[1:])), int(np.prod([n for n in shape if n != -1]))
        if (size % known) if -1 in shape else (size != known):
            raise ShapeError(
                "reshape", f"cannot reshape {describe(x)} to (batch, *{shape}): {size} entries per example."
            )

    return function(lambda x: x.reshape(x.shape[0], *shape), "reshape", check=check)
