"""``fit``: the training loop users do not write again.

It owns epochs and step budgets, evaluation, checkpoints (latest and best), early stopping,
NaN/Inf detection, logs, the progress bar, callbacks and graceful stops. The loop is short; its parts
are the engine's modules:

- the input stream: ``funcnet.train.prefetch`` and ``batch_feed`` (how batches reach the step), or
  ``device_data`` (small training sets kept on the devices, each step gathering its batch);
- the step: ``funcnet.train.step``;
- the metrics: ``step_metrics`` keeps each step's metrics on the devices and reads many steps at once
  (at log steps, at least every second in a single-process run, before each evaluation and save);
  ``train_metrics`` checks them for NaN/Inf and divergence and logs them;
- the triggers: ``triggers`` (budget, evaluate/save/read periodically, early stopping);
- the checkpointer, writers, callbacks, signals (``stopping``) and peers (``distributed``).

A checkpoint is written only after every step up to it has been read and found finite, and (without
``skip_nan_updates``) the state itself has been checked, so a NaN is never saved; a NaN is reported
with its exact step.

The run directory is described in ``funcnet.train.run``. Running ``fit`` again on the same directory
resumes from the newest complete checkpoint and ends with bit-identical parameters to an
uninterrupted run: the data order depends only on the seed and epoch, the step's PRNG key only on
the step number, and the iterator position, best metric and patience counter are saved beside the
arrays. A run that ended by early stopping (or a callback) records it, so running it again reports
that it is finished and trains no further.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import jax
import optax

from ..core import Model
from .batch_feed import batch_transfer, max_in_flight, on_cpu, prefetch_size
from .callbacks import Callback, StepCallbacks, StopTraining, eval_end
from .checkpoint import Checkpointer
from .data import Position, host_slice
from .device_data import EpochPlans, make_resident_step, resident_arrays
from .distributed import PeerWatch
from .evaluation import check_metric, evaluate, evaluate_pass
from .lock import RunLock
from .options import TrainerConfig
from .prefetch import prefetch
from .result import FitResult
from .run import best_parameters, check_checkpoints_kept, record_reopening, start
from .run_files import update_record
from .state import data_mesh
from .step import LossFn, eval_step_fn, make_eval_step, make_train_step
from .step_metrics import PendingMetrics
from .stopping import FAILED_REASONS, StopSignals
from .train_metrics import TrainLog, state_is_finite
from .triggers import Budget, EarlyStopping, MetricReads, Periodic
from .writers import Progress, RunLogger

__all__ = ["Callback", "FitResult", "StopTraining", "evaluate", "fit"]

_READ_EVERY_SECONDS = 1.0  # single process: read metrics (progress bar, NaN check) at least this often


def fit(
    model: Model,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    train: Any,
    *,
    run_dir: str | os.PathLike,
    trainer: TrainerConfig,
    validation: Any | None = None,
    learning_rate: Callable[[int], float] | None = None,
    inputs: Sequence[str] = ("x",),
    callbacks: Sequence[Callback] = (),
    config: Mapping[str, Any] | None = None,
    mesh=None,
    items_per_example: int = 1,
    item_name: str = "ex",
    sparse_rows: Mapping[str, str] | None = None,
    restart: bool = False,
) -> FitResult:
    """Trains ``model`` on ``train`` batches, resuming from ``run_dir`` if it holds checkpoints.

    Args:
      model: the model; ``model.apply(params, state, *[batch[k] for k in inputs])``.
      loss_fn: per-example ``(outputs, batch) -> loss[B]`` or a dict with ``"loss"`` (see step.py). Values
        whose names start with ``_`` (parts of a ratio, e.g. counts) are logged but not printed.
      optimizer: an optax transformation (``funcnet.config.optimizer.make_optimizer(...).transform``).
      train: a ``funcnet.train.data.Batches`` (or anything with ``epoch(e)``, ``iterate(position)``
        and ``steps_per_epoch``, which may be None when unknown: epochs are then counted by position).
      run_dir: checkpoints and logs go here.
      trainer: the options (``TrainerConfig``: budgets, evaluation, checkpoints, logging, early stopping).
      validation: batches to evaluate on (``epoch(0)`` is one pass), or None.
      learning_rate: ``step -> learning rate`` for the logs.
      inputs: batch keys fed to the model.
      callbacks: host-side hooks.
      config: the resolved config, written as text into the logs.
      mesh: the device mesh (all devices by default).
      items_per_example, item_name: what the progress bar's rate counts (e.g. 100 "chars" per sequence).
      sparse_rows: ``{param path: batch key}`` of embedding tables updated row-sparsely
        (``make_optimizer(...).sparse_rows``; see ``funcnet.train.sparse``).
      restart: start over from step 0: the run's checkpoints are moved aside to
        ``checkpoints.replaced-<time>`` (nothing is deleted). Without it, a run whose recorded checkpoints
        vanished is an error, not a silent fresh start.

    Returns:
      A FitResult.

    Raises:
      RunLocked: another process trains ``run_dir``.
      CheckpointError: no checkpoint restores, or the recorded checkpoints vanished (``restart=True`` starts over).
      ValueError: ``trainer.metric`` is not a metric the evaluation gives (before any training).
      CheckpointSaveError: a checkpoint could not be written (a full disk): raised at the next step, naming
        the last complete checkpoint; no temporary folder is left.
    """
    mesh = mesh or data_mesh()
    checkpoints = os.path.join(os.fspath(run_dir), "checkpoints")
    # A signal from here on saves the first step it can; a lost peer process ends this one in one line.
    # One trainer per run directory; a second is refused before it starts anything (funcnet.train.lock).
    with RunLock(run_dir), PeerWatch(trainer.peer_timeout, checkpoints) as peers, StopSignals() as signals, \
            ExitStack() as closing:  # fmt: skip
        budget = Budget(trainer, getattr(train, "steps_per_epoch", None))
        check_checkpoints_kept(run_dir, checkpoints, restart)
        keep = dict(keep=trainer.keep_checkpoints, keep_best=trainer.keep_best, metric=trainer.metric)
        checkpointer = Checkpointer(checkpoints, **keep, mode=trainer.mode)
        closing.callback(_close_checkpointer, checkpointer, run_dir)
        example = host_slice(next(iter(train.epoch(0))))
        key = jax.random.key(trainer.seed)
        state, meta, resumed = start(checkpointer, model, optimizer, key, [example[k] for k in inputs], mesh,
                                     dict(config or {}))  # fmt: skip
        step = first = int(state.step)
        if jax.process_index() == 0:
            record_reopening(run_dir, inputs, example, trainer)
        if validation is not None:  # a metric the evaluation does not give is refused now, not after an epoch
            check_metric(eval_step_fn(model, loss_fn, inputs=inputs), state, example, trainer.metric)
        resident = resident_arrays(train, mesh, trainer.device_data_mib)  # None: batches sliced on the host
        train_step = _train_step(model, loss_fn, optimizer, resident, trainer, mesh, inputs, sparse_rows)
        eval_step = make_eval_step(model, loss_fn, mesh=mesh, inputs=inputs)  # compiled once, not per evaluation
        check_state = not trainer.skip_nan_updates  # without skipping, a NaN gradient can hide behind a finite loss
        if check_state:
            state_is_finite(state)  # compiles the check now, not at the first checkpoint
        logger, progress = _writers(run_dir, config, resumed, step, budget, trainer, item_name, checkpointer, closing)
        position = Position(**meta["position"])
        stream = _input_stream(train, trainer, mesh, position, step, resident)
        closing.callback(stream.close)
        closing.push(peers.on_failed_collective)  # first on the way out: before anything waits for a lost peer
        single = jax.process_count() == 1  # several processes read at the same steps, so that all stop alike
        pending = PendingMetrics(on_cpu(mesh), _in_flight(mesh, trainer, train, resident), poll=single)
        train_log = TrainLog(trainer, logger, progress, checkpointer, learning_rate, items_per_example)
        step_callbacks = StepCallbacks(callbacks, step, progress.write)
        evaluating, saving = Periodic(trainer.eval_every, at_epoch_end=True), Periodic(trainer.checkpoint_every)
        reads = MetricReads(trainer.log_every, _READ_EVERY_SECONDS if single else None)
        early_stopping = EarlyStopping(trainer, progress.write)
        if stop := meta.get("finished"):  # early stopping or a callback ended this run: it trains no further
            progress.write(f"the run finished at step {step} ({stop}): nothing more to train")

        while stop is None and not budget.done(step, position):
            state, metrics = train_step(state, next(stream))
            position = stream.position  # the next batch to train on: what a checkpoint records
            step += 1
            checkpointer.check()  # a failed background save stops the run at the next step, in one line
            finished = pending.add(step, metrics)  # bounds the steps in flight: see funcnet.train.step_metrics
            if step_callbacks and finished:
                stop = step_callbacks(finished)
            last = budget.done(step, position)
            due_eval = validation is not None and evaluating(step, epoch_end=position.index == 0, last=last)
            due_save = saving(step, epoch_end=position.index == 0, last=last)
            preempted = signals.reached()  # every process, every step: they all stop at one step
            if not (due_eval or due_save or preempted or stop):
                if reads(finished):
                    stop = train_log(pending.take(all_steps=False))
                    reads.read()
                continue
            # Every step up to this one is read and checked before anything is evaluated or saved.
            stop = step_callbacks(pending.drain()) or stop
            stop = train_log(pending.take(all_steps=True)) or stop
            reads.read()
            if stop in FAILED_REASONS:  # never saved
                break
            if check_state and not state_is_finite(state):
                stop = train_log.nan(step, " (the loss is finite; the updated parameters are not)")
                break
            eval_metrics = None
            if due_eval:
                eval_metrics = evaluate_pass(eval_step, state, validation, mesh)
                stop = early_stopping(meta, eval_metrics, step=step, epoch=position.epoch) or stop
                _log_evaluation(logger, train_log, eval_metrics, state, step)
                stop = eval_end(callbacks, step, eval_metrics, progress.write) or stop
            if preempted:
                progress.write(f"{signals.describe()}: saving step {step}, then exiting. Run again to resume.")
                stop = "signal"
            meta.update(position=position._asdict(), epoch=position.epoch)
            if stop in ("early_stopping", "callback"):
                meta["finished"] = stop
            ranked = None if eval_metrics is None else {trainer.metric: eval_metrics[trainer.metric]}
            checkpointer.save(step, state, meta, metrics=ranked)
            update_record(run_dir, checkpointed=checkpointer.latest_step())  # the newest complete one
    checkpointer.check()  # the last save can fail while closing, after the loop: still the run's failure
    best = best_parameters(checkpointer, state, meta["best_step"])
    result = FitResult(
        state, step, position.epoch, meta["best_metric"], meta["best_step"], stop or "done", list(meta["history"]),
        train_step.jitted._cache_size(), signals.signum if stop == "signal" else None, step - first, *best,
    )  # fmt: skip
    for callback in callbacks:
        callback.on_fit_end(result)
    return result


def _train_step(model: Model, loss_fn: LossFn, optimizer, resident, trainer: TrainerConfig, mesh, inputs,
                sparse_rows) -> Callable:  # fmt: skip
    """``make_train_step``'s step, or with training arrays kept on the devices (``resident``) the same step
    gathering its batch there from a plan (``funcnet.train.device_data``)."""
    options = dict(mesh=mesh, inputs=inputs, skip_nan_updates=trainer.skip_nan_updates,
                   log_grad_norm=trainer.log_grad_norm, sparse_rows=sparse_rows)  # fmt: skip
    if resident is None:
        return make_train_step(model, loss_fn, optimizer, **options)
    return make_resident_step(model, loss_fn, optimizer, resident, **options)


def _in_flight(mesh, trainer: TrainerConfig, train: Any, resident) -> int:
    """The steps that may run ahead of the host's reads (``funcnet.train.batch_feed.max_in_flight``)."""
    return max_in_flight(mesh, prefetching=resident is None and prefetch_size(trainer, train) > 0)


def _close_checkpointer(checkpointer: Checkpointer, run_dir) -> None:
    """Waits for the last save and records the newest complete checkpoint in ``run.json``."""
    checkpointer.close()
    if checkpointer.closed_at is not None:
        update_record(run_dir, checkpointed=checkpointer.closed_at)


def _input_stream(train: Any, trainer: TrainerConfig, mesh, position: Position, step: int, resident) -> Any:
    """Batches from ``position`` (a prefetch thread for slow sources; ``funcnet.train.batch_feed``), or for
    arrays kept on the devices the plans of their batches: the same batches, positions and padding."""
    if resident is not None:
        return EpochPlans(train, position, step, mesh)
    return prefetch(train.iterate(position), size=prefetch_size(trainer, train), transform=batch_transfer(mesh))


def _writers(run_dir, config, resumed: int | None, step: int, budget: Budget, trainer, unit: str, checkpointer,
             closing: ExitStack):  # fmt: skip
    """The TensorBoard logger and the progress bar (closed by ``closing``), with the run's first lines printed."""
    logger = closing.enter_context(RunLogger(run_dir, resume_step=step if resumed is not None else None))
    if config is not None and resumed is None:
        logger.config(config)
    progress = Progress(budget.total, step, enabled=trainer.progress, unit=unit)
    closing.callback(progress.close)
    if resumed is not None:
        progress.write(f"resuming from step {resumed} ({checkpointer.directory}/{resumed})")
    progress.write(f"logs: tensorboard --logdir {os.fspath(run_dir)}")
    return logger, progress


def _log_evaluation(logger: RunLogger, train_log: TrainLog, metrics: Mapping[str, float], state, step: int) -> None:
    logger.scalars("validation", metrics, step)
    logger.histograms("params", state.params, step)
    train_log.grad_norm_histogram(step)
