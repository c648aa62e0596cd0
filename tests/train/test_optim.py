"""Optimizers from config: each one trains; configs are checked; schedules, clipping, decay, freeze, accumulation."""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcnet.train.optim import ConfigError, ConfigTypeError, check_kwargs, make_optimizer, make_schedule
from funcnet.train.registry import OPTIMIZERS

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


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({"type": "adma", "learning_rate": 1.0}, ConfigError, r"optimizer\.type: unknown optimizer 'adma'.*'adam'\?"),
        ({"learning_rate": 1.0}, ConfigError, r"optimizer\.type: missing; expected one of \[.*'adam'"),
        ({"type": 3}, ConfigTypeError, r"optimizer\.type: expected str, got int 3"),
        ([("type", "adam")], ConfigTypeError, r"optimizer: expected a table with a 'type' key, got list"),
        (
            {"type": "adam", "learning_rate": 1.0, "b3": 0.9},
            ConfigError,
            r"optimizer\.b3: unknown key for adam; allowed",
        ),
        ({"type": "adam", "learning_rate": 1.0, "momentum": 0.9}, ConfigError, r"optimizer\.momentum: unknown key"),
        ({"type": "adam", "learning_rte": 1.0}, ConfigError, r"optimizer\.learning_rte: .*'learning_rate'\?"),
        ({"type": "adam"}, ConfigError, r"optimizer\.learning_rate: missing required key \(float\)"),
        (
            {"type": "adam", "learning_rate": "1e-3"},
            ConfigTypeError,
            r"learning_rate: expected float, got str '1e-3'; wr",
        ),
        (
            {"type": "sgd", "learning_rate": 1.0, "nesterov": "yes"},
            ConfigTypeError,
            r"optimizer\.nesterov: expected bool",
        ),
        (
            {"type": "sgd", "learning_rate": 1.0, "accumulate": 2.0},
            ConfigTypeError,
            r"optimizer\.accumulate: expected int",
        ),
        (
            {"type": "sgd", "learning_rate": 1.0, "accumulate": True},
            ConfigTypeError,
            r"accumulate: expected int, got bool",
        ),
        (
            {"type": "sgd", "learning_rate": 1.0, "accumulate": 0},
            ConfigError,
            r"accumulate: expected an int >= 1, got 0",
        ),
        (
            {"type": "sgd", "learning_rate": 1.0, "freeze": "enc/.*"},
            ConfigTypeError,
            r"optimizer\.freeze: expected list",
        ),
        (
            {"type": "sgd", "learning_rate": 1.0, "freeze": ["a", 1]},
            ConfigTypeError,
            r"optimizer\.freeze\[1\]: expected str",
        ),
        (
            {"type": "sgd", "learning_rate": 1.0, "freeze": ["a("]},
            ConfigError,
            r"freeze\[0\]: invalid regular expression",
        ),
        (
            {"type": "sgd", "learning_rate": 1.0, "grad_clip_norm": 0},
            ConfigError,
            r"grad_clip_norm: expected a float > 0",
        ),
        (
            {"type": "sgd", "learning_rate": 1.0, "momentum": 1.5},
            ConfigError,
            r"optimizer\.momentum: expected a float in",
        ),
        (
            {"type": "sgd", "learning_rate": 1.0, "nesterov": True},
            ConfigError,
            r"optimizer\.nesterov: expected false un",
        ),
        (
            {"type": "adam", "learning_rate": 1.0, "schedule": {"type": "warmup_cosin"}},
            ConfigError,
            r"optimizer\.schedule\.type: unknown schedule 'warmup_cosin'.*Did you mean 'warmup_cosine'\?",
        ),
        (
            {"type": "adam", "learning_rate": 1.0, "schedule": {"type": "warmup_cosine", "warmup_steps": 5}},
            ConfigError,
            r"optimizer\.schedule\.decay_steps: missing required key \(int\) for warmup_cosine",
        ),
        (
            {"type": "adam", "learning_rate": 1.0, "schedule": {"type": "cosine", "decay_step": 5}},
            ConfigError,
            r"optimizer\.schedule\.decay_step: unknown key for cosine; .*Did you mean 'decay_steps'\?",
        ),
        (
            {
                "type": "adam",
                "learning_rate": 1.0,
                "schedule": {"type": "warmup_cosine", "warmup_steps": -5, "decay_steps": 9},
            },
            ConfigError,
            r"^optimizer\.schedule\.warmup_steps: expected an int >= 0, got -5$",
        ),
        (
            {"type": "adam", "learning_rate": 1.0, "schedule": {"type": "constant", "learning_rate": 2.0}},
            ConfigError,
            r"optimizer\.schedule\.learning_rate: is not set here",
        ),
        (
            {"type": "adam", "learning_rate": 1.0, "schedule": "cosine"},
            ConfigTypeError,
            r"optimizer\.schedule: expected dict",
        ),
    ],
)
def test_config_errors_name_the_key_path(config, error, match):
    with pytest.raises(error, match=match):
        make_optimizer(config)


def test_check_kwargs_checks_types_without_calling_the_factory():
    calls = []

    def widget(
        width: int, names: list[str], rate: float = 0.5, mode: Literal["a", "b"] = "a", bias: bool | None = None
    ):
        calls.append(width)

    checked = check_kwargs(widget, {"type": "w", "width": 2, "names": ["x"], "rate": 1}, "model", also_allowed=["type"])
    assert checked == {"width": 2, "names": ["x"], "rate": 1.0} and isinstance(checked["rate"], float)
    for config, match in [
        ({"width": 2.5, "names": []}, r"model\.width: expected int, got float 2\.5"),
        ({"width": 2, "names": ["x", 3]}, r"model\.names\[1\]: expected str, got int 3"),
        ({"width": 2, "names": [], "mode": "c"}, r"model\.mode: expected Literal\['a', 'b'\], got str 'c'"),
        ({"width": 2, "names": [], "bias": 1}, r"model\.bias: expected bool \| None, got int 1"),
        ({"names": []}, r"model\.width: missing required key \(int\) for widget"),
    ]:
        with pytest.raises(ConfigError, match=match):
            check_kwargs(widget, config, "model")
    assert calls == []


def test_learning_rate_is_accepted_as_an_int_and_as_peak_of_the_schedule():
    opt = make_optimizer({"type": "sgd", "learning_rate": 2, "schedule": {"type": "cosine", "decay_steps": 4}})
    assert float(opt.learning_rate(0)) == 2.0


# Hand-computed: warmup 0, .5, 1 (linear over 2 steps); then cosine over decay_steps - warmup_steps = 4 steps from
# 1 to 0: 0.5 * (1 + cos(pi * t / 4)) for t = 1..4, constant after.
WARMUP_COSINE = [0.0, 0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 - math.cos(math.pi / 4)), 0.0, 0.0]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"type": "warmup_cosine", "warmup_steps": 2, "decay_steps": 6}, WARMUP_COSINE),
        # end_value 0.2: the cosine part runs from 1 to 0.2: 0.2 + 0.8 * 0.5 at its midpoint.
        (
            {"type": "warmup_cosine", "warmup_steps": 2, "decay_steps": 6, "end_value": 0.2},
            [0, 0.5, 1, None, 0.6, None, 0.2],
        ),
        ({"type": "warmup_linear", "warmup_steps": 2, "decay_steps": 6}, [0, 0.5, 1, 0.75, 0.5, 0.25, 0, 0]),
        ({"type": "linear", "transition_steps": 4, "transition_begin": 1}, [1, 1, 0.75, 0.5, 0.25, 0, 0]),
        ({"type": "exponential", "transition_steps": 1, "decay_rate": 0.5, "end_value": 0.2}, [1, 0.5, 0.25, 0.2, 0.2]),
        ({"type": "cosine", "decay_steps": 2, "end_value": 0.5}, [1, 0.75, 0.5, 0.5]),
        ({"type": "piecewise_constant", "boundaries": [1, 3], "scales": [0.5, 0.1]}, [1, 0.5, 0.5, 0.05, 0.05]),
        ({"type": "constant"}, [1, 1, 1]),
        (None, [1, 1, 1]),
    ],
)
def test_schedule_values_at_hand_checked_steps(config, expected):
    schedule = make_schedule(1.0, config)
    for step, value in enumerate(expected):
        if value is not None:
            # float32 schedule arithmetic (cosines, powers): a few ulps of values <= 1.
            np.testing.assert_allclose(float(schedule(step)), value, rtol=0, atol=1e-6, err_msg=f"step {step}")


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
