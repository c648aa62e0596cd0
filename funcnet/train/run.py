"""A run directory: what ``fit`` finds there when it starts, and how it starts or resumes from it.

A run directory holds::

    RUN_DIR/config.json        the resolved config (written by the CLI)
    RUN_DIR/checkpoints/<step> Orbax checkpoints: the latest N and the best by the metric
    RUN_DIR/logs/              tensorboardX event files (tensorboard --logdir RUN_DIR)
    RUN_DIR/results.json       the final figures (written by the CLI)
    RUN_DIR/.lock              the process training it (funcnet.train.lock): one trainer at a time
    RUN_DIR/run.json           the newest complete checkpoint, the files of imported modules (funcnet.train.run_files)
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import optax

from ..core import Model
from .checkpoint import Checkpointer, CheckpointError
from .data import Position
from .run_files import RUN_RECORD, read_record, update_record
from .state import TrainState, abstract_train_state, create_train_state


def start(
    checkpointer: Checkpointer,
    model: Model,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    example_inputs: Sequence[Any],
    mesh,
    config: dict[str, Any],
) -> tuple[TrainState, dict[str, Any], int | None]:
    """A new state and meta, or those of the newest checkpoint that restores; and that checkpoint's step.

    ``meta`` is what a checkpoint records beside the arrays: the data position, epoch, best metric and step,
    patience counter, evaluation history, the config, and ``finished`` once early stopping or a callback
    ended the run.
    """
    meta = {"position": Position(0, 0)._asdict(), "epoch": 0, "best_metric": None, "best_step": None}
    meta.update(bad_evals=0, history=[], config=config)
    if checkpointer.latest_step() is None:
        return create_train_state(model, optimizer, key, *example_inputs, mesh=mesh), meta, None
    abstract = abstract_train_state(model, optimizer, key, *example_inputs, mesh=mesh)
    latest, state, meta = checkpointer.restore_first(checkpointer.all_steps()[::-1], abstract)
    return state, meta, latest


def check_checkpoints_kept(run_dir: str | os.PathLike, checkpoints: str, restart: bool) -> None:
    """Refuses a run whose recorded checkpoints vanished; with ``restart``, moves its checkpoints aside."""
    recorded = read_record(run_dir).get("checkpointed")
    present = os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints))
    if restart:
        if present and jax.process_index() == 0:
            aside = f"{checkpoints}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(checkpoints, aside)
            print(f"starting over: the previous checkpoints are in {aside}")
        update_record(run_dir, checkpointed=None)
    elif recorded is not None and not present:
        raise CheckpointError(
            f"{checkpoints} held checkpoint {recorded} (recorded in {os.path.join(run_dir, RUN_RECORD)}) and holds "
            "none now: it was deleted or moved. Fix: put the checkpoints back to resume, or start over with "
            "restart=True (funcnet train --restart)."
        )
