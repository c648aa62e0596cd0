"""``fit``: the training loop users do not write again.

It owns epochs and step budgets, evaluation, checkpoints (latest and best), early stopping,
NaN/Inf detection, logs, the progress bar, callbacks and graceful stops: a signal saves a step and
stops, every process of a multi-process run at the same step (``funcnet.train.stopping``), and a lost
peer process ends the others in one line (``funcnet.train.distributed``). Everything on the host
stays outside the jitted step, and the host does as little as it can per step: each step's metrics
stay on the devices (``funcnet.train.pending``) and are read back many steps at a time: at log steps
(and at least every second in a single-process run), before each evaluation and checkpoint, and at
the end; waiting for steps to finish (no transfer) bounds the steps in flight. How batches reach the
step (a prefetch thread or not, NumPy or device arrays) is ``funcnet.train.feed``; small in-memory
training arrays stay on the devices and each step gathers its own batch (``funcnet.train.resident``). A checkpoint is
written only after every step up to it has been read and found finite, and (without
``skip_nan_updates``) the state itself has been checked, so a NaN is never saved; a NaN is reported
with its exact step.

A run directory holds::

    RUN_DIR/config.json        the resolved config (written by the CLI)
    RUN_DIR/checkpoints/<step> Orbax checkpoints: the latest N and the best by the metric
    RUN_DIR/logs/              tensorboardX event files (tensorboard --logdir RUN_DIR)
    RUN_DIR/results.json       the final figures (written by the CLI)
    RUN_DIR/.lock              the process training it (funcnet.train.lock): one trainer at a time
    RUN_DIR/run.json           the newest complete checkpoint, the files of imported modules (funcnet.train.run_files)

Running ``fit`` again on the same directory resumes from the newest complete checkpoint and
ends with bit-identical parameters to an uninterrupted run: the data order depends only on the
seed and epoch, the step's PRNG key only on the step number, and the iterator position,
best metric and patience counter are saved beside the arrays. A run that ended by early stopping
(or a callback) records it, so running it again reports that it is finished and trains no further.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import optax

from ..core import Model
from .checkpoint import Checkpointer, CheckpointError
from .data import Position, host_slice
from .distributed import PeerWatch
from .feed import batch_transfer, max_in_flight, on_cpu, prefetch_size
from .lock import RunLock
from .log import Progress, RunLogger
from .pending import PendingMetrics
from .prefetch import prefetch
from .resident import EpochPlans, resident_arrays
from .run_files import RUN_RECORD, read_record, update_record
from .state import TrainState, abstract_train_state, create_train_state, data_mesh
from .step import LossFn, eval_step_fn, make_eval_step, make_train_step
from .stopping import FAILED_REASONS, StopSignals
from .train_log import TrainLog, state_is_finite

_READ_EVERY_SECONDS = 1.0  # single process: read metrics (progress bar, NaN check) at least this often


class Callback:
    """Hooks called on the host; override what you need. Raise StopTraining to stop.

    Example:
      >>> class PrintEvals(Callback):
      ...     def on_eval_end(self, step, metrics):
      ...         print(step, metrics["loss"])
    """

    def on_step_end(self, step: int, metrics: Mapping[str, float]) -> None:
        """After every step, in order, as soon as the loop sees it has finished. It looks after each
        dispatch, and waits for a step only when too many are in flight, then for several at once:
        with in-memory data (up to 8 steps in flight) a step is seen up to 4 steps late, in bursts;
        with a prefetching source (2 in flight) usually one step late.

        ``metrics`` (the step's metrics; ``finite`` with ``skip_nan_updates``) reads its floats from the
        devices on first access: a callback that does not look at them adds no transfer.
        """

    def on_eval_end(self, step: int, metrics: Mapping[str, float]) -> None:
        """After each evaluation, with the validation metrics."""

    def on_fit_end(self, result: FitResult) -> None:
        """Once, when fit returns."""


class StopTraining(Exception):
    """Raised by a callback to end training after the current step (a checkpoint is saved).

    >>> raise StopTraining("target reached")
    Traceback (most recent call last):
    ...
    funcnet.train.loop.StopTraining: target reached
    """


class FitResult(NamedTuple):
    """What ``fit`` returns.

    Attributes:
      state: the final TrainState.
      step: steps taken in total (including before a resume).
      epoch: the epoch the next step would belong to.
      best_metric: the best validation metric, or None without validation.
      best_step: the step of the best evaluation.
      stop_reason: ``"done"``, ``"early_stopping"``, ``"nan"``, ``"diverged"``, ``"signal"`` or ``"callback"``.
      history: one dict per evaluation: ``{"step": ..., "epoch": ..., <metric>: ...}``.
      compilations: programs the train step compiled in this session (one per distinct batch shape).
      signal: the signal's number when ``stop_reason`` is ``"signal"`` (``stopping.exit_code`` turns it into
        the process's exit code).
      trained: steps trained by this call (0 when a finished run is run again).
    """

    state: TrainState
    step: int
    epoch: int
    best_metric: float | None
    best_step: int | None
    stop_reason: str
    history: list[dict[str, float]]
    compilations: int = 0
    signal: int | None = None
    trained: int = 0

    def __repr__(self) -> str:
        """One short line per field; the state's arrays are counted, not printed.

        >>> import jax.numpy as jnp
        >>> state = TrainState(jnp.int32(3), {"w": jnp.ones((2, 2)), "b": jnp.zeros(())}, {}, (), jnp.zeros(2))
        >>> print(FitResult(state, 3, 1, 0.25, 2, "done", [{"step": 2, "loss": 0.25}]))
        FitResult(
          state=TrainState(step=3, params=<1 arrays, 1 scalars>),
          step=3,
          epoch=1,
          best_metric=0.25, best_step=2,
          stop_reason='done',
          history=<1 entries, last {'step': 2, 'loss': 0.25}>,
          compilations=0,
          signal=None,
          trained=0,
        )
        """
        last = ""
        if self.history:
            last = ", last {" + ", ".join(f"{k!r}: {_short(v)}" for k, v in self.history[-1].items()) + "}"
        best = "None" if self.best_metric is None else _short(self.best_metric)
        lines = [
            f"state={_state_summary(self.state)}",
            f"step={self.step}",
            f"epoch={self.epoch}",
            f"best_metric={best}, best_step={self.best_step}",
            f"stop_reason={self.stop_reason!r}",
            f"history=<{len(self.history)} entries{last}>",
            f"compilations={self.compilations}",
            f"signal={self.signal}",
            f"trained={self.trained}",
        ]
        return "FitResult(\n" + "".join(f"  {line},\n" for line in lines) + ")"


def _short(value: Any) -> str:
    """An int as is, any other number in 4 significant digits, anything else by its type name."""
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.4g}"
    return f"<{type(value).__name__}>"


def _state_summary(state: Any) -> str:
    """``TrainState(step=3, params=<4 arrays, 0 scalars>)``: the step read back, the params counted."""
    if not isinstance(state, TrainState):
        return f"<{type(state).__name__}>"
    try:
        step = str(int(state.step))
    except Exception:  # a repr never raises: a step this process cannot read (traced, not addressable)
        step = "?"
    leaves = jax.tree.leaves(state.params)
    scalars = sum(1 for leaf in leaves if not getattr(leaf, "ndim", 0))
    return f"TrainState(step={step}, params=<{len(leaves) - scalars} arrays, {scalars} scalars>)"


def evaluate(
    model: Model, loss_fn: LossFn, state: TrainState, batches: Any, *, inputs: Sequence[str] = ("x",), mesh=None
) -> dict[str, float]:
    """Means of the loss function's per-example values over one pass of ``batches`` (epoch 0).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, optax, funcnet as fn
      >>> from funcnet.train.data import ArrayDataset, Batches
      >>> from funcnet.train.state import create_train_state
      >>> data = Batches(ArrayDataset(x=np.ones((10, 2), np.float32)), 8, shuffle=False)
      >>> state = create_train_state(fn.dense(1), optax.sgd(0.1), jax.random.key(0), jnp.ones((8, 2)))
      >>> evaluate(fn.dense(1), lambda out, b: jnp.ones(len(out)), state, data)
      {'loss': 1.0, 'count': 10.0}
    """
    mesh = mesh or data_mesh()
    return _evaluate(make_eval_step(model, loss_fn, mesh=mesh, inputs=inputs), state, batches, mesh)


def _evaluate(step: Callable, state: TrainState, batches: Any, mesh) -> dict[str, float]:
    """One pass of ``batches`` through a compiled eval step, read back once at the end."""
    pending, transfer = PendingMetrics(on_cpu(mesh)), batch_transfer(mesh)
    for index, batch in enumerate(batches.epoch(0)):
        pending.add(index, step(state, transfer(batch) if transfer else batch))
    totals: dict[str, float] = {}
    count = 0.0
    for _, metrics in pending.take(all_steps=True):
        n = metrics.pop("count")
        count += n
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + value * n
    return {**{name: total / max(count, 1.0) for name, total in totals.items()}, "count": count}


def fit(
    model: Model,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    train: Any,
    *,
    run_dir: str | os.PathLike,
    trainer: Any,
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
      optimizer: an optax transformation (``funcnet.train.optim.make_optimizer(...).transform``).
      train: a ``funcnet.train.data.Batches`` (or anything with ``epoch(e)``, ``iterate(position)``
        and ``steps_per_epoch``, which may be None when unknown: epochs are then counted by position).
      run_dir: checkpoints and logs go here.
      trainer: a ``TrainerConfig`` (epochs, max_steps, eval_every, log_every, checkpoint_every,
        keep_checkpoints, keep_best, metric, mode, patience, seed, skip_nan_updates, log_grad_norm,
        prefetch, device_data_mib, progress, peer_timeout).
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
    with RunLock(run_dir), PeerWatch(trainer.peer_timeout, checkpoints) as peers, StopSignals() as signals:
        total = _total_steps(trainer, getattr(train, "steps_per_epoch", None))
        _check_checkpoints_kept(run_dir, checkpoints, restart)
        checkpointer = Checkpointer(
            checkpoints,
            keep=trainer.keep_checkpoints,
            keep_best=trainer.keep_best,
            metric=trainer.metric,
            mode=trainer.mode,
        )
        example = host_slice(next(iter(train.epoch(0))))
        example_inputs = [example[k] for k in inputs]
        key = jax.random.key(trainer.seed)
        meta = {"position": Position(0, 0)._asdict(), "epoch": 0, "best_metric": None, "best_step": None}
        meta.update(bad_evals=0, history=[], config=dict(config or {}))
        latest = checkpointer.latest_step()
        if latest is None:
            state = create_train_state(model, optimizer, key, *example_inputs, mesh=mesh)
        else:
            abstract = abstract_train_state(model, optimizer, key, *example_inputs, mesh=mesh)
            latest, state, meta = checkpointer.restore_first(checkpointer.all_steps()[::-1], abstract)
        step = first = int(state.step)
        if validation is not None:  # a metric the evaluation does not give is refused now, not after an epoch
            _check_metric(eval_step_fn(model, loss_fn, inputs=inputs), state, example, trainer.metric)
        resident = resident_arrays(train, mesh, trainer.device_data_mib)  # None: batches sliced on the host
        train_step = make_train_step(
            model,
            loss_fn,
            optimizer,
            mesh=mesh,
            inputs=inputs,
            skip_nan_updates=trainer.skip_nan_updates,
            log_grad_norm=trainer.log_grad_norm,
            sparse_rows=sparse_rows,
            resident=resident,
        )
        eval_step = make_eval_step(model, loss_fn, mesh=mesh, inputs=inputs)  # compiled once, not per evaluation
        check_state = not trainer.skip_nan_updates  # without skipping, a NaN gradient can hide behind a finite loss
        if check_state:
            state_is_finite(state)  # compiles the check now, not at the first checkpoint
        logger = RunLogger(run_dir, resume_step=step if latest is not None else None)
        if config is not None and latest is None:
            logger.config(config)
        progress = Progress(total, step, enabled=trainer.progress, unit=item_name)
        if latest is not None:
            progress.write(f"resuming from step {latest} ({checkpointer.directory}/{latest})")
        progress.write(f"logs: tensorboard --logdir {os.fspath(run_dir)}")

        position = Position(**meta["position"])
        if resident is None:
            size = prefetch_size(trainer, train)
            stream = prefetch(train.iterate(position), size=size, transform=batch_transfer(mesh))
        else:  # the same batches, positions and padding; the step finds its batch from its step count
            size, stream = 0, EpochPlans(train, position, step, mesh)
        single = jax.process_count() == 1  # several processes read at the same steps, so that all stop alike
        pending = PendingMetrics(on_cpu(mesh), max_in_flight(mesh, prefetching=size > 0), poll=single)
        train_log = TrainLog(trainer, logger, progress, checkpointer, learning_rate, items_per_example)
        step_hooks = [c for c in callbacks if type(c).on_step_end is not Callback.on_step_end]
        hooked = step  # on_step_end has been called for every step up to this one
        last_read = time.perf_counter()
        stop_reason = "done"
        if meta.get("finished"):  # early stopping or a callback ended this run: running it again trains no further
            stop_reason = meta["finished"]
            progress.write(f"the run finished at step {step} ({stop_reason}): nothing more to train")

        def hook(records: Sequence[tuple[int, Mapping[str, float]]]) -> str | None:
            nonlocal hooked
            for done_step, metrics in records:
                if done_step <= hooked or stop_reason == "callback":  # no more calls once a callback stopped
                    continue
                hooked = done_step
                try:
                    for callback in step_hooks:
                        callback.on_step_end(done_step, metrics)
                except StopTraining as stop:
                    progress.write(f"stopped by a callback at step {done_step}: {stop}")
                    return "callback"
            return None

        try:
            while stop_reason == "done" and not _finished(step, position, total, trainer):
                batch = next(stream)
                position = stream.position  # the next batch to train on: what a checkpoint records
                state, metrics = train_step(state, batch)
                step += 1
                checkpointer.check()  # a failed background save stops the run at the next step, in one line
                finished = pending.add(step, metrics)  # bounds the steps in flight: see funcnet.train.pending
                if step_hooks and finished:
                    stop_reason = hook(finished) or stop_reason
                epoch_end, last = position.index == 0, _finished(step, position, total, trainer)
                due_eval = validation is not None and (  # and at the last step: its checkpoint can be the best
                    (trainer.eval_every and step % trainer.eval_every == 0)
                    or (not trainer.eval_every and epoch_end)
                    or last
                )
                due_save = (trainer.checkpoint_every and step % trainer.checkpoint_every == 0) or last
                preempted = signals.reached()  # every process, every step: they all stop at one step
                if not (due_eval or due_save or preempted or stop_reason != "done"):
                    now = time.perf_counter()
                    logged = any(done % trainer.log_every == 0 for done, _ in finished)
                    if logged or (single and now - last_read > _READ_EVERY_SECONDS):
                        stop_reason = train_log(pending.take(all_steps=False)) or stop_reason
                        last_read = now
                    continue
                for finished_step in pending.drain():  # every step up to this one, before saving it
                    if step_hooks:
                        stop_reason = hook([finished_step]) or stop_reason
                stop_reason = train_log(pending.take(all_steps=True)) or stop_reason
                last_read = time.perf_counter()
                if stop_reason in FAILED_REASONS:  # never saved
                    break
                if check_state and not state_is_finite(state):
                    stop_reason = train_log.nan(step, " (the loss is finite; the updated parameters are not)")
                    break
                eval_metrics = None
                if due_eval:
                    eval_metrics = _evaluate(eval_step, state, validation, mesh)
                    stop_reason = _record_eval(meta, eval_metrics, step, position, trainer, progress) or stop_reason
                    logger.scalars("validation", eval_metrics, step)
                    logger.histograms("params", state.params, step)
                    train_log.grad_norm_histogram(step)
                    try:
                        for callback in callbacks:
                            callback.on_eval_end(step, eval_metrics)
                    except StopTraining as stop:
                        progress.write(f"stopped by a callback at step {step}: {stop}")
                        stop_reason = "callback"
                if preempted:
                    progress.write(f"{signals.describe()}: saving step {step}, then exiting. Run again to resume.")
                    stop_reason = "signal"
                meta.update(position=position._asdict(), epoch=position.epoch)
                if stop_reason in ("early_stopping", "callback"):
                    meta["finished"] = stop_reason
                checkpointer.save(step, state, meta, metrics=_metric(eval_metrics, trainer.metric))
                update_record(run_dir, checkpointed=checkpointer.latest_step())  # the newest complete one
        except jax.errors.JaxRuntimeError as error:
            if jax.process_count() > 1:  # a peer died mid-collective: say so in one line, do not wait for it
                peers.lost(f"a collective with the other processes failed ({str(error).splitlines()[0]})")
            raise
        finally:
            stream.close()
            checkpointer.close()
            if checkpointer.closed_at is not None:
                update_record(run_dir, checkpointed=checkpointer.closed_at)
            progress.close()
            logger.close()
    checkpointer.check()  # the last save can fail while closing, after the loop: still the run's failure
    result = FitResult(
        state,
        step,
        position.epoch,
        meta["best_metric"],
        meta["best_step"],
        stop_reason,
        list(meta["history"]),
        train_step.jitted._cache_size(),
        signals.signum if stop_reason == "signal" else None,
        step - first,
    )
    for callback in callbacks:
        callback.on_fit_end(result)
    return result


def _check_checkpoints_kept(run_dir: str | os.PathLike, checkpoints: str, restart: bool) -> None:
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


def _check_metric(eval_step: Callable, state: TrainState, batch: Mapping[str, Any], metric: str) -> None:
    """Raises ValueError unless the evaluation's metrics include ``metric`` (found without running it)."""
    given = jax.eval_shape(eval_step, state, batch)
    if metric not in given:
        raise ValueError(
            f"trainer.metric={metric!r} is not a metric the evaluation gives; it gives {sorted(given)}. Fix: set "
            "trainer.metric to one of them, or return it from the loss function."
        )


def _total_steps(trainer: Any, steps_per_epoch: int | None) -> int | None:
    """The step budget, or None when only an epoch count of unknown length bounds the run."""
    if trainer.epochs and steps_per_epoch is None:
        return trainer.max_steps or None
    budgets = [b for b in (trainer.max_steps, trainer.epochs and trainer.epochs * steps_per_epoch) if b]
    if not budgets:
        raise ValueError("trainer: set epochs or max_steps (or both: training stops at the first reached)")
    return min(budgets)


def _finished(step: int, position: Position, total: int | None, trainer: Any) -> bool:
    return (total is not None and step >= total) or (trainer.epochs is not None and position.epoch >= trainer.epochs)


def _metric(metrics: Mapping[str, float] | None, name: str) -> dict[str, float] | None:
    return None if metrics is None else {name: metrics[name]}


def _record_eval(meta, metrics, step, position, trainer, progress) -> str | None:
    """Updates best metric and patience in ``meta``; returns "early_stopping" when patience runs out."""
    if trainer.metric not in metrics:
        raise KeyError(f"trainer.metric={trainer.metric!r} is not a validation metric; they are {sorted(metrics)}")
    value = metrics[trainer.metric]
    best = meta["best_metric"]
    finite = math.isfinite(value)
    better = finite and (best is None or (value < best if trainer.mode == "min" else value > best))
    # A tie moves "best" to the newer step, as Orbax ranks checkpoints, but does not reset patience.
    if finite and (better or value == best):
        meta["best_metric"], meta["best_step"] = value, step
    meta["bad_evals"] = 0 if better else meta["bad_evals"] + 1
    meta["history"].append({"step": step, "epoch": position.epoch, **metrics})
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "count" and not k.startswith("_"))
    progress.write(f"step {step} validation: {shown}{' (best)' if better else ''}")
    if trainer.patience is not None and meta["bad_evals"] >= trainer.patience:
        progress.write(
            f"early stopping at step {step}: no better {trainer.metric} in {trainer.patience} evaluations "
            f"(best {meta['best_metric']:.4g} at step {meta['best_step']})"
        )
        return "early_stopping"
    return None
