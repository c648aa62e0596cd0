"""fit: early stopping, NaN handling, callbacks, graceful stop on SIGTERM, event files."""

from __future__ import annotations

import os
import signal
import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet.train import TrainerConfig
from funcnet.train.checkpoint import Checkpointer
from funcnet.train.data import ArrayDataset, Batches, GeneratorBatches
from funcnet.train.loop import Callback, FitResult, StopTraining, evaluate, fit
from funcnet.train.state import create_train_state
from funcnet.train.step import make_train_step
from funcnet.train.writers import read_events, read_scalars
from tests.train.test_step import _nan_gradient_where

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


def _fit(run_dir, optimizer=None, callbacks=(), x=X, y=Y, learning_rate=None, restart=False, **trainer):
    train, valid = _data(x, y)
    trainer = TrainerConfig(**{"epochs": 3, "log_every": 2, "progress": False, **trainer})
    return fit(
        MODEL, mse, optimizer or optax.adam(1e-2), train, run_dir=run_dir, trainer=trainer, validation=valid,
        callbacks=callbacks, learning_rate=learning_rate, config={"note": "test"}, restart=restart,
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


def test_the_last_step_is_evaluated_when_it_falls_between_evaluations(tmp_path):
    # max_steps 6 with eval_every 4: evaluations at 4 and at the last step, whose checkpoint has a
    # metric, so a run shorter than eval_every still has a best checkpoint to restore.
    assert [h["step"] for h in _fit(tmp_path / "a", epochs=None, max_steps=6, eval_every=4).history] == [4, 6]
    short = _fit(tmp_path / "b", epochs=None, max_steps=3, eval_every=4)
    assert [h["step"] for h in short.history] == [3] and short.best_step == 3
    checkpointer = Checkpointer(tmp_path / "b" / "checkpoints")
    assert checkpointer.best_step() == 3
    checkpointer.close()


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
    expected = ["config/text_summary", "train/learning_rate", "train/loss"]
    expected += ["train/steps_per_second", "validation/loss", "params/dense_0/kernel"]
    for tag in expected:
        assert tag in tags, sorted(tags)
    assert not any(tag.startswith("train/grad_norm") for tag in tags)  # opt-in: trainer.log_grad_norm
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
    assert len(traces) == 3, traces  # one train step, one eval step, one abstract eval (fit's metric check)


def _step_of_example(example: int) -> int:
    """The (1-based) step of epoch 0 that trains on ``example`` in ``_data()``'s training batches."""
    order = list(_data()[0].order(0))
    return order.index(example) // 16 + 1


def test_nan_is_reported_at_its_exact_step_although_metrics_are_read_late(tmp_path, capsys):
    y = Y.copy()
    y[40] = np.inf
    nan_step = _step_of_example(40)
    train, _ = _data(X, y)
    # One read at the end at most: log_every beyond the run, no evaluation, a save only at the end.
    trainer = TrainerConfig(max_steps=12, log_every=1000, progress=False)
    result = fit(MODEL, mse, optax.adam(1e-2), train, run_dir=tmp_path, trainer=trainer)
    assert result.stop_reason == "nan" and result.step >= nan_step
    assert f"loss or gradient is NaN/Inf at step {nan_step}: stopping. Last good checkpoint: none yet" in (
        capsys.readouterr().out
    )
    assert Checkpointer(tmp_path / "checkpoints").latest_step() is None  # nothing saved after the NaN


def test_a_finite_loss_with_a_nan_gradient_is_never_checkpointed(tmp_path, capsys):
    order = _data()[0].order(0)
    poisoned = int(order[20])  # in the second batch of epoch 0
    poison = np.zeros(len(X), np.float32)
    poison[poisoned] = 1.0
    train = Batches(ArrayDataset(x=X[:64], y=Y[:64], poison=poison[:64]), 16, seed=0, multiple_of=8)

    def poisoned_mse(out, batch):
        return mse(_nan_gradient_where(batch["poison"])(out), batch)

    trainer = TrainerConfig(epochs=2, log_every=100, checkpoint_every=1, progress=False)
    result = fit(MODEL, poisoned_mse, optax.adam(1e-2), train, run_dir=tmp_path, trainer=trainer)
    assert result.stop_reason == "nan"
    assert "loss or gradient is NaN/Inf at step 2 (the loss is finite; the updated parameters are not)" in (
        capsys.readouterr().out
    )
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    assert checkpointer.latest_step() == 1
    state, _ = checkpointer.restore(1, jax.tree.map(lambda a: a, result.state))
    checkpointer.close()
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state))


def _reference_metrics(steps, optimizer, **step_options):
    """Per-step metrics of make_train_step over fit's batches, from fit's initial state (same seed)."""
    train, _ = _data()
    batches = train.iterate()
    state = create_train_state(MODEL, optimizer, jax.random.key(0), next(train.epoch(0))["x"])
    step = make_train_step(MODEL, mse, optimizer, **step_options)
    history = []
    for _ in range(steps):
        state, metrics = step(state, next(batches))
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})  # one at a time: see DESIGN.md
    return history


@pytest.mark.parametrize("log_grad_norm", [False, True])
def test_logged_train_metrics_equal_a_reference_loop_and_grad_norm_is_opt_in(tmp_path, log_grad_norm):
    _fit(tmp_path, epochs=2, log_every=2, log_grad_norm=log_grad_norm)
    scalars = read_scalars(tmp_path / "logs")
    reference = _reference_metrics(8, optax.adam(1e-2), log_grad_norm=log_grad_norm)
    # Every batch has 16 real examples, so a window's mean is the plain mean of its two steps.
    # Tolerance: the event file stores float32.
    expected_loss = [(s, (reference[s - 2]["loss"] + reference[s - 1]["loss"]) / 2) for s in (2, 4, 6, 8)]
    np.testing.assert_allclose(scalars["train/loss"], expected_loss, rtol=1e-6)
    histograms = {v.tag for e in read_events(tmp_path / "logs") for v in e.summary.value if v.HasField("histo")}
    if log_grad_norm:
        expected_norm = [(s, (reference[s - 2]["grad_norm"] + reference[s - 1]["grad_norm"]) / 2) for s in (2, 4, 6, 8)]
        np.testing.assert_allclose(scalars["train/grad_norm"], expected_norm, rtol=1e-6)
        assert "train/grad_norm" in histograms
    else:
        assert "train/grad_norm" not in scalars and "train/grad_norm" not in histograms
        assert "grad_norm" not in reference[0]


def test_prefetch_0_trains_without_a_thread_and_like_a_prefetching_run(tmp_path):
    class PrefetchThreads(Callback):
        def __init__(self):
            self.before = {t.ident for t in threading.enumerate()}
            self.seen = set()

        def on_step_end(self, step, metrics):
            self.seen |= {t.name for t in threading.enumerate() if t.ident not in self.before}

    results = {}
    # Batches sliced on the host (device_data_mib=0); None: in-memory arrays need no thread. Arrays
    # kept on the devices (the default) never need one: the host sends one plan per epoch.
    for prefetch, threaded, mib in ((0, False, 0), (2, True, 0), (None, False, 0), (2, False, 256)):
        watcher = PrefetchThreads()
        run_dir = tmp_path / f"{prefetch}-{mib}"
        results[prefetch, mib] = _fit(run_dir, callbacks=[watcher], epochs=2, prefetch=prefetch, device_data_mib=mib)
        assert ("funcnet-prefetch" in watcher.seen) == threaded, (prefetch, mib, watcher.seen)
    results = {prefetch: results[prefetch, 0] for prefetch in (0, 2)}
    chex.assert_trees_all_equal(results[0].state.params, results[2].state.params)  # the same batches, in order
    assert results[0].history == results[2].history


@pytest.mark.parametrize("steps_per_epoch", [None, 3])
def test_fit_runs_epochs_of_a_generator_dataset(tmp_path, steps_per_epoch):
    def make_epoch(epoch):
        rows = np.random.default_rng(epoch).permutation(48)
        for i in range(3):
            take = rows[16 * i : 16 * (i + 1)]
            yield {"x": X[take], "y": Y[take]}

    train = GeneratorBatches(make_epoch, multiple_of=8, steps_per_epoch=steps_per_epoch)
    trainer = TrainerConfig(epochs=2, log_every=2, progress=False)
    result = fit(MODEL, mse, optax.adam(1e-2), train, run_dir=tmp_path, trainer=trainer)
    assert (result.stop_reason, result.step, result.epoch) == ("done", 6, 2)
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == 6


def test_fit_result_repr_is_short_and_prints_no_arrays():
    state = create_train_state(MODEL, optax.adam(1e-2), jax.random.key(0), X[:16])
    state = state._replace(step=jnp.asarray(12, state.step.dtype))
    history = [{"step": 8 * i, "epoch": i, "loss": 1 / (i + 2), "count": 32.0} for i in range(1, 20)]
    result = FitResult(state, 12, 3, 0.0476190476, 152, "early_stopping", history, compilations=1)
    text = repr(result)
    assert len(text) < 600, text
    assert "Array(" not in text and "array(" not in text, text
    assert "stop_reason='early_stopping'" in text and "\n  step=12,\n" in text, text
    assert "TrainState(step=12, params=<4 arrays, 0 scalars>)" in text, text  # two dense layers: w and b each
    assert "best_metric=0.04762, best_step=152" in text, text
    assert "history=<19 entries, last {'step': 152, 'epoch': 19, 'loss': 0.04762, 'count': 32}>" in text, text


def test_values_named_with_an_underscore_are_logged_but_not_printed(tmp_path, capsys):
    def with_parts(out, batch):
        return {"loss": mse(out, batch), "_part": jnp.ones(out.shape[0])}

    train, valid = _data()
    trainer = TrainerConfig(epochs=1, log_every=2, progress=False)
    fit(MODEL, with_parts, optax.adam(1e-2), train, run_dir=tmp_path, trainer=trainer, validation=valid)
    printed = [line for line in capsys.readouterr().out.splitlines() if "validation:" in line]
    assert printed and all("loss" in line and "_part" not in line for line in printed)
    assert "validation/_part" in read_scalars(tmp_path / "logs")
