"""dense: the equation, initialization statistics, dtypes and errors."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn


def test_dense_is_x_kernel_plus_bias_on_leading_axes():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 10
    params, state = fn.dense(5).init(jax.random.key(0), x)
    params = {
        "kernel": jnp.asarray(np.random.default_rng(0).standard_normal((4, 5)), jnp.float32),
        "bias": jnp.arange(5.0),
    }
    out, _ = fn.dense(5).apply(params, state, x)
    want = np.einsum("bti,io->bto", x, np.asarray(params["kernel"])) + np.arange(5.0)
    chex.assert_trees_all_close(out, want, rtol=1e-5, atol=1e-6)


def test_default_init_is_glorot_uniform_with_zero_bias():
    params, _ = fn.dense(300).init(jax.random.key(0), jnp.ones((1, 200)))
    limit = np.sqrt(6 / (200 + 300))
    kernel = np.asarray(params["kernel"])
    assert kernel.max() <= limit and kernel.min() >= -limit
    # Uniform(-l, l) has variance l^2 / 3; 60,000 draws pin the sample variance within ~1%.
    assert abs(kernel.var() / (limit**2 / 3) - 1) < 0.03
    np.testing.assert_array_equal(params["bias"], np.zeros(300))


def test_he_init_for_relu_layers():
    params, _ = fn.dense(500, kernel_init=fn.initializers.he_normal()).init(jax.random.key(0), jnp.ones((1, 1000)))
    # He: variance 2 / fan_in (truncated normal rescaled to keep it); 500k draws, 3% slack.
    assert abs(float(params["kernel"].var()) * 1000 / 2 - 1) < 0.03


def test_params_follow_input_dtype_or_explicit_dtype():
    params, _ = fn.dense(2).init(jax.random.key(0), jnp.ones((1, 3), jnp.bfloat16))
    assert params["kernel"].dtype == jnp.bfloat16
    params, _ = fn.dense(2, dtype=jnp.float32).init(jax.random.key(0), jnp.ones((1, 3), jnp.bfloat16))
    assert params["kernel"].dtype == jnp.float32


def test_use_bias_false_has_no_bias():
    params, _ = fn.dense(2, use_bias=False).init(jax.random.key(0), jnp.ones((1, 3)))
    assert list(params) == ["kernel"]


def test_dense_errors():
    with pytest.raises(ValueError, match="features must be a positive int, got 0"):
        fn.dense(0)
    layer = fn.dense(4)
    params, state = layer.init(jax.random.key(0), jnp.ones((2, 3)))
    with pytest.raises(fn.ShapeError, match=r"at dense: expected last axis 3, got \(2, 7\) float32"):
        layer.apply(params, state, jnp.ones((2, 7)))
    with pytest.raises(fn.DTypeError, match=r"expected a floating-point input, got \(2, 3\) int32.*embedding first"):
        layer.apply(params, state, jnp.ones((2, 3), jnp.int32))
    with pytest.raises(fn.ParamsError, match=r"expected keys \['bias', 'kernel'\], got \['embedding'\]"):
        layer.apply({"embedding": jnp.ones((3, 4))}, state, jnp.ones((2, 3)))
