"""Tests for layer_norm, rms_norm and batch_norm: NumPy references, running statistics, vmap and data parallelism."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from funcnet.errors import DTypeError, ParamsError, ShapeError
from funcnet.layers.dense import dense
from funcnet.layers.norm import batch_norm, layer_norm, rms_norm

# float32 comparisons against float64 NumPy references: a few ulps of the O(1) outputs.
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _normal(seed, shape, loc=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(loc, scale, shape).astype(np.float32)


def _random_affine(model, x, seed=1):
    """Init, then replace every param with random values so scale and bias are exercised."""
    params, state = model.init(jax.random.key(0), x)
    items = enumerate(sorted(params.items()))
    return {name: jnp.asarray(_normal(seed + i, p.shape, 1.0, 0.5)) for i, (name, p) in items}, state


def _np_layer_norm(x, scale, bias, eps):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _np_batch_norm(x, mean, var, scale, bias, eps):
    return (x.astype(np.float64) - mean) / np.sqrt(var + eps) * scale + bias


# --- layer_norm and rms_norm ----------------------------------------------------------------


def test_layer_norm_matches_numpy():
    x = _normal(0, (2, 3, 5), loc=2.0, scale=3.0)
    model = layer_norm(epsilon=1e-3)
    params, state = _random_affine(model, x)
    chex.assert_shape([params["scale"], params["bias"]], (5,))
    y, new_state = model.apply(params, state, x)
    assert new_state == {} and y.dtype == jnp.float32
    ref = _np_layer_norm(x, np.asarray(params["scale"]), np.asarray(params["bias"]), 1e-3)
    chex.assert_trees_all_close(y, ref, **TOL)


def test_layer_norm_without_affine_has_no_params_and_standardizes():
    x = _normal(1, (4, 6), loc=-1.0, scale=5.0)
    model = layer_norm(use_scale=False, use_bias=False)
    params, state = model.init(jax.random.key(0), x)
    assert params == {} and state == {}
    y, _ = model.apply(params, state, x)
    chex.assert_trees_all_close(y, _np_layer_norm(x, 1.0, 0.0, 1e-5), **TOL)


def test_layer_norm_bfloat16_keeps_dtype_and_uses_float32_statistics():
    x = jnp.asarray(_normal(2, (3, 64), loc=4.0, scale=0.5), jnp.bfloat16)
    model = layer_norm()
    params, state = model.init(jax.random.key(0), x)
    assert params["scale"].dtype == jnp.bfloat16
    y, _ = model.apply(params, state, x)
    assert y.dtype == jnp.bfloat16
    # Reference: the same bf16 values normalized in float64. Only the final cast to bf16 may differ:
    # one bf16 rounding is at most 2^-8 relative; bf16 statistics would be off by far more (mean ~4,
    # spacing 2^-6 there, so the centered values would lose most of their bits).
    ref = _np_layer_norm(np.asarray(x.astype(jnp.float32)), 1.0, 0.0, 1e-5)
    chex.assert_trees_all_close(y.astype(jnp.float32), ref, rtol=2**-8, atol=2**-8)


def test_rms_norm_matches_numpy():
    x = _normal(3, (2, 4, 6), scale=2.0)
    model = rms_norm(epsilon=1e-4)
    params, state = _random_affine(model, x)
    assert set(params) == {"scale"}
    y, _ = model.apply(params, state, x)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-4) * np.asarray(params["scale"])
    chex.assert_trees_all_close(y, ref, **TOL)
    plain, _ = rms_norm(use_scale=False).apply({}, {}, x)
    chex.assert_trees_all_close(plain, x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6), **TOL)


def test_layer_norm_gradients():
    # float64 so that the finite differences are accurate at check_grads' default float64 tolerance (1e-5).
    with jax.enable_x64(True):
        x = jnp.asarray(_normal(4, (3, 4)), jnp.float64)
        model = layer_norm()
        params, state = model.init(jax.random.key(0), x)
        params = jax.tree.map(lambda p: p + jnp.asarray(_normal(5, p.shape), jnp.float64), params)
        check_grads(lambda p, x: model.apply(p, state, x)[0], (params, x), order=2, modes=["rev"])


# --- batch_norm: training statistics --------------------------------------------------------


def test_batch_norm_train_output_is_standardized_per_feature():
    x = _normal(6, (8, 3, 3, 4), loc=3.0, scale=2.0)
    model = batch_norm()
    params, state = model.init(jax.random.key(0), x)
    y, _ = model.apply(params, state, x, train=True)
    axes = (0, 1, 2)
    # Mean 0 up to float32 rounding; variance is var / (var + eps) = 1 - eps/var, with var ~ 4: 1 - 2.5e-6.
    chex.assert_trees_all_close(jnp.mean(y, axis=axes), jnp.zeros(4), atol=1e-5)
    chex.assert_trees_all_close(jnp.var(y, axis=axes), jnp.ones(4), atol=1e-5)


def test_batch_norm_train_matches_numpy_and_updates_running_statistics():
    x = _normal(7, (6, 5, 3), loc=1.0, scale=3.0)
    model = batch_norm(momentum=0.8, epsilon=1e-3)
    params, state = _random_affine(model, x)
    state = {"mean": jnp.asarray(_normal(8, (3,))), "var": jnp.asarray(_normal(9, (3,), 2.0, 0.1))}
    y, new_state = model.apply(params, state, x, train=True)
    mean, var = x.astype(np.float64).mean((0, 1)), x.astype(np.float64).var((0, 1))  # biased variance
    ref = _np_batch_norm(x, mean, var, np.asarray(params["scale"]), np.asarray(params["bias"]), 1e-3)
    chex.assert_trees_all_close(y, ref, **TOL)
    chex.assert_trees_all_close(
        new_state,
        {"mean": 0.8 * np.asarray(state["mean"]) + 0.2 * mean, "var": 0.8 * np.asarray(state["var"]) + 0.2 * var},
        **TOL,
    )


def test_batch_norm_running_statistics_converge_to_the_data_distribution():
    steps, batch, features = 100, 512, 4
    data = _normal(10, (steps, batch, features), loc=3.0, scale=2.0)
    model = batch_norm(momentum=0.9)
    params, state = model.init(jax.random.key(0), data[0])

    def step(state, x):
        return model.apply(params, state, x, train=True)[1], None

    state, _ = jax.lax.scan(step, state, data)
    # The running value is sum_k 0.1 * 0.9^k * batch_stat_k plus 0.9^100 ~ 3e-5 of the initial value.
    # Its standard deviation is sqrt(0.1 / 1.9) ~ 0.23 times that of one batch statistic:
    # mean: 2 / sqrt(512) * 0.23 ~ 0.02; variance: sqrt(2 * 2^4 / 512) * 0.23 ~ 0.06. Tolerances are ~5 sigma.
    chex.assert_trees_all_close(state["mean"], jnp.full(features, 3.0), atol=0.1)
    chex.assert_trees_all_close(state["var"], jnp.full(features, 4.0), atol=0.3)


def test_batch_norm_eval_uses_running_statistics_and_keeps_state():
    x = _normal(11, (5, 3), loc=2.0)
    model = batch_norm()
    params, _ = _random_affine(model, x)
    state = {"mean": jnp.array([1.0, -2.0, 0.5]), "var": jnp.array([4.0, 0.25, 9.0])}
    y, new_state = model.apply(params, state, x, train=False)
    scale, bias = np.asarray(params["scale"]), np.asarray(params["bias"])
    ref = (x - np.array([1.0, -2.0, 0.5])) / np.sqrt(np.array([4.0, 0.25, 9.0]) + 1e-5) * scale + bias
    chex.assert_trees_all_close(y, ref, **TOL)
    chex.assert_trees_all_close(new_state, state, rtol=0, atol=0)
    y_train, _ = model.apply(params, state, x, train=True)
    assert not np.allclose(y, y_train, atol=1e-2)  # the two modes really use different statistics


def test_batch_norm_bfloat16_keeps_dtype_with_float32_state():
    x = jnp.asarray(_normal(12, (16, 4), loc=3.0), jnp.bfloat16)
    model = batch_norm()
    params, state = model.init(jax.random.key(0), x)
    assert params["scale"].dtype == jnp.bfloat16 and state["mean"].dtype == jnp.float32
    y, new_state = model.apply(params, state, x, train=True)
    assert y.dtype == jnp.bfloat16 and new_state["var"].dtype == jnp.float32
    # The statistics come from the float32 view of the bf16 values; the output differs only by its bf16 rounding.
    xf = np.asarray(x.astype(jnp.float32), np.float64)
    ref = _np_batch_norm(xf, xf.mean(0), xf.var(0), 1.0, 0.0, 1e-5)
    chex.assert_trees_all_close(y.astype(jnp.float32), ref, rtol=2**-8, atol=2**-8)


def test_batch_norm_gradients_in_train_mode():
    with jax.enable_x64(True):  # float64 finite differences, check_grads' default float64 tolerance (1e-5)
        x = jnp.asarray(_normal(13, (4, 2, 3), loc=1.0), jnp.float64)
        model = batch_norm()
        params, state = model.init(jax.random.key(0), x)
        params = jax.tree.map(lambda p: p + jnp.asarray(_normal(14, p.shape), jnp.float64), params)
        check_grads(lambda p, x: model.apply(p, state, x, train=True)[0], (params, x), order=2, modes=["rev"])


# --- batch_norm: vmap and data parallelism --------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 3), (6, 4, 3)], ids=["vector-examples", "sequence-examples"])
def test_batch_norm_vmap_with_axis_name_equals_batched(shape):
    x = _normal(15, shape, loc=3.0, scale=2.0)
    params, state = _random_affine(batch_norm(), x)
    state = {"mean": jnp.full((3,), 0.5), "var": jnp.full((3,), 2.0)}
    y, new_state = batch_norm().apply(params, state, x, train=True)

    named = batch_norm(axis_name="batch")
    for train in (True, False):
        per_example = jax.vmap(
            lambda xi: named.apply(params, state, xi, train=train), axis_name="batch", out_axes=(0, None)
        )
        y_v, state_v = per_example(x)
        ref_y, ref_state = (y, new_state) if train else batch_norm().apply(params, state, x)
        chex.assert_shape(state_v["mean"], (3,))  # unbatched thanks to pmean: out_axes=None is valid
        # Batched uses var = mean((x - mean)^2), vmap uses E[x^2] - E[x]^2: they differ by ~ulp(E[x^2]) ~ 1e-6.
        chex.assert_trees_all_close((y_v, state_v), (ref_y, ref_state), **TOL)


def test_batch_norm_under_shard_map_equals_single_device():
    mesh = Mesh(jax.devices(), ("data",))
    x = _normal(16, (4 * len(jax.devices()), 2, 3), loc=3.0, scale=2.0)
    params, state = _random_affine(batch_norm(), x)
    y, new_state = batch_norm().apply(params, state, x, train=True)

    named = batch_norm(axis_name="data")
    sharded = jax.jit(
        jax.shard_map(
            lambda p, s, x: named.apply(p, s, x, train=True),
            mesh=mesh,
            in_specs=(P(), P(), P("data")),
            out_specs=(P("data"), P()),
        )
    )
    y_s, state_s = sharded(params, state, jax.device_put(x, NamedSharding(mesh, P("data"))))
    # Per-device partial sums reduced across devices: a different summation order, a few ulps apart.
    chex.assert_trees_all_close((y_s, state_s), (y, new_state), **TOL)


def test_batch_norm_jit_with_sharded_batch_equals_single_device():
    mesh = Mesh(jax.devices(), ("data",))
    x = _normal(17, (2 * len(jax.devices()), 3, 4), loc=3.0, scale=2.0)
    model = batch_norm()
    params, state = _random_affine(model, x)
    y, new_state = model.apply(params, state, x, train=True)

    replicated, by_batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    step = jax.jit(
        lambda p, s, x: model.apply(p, s, x, train=True),
        in_shardings=(replicated, replicated, by_batch),
        out_shardings=(by_batch, replicated),
    )
    y_d, state_d = step(params, state, jax.device_put(x, by_batch))
    assert len(y_d.sharding.device_set) == len(jax.devices())  # really computed across all devices
    # jit's global view: XLA reduces the batch statistics across devices (a different summation order,
    # a few float32 ulps), so no axis_name is needed for full-batch statistics.
    chex.assert_trees_all_close((y_d, state_d), (y, new_state), **TOL)


# --- transforms, errors -------------------------------------------------------------------


@pytest.mark.parametrize("factory", [layer_norm, rms_norm, batch_norm], ids=lambda f: f.__name__)
def test_jit_matches_eager_and_init_is_traceable(factory):
    x = _normal(18, (4, 5), loc=1.0)
    model = factory()
    params, state = _random_affine(model, x)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(x.shape, x.dtype))
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract, (params, state))
    for train in (False, True):
        eager = model.apply(params, state, x, train=train)
        jitted = jax.jit(lambda p, s, x: model.apply(p, s, x, train=train))(params, state, x)
        chex.assert_trees_all_close(jitted, eager, **TOL)


@pytest.mark.parametrize("factory", [layer_norm, rms_norm, batch_norm], ids=lambda f: f.__name__)
def test_no_retrace(factory):
    model = factory()
    x = _normal(19, (4, 5))
    params, state = model.init(jax.random.key(0), x)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state, x):
        return model.apply(params, state, x, train=True)

    for seed in range(3):
        _, state = step(params, state, jnp.asarray(_normal(20 + seed, (4, 5))))
    chex.clear_trace_counter()


@pytest.mark.parametrize("factory", [layer_norm, rms_norm, batch_norm], ids=lambda f: f.__name__)
def test_errors(factory):
    model = factory()
    name = factory.__name__
    params, state = model.init(jax.random.key(0), jnp.ones((2, 4)))
    with pytest.raises(ShapeError, match=rf"at {name}: expected last axis 4, got \(2, 5\) float32"):
        model.apply(params, state, jnp.ones((2, 5)))
    with pytest.raises(DTypeError, match=rf"at {name}: expected a floating-point input, got \(2, 4\) int32"):
        model.apply(params, state, jnp.ones((2, 4), jnp.int32))
    with pytest.raises(DTypeError, match="expected a floating-point input"):
        model.init(jax.random.key(0), jnp.ones((2, 4), jnp.int32))
    with pytest.raises(ShapeError, match=r"expected input of rank >= 1, got \(\) float32"):
        model.init(jax.random.key(0), jnp.ones(()))
    other, _ = dense(4).init(jax.random.key(0), jnp.ones((2, 4)))
    with pytest.raises(ParamsError, match="params do not belong to this model"):
        model.apply(other, state, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="epsilon must be positive"):
        factory(epsilon=0.0)


def test_batch_norm_specific_errors():
    model = batch_norm()
    params, state = model.init(jax.random.key(0), jnp.ones((2, 4)))
    with pytest.raises(ShapeError, match=r"train=True needs a batch .* got \(4,\) float32"):
        model.apply(params, state, jnp.ones(4), train=True)
    model.apply(params, state, jnp.ones(4))  # a single vector is fine in evaluation
    with pytest.raises(ParamsError, match=r"state do not belong to this model: 'var' should have shape \(4,\)"):
        model.apply(params, {"mean": jnp.zeros(4), "var": jnp.ones(3)}, jnp.ones((2, 4)))
    with pytest.raises(ParamsError, match=r"state do not belong to this model: expected keys \['mean', 'var'\]"):
        model.apply(params, {}, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"momentum .* must be in \[0, 1\]"):
        batch_norm(momentum=1.5)
