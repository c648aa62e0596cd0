"""fit: early stopping, NaN handling, callbacks, graceful stop on SIGTERM, event files."""

from __future__ import annotations

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet.train.checkpoint import Checkpointer
from funcnet.train.config import TrainerConfig
from funcnet.train.data import ArrayDataset, Batches
from funcnet.train.log import read_events, read_scalars
from funcnet.train.loop import Callback, StopTraining, evaluate, fit

RNG = np.random.default_rng(0)
X = RNG.standard_normal((96, 4)).astype(np.float32)
Y = (X @ RNG.standard_normal((4, 1)) + 0.1 * RNG.standard_normal((96, 1))).astype(np.float32)
MODEL = fn.serial(fn.dense(8), fn.tanh(), fn.dense(1))


def mse(out, batch):
    return jnp.mean((out - batch["y"]) ** 2, axis=-1)


def _data(x=X, y=Y):
    train = Batches(ArrayDataset(x=x[:64], y=y[:64]), 16, seed=0, multiple_of=8)
    valid = Batches(ArrayDataset(x=x[64:], y=y[64:]), 16, shuffle=False, multiple_of=8)
    return train, valid


def _fit(run_dir, optimizer=None, callbacks=(), x=X, y=Y, learning_rate=None, **trainer):
    train, valid = _data(x, y)
    trainer = TrainerConfig(**{"epochs": 3, "log_every": 2, "progress": False, **trainer})
    return fit(
        MODEL, mse, optimizer or optax.adam(1e-2), train, run_dir=run_dir, trainer=trainer, validation=valid,
        callbacks=callbacks, learning_rate=learning_rate, config={"note": "test"},
    )  # fmt: skip


def test_early_stopping_stops_at_the_right_evaluation(tmp_path):
    class Scripted(Callback):
        """Replaces nothing: records the evaluations fit saw."""

        def __init__(self):
            self.seen = []

        def on_eval_end(self, step, metrics):
            self.seen.append(metrics["loss"])

    # A learning rate of 0 after the first evaluation: the metric can no longer improve, so with
    # patience 2 the run must stop at the third evaluation exactly.
    schedule = optax.piecewise_constant_schedule(1e-2, {4: 0.0})
    recorder = Scripted()
    result = _fit(tmp_path, optax.adam(schedule), callbacks=[recorder], epochs=10, patience=2)
    assert result.stop_reason == "early_stopping"
    assert [h["step"] for h in result.history] == [4, 8, 12]
    assert result.step == 12 and result.best_metric == result.history[0]["loss"]
    assert result.best_step == 12  # a tie moves "best" to the newer checkpoint, as Orbax ranks them
    assert len(recorder.seen) == 3


def test_evaluate_restores_the_best_checkpoint(tmp_path):
    result = _fit(tmp_path, epochs=4, keep_checkpoints=1)
    best = min(result.history, key=lambda h: h["loss"])
    checkpointer = Checkpointer(tmp_path / "checkpoints", keep=1)
    assert checkpointer.best_step() == best["step"] == result.best_step
    state, meta = checkpointer.restore(best["step"], jax.tree.map(lambda a: a, result.state))
    checkpointer.close()
    # The JSON beside the arrays: config, iterator position, epoch, best metric, patience counter.
    assert meta["config"] == {"note": "test"} and meta["position"]["index"] == 0
    assert meta["epoch"] == best["epoch"] and meta["best_step"] == best["step"] and meta["bad_evals"] == 0
    metrics = evaluate(MODEL, mse, state, _data()[1])
    np.testing.assert_allclose(metrics["loss"], best["loss"], rtol=1e-6)


def test_nan_loss_stops_with_a_message_naming_step_and_checkpoint(tmp_path, capsys):
    y = Y.copy()
    y[:64] = np.where(np.arange(64)[:, None] == 40, np.inf, y[:64])  # one poisoned training example
    result = _fit(tmp_path, x=X, y=y, epochs=3, checkpoint_every=1, eval_every=None)
    assert result.stop_reason == "nan"
    out = capsys.readouterr()
    text = out.out + out.err
    assert "loss or gradient is NaN/Inf at step" in text and "Last good checkpoint: step" in text
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    last = checkpointer.latest_step()
    state, _ = checkpointer.restore(last, jax.tree.map(lambda a: a, result.state))
    checkpointer.close()
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.params))


def test_skip_nan_updates_keeps_training(tmp_path):
    y = Y.copy()
    y[40] = np.inf
    result = _fit(tmp_path, x=X, y=y, epochs=2, skip_nan_updates=True)
    assert result.stop_reason == "done" and result.step == 8
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(result.state.params))


def test_callback_can_stop_training(tmp_path):
    class StopAt5(Callback):
        def on_step_end(self, step, metrics):
            assert np.isfinite(metrics["loss"]) and metrics["count"] == 16
            if step == 5:
                raise StopTraining("enough")

    result = _fit(tmp_path, callbacks=[StopAt5()], epochs=5)
    assert result.stop_reason == "callback" and result.step in (5, 6)  # metrics are read one step late
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == result.step


def test_sigterm_saves_and_exits_cleanly(tmp_path, capsys):
    class Terminate(Callback):
        def on_step_end(self, step, metrics):
            if step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    result = _fit(tmp_path, callbacks=[Terminate()], epochs=5)
    assert result.stop_reason == "signal"
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == result.step
    assert "SIGTERM received: saving step" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again


def test_event_file_has_the_expected_tags(tmp_path):
    _fit(tmp_path, epochs=2, learning_rate=lambda step: 0.01)
    events = read_events(tmp_path / "logs")
    tags = {value.tag for event in events for value in event.summary.value}
    expected = ["config/text_summary", "train/learning_rate", "train/loss", "train/grad_norm"]
    expected += ["train/steps_per_second", "validation/loss", "params/dense_0/kernel"]
    for tag in expected:
        assert tag in tags, sorted(tags)
    assert "train/grad_norm" in {v.tag for e in events for v in e.summary.value if v.HasField("histo")}
    assert [step for step, _ in read_scalars(tmp_path / "logs")["validation/loss"]] == [4, 8]


def test_total_needs_epochs_or_max_steps():
    with pytest.raises(ValueError, match="epochs"):
        TrainerConfig(epochs=None, max_steps=None)


def test_best_and_latest_checkpoints_both_survive_a_worsening_metric_and_a_restart(tmp_path):
    # Learning rate 0.01 for 8 steps, then 0.6: the validation loss gets worse after step 8, so the
    # best checkpoint is an old one while the newest keep coming.
    schedule = optax.piecewise_constant_schedule(1e-2, {8: 60.0})
    result = _fit(tmp_path, optax.sgd(schedule), epochs=5, keep_checkpoints=1, checkpoint_every=2)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] > min(losses), losses
    assert result.best_step < result.step

    def kept():
        return sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())

    assert kept() == [result.best_step, result.step]
    again = _fit(tmp_path, optax.sgd(schedule), epochs=7, keep_checkpoints=1, checkpoint_every=2)
    assert again.best_step == result.best_step and kept() == [result.best_step, again.step]


def test_fit_traces_the_train_and_eval_steps_once_for_all_evaluations(tmp_path):
    traces = []

    def counted(out, batch):
        traces.append(out.shape)  # runs only while jax traces a step
        return mse(out, batch)

    train, valid = _data()
    trainer = TrainerConfig(epochs=4, log_every=2, progress=False)
    result = fit(MODEL, counted, optax.adam(1e-2), train, run_dir=tmp_path, trainer=trainer, validation=valid)
    assert len(result.history) == 4
    assert len(traces) == 2, traces  # one train step, one eval step
