"""The built-in learning-rate schedules, under the names a config uses (registered in ``funcnet.config.catalogue``).

Each factory takes the peak learning rate first (the optimizer's ``learning_rate``), then keyword
parameters that are the ``schedule`` table's keys, range-checked with ``require``. Steps count
optimizer updates.

>>> from funcnet.config.registry import SCHEDULES
>>> SCHEDULES.names()  # doctest: +ELLIPSIS
['constant', 'cosine', ...'warmup_linear']
"""

from __future__ import annotations

import optax

from ..validation import require


def constant(learning_rate: float) -> optax.Schedule:
    """``learning_rate`` at every step.

    >>> constant(0.1)(1000)
    0.1
    """
    return optax.constant_schedule(learning_rate)


def _steps(key: str, value: int, minimum: int = 0) -> None:
    require(value >= minimum, key, f"an int >= {minimum}", value)


def warmup_cosine(
    learning_rate: float,
    warmup_steps: int,
    decay_steps: int,
    init_value: float = 0.0,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> optax.Schedule:
    """Linear from ``init_value`` to ``learning_rate`` over ``warmup_steps``, then cosine to ``end_value``.

    ``decay_steps`` is the length of the whole schedule, warmup included (as in optax).

    >>> [round(float(warmup_cosine(1.0, warmup_steps=2, decay_steps=4)(step)), 3) for step in range(5)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    _steps("warmup_steps", warmup_steps)
    _steps("decay_steps", decay_steps, warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(init_value, learning_rate, warmup_steps, decay_steps, end_value, exponent)


def warmup_linear(
    learning_rate: float, warmup_steps: int, decay_steps: int, init_value: float = 0.0, end_value: float = 0.0
) -> optax.Schedule:
    """Linear from ``init_value`` up to ``learning_rate``, then linear down to ``end_value`` at ``decay_steps``.

    >>> [float(warmup_linear(1.0, warmup_steps=2, decay_steps=4)(step)) for step in range(5)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    _steps("warmup_steps", warmup_steps)
    _steps("decay_steps", decay_steps, warmup_steps + 1)
    up = optax.linear_schedule(init_value, learning_rate, warmup_steps)
    down = optax.linear_schedule(learning_rate, end_value, decay_steps - warmup_steps)
    return optax.join_schedules([up, down], [warmup_steps])


def linear(
    learning_rate: float, transition_steps: int, end_value: float = 0.0, transition_begin: int = 0
) -> optax.Schedule:
    """``learning_rate`` until ``transition_begin``, then linear to ``end_value`` over ``transition_steps``.

    >>> float(linear(1.0, transition_steps=4, end_value=0.5)(2))
    0.75
    """
    _steps("transition_steps", transition_steps, 1)
    _steps("transition_begin", transition_begin)
    return optax.linear_schedule(learning_rate, end_value, transition_steps, transition_begin)


def exponential(
    learning_rate: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> optax.Schedule:
    """``learning_rate * decay_rate ** ((step - transition_begin) / transition_steps)``, floored at ``end_value``.

    >>> float(exponential(1.0, transition_steps=2, decay_rate=0.5)(4))
    0.25
    """
    _steps("transition_steps", transition_steps, 1)
    _steps("transition_begin", transition_begin)
    require(decay_rate > 0, "decay_rate", "a number > 0", decay_rate)
    return optax.exponential_decay(learning_rate, transition_steps, decay_rate, transition_begin, staircase, end_value)


def cosine(learning_rate: float, decay_steps: int, end_value: float = 0.0, exponent: float = 1.0) -> optax.Schedule:
    """Cosine from ``learning_rate`` to ``end_value`` over ``decay_steps``, then constant.

    >>> round(float(cosine(1.0, decay_steps=4)(2)), 6)
    0.5
    """
    _steps("decay_steps", decay_steps, 1)
    alpha = end_value / learning_rate if learning_rate else 0.0
    return optax.cosine_decay_schedule(learning_rate, decay_steps, alpha, exponent)


def piecewise_constant(learning_rate: float, boundaries: list[int], scales: list[float]) -> optax.Schedule:
    """``learning_rate`` times the product of the ``scales`` whose boundary step has been reached.

    >>> [float(piecewise_constant(1.0, boundaries=[2, 4], scales=[0.5, 0.5])(s)) for s in (0, 2, 4)]
    [1.0, 0.5, 0.25]
    """
    require(len(boundaries) == len(scales), "scales", f"{len(boundaries)} scales, one per boundary", scales)
    require(all(b >= 0 for b in boundaries), "boundaries", "ints >= 0", boundaries)
    require(list(boundaries) == sorted(set(boundaries)), "boundaries", "strictly increasing steps", boundaries)
    require(all(s >= 0 for s in scales), "scales", "numbers >= 0", scales)
    return optax.piecewise_constant_schedule(learning_rate, dict(zip(boundaries, scales, strict=True)))
