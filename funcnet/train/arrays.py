"""``fit_arrays``: training on NumPy arrays in one call, as Keras's ``model.fit(x, y, ...)``.

It makes what ``fit`` takes (a validation split, shuffled batches, a per-example loss, the trainer
options, a run directory) and returns ``fit``'s result, whose ``best_params`` are those of the best
validation loss: early stopping and the best parameters restored, by default.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optax

from ..core import Model
from ..losses import per_example
from .callbacks import Callback
from .data import ArrayDataset, Batches
from .loop import fit
from .options import TrainerConfig
from .result import FitResult
from .state import data_mesh


def fit_arrays(
    model: Model,
    x: Any,
    y: Any,
    *,
    loss: Callable[..., Any],
    metrics: Mapping[str, Callable[..., Any]] | None = None,
    optimizer: optax.GradientTransformation | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    validation_split: float = 0.2,
    validation_data: tuple[Any, Any] | None = None,
    patience: int | None = 5,
    metric: str = "loss",
    mode: str = "min",
    run_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    callbacks: tuple[Callback, ...] = (),
    **trainer: Any,
) -> FitResult:
    """Trains ``model`` on arrays ``x`` (its input) and ``y`` (the targets); returns the FitResult.

    >>> import contextlib, io, tempfile, numpy as np, optax, funcnet as fn
    >>> x = np.random.default_rng(0).standard_normal((200, 3)).astype(np.float32)
    >>> with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(io.StringIO()):  # quiet
    ...     result = fit_arrays(fn.dense(1), x, x.sum(1, keepdims=True), loss=fn.losses.mse, epochs=30,
    ...                         optimizer=optax.adam(0.05), run_dir=run_dir, progress=False)
    >>> result.best_metric < 0.01, result.history[-1]["count"]  # 40 validation examples
    (True, 40.0)

    Args:
      model: the model; ``model.apply(params, state, x)``.
      x, y: arrays with the examples along the first axis.
      loss: ``(outputs, targets, *, reduction) -> values``, e.g. ``funcnet.losses.softmax_cross_entropy``.
      metrics: name -> metric (``{"accuracy": fn.metrics.accuracy}``), evaluated beside the loss.
      optimizer: an optax transformation; default ``optax.adam(1e-3)``.
      epochs, batch_size: as in ``TrainerConfig``.
      validation_split: the fraction of the examples held out for validation, drawn at random (from
        ``seed``; Keras takes the last ones instead); 0: none. Ignored with ``validation_data``.
      validation_data: ``(x, y)`` to validate on instead of a split.
      patience: stop after this many evaluations (one per epoch) without a better ``metric``; None: never.
      metric, mode: the validation figure that picks the best parameters and drives early stopping.
      run_dir: where checkpoints and logs go; None: a new temporary directory (printed).
      seed: the split, the shuffling, initialisation and dropout.
      progress: show a progress bar.
      callbacks: ``funcnet.train.Callback`` s.
      **trainer: any other ``TrainerConfig`` option (``log_every``, ``skip_nan_updates``, ...).

    Returns:
      ``fit``'s FitResult: ``best_params`` / ``best_model_state`` of the best evaluation, ``state`` the final
      state, ``history`` the evaluations.

    Raises:
      ValueError: ``x`` and ``y`` hold different numbers of examples, or the split leaves no training example.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"fit_arrays: x has {len(x)} examples and y has {len(y)}; expected the same number")
    if validation_data is not None:
        train, valid = (x, y), tuple(np.asarray(a) for a in validation_data)
    elif validation_split:
        if not 0 < validation_split < 1:
            raise ValueError(f"fit_arrays: validation_split must be in [0, 1), got {validation_split}")
        order = np.random.default_rng(seed).permutation(len(x))
        held = round(len(x) * validation_split)
        if held == 0 or held == len(x):
            raise ValueError(
                f"fit_arrays: validation_split={validation_split} of {len(x)} examples leaves one side empty"
            )
        train, valid = (x[order[held:]], y[order[held:]]), (x[order[:held]], y[order[:held]])
    else:
        train, valid = (x, y), None
    devices = data_mesh().size
    options = TrainerConfig(epochs=epochs, batch_size=batch_size, patience=patience if valid else None, metric=metric,
                            mode=mode, seed=seed, progress=progress, **trainer)  # fmt: skip
    batches = Batches(ArrayDataset(x=train[0], y=train[1]), batch_size, seed=seed, multiple_of=devices)
    validation = None
    if valid is not None:
        validation = Batches(ArrayDataset(x=valid[0], y=valid[1]), batch_size, shuffle=False, multiple_of=devices)
    if run_dir is None:
        run_dir = tempfile.mkdtemp(prefix="funcnet-run-")
        print(f"run directory: {run_dir}")
    return fit(
        model, per_example(loss, **(metrics or {})), optimizer or optax.adam(1e-3), batches, run_dir=run_dir,
        trainer=options, validation=validation, callbacks=callbacks,
    )  # fmt: skip
