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
``accumulate = k`` they advance once every ``k`` train steps. Factories registered in
``OPTIMIZERS`` and ``SCHEDULES`` take the learning rate (a schedule) first, then keyword
parameters that ARE the config keys; ``check_kwargs`` validates a config against that signature.

>>> from funcnet.train.optim import make_optimizer
>>> make_optimizer({"type": "sgd", "learning_rate": 0.1, "momentum": 0.9}).learning_rate(7)
0.1
"""

from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import optax

from .registry import OPTIMIZERS, SCHEDULES, Registry


class ConfigError(ValueError):
    """A config value is unknown, missing, of the wrong type or out of range.

    Attributes:
      path: the dotted key path (``"optimizer.schedule.warmup_steps"``), empty if unknown.
      detail: what was expected, what was received and how to fix it.

    >>> str(ConfigError("optimizer.accumulate", "expected an int >= 1, got 0"))
    'optimizer.accumulate: expected an int >= 1, got 0'
    """

    def __init__(self, path: str, detail: str):
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: {detail}" if path else detail)

    def __reduce__(self):
        return (type(self), (self.path, self.detail))


class ConfigTypeError(ConfigError, TypeError):
    """A config value has the wrong type (a string where a number is expected, ...)."""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and key else path or key


def require(ok: Any, key: str, expected: str, got: Any) -> None:
    """Raises ``ConfigError(key, "expected {expected}, got {got!r}")`` unless ``ok``.

    For range checks inside factories: ``key`` is the factory's own parameter name, and the
    caller that built it from config prefixes the path (see ``call_with_config``).

    >>> require(-5 >= 0, "warmup_steps", "an int >= 0", -5)
    Traceback (most recent call last):
    ...
    funcnet.train.optim.ConfigError: warmup_steps: expected an int >= 0, got -5
    """
    if not ok:
        raise ConfigError(key, f"expected {expected}, got {got!r}")


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked against ``annotation`` (ints widened to float); raises ConfigTypeError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in (Any, inspect.Parameter.empty) or isinstance(annotation, str | typing.ForwardRef):
        return value  # unannotated, or an annotation that could not be resolved: nothing to check
    if origin in (typing.Union, types.UnionType):
        errors = []
        for member in args:
            try:
                return _coerce(value, member, where)
            except ConfigTypeError as error:
                errors.append(error)
        nested = [e for e in errors if e.path != where]  # the member of the right kind failed inside
        if nested:
            raise nested[0]
        ok = False
    elif origin is typing.Literal:
        ok = any(value == a and type(value) is type(a) for a in args)
    elif annotation is None or annotation is type(None):
        ok = value is None
    elif annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin in (list, tuple, Sequence) or annotation in (list, tuple):
        ok = isinstance(value, list | tuple)
        if ok and args and args[-1] is not Ellipsis and origin is tuple:
            ok = len(args) == len(value)
            if ok:
                return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        if ok and args:
            items = [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif origin in (dict, Mapping) or annotation is dict:
        ok = isinstance(value, Mapping)
        if ok and args:
            return {_coerce(k, args[0], where): _coerce(v, args[1], _join(where, str(k))) for k, v in value.items()}
    elif isinstance(annotation, type):
        ok = isinstance(value, annotation)
    else:
        return value  # a typing construct this checker does not know: accept
    if not ok:
        hint = ""
        if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()):
            hint = "; write numbers without quotes"
        raise ConfigTypeError(where, f"expected {_type_name(annotation)}, got {type(value).__name__} {value!r}{hint}")
    return value


def check_kwargs(
    factory: Callable[..., Any],
    config: Mapping[str, Any],
    path: str,
    *,
    provided: Sequence[str] = (),
    also_allowed: Sequence[str] = (),
    what: str | None = None,
) -> dict[str, Any]:
    """Validates ``config`` against ``factory``'s keyword parameters, without calling anything.

    Rejects keys that are not parameters (listing the allowed ones, with the closest as a
    suggestion), missing required parameters, and values whose type does not match the
    annotation (``int``, ``float`` (an int is accepted and widened), ``bool``, ``str``, ``X | None``,
    ``list[X]``, ``dict[K, V]``, ``Literal[...]``); other annotations are not checked.

    Args:
      factory: a function whose keyword parameters are the config keys (a ``**kwargs``
        parameter accepts any key).
      config: the keys and values to check.
      path: the dotted path of ``config`` (``"optimizer.schedule"``), for the messages.
      provided: parameters that the caller fills in: not config keys, never reported missing.
      also_allowed: keys allowed in ``config`` that are not ``factory``'s (``"type"``); dropped.
      what: what ``config`` configures, for the messages; the factory's name by default.

    Returns:
      The keyword arguments for ``factory``: ``config`` without ``also_allowed`` keys, coerced.

    Raises:
      ConfigError: unknown or missing key. ConfigTypeError: wrong type.

    Example:
      >>> def warmup(steps: int, scale: float = 1.0):
      ...     return steps * scale
      >>> check_kwargs(warmup, {"type": "warmup", "steps": 10, "scale": 2}, "schedule", also_allowed=["type"])
      {'steps': 10, 'scale': 2.0}
      >>> check_kwargs(warmup, {"step": 10}, "sched")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      funcnet.train.optim.ConfigError: sched.step: unknown key for warmup; allowed: ['scale', 'steps']. Did you mean...
    """
    if not isinstance(config, Mapping):
        raise ConfigTypeError(path, f"expected a table of keys and values, got {type(config).__name__} {config!r}")
    signature = inspect.signature(factory)
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # annotations that do not resolve (NameError, ...) are simply not checked
        hints = {}
    params = {
        name: p
        for name, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in provided
    }
    any_key = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    what = what or getattr(factory, "__name__", "this component")
    allowed = sorted({*params, *also_allowed})
    for key in config:
        if not isinstance(key, str):
            raise ConfigTypeError(path, f"expected string keys, got {key!r}")
        if key in params or key in also_allowed or (any_key and key not in provided):
            continue
        if key in provided:
            raise ConfigError(_join(path, key), f"is not set here: it is passed in by the caller of {what}")
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f". Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(_join(path, key), f"unknown key for {what}; allowed: {allowed}{hint}")
    for name, p in params.items():
        if p.default is p.empty and name not in config:
            kind = _type_name(hints.get(name, Any))
            raise ConfigError(_join(path, name), f"missing required key ({kind}) for {what}")
    return {
        key: _coerce(value, hints.get(key, Any), _join(path, key))
        for key, value in config.items()
        if key not in also_allowed or key in params
    }


def call_with_config(factory: Callable[..., Any], path: str, *args: Any, **kwargs: Any) -> Any:
    """``factory(*args, **kwargs)``, with ``path`` prefixed to the key of any ConfigError it raises.

    >>> def warmup(steps: int):
    ...     require(steps >= 0, "steps", "an int >= 0", steps)
    >>> call_with_config(warmup, "optimizer.schedule", steps=-5)
    Traceback (most recent call last):
    ...
    funcnet.train.optim.ConfigError: optimizer.schedule.steps: expected an int >= 0, got -5
    """
    try:
        return factory(*args, **kwargs)
    except ConfigError as error:
        raise type(error)(_join(path, error.path), error.detail) from None


def lookup(registry: Registry, config: Any, path: str) -> Callable[..., Any]:
    """The factory named by ``config["type"]``, or a ConfigError naming ``path.type``.

    >>> lookup(OPTIMIZERS, {"type": "adma"}, "optimizer")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    funcnet.train.optim.ConfigError: optimizer.type: unknown optimizer 'adma'; registered: [...]. Did you mean 'adam'?
    """
    if not isinstance(config, Mapping):
        raise ConfigTypeError(path, f"expected a table with a 'type' key, got {type(config).__name__} {config!r}")
    where = _join(path, "type")
    if "type" not in config:
        raise ConfigError(where, f"missing; expected one of {registry.names()}")
    if not isinstance(config["type"], str):
        raise ConfigTypeError(where, f"expected str, got {type(config['type']).__name__} {config['type']!r}")
    try:
        return registry.get(config["type"], where)
    except ValueError as error:
        raise ConfigError(where, str(error).removeprefix(f"{where}: ")) from None


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


def _options(
    type: str,
    learning_rate: float,
    schedule: dict[str, Any] | None = None,
    grad_clip_norm: float | None = None,
    weight_decay: float | None = None,
    accumulate: int = 1,
    freeze: list[str] | None = None,
) -> None:
    """The keys that every optimizer config accepts (used for validation only)."""


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
    and the optimizer's own keys (``b1``, ``momentum``, ...).

    Args:
      config: the optimizer table of the config.
      path: its key path, for error messages.

    Returns:
      An ``Optimizer(transform, learning_rate)``.

    Raises:
      ConfigError: unknown, missing or out-of-range key (ConfigTypeError: wrong type);
        ``transform.init`` raises it too when a ``freeze`` pattern matches no param.

    Example:
      >>> opt = make_optimizer({"type": "adam", "learning_rate": 1e-3, "accumulate": 2,
      ...     "schedule": {"type": "warmup_cosine", "warmup_steps": 10, "decay_steps": 100}})
      >>> [round(float(opt.learning_rate(step)), 6) for step in (0, 1, 2, 20)]
      [0.0, 0.0, 0.0001, 0.001]
    """
    factory = lookup(OPTIMIZERS, config, path)
    kwargs = check_kwargs(factory, config, path, provided=("learning_rate", "weight_decay"), also_allowed=_OPTIONS)
    checked = check_kwargs(_options, {k: v for k, v in config.items() if k in _OPTIONS}, path, what="an optimizer")
    options = {**_OPTION_DEFAULTS, **checked}
    learning_rate, clip, decay = options["learning_rate"], options["grad_clip_norm"], options["weight_decay"]
    accumulate, freeze = options["accumulate"], options["freeze"] or []
    require(learning_rate >= 0, _join(path, "learning_rate"), "a float >= 0", learning_rate)
    require(clip is None or clip > 0, _join(path, "grad_clip_norm"), "a float > 0 (omit it to not clip)", clip)
    require(decay is None or decay >= 0, _join(path, "weight_decay"), "a float >= 0", decay)
    require(accumulate >= 1, _join(path, "accumulate"), "an int >= 1", accumulate)
    patterns = []
    for i, pattern in enumerate(freeze):
        try:
            patterns.append(re.compile(pattern))
        except re.error as error:
            raise ConfigError(f"{path}.freeze[{i}]", f"invalid regular expression {pattern!r}: {error}") from None
    schedule = make_schedule(learning_rate, options["schedule"], _join(path, "schedule"))

    parts = [optax.clip_by_global_norm(clip)] if clip is not None else []
    if decay is not None and "weight_decay" in inspect.signature(factory).parameters:
        kwargs["weight_decay"] = decay
    elif decay:
        parts.append(optax.add_decayed_weights(decay))
    parts.append(call_with_config(factory, path, schedule, **kwargs))
    transform = optax.chain(*parts) if len(parts) > 1 else parts[0]
    if accumulate > 1:
        transform = optax.MultiSteps(transform, every_k_schedule=accumulate).gradient_transformation()
    if patterns:
        transform = _frozen(transform, patterns, path)
    return Optimizer(transform, schedule if accumulate == 1 else lambda step: schedule(step // accumulate))


def make_schedule(learning_rate: float, config: Mapping[str, Any] | None, path: str = "schedule") -> optax.Schedule:
    """The schedule named by ``config["type"]`` with peak ``learning_rate``; constant if ``config`` is None.

    >>> float(make_schedule(1.0, {"type": "linear", "transition_steps": 4})(1))
    0.75
    """
    if config is None:
        return constant(learning_rate)
    factory = lookup(SCHEDULES, config, path)
    kwargs = check_kwargs(factory, config, path, provided=("learning_rate",), also_allowed=("type",))
    return call_with_config(factory, path, learning_rate, **kwargs)


def param_path(key_path: Sequence[Any]) -> str:
    """``"encoder/dense_0/kernel"`` for a ``jax.tree_util`` key path (the names ``freeze`` matches).

    >>> import jax
    >>> [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path({"a": {"b": 1}, "c": [2]})[0]]
    ['a/b', 'c/0']
    """
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in key_path)


def _frozen(transform: optax.GradientTransformation, patterns: list[re.Pattern], path: str):
    def labels(tree):
        def label(key_path, _):
            name = param_path(key_path)
            return "frozen" if any(p.fullmatch(name) for p in patterns) else "trained"

        return jax.tree_util.tree_map_with_path(label, tree)

    partitioned = optax.partition({"trained": transform, "frozen": optax.set_to_zero()}, labels)

    def init(params):
        names = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        for i, pattern in enumerate(patterns):
            if not any(pattern.fullmatch(name) for name in names):
                close = difflib.get_close_matches(pattern.pattern, names, n=3, cutoff=0.3) or names[:3]
                raise ConfigError(
                    f"{path}.freeze[{i}]",
                    f"pattern {pattern.pattern!r} matches no parameter, so it would freeze nothing. Patterns must "
                    f"match a whole '/'-joined path ('encoder/.*', not 'encoder'); {len(names)} params, e.g. {close}",
                )
        return partitioned.init(params)

    return optax.GradientTransformationExtraArgs(init, partitioned.update)


def _beta(key: str, value: float) -> None:
    require(0 <= value < 1, key, "a float in [0, 1)", value)


def _betas(b1: float, b2: float, eps: float = 0.0) -> None:
    _beta("b1", b1)
    _beta("b2", b2)
    require(eps >= 0, "eps", "a float >= 0", eps)


@OPTIMIZERS.register("sgd")
def sgd(learning_rate: optax.ScalarOrSchedule, momentum: float | None = None, nesterov: bool = False):
    """Stochastic gradient descent, with (Nesterov) momentum if ``momentum`` is set (``optax.sgd``).

    >>> import jax.numpy as jnp
    >>> tx = sgd(0.1, momentum=0.9)
    >>> tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))[0]["w"]
    Array([-0.1, -0.1], dtype=float32)
    """
    if momentum is not None:
        _beta("momentum", momentum)
    require(momentum is not None or not nesterov, "nesterov", "false unless momentum is set", nesterov)
    return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


@OPTIMIZERS.register("adam")
def adam(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam (``optax.adam``); ``weight_decay`` adds an L2 penalty: use adamw for decoupled decay.

    >>> import jax.numpy as jnp
    >>> tx = adam(0.1)
    >>> tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))[0]["w"].round(3)
    Array([-0.1, -0.1], dtype=float32)
    """
    _betas(b1, b2, eps)
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


@OPTIMIZERS.register("adamw")
def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
):
    """Adam with decoupled weight decay, applied to every trained param (``optax.adamw``).

    >>> import jax.numpy as jnp
    >>> tx = adamw(0.1, weight_decay=0.5)
    >>> tx.update({"w": jnp.zeros(2)}, tx.init({"w": jnp.ones(2)}), {"w": jnp.ones(2)})[0]["w"]
    Array([-0.05, -0.05], dtype=float32)
    """
    _betas(b1, b2, eps)
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adagrad")
def adagrad(learning_rate: optax.ScalarOrSchedule, initial_accumulator_value: float = 0.1, eps: float = 1e-7):
    """Adagrad (``optax.adagrad``).

    >>> import jax.numpy as jnp
    >>> tx = adagrad(0.1, initial_accumulator_value=0.0)
    >>> tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))[0]["w"].round(3)
    Array([-0.1, -0.1], dtype=float32)
    """
    require(initial_accumulator_value >= 0, "initial_accumulator_value", "a float >= 0", initial_accumulator_value)
    return optax.adagrad(learning_rate, initial_accumulator_value=initial_accumulator_value, eps=eps)


@OPTIMIZERS.register("rmsprop")
def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
):
    """RMSProp (``optax.rmsprop``), optionally centered and with momentum.

    >>> import jax.numpy as jnp
    >>> tx = rmsprop(0.1, decay=0.75)
    >>> tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))[0]["w"]
    Array([-0.2, -0.2], dtype=float32)
    """
    _beta("decay", decay)
    if momentum is not None:
        _beta("momentum", momentum)
    return optax.rmsprop(learning_rate, decay=decay, eps=eps, centered=centered, momentum=momentum, nesterov=nesterov)


@OPTIMIZERS.register("lamb")
def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
):
    """LAMB: Adam with decoupled decay and a per-tensor trust ratio (``optax.lamb``).

    >>> import jax.numpy as jnp
    >>> tx = lamb(0.1)
    >>> tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}), {"w": jnp.ones(2)})[0]["w"]
    Array([-0.1, -0.1], dtype=float32)
    """
    _betas(b1, b2, eps)
    return optax.lamb(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("lion")
def lion(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.99, weight_decay: float = 1e-3):
    """Lion: sign of an interpolated momentum, decoupled decay (``optax.lion``); use a 3-10x smaller rate.

    >>> import jax.numpy as jnp
    >>> tx = lion(0.1, weight_decay=0.0)
    >>> tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}), {"w": jnp.zeros(2)})[0]["w"]
    Array([-0.1, -0.1], dtype=float32)
    """
    _betas(b1, b2)
    return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


@SCHEDULES.register("constant")
def constant(learning_rate: float) -> optax.Schedule:
    """``learning_rate`` at every step.

    >>> constant(0.1)(1000)
    0.1
    """
    return optax.constant_schedule(learning_rate)


def _steps(key: str, value: int, minimum: int = 0) -> None:
    require(value >= minimum, key, f"an int >= {minimum}", value)


@SCHEDULES.register("warmup_cosine")
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


@SCHEDULES.register("warmup_linear")
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


@SCHEDULES.register("linear")
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


@SCHEDULES.register("exponential")
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
    require(decay_rate > 0, "decay_rate", "a float > 0", decay_rate)
    return optax.exponential_decay(learning_rate, transition_steps, decay_rate, transition_begin, staircase, end_value)


@SCHEDULES.register("cosine")
def cosine(learning_rate: float, decay_steps: int, end_value: float = 0.0, exponent: float = 1.0) -> optax.Schedule:
    """Cosine from ``learning_rate`` to ``end_value`` over ``decay_steps``, then constant.

    >>> round(float(cosine(1.0, decay_steps=4)(2)), 6)
    0.5
    """
    _steps("decay_steps", decay_steps, 1)
    alpha = end_value / learning_rate if learning_rate else 0.0
    return optax.cosine_decay_schedule(learning_rate, decay_steps, alpha, exponent)


@SCHEDULES.register("piecewise_constant")
def piecewise_constant(learning_rate: float, boundaries: list[int], scales: list[float]) -> optax.Schedule:
    """``learning_rate`` times the product of the ``scales`` whose boundary step has been reached.

    >>> [float(piecewise_constant(1.0, boundaries=[2, 4], scales=[0.5, 0.5])(s)) for s in (0, 2, 4)]
    [1.0, 0.5, 0.25]
    """
    require(len(boundaries) == len(scales), "scales", f"{len(boundaries)} scales, one per boundary", scales)
    require(all(b >= 0 for b in boundaries), "boundaries", "ints >= 0", boundaries)
    require(list(boundaries) == sorted(set(boundaries)), "boundaries", "strictly increasing steps", boundaries)
    require(all(s >= 0 for s in scales), "scales", "floats >= 0", scales)
    return optax.piecewise_constant_schedule(learning_rate, dict(zip(boundaries, scales, strict=True)))
