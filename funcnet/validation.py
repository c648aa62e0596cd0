"""Settings checked against type hints, with the key path of the first wrong value.

Used by the engine's ``TrainerConfig`` and by the config package (``funcnet.config``) alike, so it
sits below both. A wrong value raises :class:`ConfigError` naming its path, what was expected, what was
given and, for an unknown key, the closest allowed one.
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

from .precision import compute_dtype_of


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
      funcnet.validation.ConfigError: schedule.step: unknown key for schedule 'warmup'. Did you mean 'steps'? ...
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
            raise ConfigError(join_path(path, key), f"set by funcnet when it builds the {what}; remove it.")
        if key not in named and not takes_any:
            raise ConfigError(join_path(path, "type"), f"{what} does not take {key!r}, which funcnet passes; add it.")
    kwargs = {}
    for key, value in config.items():
        if key in also_allowed:
            continue
        if key in named:
            kwargs[key] = check_value(value, hints.get(key, Any), join_path(path, key))
        elif takes_any:
            kwargs[key] = value
        else:
            allowed = {n for n in named if n not in provided} | set(also_allowed)
            raise ConfigError(join_path(path, str(key)), did_you_mean(key, allowed, f"key for {what}"))
    for n, p in params.items():
        if p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
            raise ConfigError(
                join_path(path, "type"), f"{what} needs {n!r} by position; a config passes keywords only."
            )
    missing = [n for n, p in named.items() if p.default is p.empty and n not in config and n not in provided]
    if missing:
        raise ConfigError(join_path(path, missing[0]), f"missing; {what} requires {', '.join(map(repr, missing))}.")
    return kwargs


def check_compute_dtype(value: Any, path: str) -> None:
    """A config's ``compute_dtype``: ``""`` (float32) or a floating dtype name; ConfigError otherwise.

    >>> check_compute_dtype("int8", "model.compute_dtype")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    funcnet.validation.ConfigError: model.compute_dtype: compute_dtype must be a floating dtype ...
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
    funcnet.validation.ConfigError: warmup_steps: expected an int >= 0, got -5
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


def check_value(value: Any, hint: Any, path: str) -> Any:
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
                return check_value(value, arg, path)
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
                raise ConfigError(path, f"expected a list of {len(args)} items, got {show(value)}")
            item_hints = args if fixed else [args[0] if args else Any] * len(value)
            items = [check_value(v, h, f"{path}[{i}]") for i, (v, h) in enumerate(zip(value, item_hints, strict=True))]
            return tuple(items) if origin is tuple else items
        ok = False
    elif origin in _MAPPINGS:
        if isinstance(value, dict):
            item_hint = args[1] if len(args) == 2 else Any
            return {k: check_value(v, item_hint, join_path(path, str(k))) for k, v in value.items()}
        ok = False
    else:  # callables, dtypes, user classes: config files cannot spell them; the factory decides
        return value
    if not ok:
        fix = "; write numbers without quotes" if isinstance(value, str) and _NUMBER.fullmatch(value.strip()) else ""
        raise ConfigError(path, f"expected {_want(hint)}, got {show(value)}{fix}")
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


def show(value: Any) -> str:
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


def did_you_mean(key: Any, allowed: Iterable[str], what: str) -> str:
    allowed = sorted(allowed)
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {what}.{hint} Allowed: {', '.join(allowed) or '(none)'}."


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path and key else path or key
