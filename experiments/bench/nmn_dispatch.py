"""How a scheduled step runs its slots' modules: every module on every slot with a select, or one module type
per step with ``lax.switch`` on a scalar (typed list scheduling). Training questions/s of each, side by side.

    python experiments/bench/nmn_dispatch.py                 # 5 rounds of 20 batches of 64 questions
    python experiments/bench/nmn_dispatch.py --width 8       # narrower steps

Systems (the module network of ``python -m funcnet.experiments.nmn``, one Adam update per batch):
  select   ``funcnet.layers.nmn.layout_executor``: Hu's list schedule of ``funcnet.tree_schedule`` (any module
           in any slot); each step runs transform, and, or on all its slots and keeps each slot's own.
  switch   a typed list schedule (here): each step holds one module type, the type with the most ready
           nodes, deepest first; the step runs that module alone, ``lax.switch`` on the step's type.
Both are checked to give the same answers before timing. Figures: questions/s (median over rounds, the
order alternating), and the mean steps per batch of each schedule.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from funcnet.datasets.shapes import WORDS, shapes_questions
from funcnet.experiments import nmn_task
from funcnet.layers.nmn import Modules, grid_cells
from funcnet.layers.steps import scan_steps, zero_unless
from funcnet.layouts import LayoutVocab, body_tree
from funcnet.tree_schedule import _flatten  # the flattened forest both schedules start from


def typed_schedule(trees, vocab: LayoutVocab, width: int, leaves_to: int, steps_to: int) -> dict[str, np.ndarray]:
    """The batch as ``layout_batch`` lays it out, but every step holding one module type (``kind [S]``)."""
    kinds_of, _ = vocab.instance_table()
    flat = _flatten(trees, vocab.find, 2, "typed_schedule")
    n, n_leaves = len(flat.labels), len(flat.leaf_tokens)
    kind = kinds_of[np.asarray(flat.labels, np.int64)] if n else np.zeros(0, np.int64)
    internal = flat.kid_ref < 0
    parent = np.full(n, -1)
    parent[~flat.kid_ref[internal]] = flat.kid_parent[internal]
    pending = np.bincount(flat.kid_parent[internal], minlength=n)
    ready = [[] for _ in range(3)]
    for node in range(n):
        if not pending[node]:
            ready[kind[node]].append(node)
    step, slot, step_kind = np.zeros(n, np.int64), np.zeros(n, np.int64), []
    done = 0
    while done < n:
        k = max(range(3), key=lambda t: (len(ready[t]), max((flat.depth[v] for v in ready[t]), default=0)))
        ready[k].sort(key=lambda v: flat.depth[v])
        taken = [ready[k].pop() for _ in range(min(width, len(ready[k])))]
        for w, node in enumerate(taken):
            step[node], slot[node] = len(step_kind), w
        unlocked = []
        for node in taken:
            up = parent[node]
            if up >= 0:
                pending[up] -= 1
                if not pending[up]:
                    unlocked.append(up)
        for node in unlocked:
            ready[kind[node]].append(node)
        step_kind.append(k)
        done += len(taken)
    steps = -(-max(len(step_kind), 1) // steps_to) * steps_to
    leaves = -(-n_leaves // leaves_to) * leaves_to
    rows = leaves + steps * width + 1
    row = np.concatenate([np.arange(n_leaves), leaves + step * width + slot])
    ref = flat.kid_ref
    children = np.full((steps * width, 2), rows - 1, np.int32)
    children[(step * width + slot)[flat.kid_parent], flat.kid_pos] = row[np.where(ref >= 0, ref, n_leaves + ~ref)]
    internal_mask = np.zeros(steps * width, np.float32)
    internal_mask[step * width + slot] = 1
    labels = np.zeros(rows, np.int32)
    labels[leaves + step * width + slot] = flat.labels
    node_tree = np.zeros(rows, np.int32)
    node_tree[:n_leaves] = flat.leaf_tree
    roots = np.asarray(flat.roots, np.int64)
    leaf_tokens, leaf_mask = np.zeros(leaves, np.int32), np.zeros(leaves, np.float32)
    leaf_tokens[:n_leaves], leaf_mask[:n_leaves] = flat.leaf_tokens, 1
    return {
        "leaf_tokens": leaf_tokens, "leaf_mask": leaf_mask, "children": children.reshape(steps, width, 2),
        "internal_mask": internal_mask.reshape(steps, width), "labels": labels, "node_tree": node_tree,
        "roots": row[np.where(roots >= 0, roots, n_leaves + ~roots)].astype(np.int32),
        "kind": np.asarray(step_kind + [0] * (steps - len(step_kind)), np.int32), "used_steps": len(step_kind),
    }  # fmt: skip


def switch_model(vocab: LayoutVocab, features: int, hidden: int):
    """The module network with a typed executor: ``apply(params, image [T, H, W, C], batch) -> logits [T, 2]``."""
    reference = nmn_task.nmn_model(vocab, features, hidden)  # for its params and the cells
    modules = Modules.create(vocab, hidden)
    _, words = (jnp.asarray(a) for a in vocab.instance_table())
    order = vocab.internal_modules()  # the kinds' order: transform, and, or

    def apply(params, image, b):
        cells, _ = grid_cells(3, features, hidden).apply(params["cells"], {}, image)
        mods = params["modules"]
        num_leaves, (steps, width, _) = b["leaf_tokens"].shape[0], b["children"].shape
        leaf_att, _ = modules.find.apply(mods["find"], {}, cells[b["node_tree"][:num_leaves]], b["leaf_tokens"])
        pad = jnp.zeros((steps * width + 1, leaf_att.shape[-1]))
        buffer = jnp.concatenate([zero_unless(b["leaf_mask"], leaf_att, leaf_att.dtype), pad])
        instances = b["labels"][num_leaves : num_leaves + steps * width].reshape(steps, width)
        branches = {
            "transform": lambda a, c, ids: modules.transform.apply(mods["transform"], {}, a, words[ids])[0],
            "and": lambda a, c, ids: modules.and_.apply({}, {}, a, c)[0],
            "or": lambda a, c, ids: modules.or_.apply({}, {}, a, c)[0],
        }

        def node(kids, xs):
            ids, kind = xs
            a, c = kids[0][:, 0], kids[0][:, 1]
            return (lax.switch(kind, [branches[name] for name in order], a, c, ids),), None

        (buffer,), _ = scan_steps(
            node, num_leaves, (buffer,), b["children"], b["internal_mask"], (instances, b["kind"])
        )
        return modules.exists.apply(mods["exists"], {}, buffer[b["roots"]])[0]

    return reference, apply


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=32, help="slots per step (the experiment's data.width)")
    args = parser.parse_args(argv)
    config = nmn_task.NMN().resolve({"data": {"width": args.width}, "trainer": {"batch_size": args.batch_size}})
    vocab = LayoutVocab.create(WORDS)
    examples = shapes_questions(args.batches * args.batch_size, seed=0)
    select_batches = nmn_task.batches(config, examples, 1, shuffle=False)
    reference, typed_apply = switch_model(vocab, config["model"]["features"], config["model"]["hidden"])
    first = select_batches.batch(np.arange(args.batch_size))
    params, _ = reference.init(jax.random.key(0), *[first[k] for k in nmn_task.INPUTS])
    images = np.stack([e.image for e in examples])
    answers = np.asarray([e.answer for e in examples])
    trees = [body_tree(e.layout, vocab) for e in examples]
    optimizer = optax.adam(3e-3)

    def train_step(logits_of):
        def loss(p, batch):
            logits = logits_of(p, batch)
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["answer"]).mean()

        @jax.jit
        def step(p, opt, batch):
            value, grads = jax.value_and_grad(loss)(p, batch)
            updates, opt = optimizer.update(grads, opt, p)
            return optax.apply_updates(p, updates), opt, value

        return step

    def select_logits(p, batch):
        return reference.apply(p, {}, *[batch[k] for k in nmn_task.INPUTS])[0][0]

    def switch_logits(p, batch):
        return typed_apply(p, batch["image"], batch)

    rows = [np.arange(k * args.batch_size, (k + 1) * args.batch_size) for k in range(args.batches)]
    steps_used = {"select": [], "switch": []}

    def select_batch(r):
        batch = select_batches.batch(r)
        steps_used["select"].append(int(batch["internal_mask"][0].any(-1).sum()))
        return {**batch, "answer": batch["answer"][0]}

    def switch_batch(r):
        batch = typed_schedule([trees[i] for i in r], vocab, args.width, 64, 8)
        steps_used["switch"].append(batch.pop("used_steps"))
        return {**batch, "image": images[r], "answer": answers[r]}

    systems = {"select": (train_step(select_logits), select_batch), "switch": (train_step(switch_logits), switch_batch)}
    check = {name: np.asarray(logits(params, make(rows[0]))) for name, logits, make in
             (("select", select_logits, select_batch), ("switch", switch_logits, switch_batch))}  # fmt: skip
    np.testing.assert_allclose(check["select"], check["switch"], atol=1e-5)
    state = {name: (params, optimizer.init(params)) for name in systems}
    for r in rows:  # warm-up: every shape compiled
        for name, (step, make) in systems.items():
            p, opt, _ = step(*state[name], make(r))
            state[name] = (p, opt)
    rates = {name: [] for name in systems}
    for round_ in range(args.rounds):
        for name in list(systems)[:: 1 if round_ % 2 == 0 else -1]:
            step, make = systems[name]
            began = time.perf_counter()
            for r in rows:
                p, opt, value = step(*state[name], make(r))
                state[name] = (p, opt)
            value.block_until_ready()
            rates[name].append(len(rows) * args.batch_size / (time.perf_counter() - began))
        print(json.dumps({"figure": "round", "round": round_, **{k: round(v[-1], 1) for k, v in rates.items()}}))
    print(json.dumps({
        "figure": "nmn_dispatch", "width": args.width,
        **{f"{name}_questions_per_s": round(statistics.median(v), 1) for name, v in rates.items()},
        **{f"{name}_mean_steps": round(float(np.mean(v)), 2) for name, v in steps_used.items()},
        "select_over_switch": round(statistics.median(s / t for s, t in zip(rates["select"], rates["switch"],
                                                                             strict=True)), 2),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
