"""One pure step under every data-parallel transform: jit (Auto and Explicit mesh axes), shard_map, pmap.

The forms are the recipes of ``funcnet.experiments.data_parallel`` (what docs/devices.md shows), plus
``shard_map`` with ``check_vma=False``, which reduces gradients like ``pmap``.

Each path must train like one device on the same global batch (gradients and metrics reduced across
the devices exactly once), and with dropout each shard must draw its own masks.
"""

from __future__ import annotations

import functools

import chex
import jax
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import funcnet as fn
from funcnet.experiments import data_parallel
from funcnet.train.state import create_train_state, data_mesh
from funcnet.train.step import make_train_step, train_step_fn

PATHS = {
    **data_parallel.FORMS,
    "shard_map_no_check_vma": lambda net, data: data_parallel.train_shard_map(net, data, check_vma=False),
}


@functools.cache
def _one_device(rate, n):
    return data_parallel.train_jit(
        data_parallel.model(rate), data_parallel.batches(size=n), data_mesh(jax.devices()[:1])
    )


@pytest.mark.parametrize("path", PATHS)
def test_every_path_trains_like_one_device_on_the_global_batch(path):
    model, batches = data_parallel.model(0.0), data_parallel.batches()
    (one,), one_metrics = _one_device(0.0, 32)
    replicas, metrics = PATHS[path](model, batches)
    for replica in replicas[1:]:  # every replica applied the same, fully reduced update
        chex.assert_trees_all_equal(replica, replicas[0])
    # Tolerance: 8 per-device partial sums added by an all-reduce round differently from one device's
    # single sum; Adam's division by sqrt(v) amplifies it a little over 3 steps (~100 float32 ulps).
    # A gradient reduced twice (x8) or not at all (local means) is off by far more than this.
    chex.assert_trees_all_close(replicas[0], one, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close({k: metrics[k] for k in one_metrics}, dict(one_metrics), rtol=1e-5, atol=1e-6)
    assert float(metrics["count"]) == 32.0


@pytest.mark.parametrize("path", PATHS)
def test_with_dropout_each_shard_draws_its_own_masks(path):
    """8 copies of one batch on 8 devices must not train like one device on one copy: that would mean
    every shard drew the same dropout masks."""
    model = data_parallel.model(0.5)
    (one,), _ = _one_device(0.5, 4)
    replicas, _ = PATHS[path](model, data_parallel.batches(size=32, copies=8))
    difference = max(
        np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(replicas[0]), jax.tree.leaves(one), strict=True)
    )
    # Equal masks give equal gradients up to rounding (~1e-7); independent ones move the params by ~1e-2.
    assert difference > 1e-3, difference


def test_sparse_rows_under_shard_map_is_refused_with_the_supported_way():
    with pytest.raises(ValueError, match=r"sparse_rows needs the whole batch.*make_train_step"):
        train_step_fn(fn.embed(10, 4), data_parallel.loss_fn, optax.sgd(0.1), axis_name="data", sparse_rows={"x": "x"})


def test_a_batch_on_another_mesh_than_the_step_says_which_mesh_to_build_with():
    model, batches = data_parallel.model(0.0), data_parallel.batches()
    state = create_train_state(model, data_parallel.OPTIMIZER, jax.random.key(0), batches[0]["x"])
    explicit = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    batch = jax.device_put(batches[0], NamedSharding(explicit, P("data")))
    with pytest.raises(ValueError, match=r"another mesh than the step's.*make_train_step\(\.\.\., mesh=mesh\)"):
        make_train_step(model, data_parallel.loss_fn, data_parallel.OPTIMIZER)(state, batch)


def test_the_example_command_prints_every_form_close_to_one_device(capsys):
    assert data_parallel.main(["--devices", "8", "--form", "pmap", "--form", "jit_explicit"]) == 0
    out = capsys.readouterr().out
    for form in ("pmap", "jit_explicit"):
        (line,) = [line for line in out.splitlines() if line.strip().startswith(form)]
        assert float(line.split("1 device|")[1].split()[0]) < 1e-5, line  # see the tolerance above


def test_a_step_built_without_axis_name_under_pmap_is_refused_with_the_fix():
    net, (batch,) = data_parallel.model(), data_parallel.batches(steps=1)
    state = create_train_state(net, data_parallel.OPTIMIZER, jax.random.key(0), batch["x"])
    state = jax.tree.map(lambda a: np.stack([np.asarray(a)] * 8), state)
    split = {k: v.reshape(8, -1, *v.shape[1:]) for k, v in batch.items()}
    step = jax.pmap(train_step_fn(net, data_parallel.loss_fn, data_parallel.OPTIMIZER), axis_name="data")
    with pytest.raises(ValueError, match=r"built with axis_name=None.*axis_name='data'"):
        step(state, split)
