"""Runs you can trust after faults: one trainer per run, finished runs stay finished, checkpoint meta is a snapshot."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax.numpy as jnp
import pytest

from funcnet.config.cli import main
from funcnet.train.checkpoint import Checkpointer, CheckpointError, restore_run
from funcnet.train.lock import LOCK_FILE, RunLock, RunLocked
from tests.train.test_loop import _fit

ROOT = Path(__file__).resolve().parents[2]

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


def test_a_lock_whose_process_id_was_reused_is_stale(tmp_path):
    """A container restarted with the same host name: the new trainer is process 1 again, as the old one was."""
    from funcnet.train.lock import _started

    if _started(os.getpid()) is None:
        pytest.skip("no /proc here: process start times are unknown, so a reused process id cannot be told apart")
    (tmp_path / "run").mkdir()
    old = {"pid": os.getpid(), "host": os.uname().nodename, "since": "x", "started": _started(os.getpid()) - 1}
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps(old))
    notes = []
    with RunLock(tmp_path / "run", say=notes.append):
        assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["started"] == _started(os.getpid())
    assert notes and "process " + str(os.getpid()) + " now is another one, started later" in notes[0]
    with RunLock(tmp_path / "run"):  # the same process, the same start time: a live holder, refused
        with pytest.raises(RunLocked):
            RunLock(tmp_path / "run").__enter__()


def test_the_lock_is_released_when_fit_fails(tmp_path):
    with pytest.raises(ValueError, match=r"trainer\.metric='accuracy' is not a metric the evaluation gives; it gives "
                       r"\['count', 'loss'\]\. Fix"):  # fmt: skip
        _fit(tmp_path / "run", metric="accuracy")
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # released
    assert not any((tmp_path / "run" / "checkpoints").iterdir())  # refused before the first step


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
    assert {k: v for k, v in rewritten.items() if not k.endswith("_this_session")} == {
        k: v for k, v in json.loads(results).items() if not k.endswith("_this_session")
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


def _damage(checkpoint, how):
    """Damages one checkpoint folder the ways seen in practice."""
    if how == "garbage_meta":
        (checkpoint / "meta" / "metadata").write_text("garbage{")
    elif how == "deleted_metadata":
        (checkpoint / "state" / "_METADATA").unlink()
    else:  # a truncated array file
        for f in (checkpoint / "state" / "d").iterdir():
            os.truncate(f, 10)


@pytest.mark.parametrize("how", ["garbage_meta", "deleted_metadata", "truncated_array"])
def test_a_damaged_checkpoint_is_skipped_in_one_line_and_resume_replaces_it(tmp_path, how, capfd):
    straight = _fit(tmp_path / "straight", epochs=3)
    _fit(tmp_path / "run", epochs=2)
    steps = Checkpointer(tmp_path / "run" / "checkpoints").all_steps()
    _damage(tmp_path / "run" / "checkpoints" / str(steps[-1]), how)
    capfd.readouterr()

    abstract = straight.state
    step, _ = restore_run(tmp_path / "run" / "checkpoints", abstract, which="latest")  # evaluate's path
    assert step == steps[-2]
    note = capfd.readouterr().err.strip().splitlines()
    assert len(note) == 1 and note[0].startswith(
        f"checkpoint {tmp_path}/run/checkpoints/{steps[-1]} does not restore: "
    )
    assert note[0].endswith(f"trying the next ({steps[-1]} -> {steps[-2]})")

    resumed = _fit(tmp_path / "run", epochs=3)  # resumes from the older one, and saves the damaged step again
    chex.assert_trees_all_equal(resumed.state.params, straight.state.params)
    assert restore_run(tmp_path / "run" / "checkpoints", abstract, which=str(steps[-1]))[0] == steps[-1]


def test_no_checkpoint_that_restores_is_one_error_naming_each(tmp_path):
    result = _fit(tmp_path / "run", epochs=2)
    steps = Checkpointer(tmp_path / "run" / "checkpoints").all_steps()
    for step in steps:
        _damage(tmp_path / "run" / "checkpoints" / str(step), "garbage_meta")
    with pytest.raises(CheckpointError, match=r"no checkpoint of .* restores: \d+ \(JSONDecodeError: .*\); \d+ \("):
        restore_run(tmp_path / "run" / "checkpoints", result.state, which="best")
    with pytest.raises(CheckpointError):
        _fit(tmp_path / "run", epochs=3)  # nothing is overwritten by a fresh start
    assert Checkpointer(tmp_path / "run" / "checkpoints").all_steps() == steps


def test_vanished_checkpoints_are_an_error_and_restart_starts_over(tmp_path, capsys):
    first = _fit(tmp_path / "run", epochs=2)
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    with pytest.raises(CheckpointError, match=rf"checkpoints held checkpoint {first.step} \(recorded in .*run\.json\) "
                       r"and holds none now: .* Fix: put the checkpoints back .* restart=True"):  # fmt: skip
        _fit(tmp_path / "run", epochs=2)
    again = _fit(tmp_path / "run", epochs=2, restart=True)
    assert again.step == first.step  # trained from step 0 again
    chex.assert_trees_all_equal(again.state.params, first.state.params)

    third = _fit(tmp_path / "run", epochs=2, restart=True)  # with checkpoints present: moved aside, not deleted
    assert third.step == first.step
    aside = [p for p in (tmp_path / "run").iterdir() if p.name.startswith("checkpoints.replaced-")]
    assert len(aside) == 1 and any(p.name == str(first.step) for p in aside[0].iterdir())
    assert "starting over: the previous checkpoints are in" in capsys.readouterr().out


def test_the_cli_restart_flag(tmp_path):
    config = tmp_path / "iris.json"
    config.write_text(json.dumps(IRIS))
    run = tmp_path / "run"
    assert main(["train", str(config), "-s", str(run)]) == 0
    shutil.rmtree(run / "checkpoints")
    assert main(["train", str(config), "-s", str(run)]) == 2  # one-line error (tested above), not a fresh start
    assert main(["train", str(config), "-s", str(run), "--restart"]) == 0


FULL_DISK = {**IRIS, "model": {"type": "mlp", "hidden": [64], "features": 1}}
FULL_DISK["trainer"] = {
    "epochs": 40,
    "batch_size": 16,
    "progress": False,
    "keep_checkpoints": 50,
    "checkpoint_every": 3,
}


def _on_a_full_disk(tmp_path, config):
    """Trains in a 300 KiB tmpfs (a mount namespace of its own), then copies the run out to look at it."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed: no small tmpfs to fill")
    script = (
        f"mount -t tmpfs -o size=300k tmpfs {tmp_path}/disk && "
        f"{sys.executable} -m funcnet.config.cli train {config} -s {tmp_path}/disk/run; "
        f"echo exit=$?; cp -r {tmp_path}/disk/run {tmp_path}/copy"
    )
    (tmp_path / "disk").mkdir()
    for unshare in (["unshare", "-rm"], ["unshare", "-m"]):  # a user namespace, else root's own
        result = subprocess.run([*unshare, "sh", "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
        if "exit=" in result.stdout:
            return result
    pytest.skip(f"no mount namespace here to make a small tmpfs: {result.stderr.strip()[:200]}")


def test_a_full_disk_stops_the_run_in_one_line_leaving_no_temp_folder_and_resumes(tmp_path):
    config = tmp_path / "iris.json"
    config.write_text(json.dumps(FULL_DISK))
    result = _on_a_full_disk(tmp_path, config)
    assert "exit=1" in result.stdout, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    # The disk fills at a checkpoint, or (on a slower machine, when the last checkpoint just fits) at results.json.
    saving = re.match(r"error: saving checkpoint \d+ in .*/disk/run/checkpoints failed: \w+: .*The last complete "
                      r"checkpoint is \d+ \(.*\); the run stops\. Fix", errors[0])  # fmt: skip
    writing = re.match(r"error: \[Errno 28\] writing .*/disk/run/results\.json: No space left on device$", errors[0])
    assert saving or writing, result.stderr[-3000:]
    left = sorted(p.name for p in (tmp_path / "copy" / "checkpoints").iterdir())
    if saving:
        assert left[-1] == re.search(r"last complete checkpoint is (\d+)", errors[0]).group(1)
    assert not [n for n in left if not n.isdigit()]  # no temporary folder remains

    assert main(["train", str(config), "-s", str(tmp_path / "copy")]) == 0  # room again: it resumes and finishes
    assert main(["train", str(config), "-s", str(tmp_path / "straight")]) == 0
    chex.assert_trees_all_equal(_params(tmp_path / "copy"), _params(tmp_path / "straight"))


def test_a_save_failing_again_as_orbax_closes_is_still_the_one_line_save_error(tmp_path, monkeypatch):
    """Orbax's ``close`` waits for the failed background save once more and raises its OSError a second time:
    that must not replace the run's CheckpointSaveError (it did in CI, where the disk filled as the run closed)."""
    from funcnet.train import checkpoint

    full = OSError(28, "No space left on device")
    real_save = Checkpointer.save

    def save_then_fail(self, step, *args, **kwargs):
        real_save(self, step, *args, **kwargs)
        if step >= 4:  # as a background save failing: Orbax logs it, and raises it from every wait after
            self._log.failure = self._log.failure or full
            monkeypatch.setattr(self.manager, "wait_until_finished", lambda: (_ for _ in ()).throw(full))

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_fail)
    failed = r"saving checkpoint 4 in .* failed: OSError: \[Errno 28\]"
    with pytest.raises(checkpoint.CheckpointSaveError, match=failed):
        _fit(tmp_path / "run", epochs=3, checkpoint_every=2)


def _params(run_dir):
    from funcnet.config.run_config import validate_config
    from funcnet.config.supervised import Run

    run = Run(validate_config(json.loads((run_dir / "config.json").read_text())))
    return run.restore(run_dir, "latest")[1].params


def test_a_diverging_loss_stops_the_run_unsaved(tmp_path, capsys):
    import optax

    result = _fit(tmp_path / "run", optimizer=optax.sgd(3.0), epochs=20, log_every=1, diverge_factor=50.0)
    assert result.stop_reason == "diverged"
    out = capsys.readouterr().out
    assert re.search(r"training loss \S+ at step \d+ is over 50 times the first step's \(\S+\): the run diverged, "
                     r"stopping\. Last good checkpoint: .* Fix: lower the learning rate", out), out  # fmt: skip
    assert Checkpointer(tmp_path / "run" / "checkpoints").all_steps()[-1:] != [result.step]  # not saved
    from funcnet.train.stopping import exit_code

    assert exit_code(result.stop_reason) == 1
    calm = _fit(tmp_path / "calm", optimizer=optax.sgd(3.0), epochs=2, log_every=1, diverge_factor=0)
    assert calm.stop_reason != "diverged"  # 0: never stops for it


MY_MODELS = """
import funcnet as fn
from funcnet.config import MODELS


@MODELS.register("my_linear")
def my_linear(features: int = 1):
    return fn.serial(scale=fn.dense(features))
"""


def test_evaluate_imports_the_files_training_imported_and_says_so(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "a" / "my_models.py").write_text(MY_MODELS)
    (tmp_path / "elsewhere" / "my_models.py").write_text("raise SystemExit('the wrong my_models was imported')\n")
    config = {**IRIS, "imports": ["my_models"], "model": {"type": "my_linear"}}
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    cli = [sys.executable, "-m", "funcnet.config.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    trained = subprocess.run([*cli, "train", "config.json", "-s", str(tmp_path / "run")], cwd=tmp_path / "a",
                             capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    evaluated = subprocess.run([*cli, "evaluate", str(tmp_path / "run")], cwd=tmp_path / "elsewhere",
                               capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert (
        f"importing my_models from {tmp_path / 'a' / 'my_models.py'} (the run's config imports it" in evaluated.stderr
    )
    assert json.loads(evaluated.stdout)["split"] == "validation"
    (tmp_path / "a" / "my_models.py").unlink()
    gone = subprocess.run([*cli, "evaluate", str(tmp_path / "run")], cwd=tmp_path / "elsewhere",
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert gone.returncode == 2 and "which no longer exists. Fix: put it back" in gone.stderr


@pytest.mark.parametrize("delay", [0.3, 1.5, 3.0])  # loading, compiling, or the first steps (this machine's timing)
def test_a_signal_during_start_up_leaves_a_run_that_the_same_command_finishes(tmp_path, delay):
    config = tmp_path / "iris.json"
    config.write_text(json.dumps({**IRIS, "trainer": {**IRIS["trainer"], "patience": None, "epochs": 3}}))
    command = [sys.executable, "-m", "funcnet.config.cli", "train", str(config), "-s", str(tmp_path / "run")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM, 0), err[-2000:]  # killed, saved, or done
    assert "Traceback" not in err, err[-2000:]
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 9  # 3 epochs of 3 steps
    assert not (tmp_path / "run" / LOCK_FILE).exists()
