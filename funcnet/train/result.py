"""``FitResult``: what ``fit`` returns."""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax

from .state import TrainState


class FitResult(NamedTuple):
    """What ``fit`` returns.

    Attributes:
      state: the final TrainState (``state.params`` are the FINAL parameters).
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
      best_params: the parameters of the best evaluation (``best_step``), restored from its checkpoint (as
        Keras's ``restore_best_weights``); the final ones when there was no validation.
      best_model_state: the model state (e.g. batch-norm statistics) that goes with ``best_params``.
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
    best_params: Any = None
    best_model_state: Any = None

    def best_state(self) -> TrainState | None:
        """``state`` with the best evaluation's params and model state (``best_params``): what to evaluate or
        predict with; None when they could not be restored (``fit`` said why).

        >>> import jax.numpy as jnp
        >>> state = TrainState(jnp.int32(3), {"w": jnp.ones(2)}, {}, (), jnp.zeros(2))
        >>> result = FitResult(state, 3, 1, 0.5, 2, "done", [], best_params={"w": jnp.zeros(2)})
        >>> result.best_state().params["w"].tolist()
        [0.0, 0.0]
        """
        if self.best_params is None:
            return None
        return self.state._replace(params=self.best_params, model_state=self.best_model_state)

    @property
    def best_checkpoint(self) -> int:
        """The step ``best_params`` come from: the best evaluation's, or the last step without validation."""
        return self.step if self.best_step is None else self.best_step

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
          best_params=None,
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
            f"best_params={'<from step ' + str(self.best_step) + '>' if self.best_params is not None else None}",
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
