"""Activations as parameter-free models, ready to put between layers.

Like every layer they are factories: ``serial(dense(100), relu(), dense(10))``. Any other
elementwise function can be wrapped with ``function(f)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..core import Model, function


def relu() -> Model:
    """``max(x, 0)``.

    >>> import jax.numpy as jnp, funcnet as fn
    >>> fn.relu().apply({}, {}, jnp.array([-1.0, 2.0]))[0]
    Array([0., 2.], dtype=float32)
    """
    return function(jax.nn.relu, "relu")


def gelu(approximate: bool = True) -> Model:
    """Gaussian error linear unit; ``approximate`` uses the tanh form.

    >>> import jax.numpy as jnp, funcnet as fn
    >>> fn.gelu().apply({}, {}, jnp.zeros(2))[0]
    Array([0., 0.], dtype=float32)
    """
    return function(lambda x: jax.nn.gelu(x, approximate=approximate), "gelu")


def silu() -> Model:
    """``x * sigmoid(x)``, also called swish.

    >>> import jax.numpy as jnp, funcnet as fn
    >>> fn.silu().apply({}, {}, jnp.zeros(1))[0]
    Array([0.], dtype=float32)
    """
    return function(jax.nn.silu, "silu")


def elu(alpha: float = 1.0) -> Model:
    """``x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` otherwise.

    >>> import jax.numpy as jnp, funcnet as fn
    >>> fn.elu().apply({}, {}, jnp.array([1.0]))[0]
    Array([1.], dtype=float32)
    """
    return function(lambda x: jax.nn.elu(x, alpha), "elu")


def leaky_relu(negative_slope: float = 0.01) -> Model:
    """``x`` for ``x >= 0``, ``negative_slope * x`` otherwise.

    >>> import jax.numpy as jnp, funcnet as fn
    >>> fn.leaky_relu(0.5).apply({}, {}, jnp.array([-2.0, 2.0]))[0]
    Array([-1.,  2.], dtype=float32)
    """
    return function(lambda x: jax.nn.leaky_relu(x, negative_slope), "leaky_relu")


def softplus() -> Model:
    """``log(1 + exp(x))``.

    >>> import jax.numpy as jnp, funcnet as fn
    >>> fn.softplus().apply({}, {}, jnp.zeros(1))[0]
    Array([0.6931472], dtype=float32)
    """
    return function(jax.nn.softplus, "softplus")


def sigmoid() -> Model:
    """``1 / (1 + exp(-x))``.

    >>> import jax.numpy as jnp, funcnet as fn
    >>> fn.sigmoid().apply({}, {}, jnp.zeros(1))[0]
    Array([0.5], dtype=float32)
    """
    return function(jax.nn.sigmoid, "sigmoid")


def tanh() -> Model:
    """Hyperbolic tangent.

    >>> import jax.numpy as jnp, funcnet as fn
    >>> fn.tanh().apply({}, {}, jnp.zeros(1))[0]
    Array([0.], dtype=float32)
    """
    return function(jnp.tanh, "tanh")


def softmax(axis: int = -1) -> Model:
    """Softmax over ``axis`` (the last by default).

    >>> import jax.numpy as jnp, funcnet as fn
    >>> fn.softmax().apply({}, {}, jnp.zeros(2))[0]
    Array([0.5, 0.5], dtype=float32)
    """
    return function(lambda x: jax.nn.softmax(x, axis=axis), "softmax")


def log_softmax(axis: int = -1) -> Model:
    """Log-softmax over ``axis`` (the last by default).

    >>> import jax.numpy as jnp, funcnet as fn
    >>> fn.log_softmax().apply({}, {}, jnp.zeros(2))[0]
    Array([-0.6931472, -0.6931472], dtype=float32)
    """
    return function(lambda x: jax.nn.log_softmax(x, axis=axis), "log_softmax")
