"""The funcnet command: config errors before any work, a user's own registered model, evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from funcnet.config import cli

FUNCNET = str(Path(sys.executable).parent / "funcnet")  # the console script installed by pip
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
USER_MODULE = '''
"""A user's own model and dataset, registered from their own module."""
import numpy as np
import funcnet as fn
from funcnet.config import DataSplits
from funcnet.train.data import ArrayDataset
from funcnet.config.registry import DATASETS, MODELS


@MODELS.register("my_linear")
def my_linear(features: int = 1):
    return fn.serial(scale=fn.dense(features, use_bias=False))


@DATASETS.register("my_line")
def my_line(n: int = 64):
    x = np.linspace(-1, 1, n, dtype=np.float32)[:, None]
    data = ArrayDataset(x=x, y=3 * x)
    return DataSplits(train=data, validation=data, test=data)
'''
CONFIG = """
imports = ["my_models"]

[model]
type = "my_linear"

[dataset]
type = "my_line"

[loss]
type = "mse"

[optimizer]
type = "sgd"
learning_rate = 0.5

[trainer]
epochs = 15
batch_size = 16
progress = false
"""


def _run(*args, cwd):
    return subprocess.run([FUNCNET, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=ENV)


@pytest.fixture(scope="module")
def user_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    (root / "my_models.py").write_text(USER_MODULE)
    (root / "config.toml").write_text(CONFIG)
    result = _run("train", "config.toml", "-s", "run", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


def test_a_user_registered_model_trains_from_config(user_project):
    root, result = user_project
    results = json.loads((root / "run" / "results.json").read_text())
    assert results["stop_reason"] == "done" and results["steps"] == 60
    assert results["best_validation_loss"] < 1e-3  # y = 3x is exactly representable
    assert results["test"]["loss"] < 1e-3
    saved = json.loads((root / "run" / "config.json").read_text())
    assert saved["trainer"]["batch_size"] == 16 and saved["trainer"]["log_every"] == 50  # defaults resolved
    assert "tensorboard --logdir run" in result.stdout + result.stderr


def test_cpu_devices_flag_trains_on_that_many_devices(user_project):
    root = user_project[0]
    assert json.loads((root / "run" / "results.json").read_text())["devices"] == 8  # this session's XLA_FLAGS
    result = _run("train", "config.toml", "-s", "run_cores", "--cpu-devices", "2", "-o", "trainer.epochs=2", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((root / "run_cores" / "results.json").read_text())
    assert results["devices"] == 2 and results["steps"] == 8
    bad = _run("train", "config.toml", "-s", "run_bad", "--cpu-devices", "two", cwd=root)
    assert bad.returncode == 2 and "--cpu-devices: expected a positive int" in bad.stderr
    assert not (root / "run_bad").exists()


def test_evaluate_uses_the_best_checkpoint(user_project):
    root, _ = user_project
    result = _run("evaluate", "run", "--split", "test", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    results = json.loads((root / "run" / "results.json").read_text())
    assert metrics["checkpoint"] == results["best_step"]
    assert metrics["loss"] == pytest.approx(results["test"]["loss"], rel=1e-6)


def test_evaluate_on_other_data_from_the_same_factory(user_project):
    root, _ = user_project
    result = _run("evaluate", "run", "--split", "test", "--data", "n=32", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["count"] == 32.0


def test_rerunning_a_finished_run_resumes_and_does_nothing(user_project):
    root, _ = user_project
    result = _run("train", "config.toml", "-s", "run", cwd=root)
    assert result.returncode == 0 and "resuming from step 60" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.epoch=3", "trainer.epoch: unknown trainer setting. Did you mean 'epochs'?"),
        ("trainer.batch_size=true", "trainer.batch_size: expected an int"),
        ("model.features=two", "model.features: expected an int"),
        ("model.type=my_lineer", "model.type: unknown model 'my_lineer'"),
        ("optimizer.learning_rate=-1", "optimizer.learning_rate"),
    ],
)
def test_malformed_config_fails_before_any_training(user_project, override, message):
    root, _ = user_project
    result = _run("train", "config.toml", "-s", "bad", "-o", override, cwd=root)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (root / "bad" / "checkpoints").exists()


def test_another_config_in_the_same_run_dir_is_refused(user_project):
    root, _ = user_project
    result = _run("train", "config.toml", "-s", "run", "-o", "optimizer.learning_rate=0.1", cwd=root)
    assert result.returncode != 0 and "holds a run with another config" in result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-processes", "2"], "needs --coordinator HOST:PORT, --num-processes N and --process-id I"),
        (
            ["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
            "--process-id: expected 0 to 1",
        ),
        (["--coordinator", "host0", "--num-processes", "2", "--process-id", "0"], "--coordinator: expected HOST:PORT"),
    ],
)
def test_incomplete_or_wrong_process_flags_exit_2_before_joining(tmp_path, capsys, flags, message):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model": {"type": "mlp", "hidden": [4], "features": 1}, "dataset": {"type": "iris_like"},
        "loss": {"type": "mse"}, "optimizer": {"type": "sgd", "learning_rate": 0.1}, "trainer": {"max_steps": 1},
    }))  # fmt: skip
    code = cli.main(["train", str(config), "-s", str(tmp_path / "run"), *flags])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and jax.process_count() == 1  # nothing joined, nothing written


def test_a_batch_that_does_not_split_over_the_devices_is_one_line_exit_2(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model": {"type": "mlp", "hidden": [4], "features": 1}, "dataset": {"type": "iris_like"},
        "loss": {"type": "mse"}, "optimizer": {"type": "sgd", "learning_rate": 0.1},
        "trainer": {"max_steps": 1, "batch_size": 12, "progress": False},
    }))  # fmt: skip
    assert jax.device_count() == 8  # tests/conftest.py
    code = cli.main(["train", str(config), "-s", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: batch_size: expected a multiple of 8") and "Traceback" not in err
    assert "Fix: pick a multiple of 8, e.g. 8 or 16." in err
