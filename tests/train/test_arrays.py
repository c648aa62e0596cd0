"""fit_arrays: Keras-short training on NumPy arrays, with a split, early stopping and the best params."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet.train import fit_arrays, load_run

RNG = np.random.default_rng(0)
X = RNG.standard_normal((300, 4)).astype(np.float32)
LABELS = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int32)


def test_three_lines_train_a_classifier_with_early_stopping_and_the_best_params(tmp_path, capsys):
    model = fn.serial(fn.dense(16), jax.nn.relu, fn.dense(2))
    # The user's lines: train, then take the best parameters.
    accuracy = {"accuracy": fn.metrics.accuracy}
    result = fit_arrays(model, X, LABELS, loss=fn.losses.softmax_cross_entropy, metrics=accuracy,
                        optimizer=optax.adam(0.3), epochs=60, batch_size=32, patience=3, run_dir=tmp_path)  # fmt: skip
    params = result.best_params

    assert result.stop_reason == "early_stopping" and result.step < 60 * 8  # patience ran out before the budget
    assert [h["count"] for h in result.history][:1] == [60.0]  # 20% of 300 held out for validation
    assert result.best_metric == min(h["loss"] for h in result.history)
    best = load_run(tmp_path, model)  # the best checkpoint on disk is the same parameters
    assert best.step == result.best_step
    jax.tree.map(np.testing.assert_array_equal, best.params, jax.tree.map(np.asarray, params))
    logits = model.apply(params, result.best_model_state, X)[0]
    assert (np.argmax(logits, -1) == LABELS).mean() > 0.9
    out = capsys.readouterr()
    assert "step 8 validation: accuracy" in out.out and "step/s" in out.out + out.err  # evaluations and the bar


def test_validation_data_instead_of_a_split_and_shuffled_training_batches(tmp_path):
    model = fn.dense(1)
    y = X.sum(1, keepdims=True)
    result = fit_arrays(model, X[:200], y[:200], loss=fn.losses.mse, validation_data=(X[200:], y[200:]), epochs=2,
                        batch_size=40, run_dir=tmp_path, progress=False, optimizer=optax.sgd(0.1))  # fmt: skip
    assert [h["count"] for h in result.history] == [100.0, 100.0] and result.step == 10


def test_mismatched_arrays_and_empty_splits_are_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="x has 300 examples and y has 299"):
        fit_arrays(fn.dense(1), X, LABELS[:-1], loss=fn.losses.mse, run_dir=tmp_path)
    with pytest.raises(ValueError, match="leaves one side empty"):
        fit_arrays(fn.dense(1), X[:2], LABELS[:2], loss=fn.losses.mse, validation_split=0.1, run_dir=tmp_path)
