"""Registered components: check a config section against its factory's signature, then build it.

A component section names a registered factory with ``type``; its other keys are checked against that
factory's signature (unknown keys, missing required keys, basic types from the annotations) before the
factory is called, so a typo fails at once with its key path. :mod:`funcnet.config.run_config` uses this
for the ``model``, ``dataset`` and ``loss`` sections of a run config, :mod:`funcnet.config.optimizer` for the
``optimizer`` section and its ``schedule``. Factories check ranges with :func:`funcnet.validation.require`,
naming their own parameter; :func:`build_component` prefixes the section's path.
"""

from __future__ import annotations

import collections.abc
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from ..train.data import Dataset
from ..validation import ConfigError, check_arguments, did_you_mean, join_path, show
from .registry import Registry


class DataSplits(NamedTuple):
    """What a dataset factory returns.

    Attributes:
      train: the training examples.
      validation: examples for evaluation during training (early stopping, best checkpoint).
      test: held-out examples, evaluated once with the best checkpoint at the end.
      inputs: the batch keys passed to ``model.apply``, in order.
      preprocessing: how raw inputs become the model's inputs, as JSON-ready data, saved in the run
        directory for reopening (``funcnet.deploy.handlers.standardized``): ``{"standardize": {input: {"mean": [...],
        "std": [...]}}}``.
    """

    train: Dataset
    validation: Dataset | None = None
    test: Dataset | None = None
    inputs: tuple[str, ...] = ("x",)
    preprocessing: dict | None = None


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
      >>> from funcnet.config.registry import Registry
      >>> toys = Registry("model")
      >>> @toys.register("toy")
      ... def toy(features: int, rate: float = 0.0):
      ...     return features
      >>> validate_component(toys, {"type": "toy", "features": "64"}, "model")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      funcnet.validation.ConfigError: model.features: expected an int, got "64" (a string); write numbers...
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
      >>> from funcnet.config.registry import Registry
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
        raise ConfigError(join_path(path, e.path), e.detail) from e
    except (TypeError, ValueError) as e:
        raise ConfigError(path, f"{registry.kind} {section['type']!r} rejected its config: {e}") from e


# ---------------------------------------------------------------------------------------------
# Helpers


def type_of(section: Any, path: str, registry: Registry | None) -> str:
    """The section's ``type``, after checking the section is a table and ``type`` a string."""
    registered = f" Registered: {', '.join(registry.names()) or '(none)'}." if registry is not None else ""
    if not isinstance(section, collections.abc.Mapping):
        raise ConfigError(path, f'expected a table with a "type" key, got {show(section)}.{registered}')
    if "type" not in section:
        raise ConfigError(join_path(path, "type"), f"missing; name the component to use.{registered}")
    if not isinstance(section["type"], str):
        raise ConfigError(join_path(path, "type"), f"expected a string, got {show(section['type'])}.{registered}")
    return section["type"]


def _resolve(
    registry: Registry, section: Any, path: str, provided: tuple[str, ...], also_allowed: tuple[str, ...] = ()
) -> tuple[Callable[..., Any], dict]:
    """The factory and the checked keyword arguments (lists made tuples where annotated so)."""
    name = type_of(section, path, registry)
    if name not in registry.names():
        detail = did_you_mean(name, registry.names(), f"{registry.kind} {name!r}")
        raise ConfigError(
            join_path(path, "type"),
            f"{detail} To add your own, decorate its factory with @register({name!r}) on the {registry.kind} "
            f"registry in your module and name that module in imports.",
        )
    factory = registry.get(name, join_path(path, "type"))
    given = {key: value for key, value in section.items() if key != "type"}
    what = f"{registry.kind} {name!r}"
    return factory, check_arguments(factory, given, path, what, provided=provided, also_allowed=also_allowed)
