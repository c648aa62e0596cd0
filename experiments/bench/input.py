"""Input pipeline overlap: with prefetch, an epoch should take max(input, compute), not their sum.

    python experiments/bench/input.py                           # 200 s measured at load 4.5 on 2 cores
    python experiments/bench/input.py --quick                   # ~22 s (one round, no jax_logged), noisy
    python experiments/bench/input.py --sources sleep --systems funcnet,jax --workload mlp

Compute: one training step of the charlstm workload (charlstm.py; ``--workload mlp`` for mlp.py's), t_c
seconds, measured after warm-up. Input: a map-style dataset whose every batch costs about t_c
(``--input-cost`` x t_c) to produce:
  sleep   ``time.sleep`` (I/O-like: it holds neither the GIL nor a core)
  parse   the batch is parsed from CSV text in pure Python, ``int``/``float`` per value, the text parsed
          as many times as it takes to cost t_c (GIL-holding CPU work, like a Python tokenizer)
An epoch is E batches (``--steps``) of ``funcnet.train.data.Batches`` over that dataset.

Systems:
  jax          the raw JAX step (mlp.py / charlstm.py) in a plain loop over the batches, reading nothing
               back until the end: JAX's asynchronous dispatch returns at once, so the next batch is
               produced while the queued steps run (an overlap for free, until something reads a result)
  jax_logged   the same loop reading the loss back after every step (a loop that prints or logs it):
               input and compute take turns, the sum
  funcnet      funcnet's step (make_train_step) over ``funcnet.train.prefetch.prefetch(batches, size=2,
               transform=shard_batch)``: the next batches are produced (and put on the device) in a
               background thread while the step runs; a fresh prefetcher every epoch (its fill counts)
  funcnet_fit  ``funcnet.train.loop.fit`` on the same Batches (prefetch 2, log_every 50, progress bar to
               /dev/null), timed by a callback over E steady-state steps after E warm steps (the first
               compiles); batches the prefetch thread made before the window (during the compile) would
               come for free when input is the bottleneck, so the epoch time is E steps at the slower
               of the window's step rate and the source's rate in the window (P batches made in it):
               window * E / min(E, P)
References measured in the same rounds: ``input`` (iterate the epoch, no training) and ``compute_jax`` /
``compute_funcnet`` (E steps over batches already on the device). Figure: epoch seconds and, per round,
epoch / max(input, compute of that system's step); target <= 1.15 for funcnet and funcnet_fit. The
naive loop should be near (input + compute) / max. With the parse source, ``compute_funcnet_pinned`` is
also measured: funcnet's step with all of the process's threads on one core fewer (on 2 cores: one), the
cores a GIL-holding parser leaves the step; epoch / max(input, that) is the ratio to what threads can
reach at best, reported beside the target. Method: see _common.py.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from functools import partial
from typing import Any, NamedTuple

import _common as common
import _peers as peers

SYSTEMS = ("jax", "jax_logged", "funcnet", "funcnet_fit")
SOURCES = ("sleep", "parse")
PINNED = "compute_funcnet_pinned"  # the parse source's extra reference: funcnet's step on one core fewer
WARM_STEPS = 5


class SlowDataset:
    """Rows of ``arrays`` (a dict of NumPy arrays), each batch costing about ``seconds`` to produce.

    ``kind="sleep"``: sleeps, then slices the arrays. ``kind="parse"``: parses the batch's rows from
    their CSV text (``reps`` times; the last parse is returned).
    """

    def __init__(self, arrays: dict, kind: str, seconds: float):
        import numpy as np

        self.arrays, self.kind, self.seconds, self.reps = arrays, kind, seconds, 1
        self.produced = 0  # batches made so far (read by funcnet_fit's window)
        self.widths = {k: int(np.prod(a.shape[1:], dtype=int)) for k, a in arrays.items()}
        if kind == "parse":
            flat = np.concatenate([a.reshape(len(a), -1) for a in arrays.values()], axis=1)
            self.lines = [",".join(map(str, row)) for row in flat.tolist()]
            self.convert = int if all(a.dtype.kind in "iu" for a in arrays.values()) else float

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def calibrate(self, batch_size: int) -> int:
        """For ``parse``: how many parses of a batch cost ``seconds`` (at least one)."""
        import numpy as np

        if self.kind != "parse":
            return 1
        indices = np.arange(batch_size)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            self._parse(indices)
            times.append(time.perf_counter() - start)
        self.reps = max(1, round(self.seconds / common.median(times)))
        return self.reps

    def _parse(self, indices):
        import numpy as np

        rows = np.array([[self.convert(v) for v in self.lines[i].split(",")] for i in indices.tolist()])
        out, start = {}, 0
        for name, a in self.arrays.items():
            out[name] = rows[:, start : start + self.widths[name]].astype(a.dtype).reshape((len(indices), *a.shape[1:]))
            start += self.widths[name]
        return out

    def __getitem__(self, indices):
        if self.kind == "sleep":
            time.sleep(self.seconds)
            batch = {name: a[indices] for name, a in self.arrays.items()}
        else:
            for _ in range(self.reps):
                batch = self._parse(indices)
        self.produced += 1
        return batch


class Bench(NamedTuple):
    """One workload's steps, ready to run: funcnet's and the raw JAX one, on the same device."""

    model: Any  # funcnet's model (mlp.py / charlstm.py)
    loss_fn: Any  # funcnet's per-example loss
    optimizer: Any  # optax Adam of the workload
    arrays: dict  # {"x": [E * B, ...], "y": [E * B, ...]}: the rows of one epoch
    batch_size: int
    mesh: Any  # funcnet's one-device mesh
    jax_step: Any  # raw JAX ``(state, (x, y)) -> (state, loss)``
    funcnet_step: Any  # ``make_train_step``'s step
    initial: dict  # {"jax": state, "funcnet": TrainState}: never donated; every loop starts from a copy
    seed: int


def build(args) -> tuple[dict[str, common.System], Bench, float]:
    """The compute references (compiled, warmed up), the Bench, and t_c (seconds per funcnet step)."""
    import jax.numpy as jnp
    import numpy as np
    import optax

    from funcnet.train.data import shard_batch
    from funcnet.train.state import batch_sharded

    if args.workload == "mlp":
        import mlp as w

        (x, y), weights = w.make_data(args.seed)
        batches, batch_size = [(x, y)], w.N
    else:
        import charlstm as w

        batches, weights = w.make_data(args.seed)
        batch_size = w.BATCH
    epoch = [batches[i % len(batches)] for i in range(args.steps)]
    arrays = {"x": np.concatenate([b[0] for b in epoch]), "y": np.concatenate([b[1] for b in epoch])}
    model, optimizer = w.funcnet_model(), optax.adam(w.LEARNING_RATE)
    jstep, jstate = w.jax_step(weights)
    fstep, fstate, mesh, _ = peers.funcnet_train(
        model, w.funcnet_loss, optimizer, arrays["x"][:batch_size], w.funcnet_params(weights), args.seed
    )
    ones = np.ones(batch_size, np.float32)
    device = [tuple(jnp.asarray(a) for a in b) for b in batches]
    fdevice = [shard_batch({"x": x, "y": y, "mask": ones}, batch_sharded(mesh)) for x, y in batches]
    initial = {"jax": copy(jstate), "funcnet": copy(fstate)}
    refs = {
        "compute_jax": peers.jax_system("compute_jax", jstep, jstate, device, cache_size=jstep._cache_size),
        "compute_funcnet": peers.jax_system(
            "compute_funcnet", fstep, fstate, fdevice, cache_size=fstep.jitted._cache_size, loss_of=lambda m: m["loss"]
        ),
    }
    for system in refs.values():
        system.run(3)
    probe = time.perf_counter()
    refs["compute_funcnet"].run(args.steps)
    t_c = (time.perf_counter() - probe) / args.steps
    bench = Bench(model, w.funcnet_loss, optimizer, arrays, batch_size, mesh, jstep, fstep, initial, args.seed)
    return refs, bench, t_c


def pinned(system: common.System) -> common.System:
    """``system`` with every thread of this process on one core fewer while it runs.

    A parsing source holds a core (and the GIL) for the whole step, so the step runs on the cores left:
    max(input, this) is the best epoch time threads can reach, against max(input, compute) on all cores.
    """

    def set_cores(cores) -> None:
        for task in os.listdir("/proc/self/task"):  # every thread: XLA's pool, the Python threads
            try:
                os.sched_setaffinity(int(task), cores)
            except OSError:  # a thread that ended meanwhile
                pass

    def run(n):
        cores = os.sched_getaffinity(0)
        set_cores(set(sorted(cores)[:-1]))
        try:
            return system.run(n)
        finally:
            set_cores(cores)

    return common.System(PINNED, "jax", run, system.loss, system.cache_size)


def copy(tree):
    """A copy of every array of ``tree``, with the same sharding."""
    import jax

    return jax.tree.map(lambda a: jax.device_put(a.copy(), a.sharding), tree)


def systems_for(source, bench: Bench, args, root, refs):
    """The timed systems for one source (a SlowDataset): references first, then the chosen systems."""
    import jax

    from funcnet.train import TrainerConfig
    from funcnet.train.data import Batches, shard_batch
    from funcnet.train.loop import fit
    from funcnet.train.prefetch import prefetch
    from funcnet.train.state import batch_sharded

    b = bench
    batches = Batches(source, b.batch_size, seed=b.seed)
    sharding = batch_sharded(b.mesh)
    out = {"input": None, **refs}
    counter = {"epoch": 0}

    def next_epoch() -> int:
        counter["epoch"] += 1
        return counter["epoch"]

    def run_input(n):
        del n
        for _ in batches.epoch(next_epoch()):
            pass

    out["input"] = common.System("input", "host", run_input)
    if source.kind == "parse" and len(os.sched_getaffinity(0)) > 1:
        out[PINNED] = pinned(refs["compute_funcnet"])

    for name in ("jax", "jax_logged"):
        if name in args.systems:
            out[name] = jax_loop(name, b.jax_step, copy(b.initial["jax"]), batches, next_epoch, name == "jax_logged")

    if "funcnet" in args.systems:
        fbox = {"state": copy(b.initial["funcnet"])}

        def run_funcnet(n):
            del n
            state, metrics = fbox["state"], None
            with prefetch(batches.epoch(next_epoch()), size=2, transform=partial(shard_batch, sharding=sharding)) as it:
                for batch in it:
                    state, metrics = b.funcnet_step(state, batch)
            jax.block_until_ready((state, metrics))
            fbox["state"] = state

        size = b.funcnet_step.jitted._cache_size
        out["funcnet"] = common.System("funcnet", "jax", run_funcnet, cache_size=size, settle=False)

    if "funcnet_fit" in args.systems:
        import fit as fit_bench

        def run_fit(n) -> common.Segment:
            warm = max(WARM_STEPS, n)
            window = fit_bench.Window(warm, warm + n, counter=lambda: source.produced)
            trainer = TrainerConfig(
                max_steps=warm + n, batch_size=b.batch_size, log_every=50, prefetch=2, progress=True, seed=b.seed
            )
            run_dir = tempfile.mkdtemp(prefix="fit-", dir=root)
            with common.quiet():
                fit(
                    b.model,
                    b.loss_fn,
                    b.optimizer,
                    batches,
                    run_dir=run_dir,
                    trainer=trainer,
                    callbacks=[window.hook],
                    mesh=b.mesh,
                )
            shutil.rmtree(run_dir, ignore_errors=True)
            # Batches prefetched earlier (during the compile) are consumed for free when input is the
            # bottleneck: the epoch time is n steps at the slower of the step rate and the source's rate.
            seconds, compiles = window.segment()
            return common.Segment(seconds * n / max(1, min(n, window.counted())), compiles)

        out["funcnet_fit"] = common.System("funcnet_fit", "jax", run_fit, settle=False)
    for name in ("jax", "jax_logged", "funcnet"):
        if name in out:
            out[name].run(args.steps)  # warm-up: one untimed epoch
    return out


def jax_loop(name, step, state, batches, next_epoch, logged: bool) -> common.System:
    """A plain loop over the batches; ``logged`` reads the loss back after every step (as a loop printing it)."""
    import jax

    box = {"state": state}

    def run(n):
        del n
        state, loss = box["state"], None
        for batch in batches.epoch(next_epoch()):
            state, loss = step(state, (batch["x"], batch["y"]))
            if logged:
                float(loss)
        jax.block_until_ready((state, loss))
        box["state"] = state

    return common.System(name, "jax", run, cache_size=step._cache_size, settle=False)


def report(source_name, results, steps, args) -> dict:
    """Epoch seconds and epoch / max(input, compute) per system; targets."""
    rows = {}
    compute_of = {
        "jax": "compute_jax",
        "jax_logged": "compute_jax",
        "funcnet": "compute_funcnet",
        "funcnet_fit": "compute_funcnet",
    }
    for name, segments in results.items():
        seconds = [s.seconds for s in segments]
        row = {
            "figure": "epoch",
            "workload": f"input/{args.workload}/{source_name}",
            "system": name,
            "epoch_seconds": round(common.median(seconds), 4),
            "batches": steps,
            "rounds": [round(s, 4) for s in seconds],
            "compiles_in_timed": sum(s.compiles for s in segments),
        }
        if name in compute_of:
            bound = [
                max(i.seconds, c.seconds) for i, c in zip(results["input"], results[compute_of[name]], strict=True)
            ]
            total = [i.seconds + c.seconds for i, c in zip(results["input"], results[compute_of[name]], strict=True)]
            row["vs_max_input_compute"] = round(common.ratio(seconds, bound), 3)
            row["vs_sum_input_compute"] = round(common.ratio(seconds, total), 3)
            if PINNED in results and compute_of[name] == "compute_funcnet":
                fewer = [max(i.seconds, c.seconds) for i, c in zip(results["input"], results[PINNED], strict=True)]
                row["vs_max_input_compute_one_core_fewer"] = round(common.ratio(seconds, fewer), 3)
        common.emit(**row)
        rows[name] = row
    for name in ("funcnet", "funcnet_fit"):
        if name in rows:
            common.target(
                row["workload"],
                f"{name} epoch / max(input, compute)",
                rows[name]["vs_max_input_compute"],
                1.15,
                higher_is_better=False,
            )
    return rows


def parse_args(argv):
    p = common.parser(__doc__.splitlines()[0], SYSTEMS, rounds=4, quick_skips=("jax_logged",))
    p.add_argument("--workload", choices=("charlstm", "mlp"), default="charlstm")
    p.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated subset of {SOURCES}")
    p.add_argument("--input-cost", type=float, default=1.0, help="input seconds per batch, in units of t_c")
    args = common.parse(p, argv, SYSTEMS)
    args.sources = common.subset(p, "--sources", args.sources, SOURCES)
    args.rounds = args.rounds or (1 if args.quick else 4)
    args.steps = args.steps or (8 if args.quick else 20)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    malloc = common.start(args)
    common.emit(
        figure="setup",
        workload=f"input/{args.workload}",
        **common.machine(args, malloc),
        batches_per_epoch=args.steps,
        input_cost=args.input_cost,
        sources=args.sources,
    )
    common.warm_jax()
    refs, bench, t_c = build(args)
    root = tempfile.mkdtemp(prefix="funcnet-bench-input-")
    tables = {}
    try:
        for source_name in args.sources:
            source = SlowDataset(bench.arrays, source_name, args.input_cost * t_c)
            reps = source.calibrate(bench.batch_size)
            common.emit(
                figure="input_source",
                workload=f"input/{args.workload}/{source_name}",
                source=source_name,
                compute_ms_per_step=round(1e3 * t_c, 3),
                input_ms_target=round(1e3 * source.seconds, 3),
                parse_reps=reps if source_name == "parse" else None,
            )
            systems = systems_for(source, bench, args, root, refs)
            results = common.measure(list(systems.values()), args.rounds, args.steps, unit="batches/s")
            tables[source_name] = report(source_name, results, args.steps, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for source_name, rows in tables.items():
        common.table(
            f"input/{args.workload}/{source_name}: epoch of {args.steps} batches, median of {args.rounds} rounds",
            ["system", "epoch s", "/ max(in, comp)", "/ (in + comp)", "/ max(in, comp on a core fewer)"],
            [
                [
                    n,
                    r["epoch_seconds"],
                    r.get("vs_max_input_compute"),
                    r.get("vs_sum_input_compute"),
                    r.get("vs_max_input_compute_one_core_fewer"),
                ]
                for n, r in rows.items()
            ],
        )
    print(f"malloc: {malloc}; compute t_c = {1e3 * t_c:.2f} ms per step (funcnet's step, before the rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
