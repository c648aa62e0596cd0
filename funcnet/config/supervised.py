"""The ``supervised`` task: a registered model, dataset and per-example loss, trained by ``fit``.

The sections ``model``, ``dataset`` and ``loss`` name registered factories (``funcnet.config.components``);
``optimizer`` and ``trainer`` are every task's. The test split, when the dataset has one, is evaluated
with the best checkpoint at the end.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax

from ..core import Model
from ..deploy.export import ProgramSpec, Serving
from ..train.checkpoint import restore_run
from ..train.data import make_batches
from ..train.evaluation import evaluate
from ..train.loop import fit
from ..train.result import FitResult
from ..train.run import LoadedRun
from ..train.run_files import PREPROCESSING, write_json
from ..train.state import abstract_train_state, data_mesh
from ..validation import ConfigError
from .components import DataSplits, build_component
from .optimizer import make_optimizer
from .registry import DATASETS, LOSSES, MODELS
from .run_config import RunConfig, resolved_config, validate_config
from .tasks import Task


class Run:
    """Everything built from a validated config: model, data splits, batches, loss, optimizer."""

    def __init__(self, run: RunConfig):
        self.config = run
        self.model = build_component(MODELS, run.model, "model")
        self.splits: DataSplits = build_component(DATASETS, run.dataset, "dataset")
        self.loss_fn = build_component(LOSSES, run.loss, "loss")
        self.optimizer = make_optimizer(run.optimizer)
        self.mesh = data_mesh()
        trainer = run.trainer
        self.train = make_batches(
            self.splits.train,
            trainer.batch_size,
            shuffle=trainer.shuffle,
            seed=trainer.seed,
            drop_remainder=trainer.drop_remainder,
            multiple_of=self.mesh.size,
        )

    def batches(self, split: str):
        """Unshuffled, padded batches of a split, for evaluation."""
        data = getattr(self.splits, split, None)
        if data is None:
            raise SystemExit(f"error: the dataset has no {split!r} split")
        size = self.config.trainer.eval_batch_size or self.config.trainer.batch_size
        return make_batches(data, size, shuffle=False, multiple_of=self.mesh.size)

    def restore(self, run_dir: str | os.PathLike, which: str = "best"):
        """The TrainState of the best, latest or a numbered checkpoint of ``run_dir``."""
        trainer = self.config.trainer
        example = next(iter(self.train.epoch(0)))
        inputs = [example[k] for k in self.splits.inputs]
        abstract = abstract_train_state(
            self.model, self.optimizer.transform, jax.random.key(trainer.seed), *inputs, mesh=self.mesh
        )
        directory = Path(run_dir) / "checkpoints"
        return restore_run(directory, abstract, which=which, metric=trainer.metric, mode=trainer.mode)


class Supervised(Task):
    """A model, a dataset and a loss from the registries (see the module docstring)."""

    sections = ("model", "dataset", "loss", "optimizer", "trainer")
    data_section = "dataset"

    def resolve(self, config: dict[str, Any]) -> dict[str, Any]:
        run = validate_config(config)
        make_optimizer(run.optimizer)  # validates the optimizer section before anything is compiled
        return resolved_config(run)

    def fit(self, config: dict[str, Any], run_dir: Path, restart: bool) -> tuple[FitResult, dict[str, Any]]:
        run = Run(validate_config(config))
        if run.splits.preprocessing is not None:  # what reopening the run needs to prepare raw inputs
            write_json(Path(run_dir) / PREPROCESSING, run.splits.preprocessing)
        result = fit(
            run.model, run.loss_fn, run.optimizer.transform, run.train, run_dir=run_dir, trainer=run.config.trainer,
            validation=run.batches("validation") if run.splits.validation is not None else None,
            learning_rate=run.optimizer.learning_rate, inputs=run.splits.inputs, config=config, mesh=run.mesh,
            sparse_rows=run.optimizer.sparse_rows, restart=restart,
        )  # fmt: skip
        own: dict[str, Any] = {}
        best = result.best_state()  # restored by fit: the test split is evaluated with the best parameters
        if run.splits.test is not None and best is not None and result.stop_reason in ("done", "early_stopping"):
            batches = run.batches("test")
            metrics = evaluate(run.model, run.loss_fn, best, batches, inputs=run.splits.inputs, mesh=run.mesh)
            own["test"] = {"checkpoint": result.best_checkpoint, **metrics}
        return result, own

    def model(self, config: dict[str, Any], preprocessing: dict[str, Any]) -> Model:
        return build_component(MODELS, config["model"], "model")

    def evaluate(self, run: LoadedRun, config: dict[str, Any], split: str) -> dict[str, float]:
        """The loss function's means on a split of the dataset, as the evaluations in training computed them."""
        data = getattr(build_component(DATASETS, config["dataset"], "dataset"), split)
        if data is None:
            raise ConfigError("dataset", f"the dataset has no {split!r} split")
        trainer, mesh = config["trainer"], data_mesh()
        batches = make_batches(data, trainer["eval_batch_size"] or trainer["batch_size"], shuffle=False,
                               multiple_of=mesh.size)  # fmt: skip
        return run.evaluate(build_component(LOSSES, config["loss"], "loss"), batches, mesh=mesh)

    def serving(self, run: LoadedRun) -> Serving:
        """Feature vectors in, the model's outputs out (``funcnet.deploy.handlers.Supervised``): one program,
        ``forward``, over a batch of any size."""
        (batch,) = jax.export.symbolic_shape("batch")
        examples, model = run.examples, run.model
        inputs = {name: jax.ShapeDtypeStruct((batch, *spec.shape[1:]), spec.dtype) for name, spec in examples.items()}

        def forward(weights, *xs):
            return model.apply(weights["params"], weights["state"], *xs)[0]

        shapes = {name: {"shape": list(spec.shape[1:]), "dtype": str(spec.dtype)} for name, spec in examples.items()}
        config = {"inputs": shapes, "loss": run.config["loss"]["type"]}
        return Serving("supervised", config, {"forward": ProgramSpec(forward, inputs)})
