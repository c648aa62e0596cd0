"""Several processes on 127.0.0.1 (2 CPU devices each, gloo collectives), joined by ``funcnet train`` itself.

- they train like one process with 4 devices;
- a signal to ANY one process stops every process at the same step, saved, with the signal's exit code,
  and the run then resumes bit for bit;
- a killed process ends the other within ``trainer.peer_timeout`` with one line naming it.

Every process runs under a hard ``timeout -s KILL``: a stuck collective fails the test, never hangs CI.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from funcnet.config.run_config import validate_config
from funcnet.config.supervised import Run
from funcnet.core import param_path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {
    "model": {"type": "mlp", "hidden": [16], "features": 1, "dropout": 0.1},
    "dataset": {"type": "iris_like", "n_per_species": 30},
    "loss": {"type": "mse"},
    "optimizer": {"type": "adam", "learning_rate": 0.01},
    "trainer": {"max_steps": 200, "batch_size": 16, "eval_every": 50, "checkpoint_every": 50, "progress": False},
}
HARD_LIMIT = 240  # seconds: the kill that bounds every process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config, run_dir, *flags, devices=2):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    command = ["timeout", "-s", "KILL", str(HARD_LIMIT), sys.executable, "-m", "funcnet.config.cli", "train"]
    command += [str(config), "-s", str(run_dir), *flags]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _pair(config, run_dir):
    port = _free_port()
    return [
        _launch(config, run_dir, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i))
        for i in range(2)
    ]


def _wait_for(process, text):
    """Reads the process's output until a line holds ``text``; returns what was read."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if text in line:
            return "".join(lines)
    raise AssertionError(f"{text!r} never came:\n{''.join(lines)[-4000:]}")


def _finish(process, code=0, before=""):
    out, _ = process.communicate(timeout=HARD_LIMIT + 60)
    out = before + out
    assert process.returncode == code, f"exit {process.returncode}, expected {code}:\n{out[-4000:]}"
    return out


def _params(config_path, run_dir):
    run = Run(validate_config(json.loads(Path(config_path).read_text())))
    _, state = run.restore(run_dir, "latest")
    leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    return {param_path(path): np.asarray(leaf) for path, leaf in leaves}


def _steps(run_dir):
    directory = Path(run_dir) / "checkpoints"
    return {int(p.name) for p in directory.iterdir() if p.name.isdigit()} if directory.exists() else set()


def _stopped_pair(config, run_dir, signalled, signum):
    """Starts a pair, signals process ``signalled`` once it has joined; returns the step both saved."""
    workers = _pair(config, run_dir)
    before = {signalled: _wait_for(workers[signalled], "joined the run")}
    time.sleep(0.5)  # into start-up (data, compilation): the stop comes at the first step every process reaches
    workers[signalled].send_signal(signum)
    outputs = [_finish(w, 128 + signum, before.get(i, "")) for i, w in enumerate(workers)]
    name = signal.Signals(signum).name
    assert re.search(rf"{name} received by .* of 2: saving step \d+", outputs[0]), outputs[0]  # process 0 logs
    ended = [re.search(r"signal at step (\d+)", out) for out in outputs]
    assert all(ended), "\n=====\n".join(outputs)
    (step,) = {int(match.group(1)) for match in ended}  # one step, the same in both processes
    assert step in _steps(run_dir)
    return step


def test_two_joined_processes_train_like_one_stop_together_on_a_signal_to_either_and_resume_bit_identically(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    straight = [_finish(w) for w in _pair(config, tmp_path / "straight")]
    for i, out in enumerate(straight):
        assert f"process {i} of 2 joined the run: 4 devices" in out, out
    _finish(_launch(config, tmp_path / "single", "--cpu-devices", "4", devices=8))
    single, multi = _params(config, tmp_path / "single"), _params(config, tmp_path / "straight")
    assert sorted(multi) == sorted(single)
    for name in single:
        # Tolerance: the same global batch and keys; only the all-reduce differs (gloo across
        # processes vs in-process), which can reorder float32 sums.
        np.testing.assert_allclose(multi[name], single[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # Saved every 50 steps and at evaluations; kept: the latest 3 and the best.
    assert {150, 200} <= _steps(tmp_path / "straight") and len(_steps(tmp_path / "straight")) <= 4
    results = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert results["steps"] == 200 and results["devices"] == 4

    first = _stopped_pair(config, tmp_path / "stopped", signalled=1, signum=signal.SIGTERM)
    second = _stopped_pair(config, tmp_path / "stopped", signalled=0, signum=signal.SIGINT)  # resumes, then Ctrl-C
    assert first < second < 200
    outputs = [_finish(w) for w in _pair(config, tmp_path / "stopped")]
    assert f"resuming from step {second}" in outputs[0], outputs[0]  # process 0 writes the run's messages
    resumed = _params(config, tmp_path / "stopped")
    for name in multi:
        np.testing.assert_array_equal(resumed[name], multi[name], err_msg=name)


def test_a_killed_process_ends_the_other_within_the_peer_timeout_with_one_line(tmp_path):
    config = tmp_path / "config.json"
    trainer = {**CONFIG["trainer"], "max_steps": 10**6, "peer_timeout": 5}
    config.write_text(json.dumps({**CONFIG, "trainer": trainer}))
    workers = _pair(config, tmp_path / "run")
    while not _steps(tmp_path / "run"):  # training is under way: a checkpoint is complete
        assert all(w.poll() is None for w in workers)
        time.sleep(0.2)
    (child,) = Path(f"/proc/{workers[1].pid}/task/{workers[1].pid}/children").read_text().split()
    os.kill(int(child), signal.SIGKILL)  # the Python process itself: `timeout` cannot pass SIGKILL on
    killed = time.monotonic()
    out = _finish(workers[0], code=1)
    waited = time.monotonic() - killed
    workers[1].communicate()
    # Bound: peer_timeout (5 s) plus a heartbeat period; a gloo error seen at once ends it sooner.
    assert waited < 5 + 10, waited
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Last complete checkpoint: step" in last, out[-3000:]
    assert "process 1 of 2" in last or "collective with the other processes failed" in last, last
