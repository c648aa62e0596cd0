"""Run configs: read TOML or JSON, apply ``--override``s, and validate everything before anything is built.

A run config has the sections ``imports`` (optional), ``model``, ``dataset``, ``loss``, ``optimizer`` and
``trainer``. ``model``, ``dataset`` and ``loss`` name a registered factory with ``type``; their other keys are
checked against that factory's signature (see :mod:`funcnet.train.components`), and ``trainer`` against
:class:`TrainerConfig`, so a typo fails at once with its key path instead of after compilation.
``optimizer`` is checked here only for its ``type``; ``funcnet.train.optim`` checks the rest.

>>> config = apply_overrides({"trainer": {"epochs": 3}}, ["trainer.batch_size=64"])
>>> TrainerConfig.from_dict(config["trainer"]).batch_size
64
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import importlib
import json
import os
import sys
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from .components import ConfigError, _check, _join, _show, _type_of, _unknown, validate_component
from .registry import DATASETS, LOSSES, MODELS, Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
    import tomli as tomllib

SECTIONS = ("imports", "model", "dataset", "loss", "optimizer", "trainer")
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
        raise ConfigError("", f"{file}: expected a table of sections at the top level, got {_show(config)}")
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
                raise ConfigError(where, f"--override {override!r}: {where} is {_show(child)}, not a table.")
            node = child
        node[parts[-1]] = value
    return result


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """The ``trainer`` section: how long to train, and how to batch, evaluate, checkpoint and log.

    Attributes:
      epochs: passes over the training set; None: no epoch limit. Set epochs, max_steps or both
        (the first limit reached ends the run).
      max_steps: optimizer steps in all; None: no step limit.
      batch_size: global batch size, split across the devices.
      eval_batch_size: batch size for evaluation; None: ``batch_size``.
      eval_every: evaluate every this many steps; None: at the end of each epoch. The last step is evaluated too.
      log_every: log train loss, metrics and learning rate every this many steps.
      checkpoint_every: save every this many steps; None: at each evaluation.
      keep_checkpoints: how many of the latest checkpoints to keep.
      keep_best: how many best-by-``metric`` checkpoints to keep beside the latest.
      metric: the validation metric that picks the best checkpoint and drives early stopping.
      mode: ``"min"`` if a lower ``metric`` is better, ``"max"`` if a higher one is.
      patience: stop after this many evaluations in a row without improvement; None: never.
      seed: seeds parameter init, dropout keys and the shuffle order.
      shuffle: shuffle the training set each epoch (a permutation from ``seed`` and the epoch).
      drop_remainder: drop the last incomplete training batch instead of padding it with masked examples.
      skip_nan_updates: on a NaN/Inf loss or gradient, skip that update and go on instead of stopping the run.
      diverge_factor: stop the run as diverged (exit code 1, nothing saved) when a logged training loss exceeds
        this many times the first step's; 0: never.
      log_grad_norm: also compute the global gradient norm in every step, logged as ``train/grad_norm``
        (mean over ``log_every`` steps, and a histogram at each evaluation). Off by default: on a small
        model its reductions cost a noticeable part of the step.
      prefetch: how many batches a background thread keeps ready ahead of the step (it refills them
        when half are taken), so that slow input (files, parsing) overlaps the running step; 0: no
        thread, each batch is made when the step needs it. None (the default): 0 for in-memory arrays
        (``Batches`` of an ``ArrayDataset``: slicing a batch costs less than handing it over between
        threads), 2 for any other source. Unused for arrays kept on the devices (``device_data_mib``).
      device_data_mib: in-memory training arrays (``Batches`` of an ``ArrayDataset``) of up to this
        many MiB in all are copied to every device once, and each step gathers its batch's rows
        there, so the host sends only the examples' numbers, a plan of many epochs at a time
        (``funcnet.train.resident``); 0: off, batches are sliced on the host. Single-process runs only.
      progress: show a progress bar (moved when metrics are read: at log steps, and at least every second).
      peer_timeout: multi-process runs: seconds without a heartbeat from another process after which this
        one prints which process was lost and the last complete checkpoint, and exits with code 1
        (``funcnet.train.distributed.PeerWatch``).

    Example:
      >>> trainer = TrainerConfig.from_dict({"epochs": 10, "batch_size": 128, "patience": 3})
      >>> trainer.batch_size, trainer.metric, trainer.mode
      (128, 'loss', 'min')
    """

    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int | None = None
    eval_every: int | None = None
    log_every: int = 50
    checkpoint_every: int | None = None
    keep_checkpoints: int = 3
    keep_best: int = 1
    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    patience: int | None = None
    seed: int = 0
    shuffle: bool = True
    drop_remainder: bool = False
    skip_nan_updates: bool = False
    diverge_factor: float = 1000.0
    log_grad_norm: bool = False
    prefetch: int | None = None
    device_data_mib: int = 256
    progress: bool = True
    peer_timeout: int = 60

    def __post_init__(self):
        _check_trainer({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "trainer")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: str = "trainer") -> TrainerConfig:
        """Checks a ``trainer`` table (unknown keys, types, ranges) and fills in the defaults.

        >>> TrainerConfig.from_dict({"epoch": 3})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        funcnet.train.components.ConfigError: trainer.epoch: unknown trainer setting. Did you mean 'epochs'? ...
        """
        if not isinstance(values, Mapping):
            raise ConfigError(path, f"expected a table of trainer settings, got {_show(values)}")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key in values:
            if key not in defaults:
                raise ConfigError(_join(path, key), _unknown(key, defaults, "trainer setting"))
        _check_trainer({**defaults, **values}, path)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """All settings, defaults included, as a JSON-ready dict.

        >>> TrainerConfig(max_steps=100).to_dict()["batch_size"]
        32
        """
        return dataclasses.asdict(self)


_MINIMUM = {"epochs": 1, "max_steps": 1, "batch_size": 1, "eval_batch_size": 1, "eval_every": 1, "log_every": 1}
_MINIMUM.update(checkpoint_every=1, keep_checkpoints=1, keep_best=1, patience=0, seed=0, prefetch=0, device_data_mib=0)
_MINIMUM["peer_timeout"] = 1


def _check_trainer(values: Mapping[str, Any], path: str) -> None:
    hints = typing.get_type_hints(TrainerConfig)
    for name, value in values.items():
        _check(value, hints[name], _join(path, name))
        if name in _MINIMUM and value is not None and value < _MINIMUM[name]:
            raise ConfigError(_join(path, name), f"expected an int >= {_MINIMUM[name]}, got {value}")
    if values["diverge_factor"] != 0 and not values["diverge_factor"] > 1:
        raise ConfigError(
            _join(path, "diverge_factor"), f"expected a number > 1, or 0 to never stop, got {values['diverge_factor']}"
        )
    if not values["metric"]:
        raise ConfigError(_join(path, "metric"), 'expected the name of a validation metric, e.g. "loss", got ""')
    if values["epochs"] is None and values["max_steps"] is None:
        raise ConfigError(path, "expected epochs or max_steps (or both), got neither. Fix: add e.g. epochs = 10")


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
      >>> import_modules({"imports": ["json", "funcnet.train.registry"]})
      ['json', 'funcnet.train.registry']
    """
    names = config.get("imports", [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError("imports", f'expected a list of module names, e.g. ["my_models"], got {_show(names)}')
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


class RunConfig(NamedTuple):
    """A validated run config: component sections as given, the trainer with its defaults.

    Example:
      >>> RunConfig({"type": "mlp"}, {}, {}, {}, TrainerConfig(epochs=1)).trainer.epochs
      1
    """

    model: dict[str, Any]  # {"type": <MODELS name>, **factory kwargs}
    dataset: dict[str, Any]  # {"type": <DATASETS name>, **factory kwargs}
    loss: dict[str, Any]  # {"type": <LOSSES name>, **factory kwargs}
    optimizer: dict[str, Any]  # {"type": ..., ...}, checked by funcnet.train.optim
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
      >>> from funcnet.train.registry import Registry
      >>> models = Registry("model")
      >>> _ = models.register("toy")(lambda features=1: features)
      >>> config = {"model": {"type": "toy", "features": 2}, "dataset": {"type": "d"}, "loss": {"type": "l"},
      ...           "optimizer": {"type": "adam"}, "trainer": {"epochs": 1, "batch_size": -5}}
      >>> validate_config(config, registries={"model": models})
      Traceback (most recent call last):
      ...
      funcnet.train.components.ConfigError: trainer.batch_size: expected an int >= 1, got -5
    """
    if not isinstance(config, Mapping):
        raise ConfigError("", f"expected a table of sections at the top level, got {_show(config)}")
    for key in config:
        if key not in SECTIONS:
            raise ConfigError(str(key), _unknown(key, SECTIONS, "section"))
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
    _type_of(config["optimizer"], "optimizer", None)
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
            _reject_dates(item, _join(path, key), file)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _reject_dates(item, f"{path}[{i}]", file)
