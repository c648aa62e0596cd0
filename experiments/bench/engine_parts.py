"""Where the training engine's time goes, part by part, side by side in one process (microseconds per step).

    python experiments/bench/engine_parts.py                       # all parts, 8 rounds
    python experiments/bench/engine_parts.py --parts wrapper --rounds 8
    PYTHONPATH=/path/to/an/old/checkout python experiments/bench/engine_parts.py --parts wrapper   # that funcnet

Parts (each a set of systems run in interleaved rounds, rotated, the median of the rounds printed):
  wrapper   the mlp step of ``mlp.py`` (N 64, D_in 1000, H 100, Adam): ``make_train_step``'s callable (what a
            user calls), the jitted function it wraps (``.jitted``), and the hand-written jitted JAX step;
            the difference between the first two is the Python wrapper's cost per call
  resident  the mlp workload of ``fit.py`` (3,200 examples, batches of 64): the step ``fit`` runs on arrays
            kept on the device (``device_data.make_resident_step``, fed ``EpochPlans``), against the same step
            (``make_train_step``) on batches already on the device; the difference is the in-step gather.
            ``split_per_epoch``: the same step on the same batches, made by one jitted gather per epoch that
            returns the epoch's batches (``shuffled_on_device``), the other way to shuffle on the device
  gather    ``jnp.take`` of 64 rows of a [3200, 1000] float32 array, jitted alone, in its index modes
  host      the host's cost per step of ``fit``'s loop: a model so small (dense(1), batches of 8) that the
            step is mostly host work, in a bare loop of ``fit``'s gathering step and inside ``fit`` (a window
            of steady steps of a fresh call, as ``fit.py`` times it); the difference is the loop's Python

Every system is compiled and warmed up before timing; the machine's load moves every figure, so compare
figures of one run only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(run, steps: int) -> float:
    """Microseconds per call of ``run(steps)`` (which blocks on its last result), or per step of the seconds a
    ``Timed`` system reports itself."""
    start = time.perf_counter()
    seconds = run(steps)
    if not isinstance(run, Timed):
        seconds = time.perf_counter() - start
    return seconds / steps * 1e6


def rounds(systems: dict, steps: int, count: int) -> dict[str, float]:
    """Median microseconds per step of each system over ``count`` interleaved rounds, rotated each round."""
    for run in systems.values():
        run(20)  # compiled and warm
    names, times = list(systems), {name: [] for name in systems}
    for r in range(count):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(systems[name], steps))
    return {name: statistics.median(values) for name, values in times.items()}


def wrapper_part():
    import _peers as peers
    import jax
    import mlp
    import optax

    (x, y), weights = mlp.make_data(0)
    step, state, mesh, _ = peers.funcnet_train(
        mlp.funcnet_model(), mlp.funcnet_loss, optax.adam(mlp.LEARNING_RATE), x, mlp.funcnet_params(weights), 0
    )
    from funcnet.train.state import batch_sharded

    batch = jax.device_put({"x": x, "y": y}, batch_sharded(mesh))
    raw, raw_state = mlp.jax_step(weights)
    pair = jax.device_put((x, y), jax.devices()[0])
    states = {"funcnet_step": state, "its_jitted": jax.tree.map(lambda a: a.copy(), state), "jax": raw_state}

    def looping(name, function, data):
        def run(steps):
            current = states[name]
            for _ in range(steps):
                current, _ = function(current, data)
            states[name] = jax.block_until_ready(current)

        return run

    return {
        "funcnet_step": looping("funcnet_step", step, batch),
        "its_jitted": looping("its_jitted", step.jitted, batch),
        "jax": looping("jax", raw, pair),
    }


def shuffled_on_device(batches, mesh):
    """Every epoch's batches of ``batches`` (the same as ``fit``'s), shuffled on the device as a hand-written loop
    would: the arrays placed once, then one jitted gather per epoch that returns the epoch's batches."""
    import jax
    import jax.numpy as jnp

    from funcnet.train.device_data import epoch_plan
    from funcnet.train.state import replicated

    arrays = jax.device_put(dict(batches.dataset.arrays), replicated(mesh))
    steps = batches.steps_per_epoch

    @jax.jit
    def split(arrays, index, mask):
        batch = [{k: jnp.take(v, index[r], axis=0) for k, v in arrays.items()} for r in range(steps)]
        return [{**b, "mask": mask[r]} for r, b in enumerate(batch)]

    epoch = 0
    while True:
        plan = epoch_plan(batches, epoch)
        yield from split(arrays, plan["index"], plan["mask"])
        epoch += 1


def plans_loop(step, state, plans):
    """``run(steps)``: ``steps`` calls of a gathering step fed ``plans``, from ``state`` on, blocking on the last."""
    import jax

    box = {"state": state}

    def run(steps):
        state = box["state"]
        for _ in range(steps):
            state, _ = step(state, next(plans))
        box["state"] = jax.block_until_ready(state)

    return run


def resident_part():
    import fit as fit_bench
    import jax
    import optax

    from funcnet.train.data import Batches, Position
    from funcnet.train.device_data import EpochPlans, make_resident_step, resident_arrays
    from funcnet.train.state import create_train_state, data_mesh
    from funcnet.train.step import make_train_step

    model, loss_fn, _, data, batch_size, _ = fit_bench.workload("mlp", 0)
    optimizer = optax.adam(1e-3)
    mesh = data_mesh(jax.devices()[:1])
    train = Batches(data, batch_size, seed=0)
    example = next(iter(train.epoch(0)))["x"]
    states = {name: create_train_state(model, optimizer, jax.random.key(0), example, mesh=mesh) for name in "rb"}
    gathering = make_resident_step(model, loss_fn, optimizer, resident_arrays(train, mesh, 256), mesh=mesh)
    plain = make_train_step(model, loss_fn, optimizer, mesh=mesh)
    placed = [jax.device_put(batch) for batch in train.epoch(0)]  # with their masks, as fit's batches have
    plans = EpochPlans(train, Position(0, 0), 0, mesh)

    resident = plans_loop(gathering, states["r"], plans)

    def preplaced(steps):
        state = states["b"]
        for i in range(steps):
            state, _ = plain(state, placed[i % len(placed)])
        states["b"] = jax.block_until_ready(state)

    states["s"] = create_train_state(model, optimizer, jax.random.key(0), example, mesh=mesh)
    epochs = shuffled_on_device(train, mesh)

    def split_per_epoch(steps):
        state = states["s"]
        for _ in range(steps):
            state, _ = plain(state, next(epochs))
        states["s"] = jax.block_until_ready(state)

    return {"resident_step": resident, "split_per_epoch": split_per_epoch, "preplaced_batches": preplaced}


def gather_part():
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    table = jnp.asarray(rng.standard_normal((3200, 1000), np.float32))
    index = jnp.asarray(rng.permutation(3200)[:64].astype(np.int32))
    variants = {
        "take_clip": lambda t, i: jnp.take(t, i, axis=0, mode="clip"),
        "take_fill": lambda t, i: jnp.take(t, i, axis=0, mode="fill"),
        "promise_in_bounds": lambda t, i: t.at[i].get(mode="promise_in_bounds"),
        "vmapped_dynamic_index": lambda t, i: jax.vmap(lambda j: jax.lax.dynamic_index_in_dim(t, j, 0, False))(i),
    }

    def looping(function):
        jitted = jax.jit(function)

        def run(steps):
            for _ in range(steps):
                out = jitted(table, index)
            jax.block_until_ready(out)

        return run

    return {name: looping(function) for name, function in variants.items()}


def host_part():
    import contextlib
    import io
    import shutil
    import tempfile

    import fit as fit_bench
    import jax
    import numpy as np
    import optax

    import funcnet as fn
    from funcnet.train import TrainerConfig
    from funcnet.train.data import ArrayDataset, Batches, Position
    from funcnet.train.device_data import EpochPlans, make_resident_step, resident_arrays
    from funcnet.train.loop import fit
    from funcnet.train.state import create_train_state, data_mesh

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((640, 4), dtype=np.float32), rng.standard_normal((640, 1), dtype=np.float32)
    train = Batches(ArrayDataset(x=x, y=y), 8, seed=0)
    model, loss, optimizer = fn.dense(1), fn.losses.per_example(fn.losses.mse), optax.adam(1e-3)
    mesh = data_mesh(jax.devices()[:1])
    step = make_resident_step(model, loss, optimizer, resident_arrays(train, mesh, 64), mesh=mesh)
    state = create_train_state(model, optimizer, jax.random.key(0), x[:8], mesh=mesh)
    loop = plans_loop(step, state, EpochPlans(train, Position(0, 0), 0, mesh))

    def in_fit(steps):  # one fresh fit; its window of `steps` steady steps is timed (fit.py's Window)
        window, run_dir = fit_bench.Window(8, 8 + steps), tempfile.mkdtemp()
        trainer = TrainerConfig(max_steps=16 + steps, batch_size=8, log_every=50, progress=True, seed=0)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            fit(model, loss, optimizer, train, run_dir=run_dir, mesh=mesh, trainer=trainer, callbacks=[window.hook])
        shutil.rmtree(run_dir, ignore_errors=True)
        return window.segment().seconds

    return {"bare_loop": loop, "fit": Timed(in_fit)}


class Timed:
    """A system that times itself: ``run(steps)`` returns its own seconds for ``steps`` steps."""

    def __init__(self, run):
        self.run = run

    def __call__(self, steps):
        return self.run(steps)


PARTS = {
    "wrapper": (wrapper_part, 800),
    "resident": (resident_part, 1000),
    "gather": (gather_part, 500),
    "host": (host_part, 2000),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {list(PARTS)}")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    import funcnet

    print(f"funcnet from {Path(funcnet.__file__).parent}")
    for part in args.parts.split(","):
        build, steps = PARTS[part]
        medians = rounds(build(), steps, args.rounds)
        first = next(iter(medians.values()))
        print(f"\n{part}: us per step, median of {args.rounds} interleaved rounds of {steps}")
        for name, value in medians.items():
            print(f"  {name:24s} {value:8.1f}   time / {next(iter(medians))}'s: {value / first:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
