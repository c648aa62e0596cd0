"""Neural module networks on SHAPES-style questions as a ``funcnet train`` task: ``task = "nmn"``.

Each question runs its own network, assembled from shared modules by its layout
(``funcnet.datasets.shapes``, ``funcnet.layers.nmn``); a batch of layouts is list-scheduled like parse
trees and run by one compiled program per bucket shape. ``model.kind = "cnn_lstm"`` trains the
non-modular baseline instead (``funcnet.experiments.nmn_baseline``) on the same questions. The best
checkpoint is evaluated on questions drawn like training and on the systematic split (held-out colour-shape
pairs); ``results.json`` holds both accuracies and the compilations.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcnet.core import Model
from funcnet.datasets.shapes import GRID, WORDS, Example, shapes_questions
from funcnet.deploy.export import ProgramSpec, Serving
from funcnet.layers.nmn import Modules, grid_cells, layout_executor
from funcnet.layouts import LayoutVocab, body_tree, check_layout

from ..config.optimizer import make_optimizer
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
from ..validation import ConfigError
from .nmn_baseline import QUESTION_LENGTH, baseline_model, question_tokens, question_vocabulary

TASK = "nmn"
IMPORTS = ["funcnet.experiments.nmn_task"]
INPUTS = ("image", *FIELDS)  # the module network's inputs, in order
BASELINE_INPUTS = ("image", "question")
SPLITS = {"validation": ("like_training", 1), "like_training": ("like_training", 2), "systematic": ("systematic", 3)}

_BASE: dict[str, Any] = {
    "data": {"train_size": 6000, "test_size": 1000, "seed": 0, "width": 32},
    "model": {"kind": "nmn", "features": 32, "hidden": 64},
    "optimizer": {"type": "adam", "learning_rate": 3e-3},
    "trainer": {"epochs": 20, "batch_size": 64, "metric": "accuracy", "mode": "max", "patience": 5,
                "log_every": 50, "keep_checkpoints": 2},
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DataSection:
    """The ``data`` section: questions generated per split (``test_size`` for validation and each test split),
    the generator's seed, and the scan width of the layout schedule."""

    train_size: int = 6000
    test_size: int = 1000
    seed: int = 0
    width: int = 32


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The ``model`` section: ``nmn`` (modules) or ``cnn_lstm`` (the baseline), the cell features and hidden size."""

    kind: str = "nmn"
    features: int = 32
    hidden: int = 64


def nmn_model(vocab: LayoutVocab, features: int = 32, hidden: int = 64) -> Model:
    """The module network over grouped batches: ``apply(params, state, image [G, T, H, W, C], *[batch[f] for f in
    FIELDS]) -> logits [G, T, 2]`` (no, yes), a group per device."""
    cells_model = grid_cells(GRID, features, hidden)
    executor = layout_executor(Modules.create(vocab, hidden), vocab)

    def init(key, image, *fields):
        k1, k2 = jax.random.split(key)
        cells_params, _ = cells_model.init(k1, jax.ShapeDtypeStruct(image.shape[1:], image.dtype))
        cells = jax.ShapeDtypeStruct((image.shape[1], GRID * GRID, features), jnp.float32)
        group = dict(zip(FIELDS, (jax.ShapeDtypeStruct(f.shape[1:], f.dtype) for f in fields), strict=True))
        return {"cells": cells_params, "modules": executor.init(k2, cells, group)[0]}, {}

    def one_group(params, image, fields):
        cells, _ = cells_model.apply(params["cells"], {}, image)
        return executor.apply(params["modules"], {}, cells, dict(zip(FIELDS, fields, strict=True)))[0]

    def apply(params, state, image, *fields, key=None, train=False):
        del key, train
        if image.shape[0] == 1:  # one device: no vmap, so the scan's gathers and writes need no batch axis
            return one_group(params, image[0], tuple(f[0] for f in fields))[None], state
        return jax.vmap(one_group, in_axes=(None, 0, 0))(params, image, fields), state

    return Model(init, apply, "nmn")


def answer_metrics(logits: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-question loss and correctness, ``[G, T]``."""
    answer = batch["answer"]
    return {
        "loss": optax.softmax_cross_entropy_with_integer_labels(logits, answer),
        "accuracy": (jnp.argmax(logits, -1) == answer).astype(jnp.float32),
    }


def load_split(data: dict[str, Any], split: str) -> list[Example]:
    """The examples of ``train``, ``validation``, ``like_training`` or ``systematic``."""
    if split == "train":
        return shapes_questions(data["train_size"], seed=data["seed"], split="train")
    kind, offset = SPLITS[split]
    return shapes_questions(data["test_size"], seed=data["seed"] + offset, split=kind)


def batches(config: dict[str, Any], examples: list[Example], groups: int, shuffle: bool, seed: int = 0):
    """The task's batches of ``examples``: scheduled layouts (``nmn``) or padded question tokens (``cnn_lstm``),
    with the images and answers."""
    data, trainer, vocab = config["data"], config["trainer"], LayoutVocab.create(WORDS)
    for number, example in enumerate(examples):
        check_layout(example.layout, vocab, f"question {number} ({example.question!r})")
    extras = {"image": np.stack([e.image for e in examples]), "answer": np.array([e.answer for e in examples])}
    if config["model"]["kind"] == "cnn_lstm":
        words = question_vocabulary()
        extras["question"] = np.stack([question_tokens(e.question, words) for e in examples])
    trees = [body_tree(e.layout, vocab) for e in examples]
    return TreeBatches(trees, vocab.find, trainer["batch_size"], groups=groups, width=data["width"],
                       shuffle=shuffle, seed=seed, extras=extras)  # fmt: skip


class NMN(Task):
    """Neural module networks (or the CNN+LSTM baseline) on SHAPES-style questions (``task = "nmn"``)."""

    sections = ("data", "model", "optimizer", "trainer")

    def resolve(self, config: dict[str, Any]) -> dict[str, Any]:
        """The base config updated by ``config``, every section checked; ``task`` and ``imports`` set."""
        config = resolve_sections(config, self, TASK, _BASE, {"data": DataSection, "model": ModelSection})
        if config["model"]["kind"] not in ("nmn", "cnn_lstm"):
            raise ConfigError("model.kind", f"expected 'nmn' or 'cnn_lstm', got {config['model']['kind']!r}")
        return {"task": TASK, "imports": IMPORTS, **config}

    def model(self, config: dict[str, Any], preprocessing: dict[str, Any]) -> Model:
        del preprocessing  # the vocabularies are the generator's
        options = {k: v for k, v in config["model"].items() if k != "kind"}
        if config["model"]["kind"] == "cnn_lstm":
            return baseline_model(len(question_vocabulary().tokens), **options)
        return nmn_model(LayoutVocab.create(WORDS), **options)

    def inputs(self, config: dict[str, Any]) -> tuple[str, ...]:
        return BASELINE_INPUTS if config["model"]["kind"] == "cnn_lstm" else INPUTS

    def fit(self, config: dict[str, Any], run_dir: Path, restart: bool) -> tuple[FitResult, dict[str, Any]]:
        """Trains; evaluates the best checkpoint on the validation and both test splits."""
        trainer, mesh = TrainerConfig.from_dict(config["trainer"]), data_mesh()
        train = load_split(config["data"], "train")
        print(f"data: SHAPES-style questions: {len(train):,} train, {config['data']['test_size']:,} per "
              f"validation and test split; model: {config['model']['kind']}")  # fmt: skip
        write_json(run_dir / PREPROCESSING, {"words": WORDS, "question_length": QUESTION_LENGTH})
        training = batches(config, train, mesh.size, True, trainer.seed)
        validation = batches(config, load_split(config["data"], "validation"), mesh.size, False)
        model, optimizer = self.model(config, {}), make_optimizer(config["optimizer"])
        result = fit(
            model, answer_metrics, optimizer.transform, training, run_dir=run_dir, trainer=trainer,
            validation=validation, learning_rate=optimizer.learning_rate, inputs=self.inputs(config),
            config=config, mesh=mesh, items_per_example=1, item_name="questions", restart=restart,
        )  # fmt: skip
        best = result.best_state()
        if result.stop_reason in FAILED_REASONS or best is None:
            return result, {}
        results: dict[str, Any] = {"shapes_per_epoch": shapes_per_epoch(training)}
        for split in ("validation", "like_training", "systematic"):
            examples = load_split(config["data"], split) if split != "validation" else None
            split_batches = validation if examples is None else batches(config, examples, mesh.size, False)
            metrics = evaluate(model, answer_metrics, best, split_batches, inputs=self.inputs(config), mesh=mesh)
            results[split] = {"accuracy": metrics["accuracy"], "loss": metrics["loss"], "questions": metrics["count"]}
            print(f"{split}: accuracy {metrics['accuracy']:.4f} on {int(metrics['count']):,} questions")
        return result, results

    def evaluate(self, run: LoadedRun, config: dict[str, Any], split: str) -> dict[str, float]:
        """Accuracy and loss on a split: ``train``, ``validation``, ``test`` (= ``like_training``), ``systematic``."""
        split = "like_training" if split == "test" else split
        mesh = data_mesh()
        split_batches = batches(config, load_split(config["data"], split), mesh.size, False)
        return run.evaluate(answer_metrics, split_batches, mesh=mesh)

    def serving(self, run: LoadedRun) -> Serving:
        """A question (or layout) about a scene in, yes or no out (``funcnet.deploy.visual_questions``): one
        program, ``forward``, over one group of scheduled layouts of any size (symbolic leaf slots, steps, width
        and layouts, as the Tree-LSTM's). The baseline is not served: it is the experiment's yardstick."""
        if run.config["model"]["kind"] != "nmn":
            raise ConfigError("model.kind", "only module-network runs are served; this run is the cnn_lstm baseline")
        leaves, steps, width, trees = jax.export.symbolic_shape("leaves, steps, width, trees",
                                                                constraints=("steps*width >= width",))  # fmt: skip
        rows, arity = leaves + steps * width + 1, run.examples["children"].shape[-1]
        shapes = {
            "image": (trees, *run.examples["image"].shape[2:]), "leaf_tokens": (leaves,), "leaf_mask": (leaves,),
            "children": (steps, width, arity), "child_mask": (steps, width, arity), "internal_mask": (steps, width),
            "labels": (rows,), "label_mask": (rows,), "node_tree": (rows,), "roots": (trees,), "tree_mask": (trees,),
        }  # fmt: skip
        inputs = {f: jax.ShapeDtypeStruct((1, *shapes[f]), run.examples[f].dtype) for f in INPUTS}
        model = run.model

        def forward(weights, *xs):
            return model.apply(weights["params"], weights["state"], *xs)[0]

        config = {"words": WORDS, "width": run.config["data"]["width"], "image_shape": list(shapes["image"][1:])}
        return Serving("nmn", config, {"forward": ProgramSpec(forward, inputs)})


def shapes_per_epoch(training: TreeBatches) -> int:
    """The distinct batch shapes of an epoch: the programs the training step compiles for it."""
    return len({(b["leaf_tokens"].shape, b["children"].shape) for b in training.epoch(0)})


TASKS.register(TASK)(NMN)
