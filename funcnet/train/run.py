"""A run directory: what ``fit`` finds there when it starts, and how it starts or resumes from it.

A run directory holds::

    RUN_DIR/config.json        the resolved config (written by the CLI)
    RUN_DIR/checkpoints/<step> Orbax checkpoints: the latest N and the best by the metric
    RUN_DIR/logs/              tensorboardX event files (tensorboard --logdir RUN_DIR)
    RUN_DIR/results.json       the final figures (written by the CLI)
    RUN_DIR/.lock              the process training it (funcnet.train.lock): one trainer at a time
    RUN_DIR/run.json           what the run has done and what reopening it needs (funcnet.train.run_files):
                               the newest complete checkpoint, the files of imported modules, the model's
                               input shapes, the metric ranking the checkpoints
    RUN_DIR/preprocessing.json how raw inputs become model inputs (standardisation statistics, vocabularies)

``load_run`` reopens it for inference.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from ..core import Model, param_path
from ..deploy.handlers import standardized
from .checkpoint import Checkpointer, CheckpointError
from .data import Position
from .evaluation import evaluate
from .run_files import RUN_RECORD, read_preprocessing, read_record, update_record
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


def best_parameters(checkpointer: Checkpointer, state: TrainState, best_step: int | None) -> tuple[Any, Any]:
    """The params and model state of the best evaluation: the final ones when it was the last step (or there
    was no validation), else restored from its checkpoint."""
    if best_step is None or best_step == int(state.step):
        return state.params, state.model_state
    abstract = jax.eval_shape(lambda: {"params": state.params, "model_state": state.model_state})
    reader = Checkpointer(checkpointer.directory, metric=checkpointer.metric, mode=checkpointer.mode)
    try:
        _, restored, _ = reader.restore_first([best_step], abstract, partial=True)
    except CheckpointError as error:  # the run itself is done: say so, and give no best rather than fail it
        print(f"the best parameters (step {best_step}) are not in the result: {error}", file=sys.stderr)
        return None, None
    finally:
        reader.close()
    return restored["params"], restored["model_state"]


def record_reopening(run_dir: str | os.PathLike, inputs: Sequence[str], example: Mapping[str, Any], trainer) -> None:
    """Records in ``run.json`` what reopening the run needs beside the model: the model's inputs (names,
    shapes and dtypes of one batch) and the metric and mode that rank its checkpoints."""
    spec = {
        name: {"shape": list(np.shape(example[name])), "dtype": str(np.asarray(example[name]).dtype)} for name in inputs
    }
    update_record(run_dir, inputs=spec, metric=trainer.metric, mode=trainer.mode)


class LoadedRun(NamedTuple):
    """A trained run reopened for inference (``load_run``).

    Attributes:
      model: the model.
      params: its parameters, NumPy arrays on the host.
      state: its model state (e.g. batch-norm statistics).
      step: the step of the checkpoint they come from.
      checkpoint: ``"best"``, ``"latest"`` or the step asked for.
      inputs: the names of the model's positional inputs, in order (batch keys in training).
      examples: each input's shape and dtype in one training batch (``jax.ShapeDtypeStruct``): the leading
        axis is the batch, the rest is one example's shape.
      config: the run's resolved config (``RUN_DIR/config.json``), or None for a run without one.
      preprocessing: how raw inputs become model inputs (``RUN_DIR/preprocessing.json``; ``{}`` when none):
        ``{"standardize": {input: {"mean": [...], "std": [...]}}}`` and whatever the run's data recorded.
      apply: ``apply(params, state, *inputs, **keywords) -> outputs``, jitted, in inference mode.
    """

    model: Model
    params: Any
    state: Any
    step: int
    checkpoint: str
    inputs: tuple[str, ...]
    examples: dict[str, jax.ShapeDtypeStruct]
    config: dict[str, Any] | None
    preprocessing: dict[str, Any]
    apply: Callable[..., Any]

    def evaluate(self, loss_fn: Callable, batches: Any, *, mesh=None) -> dict[str, float]:
        """Means of ``loss_fn``'s per-example values over one pass of ``batches`` with these parameters
        (``funcnet.train.evaluate``; the batches' keys named in ``inputs`` feed the model)."""
        key = jax.random.key_data(jax.random.key(0))  # unused: evaluation runs in inference mode
        state = TrainState(np.int32(self.step), self.params, self.state, (), key)
        return evaluate(self.model, loss_fn, state, batches, inputs=self.inputs, mesh=mesh)

    def predict(self, *inputs: Any, **keywords: Any) -> Any:
        """The model's outputs for raw inputs, prepared as in training (``preprocessing``), in inference mode.

        Compiles once per input shape; pad or bucket many small requests into a few shapes.
        """
        prepared = [standardized(self.preprocessing, name, x) for name, x in zip(self.inputs, inputs, strict=False)]
        return self.apply(self.params, self.state, *prepared, **keywords)


def load_run(run_dir: str | os.PathLike, model: Model, *, checkpoint: str | int = "best") -> LoadedRun:
    """Reopens a run directory for inference: the parameters and model state of one of its checkpoints.

    Needs neither the optimizer nor the loss: only the model (the same architecture the run trained) and
    what ``fit`` recorded in ``RUN_DIR/run.json`` (the model's input shapes, the metric ranking the
    checkpoints). Runs made by config files are reopened without code by ``funcnet.config.load_run``,
    which builds the model from ``config.json`` and calls this.

    Args:
      run_dir: a directory ``fit`` trained.
      model: the model trained there.
      checkpoint: ``"best"`` (by the run's metric; the latest for a run without validation), ``"latest"``,
        or a step number. A best or latest checkpoint that does not restore is skipped with one line
        saying which and why, for the newest that does.

    Returns:
      A LoadedRun: ``.params``, ``.state``, ``.predict(x)``, ``.config``, ``.preprocessing``.

    Raises:
      FileNotFoundError: ``run_dir`` is not a run directory, or holds no checkpoint.
      CheckpointError: no candidate checkpoint restores, or the model does not match the checkpoint.
    """
    run_dir = os.fspath(run_dir)
    record = read_record(run_dir)
    if "inputs" not in record:
        raise FileNotFoundError(
            f"{run_dir} is not a run directory fit has trained (no inputs recorded in {RUN_RECORD})"
        )
    inputs = tuple(record["inputs"])
    examples = [jax.ShapeDtypeStruct(tuple(s["shape"]), np.dtype(s["dtype"])) for s in record["inputs"].values()]
    params, state = jax.eval_shape(lambda *xs: model.init(jax.random.key(0), *xs), *examples)
    checkpointer = Checkpointer(
        os.path.join(run_dir, "checkpoints"), metric=record.get("metric", "loss"), mode=record.get("mode", "min")
    )
    try:
        abstract = {"params": params, "model_state": state}
        step, restored, _ = checkpointer.restore_first(checkpointer.candidates(checkpoint), abstract, partial=True)
    finally:
        checkpointer.close()
    _check_shapes(abstract, restored, f"{checkpointer.directory}/{step}")
    config_file = os.path.join(run_dir, "config.json")
    config = json.loads(Path(config_file).read_text()) if os.path.exists(config_file) else None
    preprocessing = read_preprocessing(run_dir)
    apply = jax.jit(lambda p, s, *xs, **kw: model.apply(p, s, *xs, train=False, **kw)[0])
    examples = dict(zip(inputs, examples, strict=True))
    params, state = restored["params"], restored["model_state"]
    return LoadedRun(model, params, state, step, str(checkpoint), inputs, examples, config, preprocessing, apply)


def _check_shapes(expected: Any, restored: Any, where: str) -> None:
    """Raises CheckpointError unless ``restored`` has the structure, shapes and dtypes of ``expected``."""
    if jax.tree.structure(expected) != jax.tree.structure(restored):
        raise CheckpointError(f"{where} holds other parameters than the model has: another architecture?")
    pairs = [
        (jax.tree.leaves_with_path({k: expected[k]}), jax.tree.leaves(restored[k])) for k in ("params", "model_state")
    ]
    for (path, want), got in ((p, g) for wants, gots in pairs for p, g in zip(wants, gots, strict=True)):
        if tuple(want.shape) != tuple(np.shape(got)) or np.dtype(want.dtype) != np.asarray(got).dtype:
            raise CheckpointError(
                f"{where}: {param_path(path)} is {np.asarray(got).dtype}{list(np.shape(got))} in the checkpoint, "
                f"the model expects {np.dtype(want.dtype)}{list(want.shape)}: another architecture?"
            )
