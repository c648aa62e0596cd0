"""One pure step under every data-parallel transform: jit (Auto and Explicit mesh axes), shard_map, pmap.

Each path must train like one device on the same global batch (gradients and metrics reduced across
the devices exactly once), and with dropout each shard must draw its own masks.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import funcnet as fn
from funcnet.train.state import create_train_state, data_mesh
from funcnet.train.step import make_train_step, train_step_fn

OPTIMIZER = optax.adam(1e-2)
STEPS = 3


def loss_fn(logits, batch):
    return {
        "loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]),
        "accuracy": (logits.argmax(-1) == batch["y"]).astype(jnp.float32),
    }


def _model(rate):
    return fn.serial(fn.dense(16), fn.relu(), fn.dropout(rate), fn.dense(3))


def _batches(n=32, copies=1):
    """STEPS batches of n examples, each the concatenation of ``copies`` copies of n // copies examples."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(STEPS):
        m = n // copies
        batch = {"x": rng.standard_normal((m, 5)).astype(np.float32), "y": rng.integers(0, 3, m).astype(np.int32)}
        out.append({k: np.concatenate([v] * copies) for k, v in batch.items()} | {"mask": np.ones(n, np.float32)})
    return out


def _run(step, state, batches):
    for batch in batches:
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)  # block: see DESIGN.md on CPU rendezvous
    return state, metrics


def _jit(model, batches, mesh):
    state = create_train_state(model, OPTIMIZER, jax.random.key(0), batches[0]["x"], mesh=mesh)
    state, metrics = _run(make_train_step(model, loss_fn, OPTIMIZER, mesh=mesh), state, batches)
    return [jax.device_get(state.params)], jax.device_get(metrics)


def _explicit(model, batches):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    return _jit(model, [jax.device_put(b, NamedSharding(mesh, P("data"))) for b in batches], mesh)


def _shard_map(model, batches, check_vma=True):
    mesh = data_mesh()
    state = create_train_state(model, OPTIMIZER, jax.random.key(0), batches[0]["x"], mesh=mesh)
    pure = train_step_fn(model, loss_fn, OPTIMIZER, axis_name="data")
    mapped = jax.shard_map(pure, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P()), check_vma=check_vma)
    state, metrics = _run(jax.jit(mapped), state, batches)
    return [jax.device_get(state.params)], jax.device_get(metrics)


def _pmap(model, batches):
    state = create_train_state(model, OPTIMIZER, jax.random.key(0), batches[0]["x"])
    state = jax.tree.map(lambda a: np.stack([np.asarray(a)] * 8), state)  # one copy per device, as pmap takes it
    per_device = [{k: v.reshape(8, -1, *v.shape[1:]) for k, v in batch.items()} for batch in batches]
    step = jax.pmap(train_step_fn(model, loss_fn, OPTIMIZER, axis_name="data"), axis_name="data")
    state, metrics = _run(step, state, per_device)
    params, metrics = jax.device_get((state.params, metrics))
    return [jax.tree.map(lambda a, i=i: a[i], params) for i in range(8)], jax.tree.map(lambda a: a[0], metrics)


PATHS = {
    "jit_auto": lambda model, batches: _jit(model, batches, data_mesh()),
    "jit_explicit": _explicit,
    "shard_map": _shard_map,
    "shard_map_no_check_vma": lambda model, batches: _shard_map(model, batches, check_vma=False),
    "pmap": _pmap,
}


@functools.cache
def _one_device(rate, n):
    return _jit(_model(rate), _batches(n=n), data_mesh(jax.devices()[:1]))


@pytest.mark.parametrize("path", PATHS)
def test_every_path_trains_like_one_device_on_the_global_batch(path):
    model, batches = _model(0.0), _batches()
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
    model = _model(0.5)
    (one,), _ = _one_device(0.5, 4)
    replicas, _ = PATHS[path](model, _batches(n=32, copies=8))
    difference = max(
        np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(replicas[0]), jax.tree.leaves(one), strict=True)
    )
    # Equal masks give equal gradients up to rounding (~1e-7); independent ones move the params by ~1e-2.
    assert difference > 1e-3, difference


def test_sparse_rows_under_shard_map_is_refused_with_the_supported_way():
    with pytest.raises(ValueError, match=r"sparse_rows needs the whole batch.*make_train_step"):
        train_step_fn(fn.embed(10, 4), loss_fn, optax.sgd(0.1), axis_name="data", sparse_rows={"embedding": "x"})


def test_a_batch_on_another_mesh_than_the_step_says_which_mesh_to_build_with():
    model, batches = _model(0.0), _batches()
    state = create_train_state(model, OPTIMIZER, jax.random.key(0), batches[0]["x"])
    explicit = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    batch = jax.device_put(batches[0], NamedSharding(explicit, P("data")))
    with pytest.raises(ValueError, match=r"another mesh than the step's.*make_train_step\(\.\.\., mesh=mesh\)"):
        make_train_step(model, loss_fn, OPTIMIZER)(state, batch)
