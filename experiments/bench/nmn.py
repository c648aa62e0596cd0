"""Module-network training throughput: funcnet's compiled layout executor against PyTorch's per-question graphs.

    pip install -e '.[bench]'
    python experiments/bench/nmn.py                 # 5 rounds of 20 batches of 64 questions per system
    python experiments/bench/nmn.py --rounds 3 --batches 10

Workload: the module network of ``python -m funcnet.experiments.nmn`` (``funcnet.experiments.nmn_task.nmn_model``:
the cells of a 3x3 grid through a two-layer MLP, then find / transform / and / or / exists modules, features 32,
hidden 64), mean cross-entropy of the answers, one Adam (lr 3e-3) update per batch of 64 SHAPES-style
questions (``funcnet.datasets.shapes``, layouts of depth 2 to 8). Figures are TRAINING questions/second:
forward, backward and update.

Systems:
  funcnet        the experiment's model and a jitted train step over ``TreeBatches``' scheduled batches (one
                 ``find`` call for every leaf of the batch, a ``lax.scan`` over list-scheduled steps), the host's
                 scheduling of each batch inside the timed loop; compiled once per bucket shape before timing.
  torch          the same modules in PyTorch, the define-by-run way: the image cells of the batch in one call,
                 then each question's network built by Python recursion over its layout, module by module
                 (a new graph per question), the answers stacked for the loss; torch.optim.Adam.

Before timing, both start from the same weights and their first losses are checked equal (the same modules).
Method: each round runs both systems on the same batches, the order alternating by round; a figure is the
median over rounds, the ratio the median of the per-round ratios. Target (issue 21): funcnet >= 10x torch.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcnet.datasets.shapes import WORDS, shapes_questions
from funcnet.experiments import nmn_task
from funcnet.layouts import LayoutVocab

LR = 3e-3


def funcnet_system(config, examples, batch_size):
    """A step function over a list of example indices (scheduling included), and the model's initial params."""
    vocab = LayoutVocab.create(WORDS)
    model = nmn_task.nmn_model(vocab, features=config["model"]["features"], hidden=config["model"]["hidden"])
    batches = nmn_task.batches(config, examples, 1, shuffle=False)  # its auto_buckets fix the shapes
    first = next(batches.epoch(0))
    params, _ = model.init(jax.random.key(0), *[first[k] for k in nmn_task.INPUTS])
    optimizer = optax.adam(LR)

    def loss_fn(params, batch):
        logits = model.apply(params, {}, *[batch[k] for k in nmn_task.INPUTS])[0]
        losses = nmn_task.answer_metrics(logits, batch)["loss"]
        return (losses * batch["mask"]).sum() / batch["mask"].sum()

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = {"params": params, "opt": optimizer.init(params)}

    def run(indices):
        batch = batches.batch(indices)  # the host's scheduling, timed
        state["params"], state["opt"], loss = step(state["params"], state["opt"], batch)
        return loss

    return run, params, step


def torch_system(params, examples):
    """The same modules in PyTorch, run per question; initialised from funcnet's ``params``."""
    import torch
    from torch import nn

    def tensor(a):
        return nn.Parameter(torch.tensor(np.asarray(a)))

    class Modules(nn.Module):
        def __init__(self):
            super().__init__()
            cells, mods = params["cells"], params["modules"]
            self.cells = nn.ParameterDict({k: tensor(v) for k, v in cells.items()})
            self.find = nn.ParameterDict({k: tensor(v) for k, v in mods["find"].items()})
            self.transform = nn.ParameterDict({k: tensor(v) for k, v in mods["transform"].items()})
            self.exists = nn.ParameterDict({k: tensor(v) for k, v in mods["exists"].items()})
            vocab = LayoutVocab.create(WORDS)
            self.find_id = {w: vocab.find.encode(w) for w in vocab.words("find")}
            self.transform_id = {w: i for i, w in enumerate(vocab.words("transform"))}

        def grid(self, image):  # [N, 30, 30, 3] -> [N, 9, F]
            n = image.shape[0]
            x = image.reshape(n, 3, 10, 3, 10, 3).permute(0, 1, 3, 2, 4, 5).reshape(n, 9, -1)
            h = torch.relu(x @ self.cells["hidden"] + self.cells["hidden_bias"])
            return torch.relu(h @ self.cells["out"] + self.cells["out_bias"])

        def run(self, node, cells):  # one question's network, module by module
            module, word, children = node
            if module == "find":
                f = self.find
                h = torch.relu(cells @ f["cell"] + f["word"][self.find_id[word]] + f["bias"])
                return torch.sigmoid(h @ f["out"] + f["out_bias"])
            inputs = [self.run(child, cells) for child in children]
            if module == "transform":
                w = self.transform_id[word]
                return torch.sigmoid(self.transform["matrix"][w] @ inputs[0] * 4.0 + self.transform["bias"][w])
            if module == "and":
                return torch.minimum(*inputs)
            if module == "or":
                return torch.maximum(*inputs)
            ranked = torch.sort(inputs[0], descending=True).values
            yes = ranked @ nn.functional.softplus(self.exists["weight"]) + self.exists["bias"]
            return torch.stack([torch.zeros_like(yes), yes])

    modules = Modules()
    optimizer = torch.optim.Adam(modules.parameters(), lr=LR)
    images = torch.tensor(np.stack([e.image for e in examples]))
    answers = torch.tensor([e.answer for e in examples])

    def run(indices):
        optimizer.zero_grad()
        cells = modules.grid(images[indices])
        logits = torch.stack([modules.run(examples[i].layout, cells[j]) for j, i in enumerate(indices)])
        loss = nn.functional.cross_entropy(logits, answers[indices])
        loss.backward()
        optimizer.step()
        return loss.detach()

    return run, torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20, help="batches per system per round")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    config = nmn_task.NMN().resolve({"trainer": {"batch_size": args.batch_size}})
    examples = shapes_questions(args.batches * args.batch_size, seed=0)
    rng = np.random.default_rng(0)
    funcnet_run, params, step = funcnet_system(config, examples, args.batch_size)
    torch_run, torch = torch_system(params, examples)
    print(json.dumps({"figure": "setup", "cores": len(__import__("os").sched_getaffinity(0)),
                      "machine": platform.machine(), "jax": jax.__version__, "torch": torch.__version__,
                      "torch_threads": torch.get_num_threads()}))  # fmt: skip
    order = [rng.permutation(len(examples))[k * args.batch_size : (k + 1) * args.batch_size]
             for k in range(args.batches)]  # fmt: skip
    # the same weights, the same first loss: the same modules
    first = {"funcnet": float(funcnet_run(order[0])), "torch": float(torch_run(order[0]))}
    if abs(first["funcnet"] - first["torch"]) > 1e-4:
        raise SystemExit(f"the systems disagree on the first batch's loss: {first}")
    print(json.dumps({"figure": "same_first_loss", **first}))
    systems = {"funcnet": funcnet_run, "torch": torch_run}
    for indices in order:  # warm-up: every bucket shape compiled, PyTorch's allocator warm
        for run in systems.values():
            run(indices)
    jax.block_until_ready(jnp.zeros(()))
    rates: dict[str, list[float]] = {name: [] for name in systems}
    for r in range(args.rounds):
        for name in list(systems)[:: 1 if r % 2 == 0 else -1]:
            time.sleep(0.05)  # PyTorch's threads stop spinning
            began = time.perf_counter()
            for indices in order:
                loss = systems[name](indices)
            jax.block_until_ready(loss) if name == "funcnet" else None
            rates[name].append(len(order) * args.batch_size / (time.perf_counter() - began))
        print(json.dumps({"figure": "round", "round": r, **{k: round(v[-1], 1) for k, v in rates.items()}}), flush=True)
    ratios = [f / t for f, t in zip(rates["funcnet"], rates["torch"], strict=True)]
    medians = {name: round(statistics.median(values), 1) for name, values in rates.items()}
    print(json.dumps({"figure": "nmn_training", "funcnet_questions_per_s": medians["funcnet"],
                      "torch_questions_per_s": medians["torch"],
                      "funcnet_over_torch": round(statistics.median(ratios), 2),
                      "compilations": step._cache_size()}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
