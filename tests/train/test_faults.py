"""Runs you can trust after faults: one trainer per run, finished runs stay finished, checkpoint meta is a snapshot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import chex
import jax.numpy as jnp
import pytest

from funcnet.train.checkpoint import Checkpointer
from funcnet.train.cli import main
from funcnet.train.lock import LOCK_FILE, RunLock, RunLocked
from tests.train.test_loop import _fit

IRIS = {
    "model": {"type": "mlp", "hidden": [8], "features": 1},
    "dataset": {"type": "iris_like", "n_per_species": 20},
    "loss": {"type": "mse"},
    "optimizer": {"type": "adam", "learning_rate": 0.01},
    "trainer": {"epochs": 6, "batch_size": 16, "patience": 0, "progress": False},  # stops at the first evaluation
}


def test_a_second_trainer_is_refused_naming_the_holder(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunLocked, match=rf"run is being trained by process {os.getpid()} on .* since .*\.lock"):
            _fit(tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything was written
    result = _fit(tmp_path / "run", epochs=1)  # released: the lock is gone after the with, and after fit
    assert result.step > 0 and not (tmp_path / "run" / LOCK_FILE).exists()


def test_the_cli_refuses_a_locked_run_in_one_line(tmp_path, capsys):
    config = tmp_path / "iris.json"
    config.write_text(json.dumps(IRIS))
    with RunLock(tmp_path / "run"):
        assert main(["train", str(config), "-s", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "is being trained by process" in err and len(err.splitlines()) == 1


def test_a_stale_lock_of_a_dead_process_is_replaced(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "since": "x"}))
    notes = []
    with RunLock(tmp_path / "run", say=notes.append):
        holder = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
    assert notes == [f"note: removing the stale lock of process {pid}, which is gone ({tmp_path / 'run' / LOCK_FILE})"]


def test_the_lock_is_released_when_fit_fails(tmp_path):
    with pytest.raises(KeyError, match=r"trainer\.metric='accuracy' is not a validation metric"):
        _fit(tmp_path / "run", metric="accuracy")
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_an_early_stopped_run_run_again_stays_finished(tmp_path, capsys):
    first = _fit(tmp_path / "run", patience=0)
    assert first.stop_reason == "early_stopping"
    again = _fit(tmp_path / "run", patience=0)
    assert (again.step, again.stop_reason, again.history) == (first.step, first.stop_reason, first.history)
    chex.assert_trees_all_equal(again.state.params, first.state.params)
    assert Checkpointer(tmp_path / "run" / "checkpoints").all_steps()[-1] == first.step  # nothing new saved


def test_the_cli_rerun_of_a_finished_run_changes_nothing(tmp_path, capsys):
    config = tmp_path / "iris.json"
    config.write_text(json.dumps(IRIS))
    run = tmp_path / "run"
    assert main(["train", str(config), "-s", str(run)]) == 0
    results = (run / "results.json").read_text()
    stamp = os.stat(run / "results.json").st_mtime_ns
    capsys.readouterr()
    assert main(["train", str(config), "-s", str(run)]) == 0
    out = capsys.readouterr().out
    assert "the run had finished at step" in out and "(early_stopping); results unchanged" in out
    assert (run / "results.json").read_text() == results and os.stat(run / "results.json").st_mtime_ns == stamp
    (run / "results.json").unlink()  # killed between the last checkpoint and results.json: the rerun writes it
    assert main(["train", str(config), "-s", str(run)]) == 0
    rewritten = json.loads((run / "results.json").read_text())
    assert {k: v for k, v in rewritten.items() if k != "seconds_this_session"} == {
        k: v for k, v in json.loads(results).items() if k != "seconds_this_session"
    }


def test_checkpoint_meta_is_a_snapshot_taken_at_save_time(tmp_path):
    checkpointer = Checkpointer(tmp_path, asynchronous=True)
    meta = {"history": [{"step": 1, "loss": 0.5}]}
    checkpointer.save(1, {"w": jnp.ones(3)}, meta)
    meta["history"].append({"step": 2, "loss": 0.4})  # the loop goes on while the save finishes
    checkpointer.wait()
    _, saved = checkpointer.restore(1, {"w": jnp.zeros(3)})
    checkpointer.close()
    assert saved == {"history": [{"step": 1, "loss": 0.5}]}
