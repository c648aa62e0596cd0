"""Activations, flatten and reshape."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn

X = jnp.linspace(-3.0, 3.0, 12).reshape(3, 4)


@pytest.mark.parametrize(
    "factory, reference",
    [
        (fn.relu, lambda x: np.maximum(x, 0)),
        (fn.tanh, np.tanh),
        (fn.sigmoid, lambda x: 1 / (1 + np.exp(-x))),
        (fn.softplus, lambda x: np.log1p(np.exp(x))),
        (lambda: fn.leaky_relu(0.2), lambda x: np.where(x >= 0, x, 0.2 * x)),
        (fn.elu, lambda x: np.where(x > 0, x, np.expm1(x))),
        (fn.silu, lambda x: x / (1 + np.exp(-x))),
        (fn.softmax, lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)),
        (fn.log_softmax, lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))),
    ],
)
def test_activation_matches_numpy(factory, reference):
    model = factory()
    params, state = model.init(jax.random.key(0), X)
    assert params == {} and state == {}
    np.testing.assert_allclose(model.apply(params, state, X)[0], reference(np.asarray(X)), rtol=1e-5, atol=1e-6)


def test_gelu_exact_and_approximate_are_close_but_different():
    exact = fn.gelu(approximate=False).apply({}, {}, X)[0]
    approx = fn.gelu().apply({}, {}, X)[0]
    np.testing.assert_allclose(exact, approx, atol=1e-2)
    assert not np.array_equal(exact, approx)


def test_flatten_and_reshape():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(fn.flatten().apply({}, {}, x)[0], np.arange(24.0).reshape(2, 12))
    np.testing.assert_array_equal(fn.reshape((4, 3)).apply({}, {}, x)[0], np.arange(24.0).reshape(2, 4, 3))


def test_reshape_errors():
    with pytest.raises(
        fn.ShapeError, match=r"at reshape: cannot reshape \(2, 3, 4\) float32 to \(batch, \*\(5, -1\)\)"
    ):
        fn.reshape((5, -1)).apply({}, {}, jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="at most one -1"):
        fn.reshape((-1, -1))
    with pytest.raises(fn.ShapeError, match=r"at flatten: expected input of rank >= 1"):
        fn.flatten().init(jax.random.key(0), jnp.float32(0))
