"""Registries: components picked by name from config files, AllenNLP-style.

A registry maps a ``"type"`` name to a factory. Users add their own with a decorator, in their
own module, and name that module in the config (``imports = ["my_models"]``) or import it first.

>>> from funcnet.config.registry import Registry
>>> widgets = Registry("widget")
>>> @widgets.register("square")
... def square(side: int = 2):
...     return side * side
>>> widgets.get("square", "model.type")(side=3)
9
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """Names -> factories for one kind of component (models, datasets, losses, optimizers)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: registers ``factory`` under ``name``; a name can be registered once.

        >>> r = Registry("thing")
        >>> @r.register("one")
        ... def one():
        ...     return 1
        >>> r.names()
        ['one']
        """

        def decorate(factory: F) -> F:
            existing = self._factories.get(name)
            if existing is not None and existing is not factory:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (by {existing.__module__}.{existing.__qualname__})"
                )
            self._factories[name] = factory
            return factory

        return decorate

    def get(self, name: str, path: str = "type") -> Callable[..., Any]:
        """The factory registered as ``name``; ``path`` is the config key, for the error message.

        >>> Registry("model").get("mlp", "model.type")
        Traceback (most recent call last):
        ...
        ValueError: model.type: unknown model 'mlp'; registered: []
        """
        if name not in self._factories:
            close = difflib.get_close_matches(str(name), self._factories, n=1)
            hint = f". Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{path}: unknown {self.kind} {name!r}; registered: {self.names()}{hint}")
        return self._factories[name]

    def names(self) -> list[str]:
        """The registered names, sorted.

        >>> Registry("loss").names()
        []
        """
        return sorted(self._factories)


MODELS = Registry("model")
"""Model factories: ``(**config) -> funcnet.Model``."""
DATASETS = Registry("dataset")
"""Dataset factories: ``(**config) -> dict of splits`` (``{"train": ..., "validation": ...}``)."""
LOSSES = Registry("loss")
"""Per-example loss factories: ``(**config) -> loss_fn(outputs, batch) -> [batch]`` or a dict of them."""
OPTIMIZERS = Registry("optimizer")
"""Optax optimizer factories: ``(learning_rate, **config) -> optax.GradientTransformation``.

The first parameter must be named ``learning_rate``: it receives an ``optax.Schedule`` (built from the
optimizer's ``learning_rate`` and ``schedule`` keys), not a number. The other parameters are the
optimizer's own config keys; a ``weight_decay`` parameter receives the config's ``weight_decay`` when set.
"""
SCHEDULES = Registry("schedule")
"""Learning-rate schedule factories: ``(learning_rate, **config) -> optax.Schedule``.

The first parameter, ``learning_rate``, receives the peak rate (the optimizer's ``learning_rate``, a
float); the other parameters are the ``schedule`` table's keys. Steps count optimizer updates.
"""
