"""funcnet.precision: bfloat16 matmul operands, float32 products and gradients, checked against NumPy."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet.precision import compute_dtype_of, matmul, round_weights


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def rounded(a) -> np.ndarray:
    """``a`` rounded to bfloat16 (round to nearest even), as float64 for the reference products."""
    return np.asarray(jnp.asarray(a).astype(jnp.bfloat16), np.float64)


# float32 products of exactly representable bfloat16 operands: each of the F <= 64 terms is exact in
# float32 (8 x 8 significant bits), so the only error is the float32 accumulation, <= F * 2^-24 relative
# to the sum of |terms| (~4e-6 for F = 64; observed <= 1e-7). Unrounded operands would be off by ~1e-3.
EXACT = {"rtol": 1e-5, "atol": 1e-5}
# Against the float32 product: both operands are off by <= 2^-9 relative, so each term by <= ~2^-8, and
# random-sign errors partly cancel over F terms: ~0.2-0.3% relative overall (observed 2.5e-3).
BF16 = 1e-2


def relative_error(got, want) -> float:
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


def test_compute_dtype_of_names_the_layer_and_accepts_none_spellings():
    assert compute_dtype_of("dense", None) is None
    assert compute_dtype_of("dense", "") is None
    assert compute_dtype_of("dense", "None") is None
    assert compute_dtype_of("dense", "bfloat16") == jnp.bfloat16
    assert compute_dtype_of("dense", jnp.float16) == jnp.float16
    with pytest.raises(
        TypeError, match=r"^dense: compute_dtype must be a floating dtype such as 'bfloat16', got 'int8'$"
    ):
        compute_dtype_of("dense", "int8")
    with pytest.raises(TypeError, match=r"^lstm: compute_dtype must be a floating dtype .*got 'bf16x'$"):
        compute_dtype_of("lstm", "bf16x")
    with pytest.raises(TypeError, match=r"^lstm: compute_dtype must be a floating dtype .*got 3$"):
        compute_dtype_of("lstm", 3)


@pytest.mark.parametrize("a_shape", [(6, 64), (2, 3, 64)], ids=["2d", "3d"])
def test_bfloat16_product_and_gradients_are_float32_products_of_rounded_operands(a_shape):
    a, w, g = normal(0, a_shape), normal(1, (64, 5)), normal(2, (*a_shape[:-1], 5))
    y, pull = jax.vjp(lambda a, w: matmul(a, w, jnp.bfloat16), a, w)
    d_a, d_w = pull(g)
    assert y.dtype == d_a.dtype == d_w.dtype == jnp.float32
    want = rounded(a) @ rounded(w)
    np.testing.assert_allclose(y, want, **EXACT)
    np.testing.assert_allclose(d_a, rounded(g) @ rounded(w).T, **EXACT)  # the cotangent is rounded too
    rows = rounded(a).reshape(-1, 64).T @ rounded(g).reshape(-1, 5)
    np.testing.assert_allclose(d_w, rows, **EXACT)
    # Close to the float32 product and its gradients, but not equal: something was rounded.
    y32, pull32 = jax.vjp(lambda a, w: a @ w, a, w)
    for got, full in zip((y, d_a, d_w), (y32, *pull32(g)), strict=True):
        assert 1e-5 < relative_error(got, np.asarray(full, np.float64)) < BF16


def test_none_or_the_operands_own_dtype_is_the_plain_product_in_both_modes():
    a, w = normal(3, (4, 8)), normal(4, (8, 3))
    for compute_dtype in (None, jnp.float32):
        assert str(jax.make_jaxpr(lambda a, w, c=compute_dtype: matmul(a, w, c))(a, w)) == str(
            jax.make_jaxpr(lambda a, w: a @ w)(a, w)
        )
        chex.assert_trees_all_equal(
            jax.jvp(lambda w: matmul(a, w, compute_dtype), (w,), (w,)), jax.jvp(lambda w: a @ w, (w,), (w,))
        )
    with pytest.raises(TypeError, match="custom_vjp"):  # mixed products: reverse mode only
        jax.jvp(lambda w: matmul(a, w, jnp.bfloat16), (w,), (w,))


def test_pre_rounded_weights_give_the_same_product_and_float32_gradients_through_the_cast():
    params = {"kernel": normal(5, (8, 3)), "bias": normal(6, (3,)), "steps": jnp.arange(3)}
    low = round_weights(params, jnp.bfloat16)
    assert low["kernel"].dtype == jnp.bfloat16
    assert low["bias"].dtype == jnp.float32 and low["steps"].dtype == jnp.int32  # vectors and ints kept
    assert round_weights(params, None) is params
    x = normal(7, (4, 8))
    chex.assert_trees_all_equal(matmul(x, low["kernel"], jnp.bfloat16), matmul(x, params["kernel"], jnp.bfloat16))

    def loss(kernel):
        return jnp.sum(matmul(x, round_weights({"k": kernel}, jnp.bfloat16)["k"], jnp.bfloat16) ** 2)

    assert jax.grad(loss)(params["kernel"]).dtype == jnp.float32
