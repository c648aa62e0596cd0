"""Initializers: ``(key, shape, dtype) -> Array``, the same signature as ``jax.nn.initializers``.

Fan-in and fan-out follow the ``[..., in, out]`` layout of funcnet kernels (receptive-field axes
first for convolutions), so every factory here works for dense and conv kernels alike.

- ``glorot_uniform`` (Xavier): the default for dense and conv kernels.
- ``he_normal`` / ``he_uniform`` (Kaiming): for layers followed by ReLU.
- ``lecun_normal``: for SELU nets.
- ``orthogonal``: for recurrent kernels.

>>> import jax
>>> w = glorot_uniform()(jax.random.key(0), (4, 3))
>>> w.shape, str(w.dtype)
((4, 3), 'float32')
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.nn import initializers as _init

Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]


def glorot_uniform() -> Initializer:
    """Uniform in +-sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010).

    >>> import jax
    >>> float(abs(glorot_uniform()(jax.random.key(0), (100, 100))).max()) <= (6 / 200) ** 0.5
    True
    """
    return _init.glorot_uniform()


def glorot_normal() -> Initializer:
    """Truncated normal with variance 2 / (fan_in + fan_out).

    >>> import jax
    >>> glorot_normal()(jax.random.key(0), (3, 2)).shape
    (3, 2)
    """
    return _init.glorot_normal()


def he_normal() -> Initializer:
    """Truncated normal with variance 2 / fan_in (He et al. 2015), for ReLU layers.

    >>> import jax
    >>> w = he_normal()(jax.random.key(0), (1000, 500))
    >>> round(float(w.var() * 1000), 1)
    2.0
    """
    return _init.he_normal()


def he_uniform() -> Initializer:
    """Uniform in +-sqrt(6 / fan_in), for ReLU layers.

    >>> import jax
    >>> he_uniform()(jax.random.key(0), (3, 2)).shape
    (3, 2)
    """
    return _init.he_uniform()


def lecun_normal() -> Initializer:
    """Truncated normal with variance 1 / fan_in.

    >>> import jax
    >>> lecun_normal()(jax.random.key(0), (3, 2)).shape
    (3, 2)
    """
    return _init.lecun_normal()


def orthogonal(scale: float = 1.0) -> Initializer:
    """A (scaled) random orthogonal matrix over the last two axes; for recurrent kernels.

    >>> import jax, jax.numpy as jnp
    >>> w = orthogonal()(jax.random.key(0), (4, 4))
    >>> bool(jnp.allclose(w @ w.T, jnp.eye(4), atol=1e-5))
    True
    """
    return _init.orthogonal(scale)


def normal(stddev: float = 1e-2) -> Initializer:
    """Normal with mean 0 and the given standard deviation (default for embeddings: 1.0).

    >>> import jax
    >>> normal(1.0)(jax.random.key(0), (2,)).shape
    (2,)
    """
    return _init.normal(stddev)


def uniform(scale: float = 1e-2) -> Initializer:
    """Uniform in [0, scale).

    >>> import jax
    >>> float(uniform(0.5)(jax.random.key(0), (100,)).max()) < 0.5
    True
    """
    return _init.uniform(scale)


def constant(value: float) -> Initializer:
    """Every entry equal to ``value``.

    >>> import jax
    >>> constant(1.5)(jax.random.key(0), (2,))
    Array([1.5, 1.5], dtype=float32)
    """
    return _init.constant(value)


def zeros() -> Initializer:
    """All zeros (the default for biases).

    >>> import jax
    >>> zeros()(jax.random.key(0), (2,))
    Array([0., 0.], dtype=float32)
    """
    return _init.zeros


def ones() -> Initializer:
    """All ones (the default for normalization scales).

    >>> import jax
    >>> ones()(jax.random.key(0), (2,))
    Array([1., 1.], dtype=float32)
    """
    return _init.ones
