"""Optimizers from config: each one trains; configs are checked; clipping, decay, freeze, accumulation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcnet.config import ConfigError
from funcnet.config.optimizer import make_optimizer
from funcnet.config.registry import OPTIMIZERS

TARGET = {"a": jnp.array([1.0, -2.0, 0.5]), "b": {"c": jnp.array([[3.0, -1.0]])}}


def quadratic(params):
    return sum(jnp.sum((p - t) ** 2) for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(TARGET), strict=True))


def run(transform, params, grads_fn, steps):
    """``steps`` updates under one jit; returns the final params and optimizer state."""

    def body(_, carry):
        params, state = carry
        updates, state = transform.update(grads_fn(params), state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(lambda p: jax.lax.fori_loop(0, steps, body, (p, transform.init(p))))(params)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_each_registered_optimizer_decreases_a_quadratic(name):
    opt = make_optimizer({"type": name, "learning_rate": 0.2})
    start = jax.tree.map(jnp.zeros_like, TARGET)
    final, _ = run(opt.transform, start, jax.grad(quadratic), 50)
    assert float(quadratic(final)) < 0.1 * float(quadratic(start)), name  # the slowest (adagrad) reaches 0.07


ALL_OPTIMIZERS = "Allowed: adagrad, adam, adamw, lamb, lion, rmsprop, sgd."


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({"type": "adma", "learning_rate": 1.0}, "optimizer.type", "unknown optimizer 'adma'. Did you mean 'adam'?"),
        ({"learning_rate": 1.0}, "optimizer.type", "missing; name the component to use. Registered: adagrad, adam,"),
        ({"type": 3}, "optimizer.type", "expected a string, got 3 (an int)"),
        ([("type", "adam")], "optimizer", 'expected a table with a "type" key, got [["type", "adam"]] (a list)'),
        ({"type": "adam", "learning_rate": 1.0, "b3": 0.9}, "optimizer.b3", "unknown key for optimizer 'adam'."),
        # the allowed keys are the optimizer's own and the options every optimizer takes, not sgd's momentum
        (
            {"type": "adam", "learning_rate": 1.0, "momentum": 0.9},
            "optimizer.momentum",
            "Allowed: accumulate, b1, b2, eps, freeze, grad_clip_norm, learning_rate, learning_rate_scale, schedule, "
            "sparse_rows, weight_decay.",
        ),
        ({"type": "adam", "learning_rte": 1.0}, "optimizer.learning_rte", "Did you mean 'learning_rate'?"),
        ({"type": "adam"}, "optimizer.learning_rate", "missing; optimizer 'adam' requires 'learning_rate'."),
        (
            {"type": "adam", "learning_rate": "1e-3"},
            "optimizer.learning_rate",
            'expected a number, got "1e-3" (a string); write numbers without quotes',
        ),
        ({"type": "adam", "learning_rate": -1}, "optimizer.learning_rate", "expected a number >= 0, got -1.0"),
        ({"type": "sgd", "learning_rate": 1.0, "nesterov": "yes"}, "optimizer.nesterov", "expected true or false"),
        ({"type": "sgd", "learning_rate": 1.0, "accumulate": 2.0}, "optimizer.accumulate", "expected an int, got 2.0"),
        ({"type": "sgd", "learning_rate": 1.0, "accumulate": True}, "optimizer.accumulate", "got true (a boolean)"),
        ({"type": "sgd", "learning_rate": 1.0, "accumulate": 0}, "optimizer.accumulate", "expected an int >= 1, got 0"),
        ({"type": "sgd", "learning_rate": 1.0, "freeze": "enc/.*"}, "optimizer.freeze", "expected a list or null"),
        ({"type": "sgd", "learning_rate": 1.0, "freeze": ["a", 1]}, "optimizer.freeze[1]", "expected a string, got 1"),
        ({"type": "sgd", "learning_rate": 1.0, "freeze": ["a("]}, "optimizer.freeze[0]", "invalid regular expression"),
        (
            {"type": "sgd", "learning_rate": 1.0, "grad_clip_norm": 0},
            "optimizer.grad_clip_norm",
            "expected a number > 0",
        ),
        (
            {"type": "sgd", "learning_rate": 1.0, "weight_decay": -1},
            "optimizer.weight_decay",
            "a number >= 0, got -1.0",
        ),
        # range checks inside the registered factories name their own parameter; make_optimizer adds the path
        ({"type": "sgd", "learning_rate": 1.0, "momentum": 1.5}, "optimizer.momentum", "expected a number in [0, 1)"),
        ({"type": "sgd", "learning_rate": 1.0, "nesterov": True}, "optimizer.nesterov", "false unless momentum is set"),
        ({"type": "lamb", "learning_rate": 1.0, "b2": 1.0}, "optimizer.b2", "expected a number in [0, 1), got 1.0"),
        (
            {"type": "adam", "learning_rate": 1.0, "schedule": "cosine"},
            "optimizer.schedule",
            "expected a table or null",
        ),
    ],
)
def test_config_errors_name_the_key_path(config, path, message):
    with pytest.raises(ConfigError) as error:
        make_optimizer(config)
    assert error.value.path == path, str(error.value)
    assert message in str(error.value), str(error.value)


def test_learning_rate_is_accepted_as_an_int_and_as_peak_of_the_schedule():
    opt = make_optimizer({"type": "sgd", "learning_rate": 2, "schedule": {"type": "cosine", "decay_steps": 4}})
    assert float(opt.learning_rate(0)) == 2.0


def test_gradient_clipping_bounds_the_update_norm():
    params = {"a": jnp.zeros(3), "b": jnp.zeros(())}
    huge = {"a": jnp.full(3, 3e6), "b": jnp.float32(-4e6)}
    clipped = make_optimizer({"type": "sgd", "learning_rate": 1.0, "grad_clip_norm": 1.0}).transform
    updates, _ = clipped.update(huge, clipped.init(params), params)
    # clip_by_global_norm scales by 1 / norm in float32: the norm is 1 to a few ulps.
    np.testing.assert_allclose(float(optax.tree.norm(updates)), 1.0, rtol=1e-6)
    # the direction is kept: each leaf is the gradient divided by its global norm.
    np.testing.assert_allclose(updates["b"], 4e6 / float(optax.tree.norm(huge)), rtol=1e-6)
    small = {"a": jnp.full(3, 0.1), "b": jnp.float32(0.2)}
    assert jax.tree.map(
        np.array_equal, clipped.update(small, clipped.init(params), params)[0], jax.tree.map(jnp.negative, small)
    )
    unclipped = make_optimizer({"type": "sgd", "learning_rate": 1.0}).transform
    assert float(optax.tree.norm(unclipped.update(huge, unclipped.init(params), params)[0])) > 1e6


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_weight_decay_shrinks_params_with_zero_gradient(name):
    params = {"w": jnp.array([1.0, -2.0])}
    zero = jax.tree.map(jnp.zeros_like, params)
    opt = make_optimizer({"type": name, "learning_rate": 0.5, "weight_decay": 0.1})
    final, _ = run(opt.transform, params, lambda p: zero, 1)
    assert np.all(np.abs(final["w"]) < np.abs(params["w"])), (name, final)
    if name in ("sgd", "adamw"):  # both: p - lr * wd * p = 0.95 p (adam's own update is 0 for a zero gradient)
        np.testing.assert_allclose(final["w"], 0.95 * params["w"], rtol=1e-6)  # one float32 multiply-add
    if name in ("sgd", "adam"):  # no decay when weight_decay is 0: bit-identical
        undecayed = make_optimizer({"type": name, "learning_rate": 0.5, "weight_decay": 0.0})
        assert np.array_equal(run(undecayed.transform, params, lambda p: zero, 1)[0]["w"], params["w"])


def encoder_and_head():
    return {
        "encoder": {"dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}},
        "head": {"kernel": jnp.full((4, 2), 0.5), "bias": jnp.zeros(2)},
    }


def test_freeze_leaves_matching_params_bit_identical_and_allocates_no_state_for_them():
    params = encoder_and_head()
    config = {"type": "adam", "learning_rate": 0.1, "weight_decay": 0.1, "grad_clip_norm": 1.0}
    opt = make_optimizer({**config, "freeze": ["encoder/.*"]})
    final, state = run(opt.transform, params, lambda p: jax.tree.map(jnp.ones_like, p), 3)
    for before, after in zip(jax.tree.leaves(params["encoder"]), jax.tree.leaves(final["encoder"]), strict=True):
        assert np.asarray(before).tobytes() == np.asarray(after).tobytes()
    assert all(
        not np.array_equal(b, a)
        for b, a in zip(jax.tree.leaves(params["head"]), jax.tree.leaves(final["head"]), strict=True)
    )
    # Adam keeps mu and nu per trained element, plus scalar counters: none for the 16 encoder elements.
    head_size, encoder_size = 10, 16
    state_size = sum(np.size(x) for x in jax.tree.leaves(state))
    unfrozen_size = sum(np.size(x) for x in jax.tree.leaves(make_optimizer(config).transform.init(params)))
    assert 2 * head_size <= state_size <= 2 * head_size + 4
    assert unfrozen_size - state_size == 2 * encoder_size


def test_freeze_pattern_that_matches_nothing_fails_at_init():
    params = encoder_and_head()
    for pattern in ("encodr/.*", "encoder"):  # a typo, and a prefix (patterns must match the whole path)
        opt = make_optimizer({"type": "sgd", "learning_rate": 0.1, "freeze": ["head/bias", pattern]})
        with pytest.raises(
            ConfigError, match=rf"optimizer\.freeze\[1\]: pattern '{pattern}' matches no .*encoder/dense_0/"
        ):
            opt.transform.init(params)


def test_accumulate_equals_one_step_on_the_mean_gradient():
    k = 4
    rng = np.random.default_rng(0)
    grads = [{"w": jnp.asarray(rng.normal(size=(64,)), jnp.float32)} for _ in range(k)]
    params = {"w": jnp.asarray(rng.normal(size=(64,)), jnp.float32)}
    accumulated = make_optimizer({"type": "sgd", "learning_rate": 0.1, "accumulate": k}).transform
    state, p = accumulated.init(params), params
    for i, g in enumerate(grads):
        updates, state = accumulated.update(g, state, p)
        p = optax.apply_updates(p, updates)
        if i < k - 1:
            assert np.array_equal(p["w"], params["w"])  # nothing moves until the k-th micro-batch
    plain = make_optimizer({"type": "sgd", "learning_rate": 0.1}).transform
    mean = jax.tree.map(lambda *g: sum(g) / k, *grads)
    reference = optax.apply_updates(params, plain.update(mean, plain.init(params), params)[0])
    # MultiSteps keeps a running mean (acc + (g - acc) / (n + 1)) instead of sum / k: a few float32 roundings of
    # O(1) values, ~1e-7 each, so 1e-6 absolute; a wrong factor (sum, not mean) would be off by ~0.1.
    np.testing.assert_allclose(p["w"], reference["w"], rtol=0, atol=1e-6)


def test_learning_rate_matches_the_rate_optax_applies_with_accumulation():
    k, lr = 3, 1.0
    opt = make_optimizer(
        {"type": "sgd", "learning_rate": lr, "accumulate": k, "schedule": {"type": "linear", "transition_steps": 4}}
    )
    params = {"w": jnp.zeros(2)}
    state = opt.transform.init(params)
    for step in range(4 * k):
        count = int(optax.tree_utils.tree_get(state, "count"))  # the schedule's counter inside MultiSteps
        assert count == step // k
        updates, state = opt.transform.update({"w": jnp.ones(2)}, state, params)
        if step % k == k - 1:  # the mean of k unit gradients times the rate
            np.testing.assert_allclose(updates["w"], -opt.learning_rate(step), rtol=1e-6)  # float32 running mean
        else:
            assert not np.any(updates["w"])
    assert [float(opt.learning_rate(s)) for s in (0, 2, 3, 5, 6, 12)] == [1.0, 1.0, 0.75, 0.75, 0.5, 0.0]
    assert float(jax.jit(opt.learning_rate)(jnp.int32(7))) == 0.5  # usable inside the jitted step
