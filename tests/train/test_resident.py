"""Training arrays kept on the devices (funcnet.train.resident): the same batches, the same training."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
import funcnet.train.loop as loop
from funcnet.train.components import ConfigError
from funcnet.train.config import TrainerConfig
from funcnet.train.data import ArrayDataset, Batches, GeneratorBatches
from funcnet.train.resident import gather_batch, index_batches, resident_arrays
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


def test_index_batches_gather_exactly_the_host_batches():
    train = _train(ids=np.arange(70, dtype=np.int64) * 3)
    arrays = resident_arrays(train, data_mesh(), 1)
    assert arrays is not None
    for epoch in (0, 1):
        host, indexed = list(train.epoch(epoch)), list(index_batches(train).epoch(epoch))
        assert len(host) == len(indexed) == 5
        for want, got in zip(host, indexed, strict=True):
            got = jax.device_get(jax.jit(gather_batch)(arrays, got))
            assert sorted(got) == sorted(want)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key].astype(got[key].dtype), err_msg=key)
    assert index_batches(train).steps_per_epoch == train.steps_per_epoch


def test_resident_step_equals_the_host_step_on_eight_devices():
    train = _train()
    mesh = data_mesh()
    assert mesh.size == 8
    optimizer = optax.adam(1e-2)
    state = create_train_state(MODEL, optimizer, jax.random.key(0), X[:16], mesh=mesh)
    host_step = make_train_step(MODEL, mse, optimizer, mesh=mesh)
    device_step = make_train_step(MODEL, mse, optimizer, mesh=mesh, resident=resident_arrays(train, mesh, 1))
    copy = jax.tree.map(jnp.copy, state)
    for batch, indexed in zip(train.epoch(0), index_batches(train).epoch(0), strict=True):
        state, want = host_step(state, batch)
        copy, got = device_step(copy, indexed)
        chex.assert_trees_all_close(got, want, rtol=1e-6)
    chex.assert_trees_all_close(copy.params, state.params, rtol=1e-6, atol=1e-7)


def test_fit_keeps_small_arrays_on_the_devices_and_trains_as_the_host_path(tmp_path, monkeypatch):
    used = []
    monkeypatch.setattr(loop, "index_batches", lambda train: used.append(train) or index_batches(train))
    results = {}
    for mib in (256, 0):
        trainer = TrainerConfig(epochs=2, log_every=2, progress=False, device_data_mib=mib)
        results[mib] = loop.fit(MODEL, mse, optax.adam(1e-2), _train(), run_dir=tmp_path / str(mib), trainer=trainer)
        assert len(used) == 1  # only the default run went through index batches
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
