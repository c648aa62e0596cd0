"""When ``fit`` acts: the step budget, periodic actions (evaluate, save, read metrics) and early stopping.

Each trigger answers one question for the loop after a step, as CLU's periodic actions do, so the loop
itself holds no arithmetic on step numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .data import Position
from .options import TrainerConfig


class Budget:
    """How long the run trains: ``trainer.max_steps`` and ``trainer.epochs``, the first reached ends it.

    ``total`` is the step budget, or None when only an epoch count of unknown length bounds the run
    (a source whose ``steps_per_epoch`` is None: epochs are then counted by position).

    >>> budget = Budget(TrainerConfig(epochs=2, max_steps=5), steps_per_epoch=4)
    >>> budget.total, budget.done(5, Position(1, 1)), budget.done(4, Position(1, 0))
    (5, True, False)
    """

    def __init__(self, trainer: TrainerConfig, steps_per_epoch: int | None):
        self.epochs = trainer.epochs
        if trainer.epochs and steps_per_epoch is None:
            self.total = trainer.max_steps or None
        else:
            budgets = [b for b in (trainer.max_steps, trainer.epochs and trainer.epochs * steps_per_epoch) if b]
            if not budgets:
                raise ValueError("trainer: set epochs or max_steps (or both: training stops at the first reached)")
            self.total = min(budgets)

    def done(self, step: int, position: Position) -> bool:
        """Whether the run has trained all it should after ``step`` steps, the next batch at ``position``."""
        return (self.total is not None and step >= self.total) or (
            self.epochs is not None and position.epoch >= self.epochs
        )


class Periodic:
    """Due every ``every`` steps, or (``every`` None) at each epoch's end if ``at_epoch_end``; and at the last step.

    >>> evaluate = Periodic(None, at_epoch_end=True)
    >>> evaluate(7, epoch_end=True, last=False), evaluate(8, epoch_end=False, last=False)
    (True, False)
    >>> save = Periodic(100)
    >>> save(200, epoch_end=True, last=False), save(250, epoch_end=False, last=True)
    (True, True)
    """

    def __init__(self, every: int | None, *, at_epoch_end: bool = False):
        self.every = every
        self.at_epoch_end = at_epoch_end and not every

    def __call__(self, step: int, *, epoch_end: bool, last: bool) -> bool:
        return bool((self.every and step % self.every == 0) or (self.at_epoch_end and epoch_end) or last)


class MetricReads:
    """When to read the steps' metrics back between evaluations: at log steps, and in a single-process run
    at least every ``seconds`` (the progress bar and the NaN check). Several processes read at the same
    steps only, so that all of them stop alike.

    >>> reads = MetricReads(log_every=10, seconds=None)
    >>> reads([(9, {})]), reads([(10, {})])
    (False, True)
    """

    def __init__(self, log_every: int, seconds: float | None, clock: Callable[[], float] = time.perf_counter):
        self.log_every, self.seconds, self.clock = log_every, seconds, clock
        self.last = clock()

    def __call__(self, finished: Sequence[tuple[int, Any]]) -> bool:
        logged = any(step % self.log_every == 0 for step, _ in finished)
        return logged or (self.seconds is not None and self.clock() - self.last > self.seconds)

    def read(self) -> None:
        """Records that the metrics were just read."""
        self.last = self.clock()


class EarlyStopping:
    """Records each evaluation in a checkpoint's ``meta`` (best metric and step, patience, history) and says
    when patience has run out.

    A tie moves "best" to the newer step, as Orbax ranks checkpoints, but does not reset patience.

    >>> stopping = EarlyStopping(TrainerConfig(epochs=1, patience=1), say=print)
    >>> meta = {"best_metric": None, "best_step": None, "bad_evals": 0, "history": []}
    >>> stopping(meta, {"loss": 1.0}, step=10, epoch=0)
    step 10 validation: loss 1 (best)
    >>> stopping(meta, {"loss": 2.0}, step=20, epoch=0)
    step 20 validation: loss 2
    early stopping at step 20: no better loss in 1 evaluations (best 1 at step 10)
    'early_stopping'
    """

    def __init__(self, trainer: TrainerConfig, say: Callable[[str], None]):
        self.metric, self.mode, self.patience, self.say = trainer.metric, trainer.mode, trainer.patience, say

    def __call__(self, meta: dict[str, Any], metrics: Mapping[str, float], *, step: int, epoch: int) -> str | None:
        if self.metric not in metrics:
            raise KeyError(f"trainer.metric={self.metric!r} is not a validation metric; they are {sorted(metrics)}")
        value, best = metrics[self.metric], meta["best_metric"]
        finite = math.isfinite(value)
        better = finite and (best is None or (value < best if self.mode == "min" else value > best))
        if finite and (better or value == best):
            meta["best_metric"], meta["best_step"] = value, step
        meta["bad_evals"] = 0 if better else meta["bad_evals"] + 1
        meta["history"].append({"step": step, "epoch": epoch, **metrics})
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "count" and not k.startswith("_"))
        self.say(f"step {step} validation: {shown}{' (best)' if better else ''}")
        if self.patience is not None and meta["bad_evals"] >= self.patience:
            self.say(
                f"early stopping at step {step}: no better {self.metric} in {self.patience} evaluations "
                f"(best {meta['best_metric']:.4g} at step {meta['best_step']})"
            )
            return "early_stopping"
        return None
