"""Tasks: the kinds of run ``funcnet train`` makes, each with its config sections, training and reopening.

A config names its task with a top-level ``task`` key; without one it is ``"supervised"``: a registered
model, dataset and per-example loss (the sections ``model``, ``dataset``, ``loss``). An experiment with
its own data pipeline and report (the char-LM's text streams and samples, the Tree-LSTM's tree batches)
is a task registered in ``TASKS`` by its module, which the config names in ``imports``, so the same
config trains from ``funcnet train`` and from the experiment's own command::

    task = "char_lm"
    imports = ["funcnet.experiments.rnn"]

A task's sections are declared once, as dataclasses or factory signatures, and checked with key paths.
``train_run`` is what every task's training shares: the run directory's config, the lock on changing
it, ``results.json`` (also for a failed run) and the exit code.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax

from ..core import Model
from ..deploy.export import Serving
from ..train.devices import default_cpu_devices
from ..train.options import TrainerConfig
from ..train.result import FitResult
from ..train.run import LoadedRun
from ..train.run_files import update_record, write_json
from ..train.stopping import FAILED_REASONS, exit_code
from ..validation import ConfigError, check_arguments, did_you_mean, show
from .optimizer import make_optimizer
from .registry import Registry
from .run_config import merge_configs, module_files

TASKS = Registry("task")
"""Task classes: ``() -> Task``; a config picks one with its top-level ``task`` key."""

DEFAULT_TASK = "supervised"


class Task:
    """A kind of run. Subclasses set ``sections`` and implement ``resolve``, ``fit`` and ``model``."""

    sections: tuple[str, ...] = ()
    """The config's sections besides ``task`` and ``imports``."""

    data_section: str = "data"
    """The section naming the data (``funcnet evaluate --data key=value`` overrides its keys)."""

    one_device_per_core: bool = False
    """Whether the task's step is faster split over one JAX CPU device per core (``funcnet train`` then makes
    them unless ``--cpu-devices`` says otherwise; ``funcnet.train.devices.default_cpu_devices``)."""

    def resolve(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The config checked (key paths in errors) with every default filled in: what ``config.json`` holds."""
        raise NotImplementedError

    def fit(self, config: dict[str, Any], run_dir: Path, restart: bool) -> tuple[FitResult, dict[str, Any]]:
        """Trains (or resumes) ``run_dir``; returns fit's result and the task's own results (its evaluations
        of the best checkpoint, empty when the run failed). Writes ``preprocessing.json`` if reopening needs it."""
        raise NotImplementedError

    def model(self, config: dict[str, Any], preprocessing: dict[str, Any]) -> Model:
        """The model of a resolved config, for reopening a run (``preprocessing``: the run's, e.g. a vocabulary)."""
        raise NotImplementedError

    def evaluate(self, run: LoadedRun, config: dict[str, Any], split: str) -> dict[str, float]:
        """``funcnet evaluate``: the task's metrics of a reopened run on a split (``"train"``, ``"validation"`` or
        ``"test"``) of the data ``config`` names (the run's, or with its data section changed)."""
        raise ConfigError("task", f"{type(self).__name__} runs cannot be evaluated")

    def serving(self, run: LoadedRun) -> Serving:
        """How the task's runs are predicted from and exported: the request handler's kind and config and the
        programs it calls (``funcnet.deploy.export.Serving``), for ``funcnet predict``, ``export`` and ``serve``."""
        raise ConfigError("task", f"{type(self).__name__} runs cannot be predicted from")


def task_of(config: Mapping[str, Any]) -> Task:
    """The task a config names (``"supervised"`` without a ``task`` key); ConfigError for an unknown one."""
    name = config.get("task", DEFAULT_TASK)
    if not isinstance(name, str):
        raise ConfigError("task", f"expected a task name, e.g. {DEFAULT_TASK!r}, got {show(name)}")
    if name not in TASKS.names():
        hint = " Experiments register their task: name the module in imports." if name != DEFAULT_TASK else ""
        raise ConfigError("task", did_you_mean(name, TASKS.names(), "task") + hint)
    return TASKS.get(name, "task")()


def choose_devices(config: Mapping[str, Any]) -> int | None:
    """One CPU device per core for a task whose step gains from it (``Task.one_device_per_core``), the most
    that split its batches (``funcnet.train.devices.default_cpu_devices``); call it when no ``--cpu-devices``
    was given, before anything starts JAX's backend. Returns the device count made, or None."""
    if not task_of(config).one_device_per_core:
        return None
    trainer = config["trainer"]
    return default_cpu_devices([trainer["batch_size"], trainer["eval_batch_size"] or trainer["batch_size"]])


def check_sections(config: Mapping[str, Any], task: Task, name: str) -> None:
    """ConfigError for a section ``task`` does not have."""
    allowed = ("task", "imports", *task.sections)
    for key in config:
        if key not in allowed:
            raise ConfigError(str(key), did_you_mean(key, allowed, f"section for task {name!r}"))


def resolve_sections(config: Mapping[str, Any], task: Task, name: str, base: Mapping[str, Any],
                     schemas: Mapping[str, type]) -> dict[str, Any]:  # fmt: skip
    """What a task's ``resolve`` starts from: ``base`` updated by ``config`` (without ``task`` and ``imports``),
    after ``check_sections``; each section of ``schemas`` checked against its dataclass (key paths in errors),
    ``trainer`` filled in by ``TrainerConfig`` and ``optimizer`` built once, so a bad one fails here."""
    check_sections(config, task, name)
    config = merge_configs(base, {k: v for k, v in config.items() if k not in ("task", "imports")})
    for section, schema in schemas.items():
        check_arguments(schema, config[section], section, section)
    config["trainer"] = TrainerConfig.from_dict(config["trainer"]).to_dict()
    make_optimizer(config["optimizer"])
    return config


def train_run(
    config: dict[str, Any], run_dir: str | os.PathLike, *, restart: bool = False, changeable: tuple[str, ...] = ()
) -> int:
    """Trains a resolved config in ``run_dir`` (or resumes it); writes ``config.json`` and ``results.json``.

    Returns the process exit code (``funcnet.train.stopping.exit_code``). A run directory that holds a run
    of another config is refused, unless only the sections in ``changeable`` differ (e.g. a larger step
    budget when resuming). A finished run run again changes nothing. A failed run (NaN, divergence) records
    how it ended in ``results.json`` and evaluates nothing.
    """
    run_dir = Path(run_dir)
    saved = run_dir / "config.json"
    if saved.exists():
        previous = json.loads(saved.read_text())
        changed = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
        if not set(changed) <= set(changeable):
            raise ConfigError(
                "",
                f"{run_dir} holds a run with another config (sections differ: {changed}). "
                "Fix: use a new run directory, or the same config to resume that run.",
            )
    write_json(saved, config)
    update_record(run_dir, imports=module_files(config.get("imports", [])))
    start = time.perf_counter()
    result, own = task_of(config).fit(config, run_dir, restart)
    done = run_dir / "results.json"
    if result.trained == 0 and done.exists() and _same_end(json.loads(done.read_text()), result):
        print(f"the run had finished at step {result.step} ({result.stop_reason}); results unchanged in {done}")
        return exit_code(result.stop_reason, result.signal)
    metric = config["trainer"]["metric"]
    results = {
        "stop_reason": result.stop_reason,
        "signal": result.signal,
        "steps": result.step,
        "epoch": result.epoch,
        "best_step": result.best_step,
        f"best_validation_{metric}": result.best_metric,
        "history": result.history,
        "seconds_this_session": round(time.perf_counter() - start, 1),
        "compilations_this_session": result.compilations,
        "devices": jax.device_count(),
        **({} if result.stop_reason in FAILED_REASONS else own),
    }
    write_json(done, results)
    print(f"{result.stop_reason} at step {result.step}; results in {done}")
    return exit_code(result.stop_reason, result.signal)


def _same_end(results: dict[str, Any], result: FitResult) -> bool:
    """Whether ``results.json`` already records this ending (with nothing trained: a finished run run again)."""
    return results.get("steps") == result.step and results.get("stop_reason") == result.stop_reason
