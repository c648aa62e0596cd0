"""Training arrays kept on the devices (funcnet.train.device_data): the same batches, the same training."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
import funcnet.train.device_data as resident
import funcnet.train.loop as loop
from funcnet.config import ConfigError
from funcnet.train import TrainerConfig
from funcnet.train.data import ArrayDataset, Batches, GeneratorBatches, Position
from funcnet.train.device_data import EpochPlans, batch_of_step, epoch_plan, make_resident_step, resident_arrays
from funcnet.train.state import create_train_state, data_mesh
from funcnet.train.step import make_train_step

RNG = np.random.default_rng(1)
X = RNG.standard_normal((70, 5)).astype(np.float32)  # 70 = 4 batches of 16 and a padded one of 6
Y = RNG.standard_normal((70, 2)).astype(np.float32)
WEIGHT = (RNG.random(70) > 0.2).astype(np.float32)  # the dataset's own mask: some examples count 0
MODEL = fn.serial(fn.dense(8), fn.tanh(), fn.dense(2))


def mse(out, batch):
    return jnp.mean((out - batch["y"]) ** 2, axis=-1)


def _train(**extra):
    return Batches(ArrayDataset(x=X, y=Y, mask=WEIGHT, **extra), 16, seed=3, multiple_of=8)


def _gathered(arrays, plans, step):
    """The batch the resident step trains on at ``step``, from the next plan of ``plans``."""
    return jax.device_get(jax.jit(batch_of_step)(arrays, next(plans), jnp.int32(step)))


@pytest.mark.parametrize("plan_steps", [2048, 5, 11])  # 5 steps an epoch: all epochs in one plan, 1 or 2 a plan
def test_epoch_plans_gather_exactly_the_host_batches_at_the_same_positions(plan_steps, monkeypatch):
    monkeypatch.setattr(resident, "PLAN_STEPS", plan_steps)
    uploads, upload = [], EpochPlans._upload
    monkeypatch.setattr(
        EpochPlans, "_upload", lambda self, epoch, offset: uploads.append(epoch) or upload(self, epoch, offset)
    )
    train = _train(ids=np.arange(70, dtype=np.int64) * 3)
    arrays = resident_arrays(train, data_mesh(), 1)
    assert arrays is not None
    host, plans = train.iterate(), EpochPlans(train, Position(0, 0), 0, data_mesh())
    for step in range(3 * train.steps_per_epoch + 2):  # three epochs and into the fourth
        want, got = next(host), _gathered(arrays, plans, step)
        assert plans.position == host.position
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key].astype(got[key].dtype), err_msg=f"{key} at {step}")
    assert uploads == {2048: [0], 5: [0, 1, 2, 3], 11: [0, 2]}[plan_steps]
    # Resumed mid-epoch from a saved position and step count: the batches the host would give next.
    host, plans = train.iterate(Position(1, 3)), EpochPlans(train, Position(1, 3), 41, data_mesh())
    for step in range(41, 45):
        want, got = next(host), _gathered(arrays, plans, step)
        np.testing.assert_array_equal(got["x"], want["x"])
        assert plans.position == host.position
    # A saved position at an epoch's end is the next epoch's start.
    assert EpochPlans(train, Position(2, 5), 0, data_mesh()).position == Position(3, 0)


def test_epoch_plans_reject_a_wrong_position_or_an_uneven_batch():
    with pytest.raises(ValueError, match=r"position.index: expected at most 5 \(batches per epoch\), got 6"):
        EpochPlans(_train(), Position(0, 6), 0, data_mesh())
    with pytest.raises(ValueError, match="a batch of 6 examples cannot be split evenly over 8 devices"):
        EpochPlans(Batches(ArrayDataset(x=X), 6), Position(), 0, data_mesh())


def test_epoch_plan_rows_are_the_batches_with_or_without_the_remainder():
    for drop in (False, True):
        train = Batches(ArrayDataset(x=np.arange(70)), 16, seed=4, drop_remainder=drop)
        plan = epoch_plan(train, 2)
        host = list(train.epoch(2))
        assert plan["index"].shape == (len(host), 16) and plan["index"].dtype == np.int32
        np.testing.assert_array_equal(plan["index"], np.stack([b["x"] for b in host]))
        np.testing.assert_array_equal(plan["mask"], np.stack([b["mask"] for b in host]))


def test_resident_step_equals_the_host_step_on_eight_devices():
    train = _train()
    mesh = data_mesh()
    assert mesh.size == 8
    optimizer = optax.adam(1e-2)
    state = create_train_state(MODEL, optimizer, jax.random.key(0), X[:16], mesh=mesh)
    host_step = make_train_step(MODEL, mse, optimizer, mesh=mesh)
    device_step = make_resident_step(MODEL, mse, optimizer, resident_arrays(train, mesh, 1), mesh=mesh)
    copy = jax.tree.map(jnp.copy, state)
    plans = EpochPlans(train, Position(), 0, mesh)
    for batch in train.epoch(0):
        state, want = host_step(state, batch)
        copy, got = device_step(copy, next(plans))
        chex.assert_trees_all_close(got, want, rtol=1e-6)
    chex.assert_trees_all_close(copy.params, state.params, rtol=1e-6, atol=1e-7)


def test_fit_keeps_small_arrays_on_the_devices_and_trains_as_the_host_path(tmp_path, monkeypatch):
    used = []
    monkeypatch.setattr(loop, "EpochPlans", lambda train, *a: used.append(train) or EpochPlans(train, *a))
    results = {}
    for mib in (256, 0):
        trainer = TrainerConfig(epochs=2, log_every=2, progress=False, device_data_mib=mib)
        results[mib] = loop.fit(MODEL, mse, optax.adam(1e-2), _train(), run_dir=tmp_path / str(mib), trainer=trainer)
        assert len(used) == 1  # only the default run went through epoch plans
    assert results[256].step == results[0].step == 10
    chex.assert_trees_all_close(results[256].state.params, results[0].state.params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "train, why",
    [
        (Batches(ArrayDataset(x=X), 8), "over the size limit"),
        (Batches(ArrayDataset(x=np.array(["a"] * 70, dtype=object)), 8), "not plain numbers"),
        (GeneratorBatches(lambda epoch: iter([{"x": X[:8]}])), "not an ArrayDataset"),
    ],
)
def test_other_sources_stay_on_the_host(train, why):
    limit = X.nbytes / (1 << 20) / 2  # half of X
    assert resident_arrays(train, data_mesh(), limit) is None, why
    assert resident_arrays(Batches(ArrayDataset(x=X), 8), data_mesh(), 2 * limit) is not None


def test_device_data_mib_must_not_be_negative():
    with pytest.raises(ConfigError, match="device_data_mib"):
        TrainerConfig.from_dict({"epochs": 1, "device_data_mib": -1})
