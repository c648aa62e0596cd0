"""The training engine's overhead: ``funcnet.train.loop.fit`` against the bare jitted step on the same batches.

    python experiments/bench/fit.py                       # 100 s measured at load 4 on 2 cores
    python experiments/bench/fit.py --quick               # ~20 s (one round), noisy
    python experiments/bench/fit.py --workloads mlp --systems fit,bare --rounds 8

Workloads: the mlp and charlstm workloads of mlp.py and charlstm.py (funcnet's model, loss and Adam) over
an in-memory ``ArrayDataset`` of random data (mlp: 3,200 examples, 50 batches of 64; charlstm: 640
sequences, 20 batches of 32), shuffled each epoch by ``funcnet.train.data.Batches``.

Systems (all train with the same pure step, ``funcnet.train.step.train_step_fn``, jitted, on one device):
  fit        ``fit(model, loss, optimizer, Batches(...), trainer=TrainerConfig(log_every=50,
             progress=True))`` with its defaults: the in-memory arrays copied to the device once and
             each step gathering its batch there (``funcnet.train.device_data``; the host sends the
             example numbers of many epochs at once), metrics read lazily, tensorboardX scalars every 50 steps, the
             progress bar (written to /dev/null); no evaluation,
             checkpoints only at the end of the run (outside the timed window)
  fit_ckpt   the same with ``checkpoint_every`` = half the timed window: two Orbax saves inside it
  bare       a Python loop over the epoch's batches already on the device: the step alone
  bare_shuffled  a Python loop over fit's own step on the same shuffled batches, without fit: the arrays on
             the device, each step gathering its batch there (``device_data.make_resident_step`` fed
             ``EpochPlans``). bare moves no data; shuffling copies every batch once: bare_shuffled/bare is
             the shuffle's cost, fit/bare_shuffled the engine's
  bare_host  a Python loop over ``Batches.iterate()`` handing NumPy batches to the step (no prefetch)

Each ``fit`` call is a fresh run (new run directory, so no resume): it compiles its own step, so its
figure is a window of steady-state steps measured by a callback, from the end of step w to the end of
step w + K (K = the steps every system runs in the round, a multiple of 4); the compile, the first
steps, 8 steps after the window and the final save fall outside it. Figures: steps/s and, per round,
the ratio to ``bare``; for fit_ckpt the cost of one checkpoint. Targets: fit >= 0.97 x bare and
>= 0.97 x bare_shuffled. Method: see _common.py.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time

import _common as common
import _peers as peers

SYSTEMS = ("fit", "fit_ckpt", "bare", "bare_shuffled", "bare_host")
WORKLOADS = ("mlp", "charlstm")
WARM_STEPS = 8  # fit steps before its timed window (the first compiles)
# fit reports finished steps to on_step_end in bursts: with up to MAX_IN_FLIGHT steps in flight (8
# here) it waits for steps 4, 8, 12, ..., so a step is seen when the next multiple of 4 is done. The
# window's two ends are seen alike when both are in steady state (TAIL_STEPS more steps follow the
# window, so its end is not the run's last step, which is seen at once) and in the same phase
# (WARM_STEPS and the steps per round are multiples of PHASE).
TAIL_STEPS = 8
PHASE = 4
LOG_EVERY = 50


def workload(name: str, seed: int):
    """``(model, loss_fn, optimizer, dataset, batch_size, steps (full, quick))`` of a workload."""
    import numpy as np
    import optax

    from funcnet.train.data import ArrayDataset

    rng = np.random.default_rng(seed)
    if name == "mlp":
        import mlp as w

        n = 50 * w.N
        x = rng.standard_normal((n, w.D_IN), dtype=np.float32)
        data = ArrayDataset(x=x, y=rng.standard_normal((n, w.D_OUT), dtype=np.float32))
        return w.funcnet_model(), w.funcnet_loss, optax.adam(w.LEARNING_RATE), data, w.N, (1000, 300)
    import charlstm as w

    ids = rng.integers(0, w.VOCAB, (20 * w.BATCH, w.SEQUENCE + 1), dtype=np.int32)
    data = ArrayDataset(x=ids[:, :-1].copy(), y=ids[:, 1:].copy())
    return w.funcnet_model(), w.funcnet_loss, optax.adam(w.LEARNING_RATE), data, w.BATCH, (20, 8)


class Window:
    """A fit callback timing the steps ``(first, last]``: from the end of step ``first`` to the end of ``last``.

    ``counter`` (optional) is read at both ends too, e.g. the batches a data source has produced.
    """

    def __init__(self, first: int, last: int, counter=lambda: 0):
        from funcnet.train.loop import Callback

        outer = self

        class _Hook(Callback):
            def on_step_end(self, step, metrics):
                del metrics
                if step in (first, last):
                    outer.marks[step] = (time.perf_counter(), common.COMPILES.count, counter())

        self.hook, self.first, self.last, self.marks = _Hook(), first, last, {}

    def segment(self) -> common.Segment:
        (t0, c0, _), (t1, c1, _) = self.marks[self.first], self.marks[self.last]
        return common.Segment(t1 - t0, c1 - c0)

    def counted(self) -> int:
        """How much ``counter`` moved inside the window."""
        return self.marks[self.last][2] - self.marks[self.first][2]


def fit_system(name, spec, seed, root, checkpoint_every=None) -> tuple[common.System, list[float]]:
    """A system whose ``run(K)`` is one fresh ``fit`` of WARM_STEPS + K + TAIL_STEPS steps, timed over K;
    and the list that collects each whole fit call's seconds."""
    import jax

    from funcnet.train import TrainerConfig
    from funcnet.train.data import Batches
    from funcnet.train.loop import fit
    from funcnet.train.state import data_mesh

    model, loss_fn, optimizer, data, batch_size, _ = spec
    walls = []

    def run(steps: int) -> common.Segment:
        window = Window(WARM_STEPS, WARM_STEPS + steps)
        every = checkpoint_every(steps) if checkpoint_every else None
        trainer = TrainerConfig(
            max_steps=WARM_STEPS + steps + TAIL_STEPS,
            batch_size=batch_size,
            log_every=LOG_EVERY,
            checkpoint_every=every,
            progress=True,
            seed=seed,
        )
        run_dir = tempfile.mkdtemp(prefix=f"{name}-", dir=root)
        start = time.perf_counter()
        with common.quiet():
            fit(
                model,
                loss_fn,
                optimizer,
                Batches(data, batch_size, seed=seed),
                run_dir=run_dir,
                mesh=data_mesh(jax.devices()[:1]),  # the one device the bare loops use
                trainer=trainer,
                callbacks=[window.hook],
            )
        walls.append(time.perf_counter() - start)
        shutil.rmtree(run_dir, ignore_errors=True)
        return window.segment()

    system = common.System(name, "jax", run, settle=False)
    return system, walls


def bare_systems(spec, seed, names):
    """``bare`` (device-resident batches), ``bare_shuffled`` (fit's gathering step) and ``bare_host``
    (NumPy batches from Batches.iterate()), of those in ``names``."""
    import jax

    from funcnet.train.data import Batches, Position, shard_batch
    from funcnet.train.device_data import EpochPlans, make_resident_step, resident_arrays
    from funcnet.train.state import batch_sharded

    model, loss_fn, optimizer, data, batch_size, _ = spec
    batches = Batches(data, batch_size, seed=seed)
    example = next(iter(batches.epoch(0)))["x"]
    out = {}
    for name in [n for n in ("bare", "bare_shuffled", "bare_host") if n in names]:
        step, state, mesh, _ = peers.funcnet_train(model, loss_fn, optimizer, example, None, seed)
        if name == "bare":
            device = [shard_batch(b, batch_sharded(mesh)) for b in batches.epoch(0)]
            out[name] = peers.jax_system(
                name, step, state, device, cache_size=step.jitted._cache_size, loss_of=lambda m: m["loss"]
            )
            continue
        source = batches.iterate()
        if name == "bare_shuffled":  # fit's own step and plans, without fit
            arrays = resident_arrays(batches, mesh, float("inf"))
            step = make_resident_step(model, loss_fn, optimizer, arrays, mesh=mesh)
            source = EpochPlans(batches, Position(0, 0), int(state.step), mesh)
        box = {"state": state, "metrics": None, "iterator": source}

        def run(n, box=box, step=step):
            state, metrics = box["state"], box["metrics"]
            for _ in range(n):
                state, metrics = step(state, next(box["iterator"]))
            jax.block_until_ready((state, metrics))
            box.update(state=state, metrics=metrics)

        out[name] = common.System(
            name, "jax", run, lambda box=box: float(box["metrics"]["loss"]), step.jitted._cache_size
        )
    return out


def saves_in_window(steps: int) -> int:
    """Checkpoints fit_ckpt saves inside its window: steps s with WARM_STEPS <= s < WARM_STEPS + K, s % every == 0."""
    every = half(steps)
    return sum(1 for s in range(WARM_STEPS, WARM_STEPS + steps) if s % every == 0)


def half(steps: int) -> int:
    return max(1, steps // 2)


def bench_workload(name, args, root) -> dict:
    spec = workload(name, args.seed)
    steps = args.steps or spec[5][1 if args.quick else 0]
    steps = -(-steps // PHASE) * PHASE  # a multiple of PHASE (see TAIL_STEPS)
    systems, walls = {}, {}
    bare = bare_systems(spec, args.seed, args.systems)
    for system in args.systems:
        if system in bare:
            systems[system] = bare[system]
            systems[system].run(3)  # compile and warm up
        else:
            every = half if system == "fit_ckpt" else None
            systems[system], walls[system] = fit_system(system, spec, args.seed, root, every)
    results = common.measure(list(systems.values()), args.rounds, steps)
    reference = "bare" if "bare" in results else args.systems[0]
    rows = common.throughput(f"fit/{name}", results, steps, reference=reference)
    for system, values in walls.items():
        common.emit(
            figure="fit_call",
            workload=f"fit/{name}",
            system=system,
            steps=WARM_STEPS + steps + TAIL_STEPS,
            seconds_median=round(common.median(values), 3),
            note="whole fit call: state, compile, warm steps, window, final save, close",
        )
    if "fit" in rows and reference == "bare":
        common.target(f"fit/{name}", "fit/bare steps/s (log_every 50)", rows["fit"]["ratio"], 0.97)
    if {"fit", "bare_shuffled"} <= set(rows) and reference == "bare":
        ratio = round(rows["fit"]["value"] / rows["bare_shuffled"]["value"], 3)
        common.target(f"fit/{name}", "fit/bare_shuffled steps/s (the same batches)", ratio, 0.97)
    if {"fit", "fit_ckpt"} <= set(results):
        saves = saves_in_window(steps)
        extra = [(c.seconds - f.seconds) / saves for c, f in zip(results["fit_ckpt"], results["fit"], strict=True)]
        rows["fit_ckpt"]["checkpoint_ms"] = round(1e3 * common.median(extra), 1)
        common.emit(
            figure="checkpoint_cost",
            workload=f"fit/{name}",
            system="fit_ckpt",
            saves_in_window=saves,
            every=half(steps),
            ms_per_checkpoint=rows["fit_ckpt"]["checkpoint_ms"],
        )
    return rows


def parse_args(argv):
    p = common.parser(__doc__.splitlines()[0], SYSTEMS, rounds=4)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {WORKLOADS}")
    args = common.parse(p, argv, SYSTEMS)
    args.workloads = common.subset(p, "--workloads", args.workloads, WORKLOADS)
    args.rounds = args.rounds or (1 if args.quick else 4)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    malloc = common.start(args)
    common.emit(
        figure="setup",
        workload="fit",
        **common.machine(args, malloc),
        log_every=LOG_EVERY,
        warm_steps=WARM_STEPS,
        workloads=args.workloads,
    )
    common.warm_jax()
    root = tempfile.mkdtemp(prefix="funcnet-bench-fit-")
    try:
        tables = {name: bench_workload(name, args, root) for name in args.workloads}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for name, rows in tables.items():
        common.table(
            f"fit/{name}: steps/s, median of {args.rounds} rounds ({next(iter(rows.values()))['steps_per_round']} "
            "steps each)",
            ["system", "steps/s", "vs bare", "ms/checkpoint"],
            [[n, r["value"], r["ratio"], r.get("checkpoint_ms")] for n, r in rows.items()],
        )
    print(f"malloc: {malloc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
