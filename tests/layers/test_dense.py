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


def test_bfloat16_compute_dtype_rounds_the_matmul_operands_only():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 7, 16)), jnp.float32)
    layer, plain = fn.dense(5, compute_dtype="bfloat16"), fn.dense(5)
    params, state = layer.init(jax.random.key(0), x)
    params["bias"] = jnp.arange(5.0)
    assert params["kernel"].dtype == jnp.float32  # params stay float32

    def rounded(a):
        return np.asarray(a.astype(jnp.bfloat16), np.float64)

    def pulled_back(model):
        out, vjp = jax.vjp(lambda p, x: model.apply(p, state, x)[0], params, x)
        return out, vjp(jnp.ones_like(out))

    (out, (d_params, d_x)), (out32, (d_params32, d_x32)) = pulled_back(layer), pulled_back(plain)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((out, d_params, d_x)))
    # float32 sums of 16 exact products of bfloat16 values: float32 accumulation error only (<= 1e-6 relative).
    want = np.einsum("bti,io->bto", rounded(x), rounded(params["kernel"])) + np.arange(5.0)
    chex.assert_trees_all_close(out, want, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(d_params["kernel"], rounded(x).sum((0, 1))[:, None].repeat(5, 1), rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_equal(d_params["bias"], d_params32["bias"])  # the bias is added in float32
    # Against float32: operands off by <= 2^-9 relative each; observed ~2e-3 relative, bounded by 1e-2.
    for got, full in ((out, out32), (d_params["kernel"], d_params32["kernel"]), (d_x, d_x32)):
        assert 1e-5 < float(jnp.linalg.norm(got - full) / jnp.linalg.norm(full)) < 1e-2


def test_compute_dtype_none_is_the_plain_product_and_bad_ones_are_type_errors():
    x = jnp.ones((3, 4))
    params, state = fn.dense(2).init(jax.random.key(0), x)
    plain = jax.make_jaxpr(lambda p: fn.dense(2).apply(p, state, x))(params)
    for compute_dtype in (None, "", "float32"):
        same = jax.make_jaxpr(lambda p, c=compute_dtype: fn.dense(2, compute_dtype=c).apply(p, state, x))(params)
        assert str(same) == str(plain)
    with pytest.raises(
        TypeError, match=r"dense: compute_dtype must be a floating dtype such as 'bfloat16', got 'int8'"
    ):
        fn.dense(2, compute_dtype="int8")
