"""``fit``: the training loop users do not write again.

It owns epochs and step budgets, evaluation, checkpoints (latest and best), early stopping,
NaN/Inf detection, logs, the progress bar, callbacks and graceful stops. Everything on the host
stays outside the jitted step: at most two steps are in flight, and a step's metrics are read
back (a few scalars) while the next step runs, so the device never waits for the host. Reading
them one step behind also bounds the work queued on the devices, which avoids the collective
rendezvous stalls seen on CPU hosts with many forced devices.

A run directory holds::

    RUN_DIR/config.json        the resolved config (written by the CLI)
    RUN_DIR/checkpoints/<step> Orbax checkpoints: the latest N and the best by the metric
    RUN_DIR/logs/              tensorboardX event files (tensorboard --logdir RUN_DIR)
    RUN_DIR/results.json       the final figures (written by the CLI)

Running ``fit`` again on the same directory resumes from the newest complete checkpoint and
ends with bit-identical parameters to an uninterrupted run: the data order depends only on the
seed and epoch, the step's PRNG key only on the step number, and the iterator position,
best metric and patience counter are saved beside the arrays.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from ..core import Model
from .checkpoint import Checkpointer
from .data import Position, host_slice, shard_batch
from .log import Progress, RunLogger
from .prefetch import prefetch
from .state import TrainState, abstract_train_state, batch_sharded, create_train_state, data_mesh
from .step import LossFn, make_eval_step, make_train_step


class Callback:
    """Hooks called on the host with plain floats; override what you need. Raise StopTraining to stop.

    Example:
      >>> class PrintEvals(Callback):
      ...     def on_eval_end(self, step, metrics):
      ...         print(step, metrics["loss"])
    """

    def on_step_end(self, step: int, metrics: Mapping[str, float]) -> None:
        """After every step (one step late, when its metrics are read back)."""

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
      stop_reason: ``"done"``, ``"early_stopping"``, ``"nan"``, ``"signal"`` or ``"callback"``.
      history: one dict per evaluation: ``{"step": ..., "epoch": ..., <metric>: ...}``.
      compilations: programs the train step compiled in this session (one per distinct batch shape).
    """

    state: TrainState
    step: int
    epoch: int
    best_metric: float | None
    best_step: int | None
    stop_reason: str
    history: list[dict[str, float]]
    compilations: int = 0


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
    """One pass of ``batches`` through a compiled eval step; fit keeps one step for every evaluation."""
    sharding = batch_sharded(mesh)
    totals: dict[str, float] = {}
    count = 0.0
    for batch in batches.epoch(0):
        metrics = jax.device_get(step(state, shard_batch(host_slice(batch), sharding)))
        n = float(metrics.pop("count"))
        count += n
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value) * n
    return {**{name: total / max(count, 1.0) for name, total in totals.items()}, "count": count}


class _Signals:
    """Turns SIGTERM/SIGINT into a flag the loop polls (single process, main thread only)."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        del frame
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


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
) -> FitResult:
    """Trains ``model`` on ``train`` batches, resuming from ``run_dir`` if it holds checkpoints.

    Args:
      model: the model; ``model.apply(params, state, *[batch[k] for k in inputs])``.
      loss_fn: per-example ``(outputs, batch) -> loss[B]`` or a dict with ``"loss"`` (see step.py).
      optimizer: an optax transformation (``funcnet.train.optim.make_optimizer(...).transform``).
      train: a ``funcnet.train.data.Batches`` (or anything with ``iterate(position)``,
        ``steps_per_epoch`` and ``batch_size``).
      run_dir: checkpoints and logs go here.
      trainer: a ``TrainerConfig`` (epochs, max_steps, eval_every, log_every, checkpoint_every,
        keep_checkpoints, keep_best, metric, mode, patience, seed, skip_nan_updates, prefetch, progress).
      validation: batches to evaluate on (``epoch(0)`` is one pass), or None.
      learning_rate: ``step -> learning rate`` for the logs.
      inputs: batch keys fed to the model.
      callbacks: host-side hooks.
      config: the resolved config, written as text into the logs.
      mesh: the device mesh (all devices by default).
      items_per_example, item_name: what the progress bar's rate counts (e.g. 100 "chars" per sequence).
      sparse_rows: ``{param path: batch key}`` of embedding tables updated row-sparsely
        (``make_optimizer(...).sparse_rows``; see ``funcnet.train.sparse``).

    Returns:
      A FitResult.
    """
    mesh = mesh or data_mesh()
    total = _total_steps(trainer, train.steps_per_epoch)
    checkpointer = Checkpointer(
        os.path.join(os.fspath(run_dir), "checkpoints"),
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
        state, meta = checkpointer.restore(latest, abstract)
    step = int(state.step)
    train_step = make_train_step(
        model,
        loss_fn,
        optimizer,
        mesh=mesh,
        inputs=inputs,
        skip_nan_updates=trainer.skip_nan_updates,
        sparse_rows=sparse_rows,
    )
    eval_step = make_eval_step(model, loss_fn, mesh=mesh, inputs=inputs)  # compiled once, not per evaluation
    logger = RunLogger(run_dir, resume_step=step if latest is not None else None)
    if config is not None and latest is None:
        logger.config(config)
    progress = Progress(total, step, enabled=trainer.progress, unit=item_name)
    if latest is not None:
        progress.write(f"resuming from step {latest} ({checkpointer.directory}/{latest})")
    progress.write(f"logs: tensorboard --logdir {os.fspath(run_dir)}")

    sharding = batch_sharded(mesh)
    stream = prefetch(
        train.iterate(Position(**meta["position"])),
        size=max(trainer.prefetch, 1),
        transform=lambda batch: shard_batch(host_slice(batch), sharding),
    )
    window: dict[str, float] = {}
    grad_norms: list[float] = []
    window_start = time.perf_counter()
    window_steps = 0
    stop_reason = "done"
    position = Position(**meta["position"])

    def read(pending) -> str | None:
        """Reads a finished step's metrics; returns a stop reason or None."""
        nonlocal window_start, window_steps
        done_step, device_metrics = pending
        metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        if metrics.pop("finite") == 0.0:
            last = checkpointer.latest_step()
            where = f"step {last} ({checkpointer.directory}/{last})" if last is not None else "none yet"
            if not trainer.skip_nan_updates:
                progress.write(
                    f"loss or gradient is NaN/Inf at step {done_step}: stopping. Last good checkpoint: {where}. "
                    "Fix: lower the learning rate, clip gradients (optimizer.grad_clip_norm), or set "
                    "trainer.skip_nan_updates=true to skip such updates."
                )
                return "nan"
            progress.write(f"step {done_step}: NaN/Inf loss or gradient, update skipped")
            metrics["skipped"] = 1.0
        count = metrics["count"]
        grad_norms.append(metrics["grad_norm"])
        for name, value in metrics.items():
            weight = count if name not in ("count", "grad_norm", "skipped") else 1.0
            window[name] = window.get(name, 0.0) + value * weight
        window_steps += 1
        progress.update(1, {"loss": metrics["loss"]}, examples=int(count) * items_per_example)
        for callback in callbacks:
            callback.on_step_end(done_step, metrics)
        if done_step % trainer.log_every == 0:
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            examples = window.pop("count", 0.0)
            means = {k: v / max(examples, 1.0) for k, v in window.items() if k not in ("grad_norm", "skipped")}
            means["grad_norm"] = window.get("grad_norm", 0.0) / max(window_steps, 1)
            means["steps_per_second"] = window_steps / elapsed
            means["examples_per_second"] = examples / elapsed
            if learning_rate is not None:
                means["learning_rate"] = float(learning_rate(done_step - 1))
            logger.scalars("train", means, done_step)
            window.clear()
            window_start, window_steps = time.perf_counter(), 0
        return None

    pending = None
    try:
        with _Signals() as signals:
            while step < total and stop_reason == "done":
                batch = next(stream)
                position = stream.position  # the next batch to train on: what a checkpoint records
                state, metrics = train_step(state, batch)
                step += 1
                if pending is not None:
                    stop_reason = read(pending) or stop_reason
                pending = (step, metrics)
                epoch_end = position.index == 0
                due_eval = validation is not None and (
                    (trainer.eval_every and step % trainer.eval_every == 0) or (not trainer.eval_every and epoch_end)
                )
                due_save = (trainer.checkpoint_every and step % trainer.checkpoint_every == 0) or step == total
                preempted = signals.received is not None or (
                    jax.process_count() > 1 and checkpointer.reached_preemption(step)
                )
                if not (due_eval or due_save or preempted or stop_reason != "done"):
                    continue
                stop_reason = read(pending) or stop_reason
                pending = None
                if stop_reason == "nan":
                    break
                eval_metrics = None
                if due_eval:
                    eval_metrics = _evaluate(eval_step, state, validation, mesh)
                    stop_reason = _record_eval(meta, eval_metrics, step, position, trainer, progress) or stop_reason
                    logger.scalars("validation", eval_metrics, step)
                    logger.histograms("params", state.params, step)
                    logger.histograms("train/grad_norm", np.asarray(grad_norms), step)
                    grad_norms.clear()
                    try:
                        for callback in callbacks:
                            callback.on_eval_end(step, eval_metrics)
                    except StopTraining as stop:
                        progress.write(f"stopped by a callback at step {step}: {stop}")
                        stop_reason = "callback"
                if preempted:
                    name = signal.Signals(signals.received).name if signals.received else "preemption"
                    progress.write(f"{name} received: saving step {step}, then exiting. Run again to resume.")
                    stop_reason = "signal"
                meta.update(position=position._asdict(), epoch=position.epoch)
                checkpointer.save(step, state, meta, metrics=_metric(eval_metrics, trainer.metric))
    except StopTraining as stop:
        progress.write(f"stopped by a callback at step {step}: {stop}")
        stop_reason = "callback"
        meta.update(position=position._asdict(), epoch=position.epoch)
        checkpointer.save(step, state, meta)
    finally:
        stream.close()
        checkpointer.close()
        progress.close()
        logger.close()
    result = FitResult(
        state,
        step,
        position.epoch,
        meta["best_metric"],
        meta["best_step"],
        stop_reason,
        list(meta["history"]),
        train_step.jitted._cache_size(),
    )
    for callback in callbacks:
        callback.on_fit_end(result)
    return result


def _total_steps(trainer: Any, steps_per_epoch: int) -> int:
    budgets = [b for b in (trainer.max_steps, trainer.epochs and trainer.epochs * steps_per_epoch) if b]
    if not budgets:
        raise ValueError("trainer: set epochs or max_steps (or both: training stops at the first reached)")
    return min(budgets)


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
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "count")
    progress.write(f"step {step} validation: {shown}{' (best)' if better else ''}")
    if trainer.patience is not None and meta["bad_evals"] >= trainer.patience:
        progress.write(
            f"early stopping at step {step}: no better {trainer.metric} in {trainer.patience} evaluations "
            f"(best {meta['best_metric']:.4g} at step {meta['best_step']})"
        )
        return "early_stopping"
    return None
