"""Schedules from config: values at hand-checked steps; their keys are checked with the optimizer's path."""

from __future__ import annotations

import math

import numpy as np
import pytest

from funcnet.config import ConfigError
from funcnet.config.optimizer import make_optimizer, make_schedule
from funcnet.config.registry import SCHEDULES

# Hand-computed: warmup 0, .5, 1 (linear over 2 steps); then cosine over decay_steps - warmup_steps = 4 steps from
# 1 to 0: 0.5 * (1 + cos(pi * t / 4)) for t = 1..4, constant after.
WARMUP_COSINE = [0.0, 0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 - math.cos(math.pi / 4)), 0.0, 0.0]


SCHEDULE_CASES = [
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
]


@pytest.mark.parametrize(("config", "expected"), SCHEDULE_CASES)
def test_schedule_values_at_hand_checked_steps(config, expected):
    schedule = make_schedule(1.0, config)
    for step, value in enumerate(expected):
        if value is not None:
            # float32 schedule arithmetic (cosines, powers): a few ulps of values <= 1.
            np.testing.assert_allclose(float(schedule(step)), value, rtol=0, atol=1e-6, err_msg=f"step {step}")


def test_every_registered_schedule_has_a_hand_checked_case():
    checked = {config["type"] for config, _ in SCHEDULE_CASES if config is not None}
    assert checked == set(SCHEDULES.names())


@pytest.mark.parametrize(
    ("schedule", "path", "message"),
    [
        (
            {"type": "warmup_cosin"},
            "optimizer.schedule.type",
            "unknown schedule 'warmup_cosin'. Did you mean 'warmup_cosine'?",
        ),
        (
            {"type": "warmup_cosine", "warmup_steps": 5},
            "optimizer.schedule.decay_steps",
            "missing; schedule 'warmup_cosine' requires 'decay_steps'.",
        ),
        ({"type": "cosine", "decay_step": 5}, "optimizer.schedule.decay_step", "Did you mean 'decay_steps'?"),
        (
            {"type": "warmup_cosine", "warmup_steps": -5, "decay_steps": 9},
            "optimizer.schedule.warmup_steps",
            "optimizer.schedule.warmup_steps: expected an int >= 0, got -5",
        ),
        (
            {"type": "warmup_linear", "warmup_steps": 5, "decay_steps": 5},
            "optimizer.schedule.decay_steps",
            "expected an int >= 6, got 5",
        ),
        (
            {"type": "exponential", "transition_steps": 2, "decay_rate": 0},
            "optimizer.schedule.decay_rate",
            "> 0, got 0.0",
        ),
        (
            {"type": "piecewise_constant", "boundaries": [3, 1], "scales": [0.5, 0.5]},
            "optimizer.schedule.boundaries",
            "expected strictly increasing steps, got [3, 1]",
        ),
        (
            {"type": "piecewise_constant", "boundaries": [1], "scales": [0.5, 0.5]},
            "optimizer.schedule.scales",
            "expected 1 scales, one per boundary, got [0.5, 0.5]",
        ),
        (
            {"type": "constant", "learning_rate": 2.0},
            "optimizer.schedule.learning_rate",
            "the schedule's peak is the optimizer's learning_rate",
        ),
    ],
)
def test_schedule_config_errors_name_the_key_path(schedule, path, message):
    with pytest.raises(ConfigError) as error:
        make_optimizer({"type": "adam", "learning_rate": 1.0, "schedule": schedule})
    assert error.value.path == path, str(error.value)
    assert message in str(error.value), str(error.value)
