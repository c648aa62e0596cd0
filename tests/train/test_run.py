"""Reopening runs: load_run without the optimizer, best params in FitResult, runs made by the CLI and by fit."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet.config import cli
from funcnet.config import load_run as load_config_run
from funcnet.deploy.handlers import standardized as prepare
from funcnet.train import TrainerConfig, fit, load_run
from funcnet.train.checkpoint import CheckpointError
from funcnet.train.data import ArrayDataset, Batches

RNG = np.random.default_rng(1)
X = RNG.standard_normal((64, 3)).astype(np.float32)
MODEL = fn.serial(fn.dense(8), jax.nn.tanh, fn.batch_norm(), fn.dense(1))


def mse(out, batch):
    return jnp.mean((out - batch["y"]) ** 2, axis=-1)


def _fit(run_dir, *, valid_sign=1.0, **trainer):
    """Trains y = sum(x); validation asks for y * valid_sign, so with -1 it only gets worse."""
    y = X.sum(1, keepdims=True)
    train = Batches(ArrayDataset(x=X[:48], y=y[:48]), 16, seed=0, multiple_of=8)
    valid = Batches(ArrayDataset(x=X[48:], y=valid_sign * y[48:]), 16, shuffle=False, multiple_of=8)
    options = TrainerConfig(**{"epochs": 4, "progress": False, "eval_every": 3, **trainer})
    return fit(MODEL, mse, optax.adam(0.05), train, run_dir=run_dir, trainer=options, validation=valid)


def _apply(params, state, x):
    return MODEL.apply(params, state, jnp.asarray(x), train=False)[0]


def test_fit_gives_the_best_params_and_the_final_ones_and_load_run_restores_them_without_the_optimizer(tmp_path):
    result = _fit(tmp_path, valid_sign=-1.0)  # validation worsens: the best is the first evaluation
    assert result.best_step == 3 and result.step == 12
    final_out, best_out = _apply(result.state.params, result.state.model_state, X), None
    best_out = _apply(result.best_params, result.best_model_state, X)
    assert not np.allclose(final_out, best_out)  # two different sets of parameters, each named

    best = load_run(tmp_path, MODEL)  # no optimizer, no loss, no data
    assert best.step == 3 and best.checkpoint == "best" and best.inputs == ("x",)
    jax.tree.map(np.testing.assert_array_equal, best.params, jax.tree.map(np.asarray, result.best_params))
    np.testing.assert_allclose(best.predict(X), best_out, rtol=1e-6, atol=1e-6)

    latest = load_run(tmp_path, MODEL, checkpoint="latest")
    assert latest.step == 12
    np.testing.assert_allclose(latest.predict(X), final_out, rtol=1e-6, atol=1e-6)
    assert load_run(tmp_path, MODEL, checkpoint=3).step == 3


def test_best_params_are_the_final_ones_when_the_last_evaluation_is_the_best(tmp_path):
    result = _fit(tmp_path)
    assert result.best_step == result.step
    jax.tree.map(np.testing.assert_array_equal, result.best_params, result.state.params)


def test_load_run_skips_a_damaged_best_checkpoint_in_one_line(tmp_path, capsys):
    _fit(tmp_path, valid_sign=-1.0, keep_checkpoints=2)
    with open(tmp_path / "checkpoints" / "3" / "meta" / "metadata", "w") as f:
        f.write("{ not json")
    loaded = load_run(tmp_path, MODEL)
    assert loaded.step == 12  # the newest that restores
    said = capsys.readouterr().err
    assert "checkpoints/3 does not restore" in said and len(said.strip().splitlines()) == 1


def test_load_run_refuses_what_is_not_a_trained_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory fit has trained"):
        load_run(tmp_path, MODEL)
    _fit(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"no config.json .* funcnet.train.load_run\(run_dir, model\)"):
        load_config_run(tmp_path / "run")
    with pytest.raises(
        CheckpointError,
        match=r"params/batch_norm_0/bias is float32\[8\] in the checkpoint, the model expects float32\[5\]",
    ):
        load_run(tmp_path / "run", fn.serial(fn.dense(5), fn.batch_norm(), fn.dense(1)), checkpoint="latest")


def test_a_cli_run_reopens_without_code_and_predicts_from_raw_inputs_as_in_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "iris.toml").write_text(
        '[model]\ntype = "mlp"\nhidden = [8]\nfeatures = 1\n[dataset]\ntype = "iris_like"\nn_per_species = 20\n'
        '[loss]\ntype = "mse"\n[optimizer]\ntype = "adam"\nlearning_rate = 0.01\n'
        "[trainer]\nepochs = 2\nbatch_size = 8\nprogress = false\n"
    )
    assert cli.main(["train", "iris.toml", "-s", "run"]) == 0
    loaded = load_config_run("run")
    stats = json.loads((tmp_path / "run" / "preprocessing.json").read_text())["standardize"]["x"]
    raw = np.array([[5.0, 3.4, 1.5], [6.5, 3.0, 5.5]], np.float32)
    standardized = (raw - np.array(stats["mean"])) / np.array(stats["std"])
    expected = loaded.model.apply(loaded.params, loaded.state, jnp.asarray(standardized, jnp.float32))[0]
    np.testing.assert_allclose(loaded.predict(raw), expected, rtol=1e-5, atol=1e-6)
    assert (
        loaded.config["model"]["type"] == "mlp"
        and loaded.step == json.loads((tmp_path / "run" / "results.json").read_text())["best_step"]
    )


def test_prepare_leaves_inputs_without_recorded_statistics_as_they_are():
    x = np.ones((2, 3), np.float32)
    assert prepare({}, "x", x) is x
    assert prepare({"standardize": {"other": {"mean": [0.0], "std": [2.0]}}}, "x", x) is x


def test_runs_record_what_reopening_needs(tmp_path):
    _fit(tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["inputs"] == {"x": {"shape": [16, 3], "dtype": "float32"}}
    assert (record["metric"], record["mode"]) == ("loss", "min")
