"""Tree-LSTM sentiment classification as a ``funcnet train`` task: ``task = "tree_sentiment"``.

The model (embedding -> binary Tree-LSTM under ``lax.scan`` over list-scheduled steps -> dropout -> a
5-class classifier on every node), its per-tree metrics, the config sections (``data``, ``model``,
``optimizer``, ``trainer``) with their defaults and presets, and the evaluation of the best checkpoint.
A config names this module in ``imports`` to train the task (``experiments/configs/treelstm.toml``);
``python -m funcnet.experiments.treelstm`` is the command-line wrapper around it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

import funcnet as fn
from funcnet.children import apply_child, init_child
from funcnet.core import Model, output_spec
from funcnet.datasets import sentiment_language
from funcnet.datasets.cache import resolve as resolve_data
from funcnet.deploy.export import ProgramSpec, Serving
from funcnet.parse_trees import Vocabulary, parse_tree, read_trees

from ..config.optimizer import make_optimizer
from ..config.run_config import apply_overrides
from ..config.tasks import TASKS, Task, resolve_sections
from ..train.evaluation import evaluate
from ..train.loop import fit
from ..train.options import TrainerConfig
from ..train.result import FitResult
from ..train.run import LoadedRun
from ..train.run_files import PREPROCESSING, write_json
from ..train.state import data_mesh
from ..train.stopping import FAILED_REASONS
from ..train.tree_batches import FIELDS, TreeBatches
from ..tree_schedule import Buckets
from ..validation import ConfigError, check_compute_dtype

TASK = "tree_sentiment"

# SST train and dev shuffled into batches of 25 trees, width 24, list mode: a batch needs 330-670 leaf slots
# (mean 478) and 15-29 steps (mean 20: the tallest tree's height, or ceil(internal / 24) when larger). Two
# sizes per axis (4 programs an epoch) pad to ~1.19 slots per real node, against ~1.03 with no buckets.
SST_BUCKETS = Buckets(leaves=(512, 704), steps=(22, 30))
IMPORTS = ["funcnet.experiments.tree_sentiment"]  # what a config names to train this task with ``funcnet train``

_BASE: dict[str, Any] = {
    "data": {"path": "", "train_size": 4000, "dev_size": 500, "test_size": 500, "seed": 0, "width": 24},
    "model": {"embed": 64, "hidden": 64, "dropout": 0.2, "unroll": 2},
    "optimizer": {"type": "adam", "learning_rate": 5e-3, "sparse_rows": {"embed/embedding": "leaf_tokens"}},
    "trainer": {"epochs": 15, "batch_size": 25, "metric": "root_accuracy", "mode": "max", "patience": 4,
                "log_every": 20, "keep_checkpoints": 2},
}  # fmt: skip
PRESETS = {
    "default": {},
    "sst": {  # Tai et al.'s sizes; Adam and dropout 0.3 (measured: experiments/results/treelstm.md)
        "model": {"embed": 300, "hidden": 150, "dropout": 0.3},
        "optimizer": {"type": "adam", "learning_rate": 2e-3},
        "trainer": {"epochs": 8},
    },
    "tiny": {
        "data": {"train_size": 60, "dev_size": 20, "test_size": 20, "width": 8},
        "model": {"embed": 8, "hidden": 8},
        "trainer": {"epochs": 2, "batch_size": 10, "log_every": 2},
    },
}


@dataclasses.dataclass(frozen=True)
class DataSection:
    """The ``data`` section: an SST-format folder ("" for the synthetic language), its sizes, the scan width."""

    path: str = ""
    train_size: int = 4000
    dev_size: int = 500
    test_size: int = 500
    seed: int = 0
    width: int = 24


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The ``model`` section: embedding and Tree-LSTM sizes, dropout on leaf inputs and node states, scan unroll,
    and the Tree-LSTM's matmul dtype (``"bfloat16"``: mixed precision, see ``funcnet.precision``; ``""``: float32)."""

    embed: int = 64
    hidden: int = 64
    dropout: float = 0.0
    unroll: int = 1
    compute_dtype: str = ""


def sentiment_model(
    vocab_size: int, embed: int = 64, hidden: int = 64, dropout: float = 0.0, unroll: int = 1, compute_dtype: str = ""
) -> Model:
    """A Model over grouped tree batches: ``apply(params, state, *[batch[f] for f in FIELDS])`` -> logits [G, R, 5].

    >>> import jax
    >>> from funcnet.parse_trees import parse_tree, Vocabulary
    >>> from funcnet.train.tree_batches import TreeBatches, FIELDS
    >>> trees = [parse_tree("(3 (2 a) (4 good))")] * 4
    >>> batch = next(TreeBatches(trees, Vocabulary.from_trees(trees), 4).epoch(0))
    >>> model = sentiment_model(3, embed=4, hidden=5)
    >>> params, state = model.init(jax.random.key(0), *[batch[f] for f in FIELDS])
    >>> logits, _ = model.apply(params, state, *[batch[f] for f in FIELDS])
    >>> logits.shape[0], logits.shape[1] == batch["labels"].shape[1], logits.shape[2]  # groups, rows, classes
    (1, True, 5)
    """
    children = {
        "embed": fn.embed(vocab_size, embed),
        "tree": fn.tree(fn.binary_tree_lstm_cell(hidden, compute_dtype=compute_dtype or None), unroll=unroll),
        "drop": fn.dropout(dropout),
        "head": fn.dense(5),
    }

    def init(key, *fields):
        group = dict(zip(FIELDS, (jax.ShapeDtypeStruct(f.shape[1:], f.dtype) for f in fields), strict=True))
        params = {}
        params["embed"], _ = init_child("embed", children["embed"], key, group["leaf_tokens"])
        x = output_spec(children["embed"], params["embed"], {}, group["leaf_tokens"])
        params["tree"], _ = init_child("tree", children["tree"], key, x, group)
        states = output_spec(children["tree"], params["tree"], {}, x, group)
        params["head"], _ = init_child("head", children["head"], key, states.h)
        return params, {}

    def one_group(params, fields, key, train):
        group = dict(zip(FIELDS, fields, strict=True))
        x, _ = apply_child("embed", children["embed"], params, {}, group["leaf_tokens"])
        x, _ = apply_child("drop", children["drop"], params, {}, x, key=key, train=train)
        states, _ = apply_child("tree", children["tree"], params, {}, x, group)
        h, _ = apply_child("drop", children["drop"], params, {}, states.h, key=jax.random.fold_in(key, 1), train=train)
        logits, _ = apply_child("head", children["head"], params, {}, h)
        return logits

    def apply(params, state, *fields, key=None, train=False):
        groups = fields[0].shape[0]
        keys = jax.random.split(key if key is not None else jax.random.key(0), groups)
        if groups == 1:  # one device: no vmap, so the tree scan's gathers and writes need no batch axis
            return one_group(params, tuple(f[0] for f in fields), keys[0], train)[None], state
        logits = jax.vmap(one_group, in_axes=(None, 0, 0, None))(params, fields, keys, train)
        return logits, state

    return Model(init, apply, "tree_sentiment")


def tree_metrics(logits: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-tree values of shape [G, T]: mean node loss, root correctness, and (named ``_...``: parts of the
    binary and all-node accuracies that ``summarize`` divides, not printed by ``fit``) binary and node counts."""
    num_trees = batch["roots"].shape[-1]

    def one_group(logits, labels, label_mask, node_tree, roots):
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels) * label_mask
        nodes = jax.ops.segment_sum(label_mask, node_tree, num_segments=num_trees)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * label_mask
        probs = jax.nn.softmax(logits[roots])
        gold = labels[roots]
        polar = (gold != 2).astype(jnp.float32)
        predicted_positive = probs[:, 3] + probs[:, 4] > probs[:, 0] + probs[:, 1]
        return {
            "loss": jax.ops.segment_sum(nll, node_tree, num_segments=num_trees) / jnp.maximum(nodes, 1.0),
            "root_accuracy": (jnp.argmax(logits[roots], -1) == gold).astype(jnp.float32),
            "_binary_correct": polar * (predicted_positive == (gold > 2)).astype(jnp.float32),
            "_binary_count": polar,
            "_node_correct": jax.ops.segment_sum(correct, node_tree, num_segments=num_trees),
            "_node_count": nodes,
        }

    return jax.vmap(one_group)(logits, batch["labels"], batch["label_mask"], batch["node_tree"], batch["roots"])


def summarize(metrics: dict[str, float]) -> dict[str, float]:
    """Fine and binary root accuracy and all-node accuracy from ``evaluate``'s means."""
    return {
        "root_accuracy": metrics["root_accuracy"],
        "binary_root_accuracy": metrics["_binary_correct"] / max(metrics["_binary_count"], 1e-9),
        "node_accuracy": metrics["_node_correct"] / max(metrics["_node_count"], 1e-9),
        "loss": metrics["loss"],
        "trees": metrics["count"],
    }


def load_splits(data: dict[str, Any]):
    """(train, dev, test-or-None) trees: SST files from ``path`` (a folder, or ``sst`` once ``funcnet data fetch sst``
    has cached it), or the synthetic language."""
    if data["path"]:
        folder = Path(resolve_data(data["path"]))
        test = folder / "test.txt"
        return (
            read_trees(folder / "train.txt", classes=5),
            read_trees(folder / "dev.txt", classes=5),
            read_trees(test, classes=5) if test.exists() else None,
        )
    seed = data["seed"]
    make = lambda n, s: [parse_tree(line) for line in sentiment_language(n, seed=s)]  # noqa: E731
    return make(data["train_size"], seed), make(data["dev_size"], seed + 1), make(data["test_size"], seed + 2)


class TreeSentiment(Task):
    """Tree-LSTM sentiment classification as a ``funcnet train`` task (``task = "tree_sentiment"``)."""

    sections = ("data", "model", "optimizer", "trainer")

    def resolve(self, config: dict[str, Any]) -> dict[str, Any]:
        """The base config updated by ``config``, every section checked; ``task`` and ``imports`` set."""
        config = resolve_sections(config, self, TASK, _BASE, {"data": DataSection, "model": ModelSection})
        check_compute_dtype(config["model"].get("compute_dtype"), "model.compute_dtype")
        return {"task": TASK, "imports": IMPORTS, **config}

    def fit(self, config: dict[str, Any], run_dir: Path, restart: bool) -> tuple[FitResult, dict[str, Any]]:
        """Trains; evaluates the best checkpoint on dev (and test)."""
        data, trainer = config["data"], TrainerConfig.from_dict(config["trainer"])
        train_trees, dev_trees, test_trees = load_splits(data)
        vocab = Vocabulary.from_trees(train_trees)
        mesh = data_mesh()
        print(f"data: {resolve_data(data['path']) or 'synthetic sentiment language'}: {len(train_trees):,} train, "
              f"{len(dev_trees):,} dev, {len(test_trees or []):,} test trees; vocabulary {vocab.size:,}")  # fmt: skip
        write_json(run_dir / PREPROCESSING, {"vocabulary": list(vocab.tokens)})

        def batches(trees, shuffle):
            return TreeBatches(trees, vocab, trainer.batch_size, groups=mesh.size, width=data["width"],
                               shuffle=shuffle, seed=trainer.seed)  # fmt: skip

        model = sentiment_model(vocab.size, **config["model"])
        optimizer = make_optimizer(config["optimizer"])
        result = fit(
            model, tree_metrics, optimizer.transform, batches(train_trees, True), run_dir=run_dir, trainer=trainer,
            validation=batches(dev_trees, False), learning_rate=optimizer.learning_rate, inputs=FIELDS,
            config=config, mesh=mesh, items_per_example=1, item_name="trees", sparse_rows=optimizer.sparse_rows,
            restart=restart,
        )  # fmt: skip
        best = result.best_state()  # the best evaluation's parameters, restored by fit
        if result.stop_reason in FAILED_REASONS or best is None:  # fit said why in one line; nothing to evaluate
            return result, {}
        results: dict[str, Any] = {}
        for name, trees in (("validation", dev_trees), ("test", test_trees)):
            if trees:
                metrics = evaluate(model, tree_metrics, best, batches(trees, False), inputs=FIELDS, mesh=mesh)
                results[name] = r = summarize(metrics)
                print(f"{name}: root accuracy {r['root_accuracy']:.3f} (fine), {r['binary_root_accuracy']:.3f} "
                      f"(binary), all nodes {r['node_accuracy']:.3f}")  # fmt: skip
        return result, results

    def model(self, config: dict[str, Any], preprocessing: dict[str, Any]) -> Model:
        return sentiment_model(len(preprocessing["vocabulary"]), **config["model"])

    def evaluate(self, run: LoadedRun, config: dict[str, Any], split: str) -> dict[str, float]:
        """Root (fine and binary) and all-node accuracies on a split (``validation`` is SST's dev), as the run's
        own evaluation of its best checkpoint computes them; words outside the run's vocabulary are unknown."""
        data, trainer = config["data"], config["trainer"]
        trees = dict(zip(("train", "validation", "test"), load_splits(data), strict=True))[split]
        if not trees:
            raise ConfigError("data.path", f"{data['path'] or 'the synthetic language'} has no {split} trees")
        mesh, vocab = data_mesh(), Vocabulary.from_tokens(run.preprocessing["vocabulary"])
        batches = TreeBatches(trees, vocab, trainer["batch_size"], groups=mesh.size, width=data["width"],
                              shuffle=False)  # fmt: skip
        return summarize(run.evaluate(tree_metrics, batches, mesh=mesh))

    def serving(self, run: LoadedRun) -> Serving:
        """A PTB tree or a sentence in, the label distribution of every node out
        (``funcnet.deploy.handlers.TreeSentiment``): one program, ``forward``, over one group of scheduled trees
        of any size (symbolic leaf slots, steps, width and trees; the rows follow: leaves + steps * width + 1).
        The width is symbolic so that the server can widen the steps with the batch: a batch of B sentences
        then takes as many steps as its deepest tree, not B times as many."""
        # the constraint tells shape checks (a step's rows fit the buffer) what steps >= 1 means for the rows
        leaves, steps, width, trees = jax.export.symbolic_shape("leaves, steps, width, trees",
                                                                constraints=("steps*width >= width",))  # fmt: skip
        rows, arity = leaves + steps * width + 1, run.examples["children"].shape[-1]
        shapes = {
            "leaf_tokens": (leaves,), "leaf_mask": (leaves,), "children": (steps, width, arity),
            "child_mask": (steps, width, arity), "internal_mask": (steps, width), "labels": (rows,),
            "label_mask": (rows,), "node_tree": (rows,), "roots": (trees,), "tree_mask": (trees,),
        }  # fmt: skip
        inputs = {f: jax.ShapeDtypeStruct((1, *shapes[f]), run.examples[f].dtype) for f in FIELDS}
        model = run.model

        def forward(weights, *fields):
            return model.apply(weights["params"], weights["state"], *fields)[0]

        config = {"tokens": list(run.preprocessing["vocabulary"]), "width": run.config["data"]["width"]}
        return Serving("tree_sentiment", config, {"forward": ProgramSpec(forward, inputs)})


TASKS.register(TASK)(TreeSentiment)


def resolve_config(preset: str = "default", overrides: list[str] = ()) -> dict[str, Any]:
    """The preset with overrides applied, every section checked.

    >>> resolve_config("tiny")["trainer"]["metric"]
    'root_accuracy'
    """
    if preset not in PRESETS:
        raise ConfigError("preset", f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return TreeSentiment().resolve(apply_overrides(PRESETS[preset], overrides))
