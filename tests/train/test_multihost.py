"""Two processes on 127.0.0.1 (2 CPU devices each, gloo collectives) train like one process with 4 devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {
    "model": {"type": "mlp", "hidden": [16], "features": 1, "dropout": 0.1},
    "dataset": {"type": "iris_like", "n_per_species": 30},
    "loss": {"type": "mse"},
    "optimizer": {"type": "adam", "learning_rate": 0.01},
    "trainer": {"max_steps": 12, "batch_size": 16, "eval_every": 6, "checkpoint_every": 4, "progress": False},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config, run_dir, process_id, num_processes, port, devices):
    args = [str(config), str(run_dir), str(process_id), str(num_processes), str(port), str(devices)]
    # A hard kill bounds the test: a stuck collective must fail the test, never hang CI.
    command = ["timeout", "-s", "KILL", "240", sys.executable, "-m", "tests.train.run_multihost", *args]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process):
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out[-4000:]
    return out


def test_two_processes_equal_one_process_with_four_devices(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    port = _free_port()
    workers = [_launch(config, tmp_path / "multi", i, 2, port, 2) for i in range(2)]
    outputs = [_finish(w) for w in workers]
    assert "process 0 of 2, 4 devices: done" in outputs[0] and "process 1 of 2, 4 devices: done" in outputs[1]
    _finish(_launch(config, tmp_path / "single", 0, 1, 0, 4))

    single = np.load(tmp_path / "single" / "restored_0.npz")
    for i in range(2):
        multi = np.load(tmp_path / "multi" / f"restored_{i}.npz")
        assert sorted(multi) == sorted(single)
        for name in single:
            # Tolerance: the same global batch and keys; only the all-reduce differs (gloo across
            # processes vs in-process), which can reorder float32 sums.
            np.testing.assert_allclose(multi[name], single[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # Saved at 4, 6 (evaluation), 8 and 12, once each; kept: the latest 3 (6, 8, 12) and the best (6 or 12).
    steps = {p.name for p in (tmp_path / "multi" / "checkpoints").iterdir()}
    assert steps == {"6", "8", "12"}, steps
    results = json.loads((tmp_path / "multi" / "results.json").read_text())
    assert results["steps"] == 12 and os.path.exists(tmp_path / "multi" / "config.json")
