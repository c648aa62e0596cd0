"""Run configs: read TOML or JSON, apply ``--override``s, and validate everything before anything is built.

A run config has the sections ``imports`` (optional), ``model``, ``dataset``, ``loss``, ``optimizer`` and
``trainer``. ``model``, ``dataset`` and ``loss`` name a registered factory with ``type``; their other keys are
checked against that factory's signature (see :mod:`funcnet.config.components`), and ``trainer`` against
:class:`TrainerConfig`, so a typo fails at once with its key path instead of after compilation.
``optimizer`` is checked here only for its ``type``; ``funcnet.config.optimizer`` checks the rest.

>>> config = apply_overrides({"trainer": {"epochs": 3}}, ["trainer.batch_size=64"])
>>> TrainerConfig.from_dict(config["trainer"]).batch_size
64
"""

from __future__ import annotations

import copy
import datetime
import importlib
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ..train.options import TrainerConfig
from ..validation import ConfigError, did_you_mean, join_path, show
from .components import type_of, validate_component
from .registry import DATASETS, LOSSES, MODELS, Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
    import tomli as tomllib

SECTIONS = ("task", "imports", "model", "dataset", "loss", "optimizer", "trainer")
"""The top-level sections a run config may have."""
REQUIRED_SECTIONS = ("model", "dataset", "loss", "optimizer", "trainer")
"""The sections a run config must have."""


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a run config from a ``.toml`` or ``.json`` file (the extension picks the format).

    Args:
      path: the config file.

    Returns:
      The config as nested dicts; TOML tables and JSON objects read alike.

    Raises:
      FileNotFoundError: the file does not exist.
      ConfigError: another extension; a syntax error (the message names the file, line and
        column); a top level that is not a table; a JSON key given twice; a TOML date or time.

    Example:
      >>> import pathlib, tempfile
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     file = pathlib.Path(tmp, "run.toml")
      ...     _ = file.write_text("[trainer]\\nepochs = 3\\n")
      ...     load_config(file)
      {'trainer': {'epochs': 3}}
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError("", f"{file}: expected a .toml or .json config file, got extension {suffix or '(none)'!r}.")
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"config file {str(file)!r} does not exist (working directory: {os.getcwd()})"
        ) from None
    except UnicodeDecodeError as e:
        raise ConfigError("", f"{file}: expected UTF-8 text, {e}") from None
    if suffix == ".toml":
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("", f"{file}: invalid TOML: {e}") from None
    else:
        try:
            config = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            raise ConfigError("", f"{file}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        except ConfigError as e:
            raise ConfigError("", f"{file}: key {e.path!r} appears twice in one JSON object; keep one.") from None
    if not isinstance(config, dict):
        raise ConfigError("", f"{file}: expected a table of sections at the top level, got {show(config)}")
    _reject_dates(config, "", file)
    return config


def merge_configs(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, tables merged key by key (presets, then files, then overrides).

    >>> merge_configs({"model": {"hidden": 8, "layers": 1}}, {"model": {"hidden": 16}})
    {'model': {'hidden': 16, 'layers': 1}}
    """
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        nested = isinstance(value, Mapping) and isinstance(merged.get(key), Mapping)
        merged[key] = merge_configs(merged[key], value) if nested else copy.deepcopy(value)
    return merged


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Returns a copy of ``config`` with ``KEY=VALUE`` overrides (``--override``) applied in order.

    ``KEY`` is a dotted path; missing tables on the way are created (unknown keys are then
    rejected by validation). ``VALUE`` is read as JSON when it parses (``3``, ``1e-3``,
    ``true``, ``null``, ``[64, 64]``, ``"3"``) and taken as a plain string otherwise, so quote
    a string that looks like a number: ``model.name='"3"'``.

    Args:
      config: the loaded config; not modified.
      overrides: strings such as ``"trainer.batch_size=64"``.

    Returns:
      The new config.

    Raises:
      ConfigError: an override without ``=`` or with an empty key part, or one whose path runs
        through a value that is not a table.

    Example:
      >>> apply_overrides({"model": {"type": "mlp"}}, ["model.hidden=[64, 64]", "model.activation=gelu"])
      {'model': {'type': 'mlp', 'hidden': [64, 64], 'activation': 'gelu'}}
    """
    result = copy.deepcopy(dict(config))
    for override in overrides:
        key, equals, text = override.partition("=")
        parts = key.strip().split(".")
        if not equals or not all(parts):
            raise ConfigError(
                "", f"--override {override!r}: expected KEY=VALUE with a dotted KEY, e.g. trainer.epochs=5"
            )
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        node = result
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(where, f"--override {override!r}: {where} is {show(child)}, not a table.")
            node = child
        node[parts[-1]] = value
    return result


def import_modules(config: Mapping[str, Any], search_dirs: Sequence[str | os.PathLike[str]] | None = None) -> list[str]:
    """Imports the modules named in the config's ``imports``, so their ``@register`` decorators run.

    Args:
      config: the run config; ``imports`` (optional) is a list of module names.
      search_dirs: directories put in front of ``sys.path`` while importing (and removed after);
        None: the working directory, so ``imports = ["my_models"]`` finds ``./my_models.py``
        also when run through the ``funcnet`` console script.

    Returns:
      The imported module names.

    Raises:
      ConfigError: ``imports`` is not a list of strings, or a module cannot be imported; the
        path (``imports[0]``) and the message name the module.

    Example:
      >>> import_modules({"imports": ["json", "funcnet.config.registry"]})
      ['json', 'funcnet.config.registry']
    """
    names = config.get("imports", [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError("imports", f'expected a list of module names, e.g. ["my_models"], got {show(names)}')
    dirs = [os.getcwd()] if search_dirs is None else [os.fspath(d) for d in search_dirs]
    added = [d for d in dict.fromkeys(str(Path(d).resolve()) for d in dirs) if d not in sys.path]
    sys.path[:0] = added
    importlib.invalidate_caches()
    try:
        for i, name in enumerate(names):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as e:
                if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                    raise ConfigError(f"imports[{i}]", f"importing {name!r} failed: {type(e).__name__}: {e}") from e
                searched = ", ".join(added) or "sys.path"
                raise ConfigError(
                    f"imports[{i}]",
                    f"no module named {name!r} (searched {searched} and sys.path). Fix: check the spelling, run "
                    f"from the directory that holds it, or add that directory to PYTHONPATH.",
                ) from e
            except Exception as e:  # whatever the user's module raises, report it with the module's name
                raise ConfigError(f"imports[{i}]", f"importing {name!r} failed: {type(e).__name__}: {e}") from e
    finally:
        for d in added:
            sys.path.remove(d)
    return list(names)


def module_files(names: Sequence[str]) -> dict[str, str | None]:
    """The file each imported module was loaded from (None for a namespace or built-in module)."""
    return {name: getattr(sys.modules.get(name), "__file__", None) for name in names}


class RunConfig(NamedTuple):
    """A validated run config: component sections as given, the trainer with its defaults.

    Example:
      >>> RunConfig({"type": "mlp"}, {}, {}, {}, TrainerConfig(epochs=1)).trainer.epochs
      1
    """

    model: dict[str, Any]  # {"type": <MODELS name>, **factory kwargs}
    dataset: dict[str, Any]  # {"type": <DATASETS name>, **factory kwargs}
    loss: dict[str, Any]  # {"type": <LOSSES name>, **factory kwargs}
    optimizer: dict[str, Any]  # {"type": ..., ...}, checked by funcnet.config.optimizer
    trainer: TrainerConfig
    imports: tuple[str, ...] = ()


def validate_config(
    config: Mapping[str, Any],
    *,
    registries: Mapping[str, Registry] | None = None,
    search_dirs: Sequence[str | os.PathLike[str]] | None = None,
) -> RunConfig:
    """Checks a whole run config before anything is built: sections, imports, trainer, components.

    Args:
      config: the loaded config (after overrides).
      registries: registries for ``"model"``, ``"dataset"``, ``"loss"``; default the global ones.
      search_dirs: where ``imports`` are looked for first (see :func:`import_modules`).

    Returns:
      The RunConfig.

    Raises:
      ConfigError: for the first problem found, with its key path.

    Example:
      >>> from funcnet.config.registry import Registry
      >>> models = Registry("model")
      >>> _ = models.register("toy")(lambda features=1: features)
      >>> config = {"model": {"type": "toy", "features": 2}, "dataset": {"type": "d"}, "loss": {"type": "l"},
      ...           "optimizer": {"type": "adam"}, "trainer": {"epochs": 1, "batch_size": -5}}
      >>> validate_config(config, registries={"model": models})
      Traceback (most recent call last):
      ...
      funcnet.validation.ConfigError: trainer.batch_size: expected an int >= 1, got -5
    """
    if not isinstance(config, Mapping):
        raise ConfigError("", f"expected a table of sections at the top level, got {show(config)}")
    for key in config:
        if key not in SECTIONS:
            raise ConfigError(str(key), did_you_mean(key, SECTIONS, "section"))
    for key in REQUIRED_SECTIONS:
        if key not in config:
            raise ConfigError(
                key, f"missing section; a run config needs {', '.join(REQUIRED_SECTIONS)} (imports is optional)"
            )
    imports = import_modules(config, search_dirs)
    trainer = TrainerConfig.from_dict(config["trainer"])
    registries = {"model": MODELS, "dataset": DATASETS, "loss": LOSSES, **(registries or {})}
    for name in ("model", "dataset", "loss"):
        validate_component(registries[name], config[name], name)
    type_of(config["optimizer"], "optimizer", None)
    sections = {name: copy.deepcopy(dict(config[name])) for name in ("model", "dataset", "loss", "optimizer")}
    return RunConfig(**sections, trainer=trainer, imports=tuple(imports))


def resolved_config(config: Mapping[str, Any] | RunConfig) -> dict[str, Any]:
    """The config with the trainer defaults filled in: what is saved as JSON beside the checkpoints.

    Example:
      >>> resolved_config({"trainer": {"max_steps": 10}})["trainer"]["batch_size"]
      32
    """
    if isinstance(config, RunConfig):
        config = {**config._asdict(), "imports": list(config.imports), "trainer": config.trainer.to_dict()}
    resolved = copy.deepcopy(dict(config))
    resolved["trainer"] = TrainerConfig.from_dict(config.get("trainer", {})).to_dict()
    return resolved


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = {}
    for key, value in pairs:
        if key in result:
            raise ConfigError(key, "duplicate key")
        result[key] = value
    return result


def _reject_dates(value: Any, path: str, file: Path) -> None:
    if isinstance(value, (datetime.date, datetime.time)):
        raise ConfigError(path, f"{file}: TOML dates and times are not supported, got {value}. Fix: quote it.")
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_dates(item, join_path(path, key), file)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _reject_dates(item, f"{path}[{i}]", file)
