"""``TrainerConfig``: the options of ``fit`` (how long to train; how to batch, evaluate, checkpoint and log).

A frozen dataclass whose values are checked when it is made (types, ranges, at least one budget), so
``fit`` never starts with an option it cannot honour. Config files give it as their ``trainer`` table
(``TrainerConfig.from_dict``); Python code makes it directly.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Literal

from ..validation import ConfigError, check_value, did_you_mean, join_path, show


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
        (``funcnet.train.device_data``); 0: off, batches are sliced on the host. Single-process runs only.
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
        funcnet.validation.ConfigError: trainer.epoch: unknown trainer setting. Did you mean 'epochs'? ...
        """
        if not isinstance(values, Mapping):
            raise ConfigError(path, f"expected a table of trainer settings, got {show(values)}")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key in values:
            if key not in defaults:
                raise ConfigError(join_path(path, key), did_you_mean(key, defaults, "trainer setting"))
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
        check_value(value, hints[name], join_path(path, name))
        if name in _MINIMUM and value is not None and value < _MINIMUM[name]:
            raise ConfigError(join_path(path, name), f"expected an int >= {_MINIMUM[name]}, got {value}")
    if values["diverge_factor"] != 0 and not values["diverge_factor"] > 1:
        raise ConfigError(
            join_path(path, "diverge_factor"),
            f"expected a number > 1, or 0 to never stop, got {values['diverge_factor']}",
        )
    if not values["metric"]:
        raise ConfigError(join_path(path, "metric"), 'expected the name of a validation metric, e.g. "loss", got ""')
    if values["epochs"] is None and values["max_steps"] is None:
        raise ConfigError(path, "expected epochs or max_steps (or both), got neither. Fix: add e.g. epochs = 10")
