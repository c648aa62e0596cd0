"""Tests for multi-head attention: a NumPy reference, mask semantics, dropout, gradients, transforms, errors."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import funcnet as fn
from funcnet.errors import DTypeError, KeyMissingError, ParamsError, ShapeError
from funcnet.layers.attention import causal_mask, combine_masks, multi_head_attention, padding_mask

# float32 layer vs float64 NumPy reference on O(1) values with feature sizes <= 8: observed
# differences are ~1e-7, so 1e-5 leaves room without hiding a wrong formula.
TOL = {"rtol": 1e-5, "atol": 1e-5}


def reference_attention(params, query, context, mask, num_heads):
    """Multi-head attention with an explicit loop over heads, in float64 NumPy (missing biases count as 0)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    query, context = np.asarray(query, np.float64), np.asarray(context, np.float64)
    batch, tq, tk = query.shape[:-2], query.shape[-2], context.shape[-2]
    head_dim = p["query"]["kernel"].shape[-1]

    def project(x, name, h):
        return x @ p[name]["kernel"][:, h] + (p[name]["bias"][h] if "bias" in p[name] else 0.0)

    out = np.zeros((*batch, tq, p["out"]["kernel"].shape[-1]))
    for h in range(num_heads):
        q, k, v = project(query, "query", h), project(context, "key", h), project(context, "value", h)
        logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(head_dim)  # [batch..., Tq, Tk]
        if mask is not None:
            head_mask = np.broadcast_to(np.asarray(mask), (*batch, num_heads, tq, tk))[..., h, :, :]
            logits = np.where(head_mask, logits, np.finfo(np.float32).min)
        weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
        weights = weights / weights.sum(axis=-1, keepdims=True)
        out += (weights @ v) @ p["out"]["kernel"][h]
    return out + p["out"].get("bias", 0.0)


def random_params(model, seed, *inputs):
    """Params of the shapes init gives (via eval_shape), filled with N(0, 0.5^2) NumPy draws, biases included.

    NumPy draws keep the tests fast (no per-shape compilation of random kernels); ``init`` itself is
    tested in test_init_values and test_init_on_shape_structs.
    """
    shapes, state = jax.eval_shape(model.init, jax.random.key(0), *inputs)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype), shapes)
    return params, state


def normal(seed, shape, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


# --- masks ------------------------------------------------------------------------------


def test_causal_mask_is_lower_triangular():
    mask = causal_mask(4)
    chex.assert_shape(mask, (1, 1, 4, 4))
    assert mask.dtype == jnp.bool_
    np.testing.assert_array_equal(mask[0, 0], np.tril(np.ones((4, 4), bool)))


def test_padding_mask_matches_loop():
    lengths = np.array([[0, 2, 3], [1, 3, 2]])
    mask = padding_mask(jnp.asarray(lengths), 3)
    chex.assert_shape(mask, (2, 3, 1, 1, 3))
    expected = np.array([[[t < n for t in range(3)] for n in row] for row in lengths])
    np.testing.assert_array_equal(mask[..., 0, 0, :], expected)


def test_combine_masks():
    assert combine_masks(None, None) is None
    pad = padding_mask(jnp.array([2, 3]), 3)
    combined = combine_masks(causal_mask(3), None, pad)
    chex.assert_shape(combined, (2, 1, 3, 3))
    np.testing.assert_array_equal(combined, np.tril(np.ones((3, 3), bool)) & np.asarray(pad))
    with pytest.raises(TypeError, match="expected boolean masks"):
        combine_masks(jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="do not broadcast together"):
        combine_masks(causal_mask(3), causal_mask(4))


def test_mask_helper_arguments():
    with pytest.raises(ValueError, match="length must be a positive int"):
        causal_mask(0)
    with pytest.raises(TypeError, match="expected integer lengths"):
        padding_mask(jnp.array([1.0]), 3)


# --- numerics against the reference -----------------------------------------------------


@pytest.mark.parametrize("with_mask", [False, True])
def test_self_attention_matches_reference(with_mask):
    model = multi_head_attention(2)
    apply = jax.jit(model.apply, static_argnames="train")
    x = normal(0, (3, 4, 8))
    mask = jax.random.bernoulli(jax.random.key(1), 0.6, (3, 2, 4, 4)) if with_mask else None
    params, state = random_params(model, 2, x)
    y, new_state = apply(params, state, x, mask=mask)
    assert new_state == {}
    chex.assert_shape(y, (3, 4, 8))
    np.testing.assert_allclose(y, reference_attention(params, x, x, mask, 2), **TOL)


def test_several_batch_axes_and_broadcast_mask():
    model = multi_head_attention(2, qkv_features=6, out_features=5)
    apply = jax.jit(model.apply, static_argnames="train")
    x = normal(0, (2, 3, 4, 4))
    mask = padding_mask(jnp.array([[1, 2, 3], [4, 4, 2]]), 4)  # [2, 3, 1, 1, 4]
    params, state = random_params(model, 1, x)
    y, _ = apply(params, state, x, mask=mask)
    chex.assert_shape(y, (2, 3, 4, 5))
    np.testing.assert_allclose(y, reference_attention(params, x, x, mask, 2), **TOL)


def test_cross_attention_with_different_lengths_and_features():
    model = multi_head_attention(3, qkv_features=6, out_features=7)
    apply = jax.jit(model.apply, static_argnames="train")
    query, context = normal(0, (2, 3, 4)), normal(1, (2, 5, 6))
    mask = padding_mask(jnp.array([5, 2]), 5)
    params, state = random_params(model, 2, query, context)
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {
        "query": {"kernel": (4, 3, 2), "bias": (3, 2)},
        "key": {"kernel": (6, 3, 2), "bias": (3, 2)},
        "value": {"kernel": (6, 3, 2), "bias": (3, 2)},
        "out": {"kernel": (3, 2, 7), "bias": (7,)},
    }
    y, _ = apply(params, state, query, context, mask)
    chex.assert_shape(y, (2, 3, 7))
    np.testing.assert_allclose(y, reference_attention(params, query, context, mask, 3), **TOL)


def test_without_bias_matches_reference():
    model = multi_head_attention(2, use_bias=False)
    apply = jax.jit(model.apply, static_argnames="train")
    x = normal(0, (2, 3, 4))
    params, state = random_params(model, 1, x)
    assert all(set(p) == {"kernel"} for p in params.values())
    y, _ = apply(params, state, x)
    np.testing.assert_allclose(y, reference_attention(params, x, x, None, 2), **TOL)


def test_causal_output_does_not_depend_on_future_tokens():
    model = multi_head_attention(2, causal=True)
    apply = jax.jit(model.apply, static_argnames="train")
    x = normal(0, (2, 5, 4))
    params, state = random_params(model, 1, x)
    y, _ = apply(params, state, x)
    np.testing.assert_allclose(y, reference_attention(params, x, x, causal_mask(5), 2), **TOL)
    for t in range(4):
        future = x.at[:, t + 1 :].set(normal(t + 10, (2, 4 - t, 4)) * 100.0)
        y_future, _ = apply(params, state, future)
        np.testing.assert_array_equal(y_future[:, : t + 1], y[:, : t + 1])  # exactly: weights are exactly 0
        assert not np.allclose(y_future[:, t + 1 :], y[:, t + 1 :])


def test_padded_keys_do_not_affect_outputs():
    model = multi_head_attention(2)
    apply = jax.jit(model.apply, static_argnames="train")
    query, context = normal(0, (2, 3, 4)), normal(1, (2, 5, 4))
    lengths = jnp.array([2, 4])
    mask = padding_mask(lengths, 5)
    params, state = random_params(model, 2, query, context)
    y, _ = apply(params, state, query, context, mask)
    junk = normal(3, (2, 5, 4)) * 100.0
    padded = jnp.where((jnp.arange(5)[None, :] >= lengths[:, None])[..., None], junk, context)
    assert not np.allclose(padded, context)
    y_junk, _ = apply(params, state, query, padded, mask)
    np.testing.assert_array_equal(y_junk, y)
    y_unmasked, _ = apply(params, state, query, padded)
    assert not np.allclose(y_unmasked, y)  # the mask is what hides the junk


def test_fully_masked_row_attends_uniformly():
    model = multi_head_attention(2)
    apply = jax.jit(model.apply, static_argnames="train")
    x = normal(0, (2, 3, 4))
    mask = jnp.ones((2, 1, 3, 3), bool).at[0, 0, 1, :].set(False)
    params, state = random_params(model, 1, x)
    y, _ = apply(params, state, x, mask=mask)
    assert np.isfinite(np.asarray(y)).all()
    np.testing.assert_allclose(y, reference_attention(params, x, x, mask, 2), **TOL)
    # a fully masked row equals a row whose logits are all equal: the mean of the values
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    values = np.einsum("td,dhf->thf", np.asarray(x[0], np.float64), p["value"]["kernel"]) + p["value"]["bias"]
    uniform = np.einsum("hf,hfo->o", values.mean(axis=0), p["out"]["kernel"]) + p["out"]["bias"]
    np.testing.assert_allclose(y[0, 1], uniform, **TOL)
    grads = jax.grad(lambda q: apply(params, state, q, mask=mask)[0].sum())(x)
    assert np.isfinite(np.asarray(grads)).all()


def test_bfloat16_inputs_give_bfloat16_outputs_close_to_float32():
    model = multi_head_attention(2, dtype=jnp.float32)
    apply = jax.jit(model.apply, static_argnames="train")
    x = normal(0, (2, 3, 4))
    params, state = random_params(model, 1, x)
    y32, _ = apply(params, state, x)
    low = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    y16, _ = apply(low, state, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    # bfloat16 has an 8-bit mantissa (relative step 2^-8 ~ 4e-3) and errors add over 4 matmuls.
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32, rtol=5e-2, atol=5e-2)


# --- lengths: self-attention of padded sequences ----------------------------------------


def pad_with_junk(x, lengths, seed):
    """``x [batch..., T, D]`` with every position ``t >= lengths[b]`` replaced by large random values."""
    positions = jnp.arange(x.shape[-2]).reshape((1,) * lengths.ndim + (-1,))
    return jnp.where((positions >= lengths[..., None])[..., None], 100.0 * normal(seed, x.shape), x)


@pytest.mark.parametrize("causal", [False, True])
def test_lengths_mask_the_padded_keys(causal):
    model = multi_head_attention(2, causal=causal)
    apply = jax.jit(model.apply, static_argnames="train")
    x, lengths = normal(0, (3, 5, 4)), jnp.array([5, 2, 3])
    params, state = random_params(model, 1, x)
    y, _ = apply(params, state, x, lengths=lengths)
    mask = combine_masks(padding_mask(lengths, 5), causal_mask(5) if causal else None)
    np.testing.assert_allclose(y, reference_attention(params, x, x, mask, 2), **TOL)
    y_mask, _ = apply(params, state, x, mask=padding_mask(lengths, 5))  # what lengths stands for
    np.testing.assert_array_equal(y_mask, y)
    assert not np.allclose(apply(params, state, x)[0], y)  # and it masks something

    real = np.arange(5)[None, :] < np.asarray(lengths)[:, None]  # [batch, T]
    padded = pad_with_junk(x, lengths, 2)
    y_junk, _ = apply(params, state, padded, lengths=lengths)
    np.testing.assert_array_equal(np.asarray(y_junk)[real], np.asarray(y)[real])  # exactly: weights are exactly 0
    if not causal:  # (causal alone hides later keys from the real queries)
        assert not np.allclose(np.asarray(apply(params, state, padded)[0])[real], np.asarray(y)[real])


def test_lengths_combine_with_mask_and_causal_over_several_batch_axes():
    model = multi_head_attention(2, causal=True)
    apply = jax.jit(model.apply, static_argnames="train")
    x, lengths = normal(0, (2, 3, 4, 4)), jnp.array([[1, 4, 3], [2, 4, 0]])  # a 0 length: rows attend uniformly
    mask = jax.random.bernoulli(jax.random.key(1), 0.7, (2, 3, 2, 4, 4))
    shapes, _ = jax.eval_shape(lambda x, lengths: model.init(jax.random.key(0), x, lengths=lengths), x, lengths)
    params, state = random_params(model, 1, x)
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, params)
    y, _ = apply(params, state, x, mask=mask, lengths=lengths)
    combined = combine_masks(mask, padding_mask(lengths, 4), causal_mask(4))
    np.testing.assert_allclose(y, reference_attention(params, x, x, combined, 2), **TOL)


def test_lengths_under_jit_match_eager_and_do_not_retrace():
    model = multi_head_attention(2, causal=True)
    x = normal(0, (2, 4, 4))
    params, state = model.init(jax.random.key(0), x, lengths=jnp.array([4, 2]))
    chex.assert_trees_all_equal(params, model.init(jax.random.key(0), x)[0])  # lengths change no param
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(p, x, lengths):
        return model.apply(p, state, x, lengths=lengths)[0]

    for lengths in (jnp.array([4, 2]), jnp.array([1, 3])):  # new values, same shapes: one trace
        chex.assert_trees_all_close(
            forward(params, x, lengths), model.apply(params, state, x, lengths=lengths)[0], **TOL
        )


# --- compute_dtype: bfloat16 projections, float32 products -------------------------------

# Against the float32 layer: each projection's operands are off by <= 2^-9 relative, its products by
# <= ~2^-8, with random signs partly cancelling; four chained projections (and the softmax between)
# give ~0.4-0.7% relative (the norm of the difference over the norm of the result). 2e-2 leaves room;
# above 1e-5 shows that something was rounded.
BF16 = 2e-2


def rounded(a):
    """``a`` rounded to bfloat16 by hand, back in float32 (exact: bfloat16 is a truncated float32)."""
    return a.astype(jnp.bfloat16).astype(jnp.float32)


@jax.custom_vjp
def rounded_product(a, w):
    """``a [..., F] @ w [F, N]`` of operands rounded by hand, in float32; the backward rounds the cotangent too."""
    return jnp.matmul(rounded(a), rounded(w), precision="highest")


def _rounded_product_fwd(a, w):
    return rounded_product(a, w), (a, w)


def _rounded_product_bwd(residuals, g):
    a, w = (rounded(r) for r in residuals)
    d_a = jnp.matmul(rounded(g), w.T, precision="highest")
    d_w = jnp.matmul(a.reshape(-1, a.shape[-1]).T, rounded(g).reshape(-1, g.shape[-1]), precision="highest")
    return d_a, d_w


rounded_product.defvjp(_rounded_product_fwd, _rounded_product_bwd)


def rounded_attention(params, x):
    """Self-attention, float32 but for the four projections' operands, rounded to bfloat16 by hand."""

    def project(x, p):
        kernel = p["kernel"]
        flat = rounded_product(x, kernel.reshape(kernel.shape[0], -1))
        return flat.reshape(*x.shape[:-1], *kernel.shape[1:]) + p["bias"][None, None]

    q, k, v = (project(x, params[name]) for name in ("query", "key", "value"))
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k, precision="highest") / np.sqrt(q.shape[-1])
    heads = jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(logits, axis=-1), v, precision="highest")
    out = params["out"]["kernel"]
    y = rounded_product(heads.reshape(*heads.shape[:-2], -1), out.reshape(-1, out.shape[-1]))
    return y + params["out"]["bias"][None, None]


def relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_bfloat16_compute_dtype_is_float32_products_of_rounded_operands():
    mixed, full = multi_head_attention(2, compute_dtype="bfloat16"), multi_head_attention(2)
    x = normal(0, (3, 5, 8))
    params, state = random_params(full, 1, x)
    g = normal(2, (3, 5, 8))
    y, pull = jax.vjp(jax.jit(lambda p, x: mixed.apply(p, state, x)[0]), params, x)
    grads = pull(g)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((y, grads)))
    # Tight: the same float32 computation on operands rounded by hand. Only the float32 sums' order differs
    # (relative ~1e-7 on O(1) values), which bfloat16 rounding of the out projection's input can turn into one
    # bfloat16 step (4e-3) on an element only when a value lies within ~1e-7 of a rounding boundary.
    want, pull_rounded = jax.vjp(rounded_attention, params, x)
    chex.assert_trees_all_close((y, grads), (want, pull_rounded(g)), rtol=1e-5, atol=1e-5)
    # Close to the float32 layer, but not equal: something was rounded.
    y32, pull32 = jax.vjp(lambda p, x: full.apply(p, state, x)[0], params, x)
    grads32 = pull32(g)
    (d_params, d_x), (d_params32, d_x32) = grads, grads32
    kernels = [(d_params[name]["kernel"], d_params32[name]["kernel"]) for name in ("query", "key", "value", "out")]
    for got, full_precision in [(y, y32), (d_x, d_x32), *kernels]:
        assert 1e-5 < relative_error(got, full_precision) < BF16
    for name in ("query", "value"):
        assert relative_error(d_params[name]["bias"], d_params32[name]["bias"]) < BF16
    np.testing.assert_array_equal(d_params["out"]["bias"], d_params32["out"]["bias"])  # sums g: nothing rounded
    # (The key bias's gradient is zero but for rounding: the softmax ignores the q . bias_k it adds to a row.)
    # bfloat16 params keep their dtype in the gradients; the output stays in the inputs' float32.
    low = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    y_low, pull_low = jax.vjp(lambda p: mixed.apply(p, state, x)[0], low)
    assert y_low.dtype == jnp.float32
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(pull_low(g)))


# --- dropout ----------------------------------------------------------------------------


def test_dropout_is_deterministic_per_key_and_identity_in_eval():
    model = multi_head_attention(2, dropout_rate=0.5)
    apply = jax.jit(model.apply, static_argnames="train")
    x = normal(0, (2, 4, 4))
    params, state = random_params(model, 1, x)
    y_eval, _ = apply(params, state, x)
    np.testing.assert_allclose(y_eval, reference_attention(params, x, x, None, 2), **TOL)
    y_eval_key, _ = apply(params, state, x, key=jax.random.key(3))
    np.testing.assert_array_equal(y_eval_key, y_eval)
    y_a, _ = apply(params, state, x, key=jax.random.key(3), train=True)
    y_b, _ = apply(params, state, x, key=jax.random.key(3), train=True)
    y_c, _ = apply(params, state, x, key=jax.random.key(4), train=True)
    np.testing.assert_array_equal(y_a, y_b)
    assert not np.allclose(y_a, y_eval)
    assert not np.allclose(y_a, y_c)


def test_dropout_is_unbiased():
    model = multi_head_attention(2, dropout_rate=0.5)
    apply = jax.jit(model.apply, static_argnames="train")
    x = normal(0, (1, 3, 4))
    params, state = random_params(model, 1, x)
    y_eval, _ = apply(params, state, x)
    keys = jax.random.split(jax.random.key(2), 4000)
    samples = jax.vmap(lambda k: apply(params, state, x, key=k, train=True)[0])(keys)
    # inverted dropout keeps E[weights] unchanged; allow 5 standard errors of the Monte Carlo mean
    stderr = samples.std(axis=0) / np.sqrt(len(keys))
    assert np.all(np.abs(samples.mean(axis=0) - y_eval) <= 5 * stderr + 1e-6)


def test_dropout_without_key_raises():
    model = multi_head_attention(2, dropout_rate=0.1)
    apply = jax.jit(model.apply, static_argnames="train")
    x = normal(0, (2, 3, 4))
    params, state = random_params(model, 1, x)
    with pytest.raises(KeyMissingError, match=r"at attention: train=True with dropout_rate=0.1 needs a PRNG key"):
        apply(params, state, x, train=True)
    no_dropout = multi_head_attention(2)
    y, _ = jax.jit(no_dropout.apply, static_argnames="train")(params, state, x, train=True)  # rate 0: no key needed
    np.testing.assert_allclose(y, reference_attention(params, x, x, None, 2), **TOL)


# --- gradients and transformations -------------------------------------------------------


def test_gradients_match_finite_differences():
    model = multi_head_attention(2, causal=True)
    with jax.enable_x64(True):
        # float64 so central differences are accurate; tolerance 1e-5 is then far above their error
        query, context = normal(0, (2, 3, 4), jnp.float64), normal(1, (2, 3, 4), jnp.float64)
        mask = padding_mask(jnp.array([3, 2]), 3)
        params, state = random_params(model, 2, query, context)

        def f(p, q, c):
            return model.apply(p, state, q, c, mask)[0]

        check_grads(jax.jit(f), (params, query, context), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_jit_matches_eager():
    model = multi_head_attention(2, causal=True)
    x = normal(0, (2, 4, 4))
    mask = padding_mask(jnp.array([4, 3]), 4)
    params, state = random_params(model, 1, x)
    eager, _ = model.apply(params, state, x, mask=mask)
    jitted, _ = jax.jit(model.apply)(params, state, x, mask=mask)
    chex.assert_trees_all_close(jitted, eager, **TOL)


def test_no_retrace_for_new_values():
    model = multi_head_attention(2)
    x = normal(0, (2, 3, 4))
    params, state = random_params(model, 1, x)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(p, q, m):
        return model.apply(p, state, q, mask=m)[0]

    forward(params, x, padding_mask(jnp.array([3, 1]), 3))
    forward(jax.tree.map(lambda a: a + 1.0, params), normal(2, (2, 3, 4)), padding_mask(jnp.array([2, 2]), 3))


def test_vmap_over_examples_equals_batched_apply():
    model = multi_head_attention(2)
    query, context = normal(0, (3, 2, 4)), normal(1, (3, 5, 6))
    mask = padding_mask(jnp.array([5, 1, 3]), 5)
    params, state = random_params(model, 2, query, context)
    batched, _ = jax.jit(model.apply)(params, state, query, context, mask)
    per_example = jax.jit(jax.vmap(lambda q, c, m: model.apply(params, state, q, c, m)[0]))(query, context, mask)
    chex.assert_trees_all_close(per_example, batched, **TOL)


def test_init_values():
    model = multi_head_attention(2, qkv_features=6, out_features=3)
    query, context = normal(0, (2, 3, 4)), normal(1, (2, 5, 8))
    params, state = jax.jit(model.init)(jax.random.key(0), query, context)
    assert state == {}
    for name, fan_in, fan_out in (("query", 4, 6), ("key", 8, 6), ("value", 8, 6), ("out", 6, 3)):
        kernel = params[name]["kernel"]
        assert kernel.dtype == jnp.float32
        # Glorot uniform on the flat [in, H * Dh] / [H * Dh, out] kernel: bounded by sqrt(6 / (in + out))
        assert float(jnp.abs(kernel).max()) <= np.sqrt(6 / (fan_in + fan_out))
        assert float(jnp.abs(kernel).max()) > 0.1 * np.sqrt(6 / (fan_in + fan_out))
        np.testing.assert_array_equal(params[name]["bias"], 0.0)
    assert not np.allclose(params["key"]["kernel"], params["value"]["kernel"])  # independent keys
    half, _ = jax.eval_shape(multi_head_attention(2, dtype=jnp.bfloat16).init, jax.random.key(0), query)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(half))


def test_init_on_shape_structs():
    model = multi_head_attention(2, out_features=3)
    spec = jax.ShapeDtypeStruct((8, 5, 4), jnp.float32)
    params, state = jax.eval_shape(model.init, jax.random.key(0), spec)
    assert state == {}
    assert params["out"]["kernel"].shape == (2, 2, 3)
    assert fn.param_count(params) == 3 * (4 * 4 + 4) + 4 * 3 + 3


# --- errors -----------------------------------------------------------------------------


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        multi_head_attention(0)
    with pytest.raises(ValueError, match=r"qkv_features \(5\) must be divisible by num_heads \(2\)"):
        multi_head_attention(2, qkv_features=5)
    with pytest.raises(ValueError, match=r"dropout_rate must be in \[0, 1\)"):
        multi_head_attention(2, dropout_rate=1.0)


def test_default_features_not_divisible_by_heads():
    x = jnp.ones((2, 3, 4))
    expected = r"at attention: qkv_features defaults to the query's last axis, 4, .*num_heads=3"
    with pytest.raises(ShapeError, match=expected):
        multi_head_attention(3).init(jax.random.key(0), x)
    model = fn.serial(attn=multi_head_attention(3))
    with pytest.raises(ShapeError, match=r"^at attn: qkv_features"):
        model.init(jax.random.key(0), x)


def test_input_errors():
    model = multi_head_attention(2)
    x = jnp.ones((2, 3, 4))
    params, state = random_params(model, 0, x, jnp.ones((2, 5, 6)))
    with pytest.raises(DTypeError, match="query: expected a floating-point input, got \\(2, 3, 4\\) int32"):
        model.apply(params, state, x.astype(jnp.int32), jnp.ones((2, 5, 6)))
    with pytest.raises(ShapeError, match=r"query: expected input of rank >= 2 .*got \(4,\) float32"):
        model.init(jax.random.key(0), jnp.ones(4))
    with pytest.raises(ShapeError, match=r"context: expected last axis 6, got \(2, 5, 4\) float32"):
        model.apply(params, state, x, jnp.ones((2, 5, 4)))
    with pytest.raises(ShapeError, match="query and context must have the same batch axes"):
        model.apply(params, state, x, jnp.ones((3, 5, 6)))
    with pytest.raises(ShapeError, match=r"causal=True needs as many queries as keys"):
        multi_head_attention(2, causal=True).init(jax.random.key(0), x, jnp.ones((2, 5, 6)))


def test_mask_errors():
    model = multi_head_attention(2)
    x = jnp.ones((2, 3, 4))
    params, state = random_params(model, 0, x)
    with pytest.raises(DTypeError, match=r"mask: expected a boolean mask \(True = attend\), got \(2, 1, 1, 3\) int32"):
        model.apply(params, state, x, mask=padding_mask(jnp.array([1, 2]), 3).astype(jnp.int32))
    bad = padding_mask(jnp.array([1, 2]), 5)
    expected = re.escape("broadcastable to [batch..., heads, Tq, Tk] = (2, 2, 3, 3), got (2, 1, 1, 5) bool")
    with pytest.raises(ShapeError, match=expected):
        model.apply(params, state, x, mask=bad)
    with pytest.raises(ShapeError, match=re.escape("got (1, 2, 1, 1, 3) bool")):
        model.apply(params, state, x, mask=jnp.ones((1, 2, 1, 1, 3), bool))  # too many axes


def test_params_errors():
    model = multi_head_attention(2)
    x = jnp.ones((2, 3, 4))
    params, state = random_params(model, 0, x)
    dense_params, _ = random_params(fn.dense(4), 0, x)
    with pytest.raises(ParamsError, match="params do not belong to this model"):
        model.apply(dense_params, state, x)
    four_heads, _ = random_params(multi_head_attention(4), 0, x)
    with pytest.raises(ParamsError, match=r"kernels should be \[in, 2, head_dim\]"):
        model.apply(four_heads, state, x)
    no_bias, _ = random_params(multi_head_attention(2, use_bias=False), 0, x)
    with pytest.raises(ParamsError, match=r"params\['query'\] do not belong to this model: expected keys"):
        model.apply(no_bias, state, x)
    wider, _ = random_params(multi_head_attention(2, out_features=6), 0, x)
    with pytest.raises(ParamsError, match="out_features=5"):
        multi_head_attention(2, out_features=5).apply(wider, state, x)
    with pytest.raises(ParamsError, match="attention has no state"):
        model.apply(params, {"count": jnp.zeros(())}, x)


def test_bad_compute_dtype_names_the_factory():
    expected = r"^multi_head_attention: compute_dtype must be a floating dtype such as 'bfloat16', got 'int32'$"
    with pytest.raises(TypeError, match=expected):
        multi_head_attention(2, compute_dtype="int32")


def test_lengths_errors():
    model = multi_head_attention(2)
    x, context, lengths = jnp.ones((2, 3, 4)), jnp.ones((2, 5, 4)), jnp.array([3, 1])
    params, state = random_params(model, 0, x, context)
    cross = (
        r"^at attention: lengths are those of the self-attended sequence, but an explicit context was given: got "
        r"lengths \(2,\) int32 with query \(2, 3, 4\) float32 and context \(2, 5, 4\) float32\. Fix: for "
        r"cross-attention mask the context's padding with mask=padding_mask\(context_lengths, Tk\), Tk = 5"
    )
    with pytest.raises(ShapeError, match=cross):
        model.init(jax.random.key(0), x, context, lengths=lengths)
    with pytest.raises(ShapeError, match=cross):
        model.apply(params, state, x, context, lengths=lengths)
    dtype = r"^at attention: lengths: expected integer lengths, got \(2,\) float32\. Fix: pass lengths.astype"
    with pytest.raises(DTypeError, match=dtype):
        model.apply(params, state, x, lengths=lengths.astype(jnp.float32))
    shape = re.escape(
        "lengths: expected one length per sequence, shape (2,) (the query's batch axes [batch...] of (2, 3, 4) "
        "float32), got (2, 1) int32. Fix: pass lengths of shape (2,)."
    )
    with pytest.raises(ShapeError, match=shape):
        model.apply(params, state, x, lengths=lengths[:, None])
    with pytest.raises(ShapeError, match=shape):
        model.init(jax.random.key(0), x, lengths=lengths[:, None])
    with pytest.raises(DTypeError, match=r"expected an array, got list"):
        model.apply(params, state, x, lengths=[3, 1])
