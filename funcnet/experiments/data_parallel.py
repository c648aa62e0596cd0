"""Data parallelism four ways over ONE pure train step, each compared with one device on the same batches.

    python -m funcnet.experiments.data_parallel                  # on 8 CPU devices (any machine)
    python -m funcnet.experiments.data_parallel --devices 4 --form pmap

The four forms a user may wrap the step in, written as a user would (these functions are the recipes the
guide docs/devices.md shows, and ``tests/train/test_data_parallel.py`` tests them):

- ``jit_auto``: ``make_train_step`` (``jax.jit``, the batch sharded over a mesh's ``"data"`` axis);
- ``jit_explicit``: the same over a mesh of Explicit axes (``jax.make_mesh``'s default), the batch placed
  with ``NamedSharding(mesh, P("data"))``;
- ``shard_map``: ``jax.shard_map(train_step_fn(..., axis_name="data"), ...)`` under ``jax.jit``;
- ``pmap``: ``jax.pmap(train_step_fn(..., axis_name="data"), axis_name="data")``, the state copied per device
  and the batch split along a leading device axis.

It prints each form's largest parameter difference from one device (float32 rounding: ~1e-7 to 1e-6).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import funcnet as fn
from funcnet.train.devices import cpu_devices
from funcnet.train.state import create_train_state, data_mesh
from funcnet.train.step import make_train_step, train_step_fn

Params = Any
Batch = dict[str, np.ndarray]


def model(dropout: float = 0.0) -> fn.Model:
    """The small classifier the forms train: dense 16, ReLU, dropout, dense 3."""
    return fn.serial(fn.dense(16), fn.relu(), fn.dropout(dropout), fn.dense(3))


def loss_fn(logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Per-example softmax cross-entropy and accuracy."""
    return {
        "loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]),
        "accuracy": (logits.argmax(-1) == batch["y"]).astype(np.float32),
    }


OPTIMIZER = optax.adam(1e-2)


def batches(steps: int = 3, size: int = 32, copies: int = 1, seed: int = 0) -> list[Batch]:
    """``steps`` batches of ``size`` examples, each ``copies`` copies of ``size // copies`` random examples."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        n = size // copies
        batch = {"x": rng.standard_normal((n, 5)).astype(np.float32), "y": rng.integers(0, 3, n).astype(np.int32)}
        out.append({k: np.concatenate([v] * copies) for k, v in batch.items()} | {"mask": np.ones(size, np.float32)})
    return out


def _run(step: Callable, state: Any, data: Sequence[Any]) -> tuple[Any, Any]:
    for batch in data:
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)  # one step at a time: CPU collectives have stalled with many queued
    return state, metrics


def train_jit(net: fn.Model, data: list[Batch], mesh=None) -> tuple[list[Params], dict]:
    """``make_train_step``: jax.jit over ``mesh`` (all devices by default). Returns ([params], last metrics)."""
    mesh = mesh or data_mesh()
    state = create_train_state(net, OPTIMIZER, jax.random.key(0), data[0]["x"], mesh=mesh)
    state, metrics = _run(make_train_step(net, loss_fn, OPTIMIZER, mesh=mesh), state, data)
    return [jax.device_get(state.params)], jax.device_get(metrics)


def train_jit_explicit(net: fn.Model, data: list[Batch]) -> tuple[list[Params], dict]:
    """``make_train_step`` over a mesh of Explicit axes, the batches placed on it."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Explicit,))
    return train_jit(net, [jax.device_put(b, NamedSharding(mesh, P("data"))) for b in data], mesh)


def train_shard_map(net: fn.Model, data: list[Batch], check_vma: bool = True) -> tuple[list[Params], dict]:
    """Your own ``jax.shard_map`` of the pure step: state replicated (``P()``), batch split (``P("data")``)."""
    mesh = data_mesh()
    state = create_train_state(net, OPTIMIZER, jax.random.key(0), data[0]["x"], mesh=mesh)
    pure = train_step_fn(net, loss_fn, OPTIMIZER, axis_name="data")
    step = jax.jit(jax.shard_map(pure, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P()), check_vma=check_vma))
    state, metrics = _run(step, state, data)
    return [jax.device_get(state.params)], jax.device_get(metrics)


def train_pmap(net: fn.Model, data: list[Batch]) -> tuple[list[Params], dict]:
    """Your own ``jax.pmap`` of the pure step: one copy of the state per device, each batch reshaped to
    ``[devices, B / devices, ...]``. Returns every device's params."""
    n = jax.local_device_count()
    state = create_train_state(net, OPTIMIZER, jax.random.key(0), data[0]["x"])
    state = jax.tree.map(lambda a: np.stack([np.asarray(a)] * n), state)
    split = [{k: v.reshape(n, -1, *v.shape[1:]) for k, v in batch.items()} for batch in data]
    step = jax.pmap(train_step_fn(net, loss_fn, OPTIMIZER, axis_name="data"), axis_name="data")
    state, metrics = _run(step, state, split)
    params, metrics = jax.device_get((state.params, metrics))
    return [jax.tree.map(lambda a, i=i: a[i], params) for i in range(n)], jax.tree.map(lambda a: a[0], metrics)


FORMS: dict[str, Callable[[fn.Model, list[Batch]], tuple[list[Params], dict]]] = {
    "jit_auto": train_jit,
    "jit_explicit": train_jit_explicit,
    "shard_map": train_shard_map,
    "pmap": train_pmap,
}


def largest_difference(a: Params, b: Params) -> float:
    """The largest absolute difference between two param trees."""
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m funcnet.experiments.data_parallel", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--devices", type=int, default=8, help="JAX CPU devices to split each batch over (default 8)")
    parser.add_argument("--form", choices=sorted(FORMS), action="append", help="run only this form (repeatable)")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout rate (masks differ from one device's)")
    args = parser.parse_args(argv)
    try:
        jax.config.update("jax_platforms", "cpu")  # the forms are compared on CPU devices, on any machine
        cpu_devices(args.devices)
    except RuntimeError:  # JAX has started already (called from Python): its devices must be the ones asked for
        if jax.device_count() != args.devices:
            parser.error(f"--devices {args.devices}: JAX has started with {jax.device_count()} devices already")
    net, data = model(args.dropout), batches(size=4 * args.devices)
    (one,), _ = train_jit(net, data, data_mesh(jax.devices()[:1]))
    print(f"3 Adam steps, global batch {4 * args.devices}, on 1 device and on {jax.device_count()} devices:")
    for name in args.form or FORMS:
        replicas, metrics = FORMS[name](net, data)
        spread = max(largest_difference(r, replicas[0]) for r in replicas)
        print(
            f"  {name:13s} max |params - 1 device| {largest_difference(replicas[0], one):.2e}  "
            f"replicas agree to {spread:.1e}  loss {float(metrics['loss']):.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
