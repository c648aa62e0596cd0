"""Building one workload in every library and running it side by side (mlp.py and charlstm.py share this).

Each system is a ``_common.System``; the builders here wrap a library's own step in the timing loop
without changing how the step is written: ``jax_system`` for a jitted ``(state, batch) -> (state,
out)``, ``torch_system`` for an eager PyTorch step. ``shared`` copies the workload's initial weights
(drawn once with NumPy) into a library's parameter layout, so every system starts from the same point
and must report the same initial loss. ``run_workload`` is the whole measurement of mlp.py / charlstm.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import _common as common
from _common import System

PEER_TARGETS = ("flax", "haiku", "equinox")  # the target: funcnet >= each of them on every workload
MIXED_LOSS_TOLERANCE = 1e-2  # a system with bfloat16 matmul operands vs the float32 reference (relative)


def jax_system(
    name: str, step, state, batches: Sequence[Any], *, cache_size, loss_of=lambda out: out, in_flight: int = 0
) -> System:
    """A JAX loop: ``state, out = step(state, batches[i % len])``; waits on the final state and output.

    ``in_flight``: if positive, at most that many steps are queued (it waits on the output of the step
    ``in_flight - 1`` before), as ``fit`` does on a mesh of several CPU devices; 0: no bound.
    """
    import jax

    box = {"state": state, "out": None, "i": 0}

    def run(n: int) -> None:
        state, out, i = box["state"], box["out"], box["i"]
        queued = []
        for _ in range(n):
            state, out = step(state, batches[i % len(batches)])
            i += 1
            if in_flight:
                queued.append(out)
                if len(queued) >= in_flight:
                    jax.block_until_ready(queued.pop(0))
        jax.block_until_ready((state, out))
        box.update(state=state, out=out, i=i)

    return System(name, "jax", run, lambda: float(loss_of(box["out"])), cache_size)


def torch_system(name: str, step, batches: Sequence[Any], device) -> System:
    """A PyTorch loop: ``loss = step(*batches[i % len])``; synchronizes a CUDA device at the end."""
    import torch

    box = {"loss": None, "i": 0}

    def run(n: int) -> None:
        loss, i = box["loss"], box["i"]
        for _ in range(n):
            loss = step(*batches[i % len(batches)])
            i += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        box.update(loss=loss, i=i)

    return System(name, "torch", run, lambda: float(box["loss"].item()))


def shared(native, values, system: str):
    """``values`` (a pytree shaped like ``native``) as jnp arrays, or ``native`` if the layouts differ."""
    import jax
    import jax.numpy as jnp

    same = jax.tree.structure(native) == jax.tree.structure(values) and all(
        a.shape == b.shape for a, b in zip(jax.tree.leaves(native), jax.tree.leaves(values), strict=True)
    )
    if not same:
        print(f"NOTE: {system}: parameter layout changed; keeping its own initialization", flush=True)
        return native, "native"
    return jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), native, values), "shared"


def system_builders(args, builders: dict[str, Callable], build_torch: Callable, *data) -> dict[str, Callable]:
    """One zero-argument builder per chosen system: ``builders[name](*data)``; PyTorch's (``torch``, and
    ``torch_bf16``: ``build_torch(..., autocast=True)``) get the device too."""
    device = common.torch_device(args) if any(name.startswith("torch") for name in args.systems) else None

    def builder(name):
        if name == "torch":
            return partial(build_torch, *data, device)
        if name == "torch_bf16":
            return partial(build_torch, *data, device, autocast=True)
        return partial(builders[name], *data)

    return {name: builder(name) for name in args.systems}


def funcnet_train(model, loss_fn, optimizer, example_x, weights, seed, system="funcnet", all_devices=False):
    """``(step, state, mesh, init)`` as a funcnet user builds them, on ONE device (the one every system
    uses) or with ``all_devices`` data-parallel over every device, starting from ``weights`` (None:
    funcnet's own initialization)."""
    import jax

    from funcnet.train.state import create_train_state, data_mesh, replicated
    from funcnet.train.step import make_train_step

    mesh = data_mesh(None if all_devices else jax.devices()[:1])
    state = create_train_state(model, optimizer, jax.random.key(seed), example_x, mesh=mesh)
    init = "native"
    if weights is not None:
        params, init = shared(state.params, weights, system)
        state = jax.device_put(state._replace(params=params, opt_state=optimizer.init(params)), replicated(mesh))
    return make_train_step(model, loss_fn, optimizer, mesh=mesh), state, mesh, init


def first_steps(builders: dict[str, Callable[[], System]], repeats: int) -> tuple[dict[str, System], dict]:
    """Builds each system ``repeats`` times (rotated order) and times its FIRST step: trace, compile, run.

    Returns the last build of each system (already compiled) and ``{name: {"seconds": [...],
    "compilations": [...], "initial_loss": float}}``.
    """
    names = list(builders)
    built: dict[str, System] = {}
    times: dict[str, dict] = {n: {"seconds": [], "compilations": []} for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            system = builders[name]()
            compiles = common.COMPILES.count
            start = time.perf_counter()
            system.run(1)
            times[name]["seconds"].append(time.perf_counter() - start)
            times[name]["compilations"].append(common.COMPILES.count - compiles)
            times[name]["initial_loss"] = system.loss()
            built[name] = system
    return built, times


def calibrate(system: System, target_seconds: float, low: int, high: int) -> int:
    """Steps that make a segment of ``system`` last about ``target_seconds`` (untimed probe)."""
    system.run(2)
    n, seconds = 2, 0.0
    while seconds < 0.1 and n <= high:
        start = time.perf_counter()
        system.run(n)
        seconds = time.perf_counter() - start
        n *= 2
    per_step = seconds / (n // 2)
    return max(low, min(high, round(target_seconds / per_step)))


def first_step_records(workload: str, times: dict[str, dict], reference: str) -> dict[str, dict]:
    """Emits one ``first_step`` record per system (median seconds, median per-repeat ratio to ``reference``)."""
    rows = {}
    ref = times.get(reference)
    for name, t in times.items():
        row = {
            "figure": "first_step",
            "workload": workload,
            "system": name,
            "seconds": round(common.median(t["seconds"]), 3),
            "ratio_to": reference if ref else None,
            "ratio": round(common.ratio(t["seconds"], ref["seconds"]), 3) if ref else None,
            "repeats": [round(x, 3) for x in t["seconds"]],
            "compilations": t["compilations"],
        }
        common.emit(**row)
        rows[name] = row
    return rows


def loss_records(
    workload: str, losses: dict[str, dict], *, expected: float | None, reference: str, tolerance: float
) -> bool:
    """Emits the ``loss`` records and checks that every system computes the reference's loss.

    ``losses[name]`` holds ``initial`` (the first step's loss, before its update), ``after`` (the loss
    of step ``after_steps``) and ``init`` (``"shared"`` weights, ``"shared, bf16"`` for shared weights
    under bfloat16 matmuls, or ``"native"``). Systems with shared initial weights must match the
    reference's initial loss within ``tolerance`` (relative; bfloat16 ones within
    ``MIXED_LOSS_TOLERANCE``); natively initialized ones must be within 2% of ``expected`` (e.g. ln 65
    for the LSTM). Returns True if all match.
    """
    ok = True
    ref = losses.get(reference, {}).get("initial")
    for name, loss in losses.items():
        if loss["init"] == "shared" and ref is not None:
            good = abs(loss["initial"] - ref) <= tolerance * abs(ref)
        elif loss["init"] == "shared, bf16" and ref is not None:  # bfloat16 matmul operands: rounded
            good = abs(loss["initial"] - ref) <= MIXED_LOSS_TOLERANCE * abs(ref)
        else:
            good = expected is None or abs(loss["initial"] - expected) <= 0.02 * abs(expected)
        ok &= good
        common.emit(figure="loss", workload=workload, system=name, expected=expected, matches=good, **loss)
        if not good:
            print(
                f"WARNING: {name}'s initial loss {loss['initial']:.6f} does not match (reference {ref}, expected "
                f"{expected}): the systems may not compute the same thing",
                flush=True,
            )
    return ok


def run_workload(
    workload: str,
    args,
    malloc: str,
    builders: dict[str, Callable[[], tuple[System, str]]],
    *,
    setup: dict[str, Any],
    loss_after: int,
    expected_loss: float | None,
    repeats: int,
    segment_seconds: float,
    steps_range: tuple[int, int],
    per_step: int = 1,
    unit: str = "steps/s",
    jax_targets: bool = False,
    warm_build: bool = False,
    ratio_targets: Sequence[tuple[str, str, float]] = (),
) -> None:
    """First steps, losses, calibrated interleaved rounds, targets and the table, for ``builders``.

    ``builders[name]()`` returns a fresh ``(System, init)`` (``init``: ``"shared"``, ``"shared, bf16"``
    or ``"native"`` weights, see ``loss_records``). Each is built ``repeats`` times to time its first
    step (the last build is kept), then every system takes ``loss_after`` steps in all and reports that
    loss (same data, same weights: the same loss), then ``args.rounds`` rounds of ``steps`` each
    (``args.steps`` or calibrated so a segment of the reference lasts ``segment_seconds``).
    ``warm_build``: build and step every system once, untimed, before the timed builds (each library's
    one-time costs are then paid by nobody).
    ``ratio_targets``: ``(system, other, threshold)`` checked as ``system/other >= threshold`` (median of
    the per-round ratios of the figure), besides funcnet against each of ``PEER_TARGETS``.
    """
    common.emit(figure="setup", workload=workload, **common.machine(args, malloc), **setup)
    common.warm_jax()
    inits = {}

    def build(name):
        system, inits[name] = builders[name]()
        return system

    if warm_build:
        first_steps({n: partial(build, n) for n in builders}, 1)
    systems, times = first_steps({n: partial(build, n) for n in builders}, repeats)
    losses = {}
    for name, system in systems.items():
        system.run(loss_after - 1)  # every system has now taken exactly loss_after steps
        losses[name] = {"initial": times[name]["initial_loss"], "after_steps": loss_after, "after": system.loss()}
        losses[name]["init"] = inits[name]
    reference = "jax" if "jax" in systems else next(iter(systems))
    same = loss_records(workload, losses, expected=expected_loss, reference=reference, tolerance=1e-5)
    first = first_step_records(workload, times, reference)

    steps = args.steps or calibrate(systems[reference], segment_seconds, *steps_range)
    results = common.measure(list(systems.values()), args.rounds, steps)
    rows = common.throughput(workload, results, steps, reference=reference, per_step=per_step, unit=unit)
    if jax_targets and "funcnet" in rows and reference == "jax":
        common.target(workload, f"funcnet/jax {unit}", rows["funcnet"]["ratio"], 0.97)
        common.target(workload, "funcnet/jax time to first step", first["funcnet"]["ratio"], 1.2, False)
    pairs = [("funcnet", peer, 1.0) for peer in PEER_TARGETS] + list(ratio_targets)
    for mine, other, threshold in pairs:
        if mine in rows and other in rows:
            value = round(common.ratio(rows[mine]["rounds"], rows[other]["rounds"]), 3)
            common.target(workload, f"{mine}/{other} {unit}", value, threshold)
    common.table(
        f"{workload}: median of {args.rounds} rounds of {steps} steps; "
        + ", ".join(f"{k} {v}" for k, v in setup.items()),
        [
            "system",
            unit,
            f"vs {reference}",
            "first step s",
            f"vs {reference}",
            "initial loss",
            f"loss @{loss_after}",
            "init",
        ],
        [
            [
                n,
                r["value"],
                r["ratio"],
                first[n]["seconds"],
                first[n]["ratio"],
                losses[n]["initial"],
                losses[n]["after"],
                losses[n]["init"],
            ]
            for n, r in rows.items()
        ],
    )
    expected = "" if expected_loss is None else f" (expected about {expected_loss})"
    print(f"malloc: {malloc}; initial losses {'agree' if same else 'DIFFER'}{expected}")
