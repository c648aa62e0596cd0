"""Tree-LSTM training throughput: funcnet's level scan against its node scan and PyTorch, in one process.

    pip install -e '.[bench]'
    python experiments/bench/treelstm.py              # ~10 rounds on SST train batches
    python experiments/bench/treelstm.py --quick      # ~20 s (no funcnet_node), noisy
    python experiments/bench/treelstm.py --systems funcnet_level,torch_level

Workload: binary Tree-LSTM (embedding 300, hidden 150), a 5-class classifier on every node, summed
cross-entropy divided by the trees of the batch, one Adagrad (lr 0.05) update per batch of 25 trees of
``../shared/data/sst/train.txt`` (the synthetic sentiment language when that file is absent). Figures are
TRAINING trees/second: forward, backward and update.

Systems:
  funcnet_level       the experiment's model (``funcnet.experiments.tree_sentiment.sentiment_model``: fn.embed ->
                      fn.tree(fn.binary_tree_lstm_cell) -> fn.dense) and the engine's train step
                      (``make_train_step``, what ``fit`` runs) over ``schedule(..., buckets=SST_BUCKETS)``;
                      Adagrad from a config with ``sparse_rows``: a row-sparse embedding update (exact for Adagrad).
  funcnet_level_dense the same with the dense embedding update (full-table gradient and Adagrad).
  funcnet_node        fn.node_scan over ``postorder``, padded to multiples of 256 nodes; a hand-jitted step.
                      The oracle, ~100x slower than the level scan: it runs the first quarter of each round's
                      batches (its trees/s is its own batches'; it took over half of the script's time).
  torch_per_node      Python recursion over nodes, nn.Embedding, nn.Linear gates, torch.optim.Adagrad.
  torch_level         all nodes of one height across the batch in one cell call, index_select gathers.
  torch_level_sparse  the same with nn.Embedding(sparse=True) (Adagrad's sparse update).
  funcnet_level_bf16  funcnet_level with mixed precision: the Tree-LSTM's matmuls on bfloat16 operands with
                      float32 products (``model.compute_dtype = "bfloat16"``, ``funcnet.precision``); params,
                      states, gradients and the update stay float32.
  torch_level_sparse_bf16  torch_level_sparse under ``torch.autocast("cpu", dtype=torch.bfloat16)``, PyTorch's
                      mixed precision: the same rounding of the matmul operands, for a fair comparison.

Method: every system is warmed up (all its shapes compiled) before timing; then each round runs every
system on the same batches, in an order rotated by one each round; a JAX segment that follows a
PyTorch one starts with ~50 ms of untimed steps (PyTorch's OpenMP threads spin for a while after
their work). A figure is the median over rounds of trees/s, and the ratio is the median over rounds
of the per-round ratio to ``torch_level``. Host-side batch preparation (scheduling) is done ahead
for every system, as a prefetching input pipeline would; its cost is reported separately.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from _common import cores, default_systems, emit, subset, target, tune_malloc  # beside this script

SYSTEMS = (
    "funcnet_level",
    "funcnet_level_dense",
    "funcnet_node",
    "torch_per_node",
    "torch_level",
    "torch_level_sparse",
    "funcnet_level_bf16",
    "torch_level_sparse_bf16",
)
QUICK_COUNTED = 8  # --quick counts compilations over this many batches, not the whole epoch
QUICK_SKIPS = ("funcnet_node",)  # --quick leaves out the node-scan oracle (no target; it compiles for ~7 s)
SPARSE_SYSTEMS = ("funcnet_level", "torch_level_sparse", "funcnet_level_bf16", "torch_level_sparse_bf16")
EMBED, HIDDEN, CLASSES, BATCH, LEARNING_RATE, WIDTH = 300, 150, 5, 25, 0.05, 24
SST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sst" / "train.txt"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batches-per-round", type=int, default=8, help="batches each system runs per round")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"2 rounds of 2 batches, compilations counted over the first {QUICK_COUNTED} batches, no funcnet_node "
        "unless --systems names it: ~20 s",
    )
    parser.add_argument("--systems", default=None, help=f"comma-separated subset of {SYSTEMS} (default: all)")
    parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unroll", type=int, default=1, help="tree scan steps per loop iteration (fn.tree unroll)")
    args = parser.parse_args(argv)
    args.systems = subset(parser, "--systems", default_systems(args.systems, SYSTEMS, args.quick, QUICK_SKIPS), SYSTEMS)
    if args.quick:
        args.rounds, args.batches_per_round = 2, 2
    return args


def load_trees(seed: int):
    from funcnet.parse_trees import parse_tree, read_trees

    if SST.exists():
        return read_trees(SST), f"SST train ({SST.resolve()})"
    from funcnet.datasets import sentiment_language

    print(f"NOTE: {SST} is absent; using funcnet.datasets.sentiment_language trees instead", flush=True)
    return [parse_tree(s) for s in sentiment_language(8544, seed=seed)], "synthetic sentiment language (SST absent)"


# ---------------------------------------------------------------- funcnet systems


def funcnet_level_system(vocab_size: int, seed: int, sparse: bool, unroll: int, example, compute_dtype: str = ""):
    """``(step, state, traces)``: the experiment's model and the engine's jitted train step (what ``fit`` runs).

    ``sentiment_model`` (fn.embed -> fn.tree(fn.binary_tree_lstm_cell) -> fn.dense, no dropout) over one group
    of trees, ``make_train_step`` on one device, Adagrad from a config; with ``sparse`` the config sets
    ``sparse_rows`` so the embedding table is updated row-sparsely (exact for Adagrad).
    """
    import jax
    import optax

    from funcnet.config.optimizer import make_optimizer
    from funcnet.experiments.tree_sentiment import sentiment_model
    from funcnet.train.state import create_train_state, data_mesh
    from funcnet.train.step import make_train_step
    from funcnet.train.tree_batches import FIELDS

    traces = [0]

    def loss_fn(logits, batch):  # per tree [G, T]: the sum of its nodes' cross-entropies (the engine averages)
        traces[0] += 1  # runs once per trace
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]) * batch["label_mask"]
        trees = batch["roots"].shape[-1]
        return jax.vmap(lambda n, t: jax.ops.segment_sum(n, t, num_segments=trees))(nll, batch["node_tree"])

    config = {"type": "adagrad", "learning_rate": LEARNING_RATE}
    if sparse:
        config["sparse_rows"] = {"embed/embedding": "leaf_tokens"}
    optimizer = make_optimizer(config)
    model = sentiment_model(vocab_size, EMBED, HIDDEN, dropout=0.0, unroll=unroll, compute_dtype=compute_dtype)
    mesh = data_mesh(jax.devices()[:1])
    state = create_train_state(
        model, optimizer.transform, jax.random.key(seed), *[example[f] for f in FIELDS], mesh=mesh
    )
    step = make_train_step(
        model, loss_fn, optimizer.transform, mesh=mesh, inputs=FIELDS, sparse_rows=optimizer.sparse_rows
    )
    return step, state, traces


def funcnet_node_system(vocab_size: int, seed: int):
    """``(step, state)`` for the node-scan oracle: a hand-jitted step (the oracle is not a training path)."""
    import jax
    import jax.numpy as jnp
    import optax

    import funcnet as fn

    embed, head = fn.embed(vocab_size, EMBED), fn.dense(CLASSES)
    scan = fn.node_scan(fn.binary_tree_lstm_cell(HIDDEN))
    k_embed, k_tree, k_head = jax.random.split(jax.random.key(seed), 3)
    params = {
        "embed": embed.init(k_embed, jnp.zeros((1,), jnp.int32))[0],
        "tree": scan.init(k_tree, jax.ShapeDtypeStruct((1, EMBED), jnp.float32))[0],
        "head": head.init(k_head, jax.ShapeDtypeStruct((1, HIDDEN), jnp.float32))[0],
    }
    optimizer = optax.adagrad(LEARNING_RATE)

    def loss_fn(params, batch):
        x, _ = embed.apply(params["embed"], {}, batch.tokens)
        states, _ = scan.apply(params["tree"], {}, x, batch)
        logits, _ = head.apply(params["head"], {}, states.h[:-1])  # drop the dummy row
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch.labels)
        return (nll * batch.label_mask).sum() / batch.tree_mask.sum()

    @partial(jax.jit, donate_argnums=0)
    def step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step, (params, optimizer.init(params))


def as_group(batch) -> dict:
    """A ``TreeBatch`` as the engine's batch: a dict of its fields with a group axis of 1, and ``mask``."""
    group = {name: value[None] for name, value in batch._asdict().items()}
    group["mask"] = group["tree_mask"]
    return group


def node_bucket(trees) -> int:
    """The node-scan length: the batch's node count rounded up to a multiple of 256."""
    from funcnet.parse_trees import num_nodes

    return -(-sum(num_nodes(t) for t in trees) // 256) * 256


# ---------------------------------------------------------------- timing


def shape_of(batches, i) -> tuple:
    """The shapes of batch ``i``'s arrays: one compiled program per distinct value."""
    batch = batches[i]
    return tuple(a.shape for a in (batch.values() if isinstance(batch, dict) else batch))


class Runner(NamedTuple):
    """A system: ``run(indices)`` trains on those batches and waits for the result."""

    name: str
    run: Callable[[list[int]], None]
    shape: Callable[[int], object]  # batch index -> its program (one compilation per distinct value)
    step: Any = None  # the jitted step of a JAX system (its cache size counts compilations); None for PyTorch


def jax_runner(name, step, state, batches, shape):
    import jax

    box = [state]
    jitted = getattr(step, "jitted", step)  # make_train_step's jitted function (its cache counts compilations)

    def run(indices):
        loss = None
        for i in indices:
            box[0], loss = step(box[0], batches[i])
        jax.block_until_ready(loss)

    return Runner(name, run, shape, jitted)


def torch_runner(name, step, batches):
    def run(indices):
        for i in indices:
            step(batches[i])

    return Runner(name, run, lambda i: 0)


def round_indices(r: int, per_round: int, num_batches: int) -> list[int]:
    """The epoch batches every system trains on in round ``r``."""
    return [(r * per_round + i) % num_batches for i in range(per_round)]


def settle(runner: Runner, indices, seconds=0.05):
    """Untimed steps for at least ``seconds`` (at least one)."""
    start = time.perf_counter()
    while True:
        runner.run(indices[:1])
        if time.perf_counter() - start >= seconds:
            return


SHARE_OF_ROUND = {"funcnet_node": 4}  # system -> runs 1/N of each round's batches (at least one)


def measure(runners, rounds, per_round, num_batches):
    """Interleaved rounds, order rotated each round; returns trees/s per system per round and the
    compilations each JAX system met inside its timed segments (0 when warm-up saw every shape)."""
    results = {r.name: [] for r in runners}
    timed_compiles = {r.name: 0 for r in runners}
    for r in range(rounds):
        order = runners[r % len(runners) :] + runners[: r % len(runners)]
        round_batches = round_indices(r, per_round, num_batches)
        previous_is_jax = True
        for runner in order:
            indices = round_batches[: max(1, len(round_batches) // SHARE_OF_ROUND.get(runner.name, 1))]
            is_jax = runner.step is not None
            if is_jax and not previous_is_jax:
                settle(runner, indices)
            compiled = runner.step._cache_size() if is_jax else 0
            start = time.perf_counter()
            runner.run(indices)
            seconds = time.perf_counter() - start
            if is_jax and runner.step._cache_size() != compiled:
                timed_compiles[runner.name] += runner.step._cache_size() - compiled
                print(f"WARNING: {runner.name} compiled inside a timed segment (round {r})", flush=True)
            results[runner.name].append(BATCH * len(indices) / seconds)  # every epoch batch holds BATCH trees
            previous_is_jax = is_jax
        line = ", ".join(f"{name} {values[-1]:,.0f}" for name, values in results.items())
        print(f"round {r + 1}/{rounds}: trees/s {line}", flush=True)
    return results, timed_compiles


def prepare(make, indices) -> tuple[dict, float]:
    """``{i: make(i)}`` for the indices, and the median milliseconds per batch (host-side preparation)."""
    batches, times = {}, []
    for i in indices:
        start = time.perf_counter()
        batches[i] = make(i)
        times.append((time.perf_counter() - start) * 1e3)
    return batches, round(statistics.median(times), 3)


def schedule_epoch(epoch, vocab, buckets):
    """Schedules every batch of the epoch for the level scan; reports the time per batch and the real slots."""
    from funcnet.tree_schedule import schedule, slot_stats

    scheduled, ms = prepare(
        lambda i: schedule(epoch[i], vocab, width=WIDTH, num_trees=BATCH, buckets=buckets), range(len(epoch))
    )
    stats = [slot_stats(b) for b in scheduled.values()]
    total = {k: sum(s[k] for s in stats) for k in ("leaves", "leaf_slots", "internal", "internal_slots")}
    slots = total["leaf_slots"] + total["internal_slots"]
    emit(
        figure="host_scheduling",
        system="funcnet_level",
        ms_per_batch_median=ms,
        batches=len(epoch),
        real_slot_fraction=round((total["leaves"] + total["internal"]) / slots, 4),
        internal_real_fraction=round(total["internal"] / total["internal_slots"], 4),
        leaf_real_fraction=round(total["leaves"] / total["leaf_slots"], 4),
        shapes=len({(b.children.shape, b.leaf_tokens.shape) for b in scheduled.values()}),
    )
    return scheduled


def count_compilations(name, step, state, batches, traces, buckets, limit=None):
    """Trains one whole epoch, or its first ``limit`` batches (untimed): the jitted step compiles once
    per bucket shape it meets."""
    import jax

    start, loss, counted = time.perf_counter(), None, min(len(batches), limit or len(batches))
    for i in range(counted):
        state, loss = step(state, batches[i])
    jax.block_until_ready(loss)
    emit(
        figure="compilations",
        system=name,
        epoch_batches=len(batches),
        batches=counted,
        shapes_met=len({shape_of(batches, i) for i in range(counted)}),
        compilations=step.jitted._cache_size(),
        traces=traces[0],
        buckets=len(buckets.leaves) * len(buckets.steps),
        seconds_incl_compiles=round(time.perf_counter() - start, 2),
    )
    return state


def make_runner(name, epoch, vocab, buckets, timed, seed, scheduled, unroll, counted=None):
    import jax

    if name.startswith("funcnet_level"):
        batches = {i: jax.device_put(as_group(b)) for i, b in scheduled.items()}
        sparse, mixed = name != "funcnet_level_dense", "bfloat16" if name.endswith("bf16") else ""
        step, state, traces = funcnet_level_system(vocab.size, seed, sparse, unroll, batches[0], mixed)
        if name == "funcnet_level":  # the dense variant compiles the same programs
            state = count_compilations(name, step, state, batches, traces, buckets, counted)
        return jax_runner(name, step, state, batches, partial(shape_of, batches))
    if name == "funcnet_node":
        from funcnet.tree_schedule import postorder

        step, state = funcnet_node_system(vocab.size, seed)
        batches, ms = prepare(
            lambda i: jax.device_put(postorder(epoch[i], vocab, num_nodes=node_bucket(epoch[i]), num_trees=BATCH)),
            timed,
        )
        emit(
            figure="host_scheduling",
            system=name,
            ms_per_batch_median=ms,
            node_buckets=sorted({int(b.tokens.shape[0]) for b in batches.values()}),
        )
        return jax_runner(name, step, state, batches, partial(shape_of, batches))
    import _tree_torch as tt  # beside this script

    warnings.filterwarnings("ignore", message="Sparse invariant checks")  # from torch's sparse Adagrad update
    cell = tt.TreeLSTMCell(vocab.size, EMBED, HIDDEN, CLASSES, sparse=name.startswith("torch_level_sparse"))
    if name == "torch_per_node":
        model = tt.PerNode(cell)
        batches, ms = prepare(lambda i: tt.per_node_batch([tt.per_node_tree(t, vocab) for t in epoch[i]]), timed)
    else:
        model = tt.LevelBatched(cell)
        batches, ms = prepare(lambda i: tt.level_batch(epoch[i], vocab), timed)
    emit(figure="host_scheduling", system=name, ms_per_batch_median=ms)
    return torch_runner(name, tt.make_step(model, LEARNING_RATE, autocast=name.endswith("bf16")), batches)


def warm_up(runner, timed) -> None:
    """Untimed: one step on each shape the timed batches have (every compilation happens here), then two more."""
    start, first_of_shape = time.perf_counter(), {}
    for i in timed:
        first_of_shape.setdefault(runner.shape(i), i)
    runner.run(list(first_of_shape.values()))
    runner.run(timed[:2])
    seconds = time.perf_counter() - start
    print(f"warm-up {runner.name}: {seconds:.1f} s, {len(first_of_shape)} shape(s) in the timed batches", flush=True)


def report(results, timed_compiles, rounds, malloc) -> None:
    rows = []
    for name, values in results.items():
        ratio = None
        if "torch_level" in results:
            ratio = round(statistics.median(a / b for a, b in zip(values, results["torch_level"], strict=True)), 3)
        rows.append(
            {
                "system": name,
                "trees_per_second": round(statistics.median(values), 1),
                "ratio_to_torch_level": ratio,
                "embedding_update": "sparse" if name in SPARSE_SYSTEMS else "dense",
                "rounds": [round(v, 1) for v in values],
                "compiles_in_timed": timed_compiles[name],
            }
        )
        emit(**rows[-1])
    print(f"\n{'system':<20} {'trees/s':>10} {'vs torch_level':>15}   (training; median of {rounds} rounds)")
    for row in rows:
        ratio = "-" if row["ratio_to_torch_level"] is None else f"{row['ratio_to_torch_level']:.2f}x"
        print(f"{row['system']:<20} {row['trees_per_second']:>10,.1f} {ratio:>15}")
    print(f"malloc: {malloc}; host preparation done ahead (reported above)")
    targets = {"torch_per_node": 30.0, "torch_level": 2.5, "torch_level_sparse": 1.5}  # issue 5's
    pairs = [("funcnet_level", other, threshold) for other, threshold in targets.items()]
    pairs += [("funcnet_level_bf16", other, threshold) for other, threshold in targets.items()]
    pairs += [("funcnet_level_bf16", "torch_level_sparse_bf16", 1.5)]  # both in mixed precision
    for mine, other, threshold in pairs:
        if mine in results and other in results:
            value = round(statistics.median(a / b for a, b in zip(results[mine], results[other], strict=True)), 3)
            target("treelstm", f"{mine}/{other} trees/s", value, threshold)
            print(f"{mine} / {other}: {value:.2f}x (target >= {threshold}x)")


def main(argv=None) -> int:
    args = parse_args(argv)
    malloc = tune_malloc(args.malloc)  # before jax and torch allocate anything
    import jax
    import numpy as np

    from funcnet.experiments.tree_sentiment import SST_BUCKETS
    from funcnet.parse_trees import Vocabulary
    from funcnet.train.tree_batches import auto_buckets

    trees, source = load_trees(args.seed)
    vocab = Vocabulary.from_trees(trees)
    order = np.random.default_rng(args.seed).permutation(len(trees))
    epoch = [[trees[i] for i in order[s : s + BATCH]] for s in range(0, len(order) - BATCH + 1, BATCH)]
    per_round = args.batches_per_round
    timed = sorted({i for r in range(args.rounds) for i in round_indices(r, per_round, len(epoch))})
    buckets = SST_BUCKETS if SST.exists() else auto_buckets(trees, vocab, BATCH, WIDTH, args.seed)
    setup = {
        "figure": "setup",
        "data": source,
        "trees": len(trees),
        "vocabulary": vocab.size,
        "batch": BATCH,
        "epoch_batches": len(epoch),
        "timed_batches": len(timed),
        "rounds": args.rounds,
        "batches_per_round": per_round,
        "width": WIDTH,
        "buckets": buckets._asdict(),
        "malloc": malloc,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "unroll": args.unroll,
    }
    if any(name.startswith("torch") for name in args.systems):
        import torch

        torch.set_num_threads(cores())
        torch.manual_seed(args.seed)
        setup.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    emit(**setup)

    scheduled = schedule_epoch(epoch, vocab, buckets)
    counted = QUICK_COUNTED if args.quick else None
    runners = [
        make_runner(name, epoch, vocab, buckets, timed, args.seed, scheduled, args.unroll, counted)
        for name in args.systems
    ]
    for runner in runners:
        warm_up(runner, timed)
    results, timed_compiles = measure(runners, args.rounds, per_round, len(epoch))
    report(results, timed_compiles, args.rounds, malloc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
