"""Optimizers from config: optax transformations with schedules, clipping, weight decay, accumulation, freezing.

A config names a registered optimizer and, optionally, a registered schedule::

    {"type": "adam", "learning_rate": 1e-3, "b2": 0.98,
     "schedule": {"type": "warmup_cosine", "warmup_steps": 100, "decay_steps": 1000},
     "grad_clip_norm": 1.0, "weight_decay": 1e-4, "accumulate": 4, "freeze": ["encoder/.*"]}

``make_optimizer`` builds, from the inside out::

    MultiSteps(k)(                                 # accumulate (k > 1): one update every k train steps
        chain(clip_by_global_norm(grad_clip_norm),  # grad_clip_norm
              add_decayed_weights(weight_decay),    # weight_decay, for optimizers without their own
              adam(schedule, b2=0.98)))             # the optimizer, its learning rate a schedule

and, with ``freeze``, applies that only to the params whose path matches no pattern (the others
get ``optax.set_to_zero`` and no optimizer state). Schedules count optimizer updates: with
``accumulate = k`` they advance once every ``k`` train steps. The optimizers and schedules are
registered in :mod:`funcnet.config.optimizers` and :mod:`funcnet.config.learning_rates` (add your own
with ``@OPTIMIZERS.register``); their keys are checked by :mod:`funcnet.config.components`.

>>> from funcnet.config.optimizer import make_optimizer
>>> make_optimizer({"type": "sgd", "learning_rate": 0.1, "momentum": 0.9}).learning_rate(7)
0.1
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..core import param_path
from ..validation import ConfigError, check_arguments, join_path, require
from .components import build_component, validate_component
from .registry import OPTIMIZERS, SCHEDULES


class Optimizer(NamedTuple):
    """An optax transformation and the learning rate it applies at each train step.

    Attributes:
      transform: the whole transformation; pass ``params`` to its ``update`` (weight decay and
        lamb need them). Its ``init(params)`` checks the ``freeze`` patterns.
      learning_rate: ``step -> learning rate`` used by the update of train step ``step`` (the
        number of micro-batches seen before it): ``schedule(step // accumulate)``. With
        accumulation, steps that only accumulate report the rate their pending update will use.
        Works on traced integers, so the jitted train step can log it.

    >>> opt = make_optimizer({"type": "adam", "learning_rate": 0.5, "accumulate": 2,
    ...                       "schedule": {"type": "piecewise_constant", "boundaries": [1], "scales": [0.5]}})
    >>> [float(opt.learning_rate(step)) for step in range(4)]
    [0.5, 0.5, 0.25, 0.25]
    """

    transform: optax.GradientTransformation
    learning_rate: Callable[[Any], Any]
    sparse_rows: Mapping[str, str] | None = None  # param path -> batch key: tables updated row-sparsely


def _options(
    learning_rate: float,
    schedule: dict[str, Any] | None = None,
    grad_clip_norm: float | None = None,
    weight_decay: float | None = None,
    accumulate: int = 1,
    freeze: list[str] | None = None,
    learning_rate_scale: dict[str, float] | None = None,
    sparse_rows: dict[str, str] | None = None,
) -> None:
    """The keys that every optimizer config accepts besides its optimizer's own (used for validation only)."""


_OPTIONS = tuple(inspect.signature(_options).parameters)
_OPTION_DEFAULTS = {k: p.default for k, p in inspect.signature(_options).parameters.items() if p.default is not p.empty}


def make_optimizer(config: Mapping[str, Any], path: str = "optimizer") -> Optimizer:
    """Builds an optimizer from a config; every key is checked before anything is built.

    Keys: ``type`` (a name in ``OPTIMIZERS``), ``learning_rate`` (the peak with a schedule),
    ``schedule`` (a ``SCHEDULES`` config; constant without it), ``grad_clip_norm`` (clip the
    global gradient norm of the trained params first), ``weight_decay`` (the optimizer's own
    decoupled decay for those that have one: adamw, lamb, lion, whose defaults apply when the key
    is absent; otherwise ``add_decayed_weights`` before the optimizer, i.e. an L2 penalty: with
    adam that is not AdamW), ``accumulate`` (``optax.MultiSteps``: one update with the mean of k
    micro-batch gradients every k steps), ``freeze`` (regexes that must ``fullmatch`` a
    ``"/"``-joined param path such as ``"encoder/dense_0/kernel"``: those params never change),
    ``learning_rate_scale`` (``{regex: factor}``: the updates of params whose path matches are
    multiplied by ``factor``, i.e. their learning rate, e.g. ``{"embed/.*" = 0.1}`` for an embedding
    learning rate; the first matching pattern wins), ``sparse_rows`` (``{param path: batch key}``:
    embedding tables updated row-sparsely, see ``funcnet.train.sparse``; the train step applies it),
    and the optimizer's own keys (``b1``, ``momentum``, ...).

    Args:
      config: the optimizer table of the config.
      path: its key path, for error messages.

    Returns:
      An ``Optimizer(transform, learning_rate, sparse_rows)``.

    Raises:
      ConfigError: an unknown, missing, mistyped or out-of-range key; ``transform.init`` raises it
        too when a ``freeze`` pattern matches no param.

    Example:
      >>> opt = make_optimizer({"type": "adam", "learning_rate": 1e-3, "accumulate": 2,
      ...     "schedule": {"type": "warmup_cosine", "warmup_steps": 10, "decay_steps": 100}})
      >>> [round(float(opt.learning_rate(step)), 6) for step in (0, 1, 2, 20)]
      [0.0, 0.0, 0.0001, 0.001]
    """
    validate_component(OPTIMIZERS, config, path, provided=["learning_rate"], also_allowed=_OPTIONS)
    given = {key: value for key, value in config.items() if key in _OPTIONS}
    options = {**_OPTION_DEFAULTS, **check_arguments(_options, given, path, f"optimizer {config['type']!r}")}
    learning_rate, clip, decay = options["learning_rate"], options["grad_clip_norm"], options["weight_decay"]
    accumulate, freeze = options["accumulate"], options["freeze"] or []
    require(learning_rate >= 0, join_path(path, "learning_rate"), "a number >= 0", learning_rate)
    require(clip is None or clip > 0, join_path(path, "grad_clip_norm"), "a number > 0 (omit it to not clip)", clip)
    require(decay is None or decay >= 0, join_path(path, "weight_decay"), "a number >= 0", decay)
    require(accumulate >= 1, join_path(path, "accumulate"), "an int >= 1", accumulate)
    patterns = [_compile(pattern, f"{path}.freeze[{i}]") for i, pattern in enumerate(freeze)]
    scales = [
        (_compile(p, f"{path}.learning_rate_scale.{p}"), f) for p, f in (options["learning_rate_scale"] or {}).items()
    ]
    for pattern, factor in scales:
        require(factor >= 0, f"{path}.learning_rate_scale.{pattern.pattern}", "a number >= 0", factor)
    sparse_rows = dict(options["sparse_rows"] or {})
    schedule = make_schedule(learning_rate, options["schedule"], join_path(path, "schedule"))

    parts = [optax.clip_by_global_norm(clip)] if clip is not None else []
    extra = {}
    if decay is not None and "weight_decay" in inspect.signature(OPTIMIZERS.get(config["type"])).parameters:
        extra["weight_decay"] = decay
    elif decay:
        parts.append(optax.add_decayed_weights(decay))
    parts.append(build_component(OPTIMIZERS, config, path, also_allowed=_OPTIONS, learning_rate=schedule, **extra))
    if scales:
        parts.append(_scaled(scales, f"{path}.learning_rate_scale"))
    transform = optax.chain(*parts) if len(parts) > 1 else parts[0]
    if accumulate > 1:
        transform = optax.MultiSteps(transform, every_k_schedule=accumulate).gradient_transformation()
    if patterns:
        transform = _frozen(transform, patterns, path)
    rate = schedule if accumulate == 1 else lambda step: schedule(step // accumulate)
    return Optimizer(transform, rate, sparse_rows or None)


def _compile(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ConfigError(where, f"invalid regular expression {pattern!r}: {error}") from None


def _check_patterns(patterns: Sequence[re.Pattern], params: Any, where: Callable[[int], str], what: str) -> None:
    """Raises a ConfigError for the first pattern that ``fullmatch``es no param path."""
    names = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for i, pattern in enumerate(patterns):
        if not any(pattern.fullmatch(name) for name in names):
            close = difflib.get_close_matches(pattern.pattern, names, n=3, cutoff=0.3) or names[:3]
            raise ConfigError(
                where(i),
                f"pattern {pattern.pattern!r} matches no parameter, so it would {what} nothing. Patterns must "
                f"match a whole '/'-joined path ('encoder/.*', not 'encoder'); {len(names)} params, e.g. {close}",
            )


def _scaled(scales: list[tuple[re.Pattern, float]], path: str) -> optax.GradientTransformation:
    """Multiplies the updates of params matching a pattern by its factor (the first match wins)."""

    def factor(key_path, _):
        name = param_path(key_path)
        return next((f for pattern, f in scales if pattern.fullmatch(name)), 1.0)

    def init(params):
        _check_patterns([p for p, _ in scales], params, lambda i: f"{path}.{scales[i][0].pattern}", "scale")
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        factors = jax.tree_util.tree_map_with_path(factor, updates)
        return jax.tree.map(lambda u, f: u if f == 1.0 else u * jnp.asarray(f, u.dtype), updates, factors), state

    return optax.GradientTransformation(init, update)


def make_schedule(learning_rate: float, config: Mapping[str, Any] | None, path: str = "schedule") -> optax.Schedule:
    """The schedule named by ``config["type"]`` with peak ``learning_rate``; constant if ``config`` is None.

    Raises:
      ConfigError: ``config`` does not fit its schedule (a ``learning_rate`` key among them: the
        peak is the optimizer's ``learning_rate``).

    >>> float(make_schedule(1.0, {"type": "linear", "transition_steps": 4})(1))
    0.75
    """
    if config is None:
        return optax.constant_schedule(learning_rate)
    if isinstance(config, Mapping) and "learning_rate" in config:
        raise ConfigError(
            join_path(path, "learning_rate"),
            "not a schedule key: the schedule's peak is the optimizer's learning_rate; remove it here.",
        )
    return build_component(SCHEDULES, config, path, learning_rate=learning_rate)


def _frozen(transform: optax.GradientTransformation, patterns: list[re.Pattern], path: str):
    def labels(tree):
        def label(key_path, _):
            name = param_path(key_path)
            return "frozen" if any(p.fullmatch(name) for p in patterns) else "trained"

        return jax.tree_util.tree_map_with_path(label, tree)

    partitioned = optax.partition({"trained": transform, "frozen": optax.set_to_zero()}, labels)

    def init(params):
        _check_patterns(patterns, params, lambda i: f"{path}.freeze[{i}]", "freeze")
        return partitioned.init(params)

    return optax.GradientTransformationExtraArgs(init, partitioned.update)
