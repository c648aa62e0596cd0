"""Callbacks: host-side hooks into ``fit``, and the dispatch that stops a run when one raises StopTraining."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import FitResult


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
    funcnet.train.callbacks.StopTraining: target reached
    """


class StepCallbacks:
    """Calls every callback's ``on_step_end`` once per finished step, in order; none after one stopped.

    ``__call__`` takes the steps newly known to have finished and returns ``"callback"`` when a callback
    raised StopTraining (``say`` reports it), else None.

    >>> class Stop(Callback):
    ...     def on_step_end(self, step, metrics):
    ...         if step == 2:
    ...             raise StopTraining("enough")
    >>> hooks = StepCallbacks([Stop()], step=0, say=print)
    >>> hooks([(1, {}), (2, {}), (3, {})])
    stopped by a callback at step 2: enough
    'callback'
    >>> hooks([(4, {})]) is None  # no calls once stopped
    True
    """

    def __init__(self, callbacks: Sequence[Callback], step: int, say: Callable[[str], None]):
        self.callbacks = [c for c in callbacks if type(c).on_step_end is not Callback.on_step_end]
        self.called = step  # on_step_end has been called for every step up to this one
        self.stopped = False
        self.say = say

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def __call__(self, finished: Sequence[tuple[int, Mapping[str, float]]]) -> str | None:
        for step, metrics in finished:
            if step <= self.called or self.stopped:
                continue
            self.called = step
            try:
                for callback in self.callbacks:
                    callback.on_step_end(step, metrics)
            except StopTraining as stop:
                self.say(f"stopped by a callback at step {step}: {stop}")
                self.stopped = True
                return "callback"
        return None


def eval_end(callbacks: Sequence[Callback], step: int, metrics: Mapping[str, float], say) -> str | None:
    """Calls every ``on_eval_end``; ``"callback"`` when one raised StopTraining, else None."""
    try:
        for callback in callbacks:
            callback.on_eval_end(step, metrics)
    except StopTraining as stop:
        say(f"stopped by a callback at step {step}: {stop}")
        return "callback"
    return None
