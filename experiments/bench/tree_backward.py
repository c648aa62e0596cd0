"""fn.tree's hand-written backward pass against autodiff of its scan, on SST-shaped batches, in one process.

    python experiments/bench/tree_backward.py             # 9 rounds of 8 batches
    python experiments/bench/tree_backward.py --quick

Times ``jax.grad`` (params and leaf inputs) of ``sum(tree(binary_tree_lstm_cell(150)).h ** 2)`` over leaf
inputs of 300 features, for ``tree(cell, custom_vjp=True)`` and ``custom_vjp=False``, and the forward pass
alone; batches of 25 SST train trees (the synthetic sentiment language when SST is absent) scheduled with
width 24 and ``SST_BUCKETS``, all of the most common bucket shape. Rounds alternate the systems; the
figures are medians of milliseconds per batch and of the per-round ratio to autodiff.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _common import emit, tune_malloc  # beside this script
from treelstm import BATCH, EMBED, HIDDEN, WIDTH, load_trees  # beside this script


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--unroll", type=int, default=1)
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    malloc = tune_malloc("tuned")
    import jax
    import jax.numpy as jnp
    import numpy as np

    import funcnet as fn
    from funcnet.experiments.tree_sentiment import SST_BUCKETS
    from funcnet.parse_trees import Vocabulary
    from funcnet.tree_schedule import schedule

    trees, source = load_trees(0)
    vocab = Vocabulary.from_trees(trees)
    order = np.random.default_rng(0).permutation(len(trees))
    scheduled = [
        schedule([trees[i] for i in order[s : s + BATCH]], vocab, width=WIDTH, num_trees=BATCH, buckets=SST_BUCKETS)
        for s in range(0, BATCH * 40, BATCH)
    ]
    shapes = [(b.leaf_tokens.shape, b.children.shape) for b in scheduled]
    common = max(set(shapes), key=shapes.count)
    batches = [jax.device_put(b._asdict()) for b, s in zip(scheduled, shapes, strict=True) if s == common][:8]
    cell = fn.binary_tree_lstm_cell(HIDDEN)
    x = jax.random.normal(jax.random.key(0), (common[0][0], EMBED))
    params, _ = fn.tree(cell).init(jax.random.key(1), x)

    def loss(custom_vjp):
        model = fn.tree(cell, unroll=args.unroll, custom_vjp=custom_vjp)
        return lambda p, x, b: jnp.sum(model.apply(p, {}, x, b)[0].h ** 2)

    systems = {
        "forward": jax.jit(loss(True)),
        "grad_autodiff": jax.jit(jax.grad(loss(False), argnums=(0, 1))),
        "grad_custom_vjp": jax.jit(jax.grad(loss(True), argnums=(0, 1))),
    }
    for f in systems.values():
        jax.block_until_ready(f(params, x, batches[0]))
    ms = {name: [] for name in systems}
    for _ in range(rounds):
        for name, f in systems.items():
            start = time.perf_counter()
            for b in batches:
                out = f(params, x, b)
            jax.block_until_ready(out)
            ms[name].append((time.perf_counter() - start) / len(batches) * 1e3)
    emit(figure="setup", data=source, shape=[list(s) for s in common], batches=len(batches), rounds=rounds,
         unroll=args.unroll, malloc=malloc, jax=jax.__version__)  # fmt: skip
    for name, values in ms.items():
        ratio = statistics.median(a / b for a, b in zip(values, ms["grad_autodiff"], strict=True))
        emit(system=name, ms_per_batch=round(statistics.median(values), 2), ratio_to_autodiff=round(ratio, 3))
        print(f"{name:<16} {statistics.median(values):8.2f} ms/batch {ratio:6.2f}x autodiff's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
