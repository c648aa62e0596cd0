"""Registered components: check a config section against its factory's signature, then build it.

A component section names a registered factory with ``type``; its other keys are checked against that
factory's signature (unknown keys, missing required keys, basic types from the annotations) before the
factory is called, so a typo fails at once with its key path. :mod:`funcnet.train.config` uses this
for the ``model``, ``dataset`` and ``loss`` sections of a run config, :mod:`funcnet.train.optim` for the
``optimizer`` section and its ``schedule``. Factories check ranges with :func:`require`, naming their own
parameter; :func:`build_component` prefixes the section's path.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Union

from ..precision import compute_dtype_of
from .registry import Registry


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range.

    Attributes:
      path: the dotted key path (``"trainer.batch_size"``, ``"model.hidden[1]"``, ``"imports[0]"``);
        empty for errors about the whole file.
      detail: what was expected, what was received and how to fix it.

    >>> str(ConfigError("trainer.batch_size", "expected an int >= 1, got -5"))
    'trainer.batch_size: expected an int >= 1, got -5'
    """

    def __init__(self, path: str, detail: str):
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: {detail}" if path else detail)

    def __reduce__(self):
        return (type(self), (self.path, self.detail))


def validate_component(
    registry: Registry, section: Any, path: str, *, provided: Iterable[str] = (), also_allowed: Iterable[str] = ()
) -> None:
    """Checks a component section against its registered factory, without calling it.

    Args:
      registry: where ``section["type"]`` is looked up.
      section: a table with ``type`` and the factory's keyword arguments.
      path: the section's key path, for messages (``"model"``).
      provided: argument names the caller passes itself (``build_component``'s ``extra``); the
        config must not set them (unless they are also in ``also_allowed``).
      also_allowed: keys the caller reads from the section itself (an optimizer's ``schedule``);
        allowed whatever the factory's signature, not checked here, not passed to the factory.

    Raises:
      ConfigError: the section is not a table; ``type`` is missing or unknown; a key is unknown,
        missing or of the wrong type for the factory's annotations (``int``, ``float`` (ints
        accepted), ``str``, ``bool``, lists, tuples, dicts, ``Literal`` and unions of these;
        other annotations are not checked).

    Example:
      >>> from funcnet.train.registry import Registry
      >>> toys = Registry("model")
      >>> @toys.register("toy")
      ... def toy(features: int, rate: float = 0.0):
      ...     return features
      >>> validate_component(toys, {"type": "toy", "features": "64"}, "model")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      funcnet.train.components.ConfigError: model.features: expected an int, got "64" (a string); write numbers...
    """
    _resolve(registry, section, path, tuple(provided), tuple(also_allowed))


def build_component(
    registry: Registry, section: Any, path: str, *, also_allowed: Iterable[str] = (), **extra: Any
) -> Any:
    """Validates a component section (see :func:`validate_component`), then calls its factory.

    Args:
      registry: where ``section["type"]`` is looked up.
      section: a table with ``type`` and the factory's keyword arguments.
      path: the section's key path, for messages (``"model"``).
      also_allowed: keys of the section the caller handles itself (see :func:`validate_component`).
      **extra: keyword arguments the caller adds (not from the config).

    Returns:
      What the factory returns.

    Raises:
      ConfigError: the section does not fit the factory; the factory raised a ConfigError (its
        key, relative to the section, is prefixed with ``path``: see :func:`require`), or rejected
        its values with a ValueError or TypeError (chained as the cause).

    Example:
      >>> from funcnet.train.registry import Registry
      >>> toys = Registry("model")
      >>> @toys.register("toy")
      ... def toy(features: int, sizes: tuple[int, ...] = (), scale: float = 1.0):
      ...     return features, sizes, scale
      >>> build_component(toys, {"type": "toy", "features": 3, "sizes": [4, 5], "scale": 2}, "model")
      (3, (4, 5), 2.0)
    """
    factory, kwargs = _resolve(registry, section, path, tuple(extra), tuple(also_allowed))
    try:
        return factory(**kwargs, **extra)
    except ConfigError as e:
        raise ConfigError(_join(path, e.path), e.detail) from e
    except (TypeError, ValueError) as e:
        raise ConfigError(path, f"{registry.kind} {section['type']!r} rejected its config: {e}") from e


# ---------------------------------------------------------------------------------------------
# Helpers: component signatures, value checks against annotations, messages.


def _type_of(section: Any, path: str, registry: Registry | None) -> str:
    """The section's ``type``, after checking the section is a table and ``type`` a string."""
    registered = f" Registered: {', '.join(registry.names()) or '(none)'}." if registry is not None else ""
    if not isinstance(section, Mapping):
        raise ConfigError(path, f'expected a table with a "type" key, got {_show(section)}.{registered}')
    if "type" not in section:
        raise ConfigError(_join(path, "type"), f"missing; name the component to use.{registered}")
    if not isinstance(section["type"], str):
        raise ConfigError(_join(path, "type"), f"expected a string, got {_show(section['type'])}.{registered}")
    return section["type"]


def _resolve(
    registry: Registry, section: Any, path: str, provided: tuple[str, ...], also_allowed: tuple[str, ...] = ()
) -> tuple[Callable[..., Any], dict]:
    """The factory and the checked keyword arguments (lists made tuples where annotated so)."""
    name = _type_of(section, path, registry)
    if name not in registry.names():
        detail = _unknown(name, registry.names(), f"{registry.kind} {name!r}")
        raise ConfigError(
            _join(path, "type"),
            f"{detail} To add your own, decorate its factory with @register({name!r}) on the {registry.kind} "
            f"registry in your module and name that module in imports.",
        )
    factory = registry.get(name, _join(path, "type"))
    given = {key: value for key, value in section.items() if key != "type"}
    what = f"{registry.kind} {name!r}"
    return factory, check_arguments(factory, given, path, what, provided=provided, also_allowed=also_allowed)


def check_arguments(
    factory: Callable[..., Any],
    config: Mapping[str, Any],
    path: str,
    what: str,
    *,
    provided: Iterable[str] = (),
    also_allowed: Iterable[str] = (),
) -> dict[str, Any]:
    """Checks ``config`` against ``factory``'s keyword parameters, without calling it.

    What :func:`validate_component` does once the factory is found; for tables that name no
    ``type``. Keys are checked as described there.

    Args:
      factory: a function or class whose keyword parameters are the config keys.
      config: the keys and values.
      path: the key path of ``config``, for messages.
      what: what ``config`` configures, for messages (``"optimizer 'adam'"``).
      provided: parameters the caller passes itself; ``config`` must not set them.
      also_allowed: keys allowed in ``config`` whatever the signature; left out of the result.

    Returns:
      The keyword arguments for ``factory``: ``config`` without ``also_allowed`` keys, checked
      (ints made floats and lists made tuples where so annotated).

    Raises:
      ConfigError: a key is unknown, missing or of the wrong type.

    Example:
      >>> def warmup(steps: int, scale: float = 1.0):
      ...     return steps * scale
      >>> check_arguments(warmup, {"steps": 10, "scale": 2}, "schedule", "schedule 'warmup'")
      {'steps': 10, 'scale': 2.0}
      >>> check_arguments(warmup, {"step": 10}, "schedule", "schedule 'warmup'")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      funcnet.train.components.ConfigError: schedule.step: unknown key for schedule 'warmup'. Did you mean 'steps'? ...
    """
    provided, also_allowed = tuple(provided), tuple(also_allowed)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to check against (some builtins): the factory decides
        return {key: value for key, value in config.items() if key not in also_allowed}
    hints = _type_hints(factory, signature)
    params = signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for key in provided:
        if key in config and key not in also_allowed:
            raise ConfigError(_join(path, key), f"set by funcnet when it builds the {what}; remove it.")
        if key not in named and not takes_any:
            raise ConfigError(_join(path, "type"), f"{what} does not take {key!r}, which funcnet passes; add it.")
    kwargs = {}
    for key, value in config.items():
        if key in also_allowed:
            continue
        if key in named:
            kwargs[key] = _check(value, hints.get(key, Any), _join(path, key))
        elif takes_any:
            kwargs[key] = value
        else:
            allowed = {n for n in named if n not in provided} | set(also_allowed)
            raise ConfigError(_join(path, str(key)), _unknown(key, allowed, f"key for {what}"))
    for n, p in params.items():
        if p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
            raise ConfigError(_join(path, "type"), f"{what} needs {n!r} by position; a config passes keywords only.")
    missing = [n for n, p in named.items() if p.default is p.empty and n not in config and n not in provided]
    if missing:
        raise ConfigError(_join(path, missing[0]), f"missing; {what} requires {', '.join(map(repr, missing))}.")
    return kwargs


def check_compute_dtype(value: Any, path: str) -> None:
    """A config's ``compute_dtype``: ``""`` (float32) or a floating dtype name; ConfigError otherwise.

    >>> check_compute_dtype("int8", "model.compute_dtype")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    funcnet.train.components.ConfigError: model.compute_dtype: compute_dtype must be a floating dtype ...
    """
    try:
        compute_dtype_of(path, value or None)
    except TypeError:
        raise ConfigError(
            path, f"compute_dtype must be a floating dtype such as 'bfloat16' (or \"\" for float32), got {value!r}"
        ) from None


def require(ok: Any, key: str, expected: str, got: Any) -> None:
    """Raises ``ConfigError(key, "expected {expected}, got {got}")`` unless ``ok``: a factory's range check.

    ``key`` is the factory's own parameter; :func:`build_component` prefixes the section's path.

    >>> require(-5 >= 0, "warmup_steps", "an int >= 0", -5)
    Traceback (most recent call last):
    ...
    funcnet.train.components.ConfigError: warmup_steps: expected an int >= 0, got -5
    """
    if not ok:
        raise ConfigError(key, f"expected {expected}, got {_text(got)}")


def _type_hints(factory: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    """Resolved annotations (string annotations included); those that cannot be resolved are not checked."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # e.g. a name imported under TYPE_CHECKING: resolve the annotations one by one
        namespace = getattr(inspect.unwrap(getattr(target, "func", target)), "__globals__", {})
    hints = {}
    for name, parameter in signature.parameters.items():
        try:  # what get_type_hints does for each string annotation
            hints[name] = (
                eval(parameter.annotation, namespace) if isinstance(parameter.annotation, str) else parameter.annotation
            )
        except Exception:
            continue
    return hints


_SEQUENCES = (list, tuple, collections.abc.Sequence)
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_MAPPINGS = (dict, collections.abc.Mapping)


def _check(value: Any, hint: Any, path: str) -> Any:
    """``value`` if it fits ``hint`` (ints made floats, lists made tuples where so annotated)."""
    if hint is Any or hint is inspect.Parameter.empty or isinstance(hint, (str, typing.ForwardRef)):
        return value
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if hint is None or hint is type(None):
        ok = value is None
    elif origin in (Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return _check(value, arg, path)
            except ConfigError as e:
                errors.append(e)
        deeper = [e for e in errors if e.path != path]  # a list of the right kind with a wrong item
        if deeper:
            raise deeper[0]
        ok = False
    elif origin is Literal:
        ok = any(type(value) is type(a) and value == a for a in args)
    elif origin is bool:
        ok = isinstance(value, bool)
    elif origin in (int, float, str):  # a bool is not a number here; an int is a float
        ok = isinstance(value, (int, float) if origin is float else origin) and not isinstance(value, bool)
        value = float(value) if ok and origin is float else value
    elif origin in _SEQUENCES:
        if isinstance(value, (list, tuple)):
            fixed = origin is tuple and bool(args) and args[-1] is not Ellipsis
            if fixed and len(value) != len(args):
                raise ConfigError(path, f"expected a list of {len(args)} items, got {_show(value)}")
            item_hints = args if fixed else [args[0] if args else Any] * len(value)
            items = [_check(v, h, f"{path}[{i}]") for i, (v, h) in enumerate(zip(value, item_hints, strict=True))]
            return tuple(items) if origin is tuple else items
        ok = False
    elif origin in _MAPPINGS:
        if isinstance(value, dict):
            item_hint = args[1] if len(args) == 2 else Any
            return {k: _check(v, item_hint, _join(path, str(k))) for k, v in value.items()}
        ok = False
    else:  # callables, dtypes, user classes: config files cannot spell them; the factory decides
        return value
    if not ok:
        fix = "; write numbers without quotes" if isinstance(value, str) and _NUMBER.fullmatch(value.strip()) else ""
        raise ConfigError(path, f"expected {_want(hint)}, got {_show(value)}{fix}")
    return value


def _want(hint: Any) -> str:
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if hint is None or hint is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(_want(arg) for arg in args)
    if origin is Literal:
        return " or ".join(json.dumps(arg) for arg in args)
    names = {bool: "true or false", int: "an int", float: "a number", str: "a string"}
    if origin in names:
        return names[origin]
    return "a list" if origin in _SEQUENCES else "a table" if origin in _MAPPINGS else str(hint)


def _show(value: Any) -> str:
    """``-5 (an int)``, ``true (a boolean)``: values as the config file spells them."""
    if value is None:
        return "null"
    kinds = [(bool, "a boolean"), (int, "an int"), (float, "a float"), (str, "a string")]
    kinds += [((list, tuple), "a list"), (dict, "a table")]
    kind = next((k for t, k in kinds if isinstance(value, t)), f"a {type(value).__name__}")
    return f"{_text(value)} ({kind})"


def _text(value: Any) -> str:
    """``-5``, ``true``, ``"x"``, ``[1, 2]``: a value as the config file spells it, cut at 60 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text[:57] + "..." if len(text) > 60 else text


def _unknown(key: Any, allowed: Iterable[str], what: str) -> str:
    allowed = sorted(allowed)
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {what}.{hint} Allowed: {', '.join(allowed) or '(none)'}."


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and key else path or key
