"""Checkpoints with Orbax: the latest N and the best by a validation metric, saved atomically.

Each checkpoint ``RUN_DIR/checkpoints/<step>/`` holds two items:

- ``state``: the TrainState's arrays (Orbax's standard format, restorable onto any mesh);
- ``meta``: JSON beside them: the data-iterator position, epoch, best metric so far, patience
  counter, and whatever else the loop records (the resolved config is in ``RUN_DIR/config.json``).

Retention keeps the newest ``keep`` checkpoints AND the ``keep_best`` best by ``metric``
(``AnyPreservationPolicy([LatestN, BestN])``). Orbax's ``max_to_keep`` together with ``best_fn``
would keep only the best and delete the newest, which makes resuming impossible. Checkpoints saved
between evaluations carry no metric and are governed by ``LatestN`` alone.

Saves are asynchronous (the step loop goes on while arrays are written); Orbax writes into a
temporary directory and renames it when complete, so a process killed mid-save leaves the
previous checkpoints intact and the partial one is ignored. Call ``wait()`` before exiting.
"""

from __future__ import annotations

import atexit
import copy
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class _OrbaxLog(logging.Filter):
    """What a Checkpointer takes from Orbax's log while it is open (installed on the ``absl`` logger).

    - The warning for checkpoints saved without metrics is dropped: between evaluations that is the design.
    - A failed background save is logged by Orbax's threads as several tracebacks and never raised where
      the loop could see it. The first cause is kept in ``failure`` (``Checkpointer.check`` raises it) and
      the records are dropped: the run reports it in one line.
    """

    def __init__(self):
        super().__init__()
        self.failure: BaseException | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "did not provide metrics" in message:
            return False
        if record.levelno >= logging.ERROR and "orbax" in record.pathname:  # an error in one of Orbax's threads
            if self.failure is None and record.exc_info:
                self.failure = record.exc_info[1]
            return False
        return True


class _UnretrievedWrites(logging.Filter):
    """Drops asyncio's "exception was never retrieved" for writes into a checkpoint whose save already failed."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("never retrieved" in message and ".orbax-checkpoint-tmp" in message)


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (a full disk, no permission): the run stops, the older ones are intact.

    >>> str(CheckpointSaveError("saving checkpoint 6 in runs/x/checkpoints failed: OSError: ..."))[:26]
    'saving checkpoint 6 in run'
    """


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be restored.

    >>> str(CheckpointError("no checkpoint of runs/x/checkpoints restores: 12 (JSONDecodeError: ...)"))[:24]
    'no checkpoint of runs/x/'
    """


def _note(line: str) -> None:
    print(line, file=sys.stderr)


def _one_line(error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:200]}{'...' if len(first) > 200 else ''}"


def _drop_late_reads() -> None:
    """Silences what a failed restore or save leaves behind: its aborted TensorStore operations finish after Orbax
    closed its event loop, and Python reports each as an unraisable ``RuntimeError: Event loop is closed``, a
    screenful of tracebacks that say nothing more (and Orbax coroutines left unawaited warn the same way). Other
    unraisable exceptions still reach the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_late_reads", False):
        return

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
        code = getattr(unraisable.object, "cr_code", None)  # an Orbax coroutine the aborted operation never awaited
        orbax_never_awaited = "orbax" in getattr(code, "co_filename", "") and "never awaited" in str(error)
        if not (closed_loop or orbax_never_awaited):
            previous(unraisable)

    hook.drops_late_reads = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


class Checkpointer:
    """Saves and restores TrainStates and their metadata in ``directory``.

    Args:
      directory: where the step folders go (created if missing).
      keep: how many of the newest checkpoints to keep.
      keep_best: how many of the best checkpoints (by ``metric``) to keep.
      metric: the validation metric name in the ``metrics`` given to ``save``.
      mode: ``"min"`` or ``"max"``: which direction is better.
      asynchronous: write arrays in the background.

    Example:
      >>> import tempfile, jax.numpy as jnp
      >>> ckpt = Checkpointer(tempfile.mkdtemp(), keep=2)
      >>> ckpt.save(1, {"w": jnp.ones(2)}, {"epoch": 0}, metrics={"loss": 0.5})
      >>> ckpt.wait()
      >>> state, meta = ckpt.restore(1, {"w": jnp.zeros(2)})
      >>> state["w"].tolist(), meta
      ([1.0, 1.0], {'epoch': 0})
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        keep_best: int = 1,
        metric: str = "loss",
        mode: str = "min",
        asynchronous: bool = True,
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.metric, self.mode = metric, mode
        worst = math.inf if mode == "min" else -math.inf

        def score(metrics: Mapping[str, float]) -> float:
            value = float(metrics[metric])
            return value if math.isfinite(value) else worst

        preservation = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=keep),
                policies.BestN(
                    get_metric_fn=score, reverse=mode == "min", n=keep_best, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            best_fn=score,
            best_mode=mode,
            preservation_policy=preservation,
            enable_async_checkpointing=asynchronous,
            create=True,
        )
        self.directory = os.fspath(directory)
        self._log = _OrbaxLog()
        logging.getLogger("absl").addFilter(self._log)
        _drop_late_reads()  # a failed write's leftover callbacks, like a failed read's
        self.failed = False  # a save failed: its temporary folder is removed at close
        self.saving: int | None = None  # the step of the newest save started
        self.broken: set[int] = set()  # steps that did not restore (restore_first)
        self.closed_at: int | None = None  # the newest complete step when closed
        self.manager = ocp.CheckpointManager(
            os.path.abspath(self.directory), item_names=("state", "meta"), options=options
        )
        # JAX's preemption sync point counts the steps it is called with: funcnet.train.stopping calls it once
        # per step, in order, from the loop. Orbax would also call it, with checkpoint steps and from its own
        # threads, and the processes could then disagree on the step to stop at.
        self.manager.reached_preemption = lambda step: False

    def save(self, step: int, state: Any, meta: Mapping[str, Any], metrics: Mapping[str, float] | None = None) -> None:
        """Starts saving ``state`` (a pytree of global arrays) and ``meta`` (JSON) as ``step``.

        ``metrics`` (validation metrics) make the checkpoint a candidate for "best"; give them
        at evaluations only. ``meta`` is copied now: later changes to it are not saved. Saving a step
        that already exists is a no-op.
        """
        self.check()
        if step in self.broken:  # a damaged checkpoint the run has trained past again: replace it
            self.manager.delete(step)
            self.broken.discard(step)
        if step in self.manager.all_steps():
            return
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        try:
            self.manager.save(
                int(step),
                # A snapshot: the save finishes in the background, while the loop goes on changing its meta.
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(copy.deepcopy(meta))
                ),
                metrics=metrics,
                force=True,
            )
        except Exception as error:  # the previous save's failure surfaces here, or this one's start fails
            previous_failed = self.saving is not None and self.saving not in self.all_steps()
            self._failed(self.saving if previous_failed else step, self._log.failure or error)
        self.saving = int(step)

    def restore(self, step: int, abstract_state: Any, *, partial: bool = False) -> tuple[Any, dict[str, Any]]:
        """Restores step ``step`` into the shapes, dtypes and shardings of ``abstract_state``.

        ``abstract_state`` may be a pytree of ``jax.ShapeDtypeStruct`` with shardings (see
        ``funcnet.train.state.abstract_train_state``) or of arrays whose shardings to copy. With
        ``partial``, it is a dict of some of the saved state's fields (``{"params": ..., "model_state":
        ...}``, no optimizer needed), restored as NumPy arrays on the host, whatever the devices.
        """
        if partial:
            as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract_state)
            item = ocp.args.PyTreeRestore(item=abstract_state, restore_args=as_numpy, partial_restore=True)
        else:
            item = ocp.args.StandardRestore(abstract_state)
        restored = self.manager.restore(int(step), args=ocp.args.Composite(state=item, meta=ocp.args.JsonRestore()))
        return restored.state, dict(restored.meta)

    def restore_first(
        self, steps: Sequence[int], abstract_state: Any, *, say: Callable[[str], Any] = _note, partial: bool = False
    ) -> tuple[int, Any, dict[str, Any]]:
        """Restores the first of ``steps`` that restores, saying in one line why each before it did not.

        A damaged checkpoint (a truncated array file, unreadable meta, missing Orbax metadata) is skipped
        and remembered: saving that step again replaces it.

        Returns:
          ``(step, state, meta)``.

        Raises:
          CheckpointError: none of ``steps`` restores (each with its cause, on one line).

        Example:
          >>> import os, tempfile, jax.numpy as jnp
          >>> ckpt = Checkpointer(tempfile.mkdtemp(), asynchronous=False)
          >>> for step in (1, 2):
          ...     ckpt.save(step, {"w": jnp.full(2, step)}, {})
          >>> with open(os.path.join(ckpt.directory, "2", "meta", "metadata"), "w") as f:
          ...     _ = f.write("{ not json")
          >>> step, state, _ = ckpt.restore_first([2, 1], {"w": jnp.zeros(2)}, say=lambda line: print(line[-34:]))
          (char 2); trying the next (2 -> 1)
          >>> step, state["w"].tolist()
          (1, [1.0, 1.0])
        """
        failures = []
        _drop_late_reads()  # before: a damaged read's leftovers may arrive while its error propagates
        for i, step in enumerate(steps):
            try:
                state, meta = self.restore(step, abstract_state, partial=partial)
            except Exception as error:  # any damage: Orbax, TensorStore and the JSON reader raise their own
                cause = _one_line(error)
                failures.append(f"{step} ({cause})")
                self.broken.add(step)
                if i + 1 < len(steps):
                    where = os.path.join(self.directory, str(step))
                    say(f"checkpoint {where} does not restore: {cause}; trying the next ({step} -> {steps[i + 1]})")
                continue
            self._log.failure = None  # what Orbax logged while restoring is no save's failure
            return step, state, meta
        raise CheckpointError(f"no checkpoint of {self.directory} restores: {'; '.join(failures) or 'there are none'}")

    def candidates(self, which: str | int) -> list[int]:
        """The steps to try for ``"best"`` (the best first, then the newest; the newest alone when no
        checkpoint has a metric), ``"latest"`` (newest first) or a step number (that one).

        Raises:
          FileNotFoundError: the directory holds no checkpoint.
        """
        newest_first = self.all_steps()[::-1]
        if not newest_first:
            raise FileNotFoundError(f"{self.directory} holds no checkpoints")
        if which == "latest":
            return newest_first
        if which == "best":
            best = self.best_step()
            return newest_first if best is None else [best, *(s for s in newest_first if s != best)]
        return [int(which)]

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The step of the best checkpoint by the metric (the latest if none has metrics), or None."""
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        """Every complete checkpoint's step, oldest first."""
        return sorted(self.manager.all_steps())

    def check(self) -> None:
        """Raises CheckpointSaveError if a background save failed (cheap: call it every step).

        Raises:
          CheckpointSaveError: in one line, the step, the folder, the cause and the last complete checkpoint.
        """
        if self._log.failure is not None:
            self._failed(self.saving, self._log.failure)

    def _failed(self, step: int | None, error: BaseException) -> None:
        if not self.failed:  # and once more at exit, after Orbax's last thread is done with it
            atexit.register(self._remove_partial)
        self._log.failure, self.failed = None, True
        self._remove_partial()
        complete = self._complete_on_disk()
        last = f"{complete[-1]} ({os.path.join(self.directory, str(complete[-1]))})" if complete else "none"
        raise CheckpointSaveError(
            f"saving checkpoint {step} in {self.directory} failed: {_one_line(error)}. The last complete checkpoint "
            f"is {last}; the run stops. Fix the cause (free space, permissions) and run it again to resume."
        ) from None

    def _complete_on_disk(self) -> list[int]:
        """The steps whose folders were renamed into place (Orbax's own list counts saves still in progress)."""
        names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
        return sorted(int(name) for name in names if name.isdigit())

    def _remove_partial(self, tries: int = 1) -> None:
        """Removes the temporary folders of saves that did not complete (Orbax's threads may still be writing
        into them for a moment after a failure: with ``tries`` > 1, it looks again every 0.1 s)."""
        for attempt in range(tries):
            names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
            partial = [os.path.join(self.directory, n) for n in names if ".orbax-checkpoint-tmp" in n]
            if not partial:
                return
            for path in partial:
                shutil.rmtree(path, ignore_errors=True)
            if attempt + 1 < tries:
                time.sleep(0.1)

    def wait(self) -> None:
        """Blocks until every started save is complete on disk.

        Raises:
          CheckpointSaveError: a save failed.
        """
        try:
            self.manager.wait_until_finished()
        except Exception as error:  # a failed background save is re-raised by Orbax here
            self._failed(self.saving, self._log.failure or error)
        self.check()

    def close(self) -> None:
        """Waits for saves, then releases Orbax's resources; ``closed_at`` is then the newest complete step.

        Always releases them (no thread is left to hold the process at exit), even when a save failed: that
        failure is kept and raised by ``check``; a save that failed leaves no temporary folder behind.
        """
        try:
            self.manager.wait_until_finished()
        except Exception as error:  # reported by check(), which the loop calls
            self._log.failure = self._log.failure or error
        finally:
            try:
                self.closed_at = self.manager.latest_step()
                self.manager.close()
            except Exception as error:  # Orbax's close waits again and raises a failed save's error a second time
                self._log.failure = self._log.failure or error
            finally:
                if self.failed or self._log.failure is not None:  # its threads may log for a while yet: keep the filter
                    logging.getLogger("asyncio").addFilter(_UnretrievedWrites())
                    self._remove_partial(tries=30)
                else:
                    logging.getLogger("absl").removeFilter(self._log)


def restore_run(
    directory: str | os.PathLike, abstract_state: Any, *, which: str = "best", metric: str = "loss", mode: str = "min"
) -> tuple[int, Any]:
    """Restores the ``"best"``, ``"latest"`` or a numbered (``"120"``) checkpoint of ``directory``.

    A best or latest checkpoint that does not restore is skipped with one line saying which and why,
    for the newest that does (``Checkpointer.restore_first``); a numbered one is restored or refused.

    Returns:
      ``(step, state)``, the state in the shapes and shardings of ``abstract_state``.

    Raises:
      FileNotFoundError: the directory holds no checkpoint.
      CheckpointError: none of the candidates restores.

    Example:
      >>> import tempfile, jax.numpy as jnp
      >>> directory = tempfile.mkdtemp()
      >>> ckpt = Checkpointer(directory)
      >>> ckpt.save(3, {"w": jnp.ones(2)}, {})
      >>> ckpt.close()
      >>> restore_run(directory, {"w": jnp.zeros(2)}, which="latest")[0]
      3
    """
    checkpointer = Checkpointer(directory, metric=metric, mode=mode)
    try:
        step, state, _ = checkpointer.restore_first(checkpointer.candidates(which), abstract_state)
    finally:
        checkpointer.close()
    return step, state
