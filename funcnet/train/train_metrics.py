"""What ``fit`` does with the train metrics it has read back: NaN/Inf checks, running means, logs, progress."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .checkpoint import Checkpointer
from .state import TrainState
from .writers import Progress, RunLogger

_PER_STEP = ("count", "grad_norm", "skipped")  # summed or averaged per step, not weighted by examples


class TrainLog:
    """Handles read steps in order: a NaN/Inf step (its ``finite`` flag with ``skip_nan_updates``,
    else its loss) stops the run or, with skipping, counts as skipped; keeps running means weighted
    by the real examples, writes ``train/*`` scalars at log steps and moves the progress bar.

    Args:
      trainer: the ``TrainerConfig`` (``log_every``, ``skip_nan_updates``).
      logger: where scalars and histograms go.
      progress: the progress bar.
      checkpointer: named in the NaN message (the last good checkpoint).
      learning_rate: ``step -> learning rate`` for the logs, or None.
      items_per_example: what the progress bar's rate counts per example.

    Example:
      >>> import tempfile
      >>> from funcnet.train import TrainerConfig
      >>> from funcnet.train.writers import Progress, RunLogger
      >>> log = TrainLog(TrainerConfig(max_steps=2, log_every=2), RunLogger(tempfile.mkdtemp()),
      ...                Progress(2, 0, enabled=False), None, None, 1)
      >>> log([(1, {"loss": 1.0, "count": 4.0}), (2, {"loss": 3.0, "count": 4.0})])
      >>> log.last_means["loss"]
      2.0
    """

    def __init__(
        self,
        trainer: Any,
        logger: RunLogger,
        progress: Progress,
        checkpointer: Checkpointer | None,
        learning_rate: Callable[[int], float] | None,
        items_per_example: int,
    ):
        self.trainer, self.logger, self.progress, self.checkpointer = trainer, logger, progress, checkpointer
        self.learning_rate, self.items_per_example = learning_rate, items_per_example
        self.window: dict[str, float] = {}
        self.window_steps = 0
        self.window_start = time.perf_counter()
        self.grad_norms: list[float] = []  # since the last evaluation, for its histogram
        self.last_means: dict[str, float] = {}  # the scalars written at the last log step
        self.first_loss: float | None = None  # the first step's loss: the bound of a diverging run

    def __call__(self, records: Sequence[tuple[int, dict[str, float]]]) -> str | None:
        """Handles ``(step, metrics)`` records, oldest first; returns ``"nan"`` or ``"diverged"`` to stop, else None."""
        examples, shown, done = 0.0, {}, 0
        try:
            for step, metrics in records:
                finite = metrics.pop("finite", None)  # from the step only with skip_nan_updates
                if (not math.isfinite(metrics["loss"])) if finite is None else finite == 0.0:
                    if not self.trainer.skip_nan_updates:
                        return self.nan(step)
                    self.progress.write(f"step {step}: NaN/Inf loss or gradient, update skipped")
                    metrics["skipped"] = 1.0
                done += 1
                if self.first_loss is None and math.isfinite(metrics["loss"]):
                    self.first_loss = metrics["loss"]  # the first step's: what a diverging loss is measured against
                count = metrics["count"]
                examples += count
                shown = metrics
                if "grad_norm" in metrics:
                    self.grad_norms.append(metrics["grad_norm"])
                for name, value in metrics.items():
                    self.window[name] = self.window.get(name, 0.0) + value * (1.0 if name in _PER_STEP else count)
                self.window_steps += 1
                if step % self.trainer.log_every == 0 and self._write(step):
                    return self.diverged(step)
        finally:
            if done:
                self.progress.update(done, {"loss": shown["loss"]}, examples=int(examples) * self.items_per_example)
        return None

    def nan(self, step: int, detail: str = "") -> str:
        """Reports a NaN/Inf at ``step`` and the last good checkpoint; returns ``"nan"``."""
        self.progress.write(
            f"loss or gradient is NaN/Inf at step {step}{detail}: stopping. Last good checkpoint: {self._last_good()}. "
            "Fix: lower the learning rate, clip gradients (optimizer.grad_clip_norm), or set "
            "trainer.skip_nan_updates=true to skip such updates."
        )
        return "nan"

    def diverged(self, step: int) -> str:
        """Reports a training loss grown past ``trainer.diverge_factor`` times the first; returns ``"diverged"``."""
        loss, factor, first = self.last_means["loss"], self.trainer.diverge_factor, self.first_loss
        self.progress.write(
            f"training loss {loss:.4g} at step {step} is over {factor:g} times the first step's ({first:.4g}): the run "
            f"diverged, stopping. Last good checkpoint: {self._last_good()}. Fix: lower the learning rate, clip "
            "gradients (optimizer.grad_clip_norm), or raise trainer.diverge_factor."
        )
        return "diverged"

    def _last_good(self) -> str:
        last = self.checkpointer.latest_step() if self.checkpointer is not None else None
        return f"step {last} ({self.checkpointer.directory}/{last})" if last is not None else "none yet"

    def _write(self, step: int) -> bool:
        """Writes the window's means at a log step; True if the loss diverged (``trainer.diverge_factor``)."""
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        examples = self.window.pop("count", 0.0)
        means = {k: v / max(examples, 1.0) for k, v in self.window.items() if k not in _PER_STEP}
        if "grad_norm" in self.window:
            means["grad_norm"] = self.window["grad_norm"] / max(self.window_steps, 1)
        if "skipped" in self.window:
            means["skipped"] = self.window["skipped"]
        means["steps_per_second"] = self.window_steps / elapsed
        means["examples_per_second"] = examples / elapsed
        if self.learning_rate is not None:
            means["learning_rate"] = float(self.learning_rate(step - 1))
        self.logger.scalars("train", means, step)
        self.last_means = means
        self.window.clear()
        self.window_start, self.window_steps = time.perf_counter(), 0
        loss, factor = means.get("loss"), self.trainer.diverge_factor
        if loss is None or self.first_loss is None or not math.isfinite(loss):
            return False
        return bool(factor) and loss > factor * max(abs(self.first_loss), 1e-6)

    def grad_norm_histogram(self, step: int) -> None:
        """Writes the gradient norms since the last evaluation (``log_grad_norm``) as ``train/grad_norm``."""
        if self.grad_norms:
            self.logger.histograms("train/grad_norm", np.asarray(self.grad_norms), step)
            self.grad_norms.clear()


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in leaves])) if leaves else jnp.array(True)


def state_is_finite(state: TrainState) -> bool:
    """Whether every float in the params, model state and optimizer state is finite (one jitted reduction).

    ``fit`` checks it before a checkpoint when only the loss is checked each step: a NaN gradient
    behind a finite loss must not be saved.

    >>> import jax, jax.numpy as jnp, optax, funcnet as fn
    >>> from funcnet.train.state import create_train_state
    >>> state = create_train_state(fn.dense(1), optax.sgd(0.1), jax.random.key(0), jnp.ones((8, 2)))
    >>> state_is_finite(state), state_is_finite(state._replace(params={"kernel": jnp.full((2, 1), jnp.nan)}))
    (True, False)
    """
    return bool(_all_finite((state.params, state.model_state, state.opt_state)))
