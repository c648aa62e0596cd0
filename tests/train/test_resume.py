"""Exact resume: a run SIGKILLed at any point and restarted with the same command ends bit-identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import pytest

from funcnet.config.run_config import validate_config
from funcnet.config.supervised import Run

CONFIG = {
    "model": {"type": "mlp", "hidden": [16], "features": 1, "dropout": 0.2},  # dropout: randomness per step
    "dataset": {"type": "iris_like", "n_per_species": 30},  # 54 training examples: 4 batches an epoch
    "loss": {"type": "mse"},
    "optimizer": {
        "type": "adam",
        "learning_rate": 0.01,
        "grad_clip_norm": 1.0,
        "schedule": {"type": "warmup_cosine", "warmup_steps": 5, "decay_steps": 30},
    },
    "trainer": {
        "max_steps": 22,
        "batch_size": 16,
        "eval_every": 6,
        "checkpoint_every": 5,
        "keep_checkpoints": 2,
        "log_every": 3,
        "progress": False,
    },
}
ROOT = Path(__file__).resolve().parents[2]


def _train(config_path, run_dir, *extra, expect_killed=False):
    result = subprocess.run(
        [sys.executable, "-m", "tests.train.run_train", str(config_path), str(run_dir), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if expect_killed:
        assert result.returncode == -9, result.stderr[-3000:]
    else:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _final_state(run_dir):
    run = Run(validate_config(json.loads((Path(run_dir) / "config.json").read_text())))
    step, state = run.restore(run_dir, "latest")
    return step, state


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    directory = tmp_path_factory.mktemp("resume")
    config_path = directory / "config.json"
    config_path.write_text(json.dumps(CONFIG))
    _train(config_path, directory / "straight")
    return config_path, directory / "straight"


@pytest.mark.parametrize(
    "kill",
    [
        ["--kill-before-step", "13"],  # mid-epoch (epoch 3, batch 1), between checkpoints 10 and 15
        ["--kill-after-save", "15"],  # while checkpoint 15 is still being written asynchronously
    ],
    ids=["mid_epoch", "during_checkpoint_write"],
)
def test_killed_run_resumes_bit_identical(uninterrupted, tmp_path, kill):
    config_path, straight = uninterrupted
    run_dir = tmp_path / "killed"
    _train(config_path, run_dir, *kill, expect_killed=True)
    resumed = _train(config_path, run_dir)
    assert "resuming from step" in resumed.stdout + resumed.stderr
    step_a, state_a = _final_state(straight)
    step_b, state_b = _final_state(run_dir)
    assert step_a == step_b == 22
    chex.assert_trees_all_equal(state_b.params, state_a.params)  # bit for bit
    chex.assert_trees_all_equal(state_b.opt_state, state_a.opt_state)
    results_a = json.loads((straight / "results.json").read_text())
    results_b = json.loads((run_dir / "results.json").read_text())
    assert results_a["history"] == results_b["history"]


def test_retention_keeps_best_and_latest_across_a_restart(uninterrupted, tmp_path):
    _, straight = uninterrupted
    steps = sorted(int(p.name) for p in (straight / "checkpoints").iterdir() if p.name.isdigit())
    history = json.loads((straight / "results.json").read_text())["history"]
    best = min(history, key=lambda h: h["loss"])["step"]
    assert steps[-2:] == [20, 22] and best in steps  # latest 2 + the best
    # Restart the finished run with a longer budget: the best and the newest survive again.
    longer = dict(CONFIG, trainer=dict(CONFIG["trainer"], max_steps=30))
    config2 = tmp_path / "longer.json"
    config2.write_text(json.dumps(longer))
    run_dir = tmp_path / "continued"
    _train(config2, run_dir, "--kill-before-step", "25", expect_killed=True)
    _train(config2, run_dir)
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    results = json.loads((run_dir / "results.json").read_text())
    assert steps[-1] == 30 and results["best_step"] in steps, (steps, results["best_step"])
    assert not any(".orbax-checkpoint-tmp" in name for name in os.listdir(run_dir / "checkpoints"))
