"""The first examples a user runs: the lecture MLP and iris-style regression."""

from __future__ import annotations

import itertools
import subprocess
import sys

from funcnet.experiments import mlp, regression


def test_mlp_loss_falls_at_least_tenfold():
    losses = mlp.train(steps=100, log=lambda *a: None)
    assert losses[-1] * 10 <= losses[0], (losses[0], losses[-1])
    assert all(b <= a * 1.05 for a, b in itertools.pairwise(losses))  # Adam at 1e-4: no spikes


def test_mlp_command_prints_the_falling_loss():
    out = subprocess.run(
        [sys.executable, "-m", "funcnet.experiments.mlp", "--steps", "60"], capture_output=True, text=True, check=True
    ).stdout
    assert "step    0  loss" in out and "step   59  loss" in out and "x lower" in out


def test_iris_style_regression_explains_most_of_the_variance():
    result = regression.train(steps=1500, log=lambda *a: None)
    # Within-species noise leaves ~4% of the variance unexplained (slope 0.6 -> 1 - 0.36 of each
    # species' small variance); a model that only learned the mean would score 0.
    assert result["test_r2"] > 0.9, result
    assert result["test_rmse"] < 0.25 * result["baseline_rmse"], result
