"""Evaluation: the means of a loss function's values over one pass of a data set, read back once."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from ..core import Model
from .batch_feed import batch_transfer, on_cpu
from .state import TrainState, data_mesh
from .step import LossFn, make_eval_step
from .step_metrics import PendingMetrics


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
    return evaluate_pass(make_eval_step(model, loss_fn, mesh=mesh, inputs=inputs), state, batches, mesh)


def evaluate_pass(step: Callable, state: TrainState, batches: Any, mesh) -> dict[str, float]:
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


def check_metric(eval_step: Callable, state: TrainState, batch: Mapping[str, Any], metric: str) -> None:
    """Raises ValueError unless the evaluation's metrics include ``metric`` (found without running it)."""
    given = jax.eval_shape(eval_step, state, batch)
    if metric not in given:
        raise ValueError(
            f"trainer.metric={metric!r} is not a metric the evaluation gives; it gives {sorted(given)}. Fix: set "
            "trainer.metric to one of them, or return it from the loss function."
        )
