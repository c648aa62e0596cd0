"""Runs as deployable models: ``funcnet predict`` from a run directory or an artefact, ``funcnet export``.

A run is predicted from through its task's ``serving`` (``funcnet.deploy.export.Serving``): the programs are
jitted over the run's weights and handed to the request handler of ``funcnet.deploy.handlers``. Exporting
serialises the same programs; ``funcnet.deploy.load`` hands them to the same handler. So a run directory and
its artefact take the same requests and give the same outputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ..deploy import artefact, handlers
from ..deploy.export import PLATFORMS, export_serving, jitted, write_artefact
from .runs import load_run
from .tasks import DEFAULT_TASK, task_of


class Served(NamedTuple):
    """A model ready to serve: its request ``handler``, its ``metadata`` (kind, program signatures, where it comes
    from) and ``compilations()`` (programs compiled so far, by name)."""

    handler: Any
    metadata: dict[str, Any]
    compilations: Callable[[], dict[str, int]]


def served(directory: str | os.PathLike, checkpoint: str | int = "best") -> Served:
    """An artefact (``funcnet export``) or a run directory's checkpoint, ready to serve."""
    if (Path(directory) / artefact.MANIFEST).exists():
        loaded = artefact.load(directory)
        return Served(loaded.handler, loaded.metadata(), loaded.compilations)
    run = load_run(directory, checkpoint=checkpoint)
    serving = task_of(run.config).serving(run)
    programs = jitted(serving, {"params": run.params, "state": run.state})
    handler = handlers.build(serving.kind, serving.config, run.preprocessing, programs)
    metadata = {"kind": serving.kind, "source": {"run_dir": str(Path(directory).resolve()), "checkpoint": run.step},
                "programs": {name: list(spec.inputs) for name, spec in serving.programs.items()}}  # fmt: skip
    return Served(handler, metadata, lambda: {name: p.compilations() for name, p in programs.items()})


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, *, checkpoint: str | int = "best",
               platforms: Sequence[str] = PLATFORMS) -> Path:  # fmt: skip
    """Writes the artefact of a run's checkpoint to ``out`` (``funcnet.deploy.artefact``); returns its path."""
    run = load_run(run_dir, checkpoint=checkpoint)
    serving = task_of(run.config).serving(run)
    programs, weights = export_serving(serving, {"params": run.params, "state": run.state}, platforms)
    source = {"run_dir": str(Path(run_dir).resolve()), "checkpoint": run.step,
              "task": run.config.get("task", DEFAULT_TASK)}  # fmt: skip
    return write_artefact(out, kind=serving.kind, programs=programs, weights=weights, handler=serving.config,
                          preprocessing=run.preprocessing, source=source)  # fmt: skip
