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
import numpy as np

from ..core import Model
from ..train.checkpoint import restore_run
from ..train.data import make_batches
from ..train.evaluation import evaluate
from ..train.loop import fit
from ..train.result import FitResult
from ..train.run import LoadedRun, prepare
from ..train.run_files import PREPROCESSING, write_json
from ..train.state import abstract_train_state, data_mesh
from ..validation import ConfigError
from .components import DataSplits, build_component
from .optimizer import make_optimizer
from .predict import RequestError, padded
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

    def prepare_request(self, run: LoadedRun, request: Any) -> dict[str, np.ndarray]:
        """``{"x": [...]}`` (one key per model input), or a bare list for a model of one input: raw values,
        prepared as in training (the run's standardisation)."""
        if not isinstance(request, dict):
            if len(run.inputs) > 1:
                raise RequestError(
                    f"expected an object with the inputs {list(run.inputs)}, got {type(request).__name__}"
                )
            request = {run.inputs[0]: request}
        unknown = sorted(set(request) - set(run.inputs))
        if unknown:
            raise RequestError(f"{unknown[0]}: not an input of the model; its inputs are {list(run.inputs)}")
        prepared = {}
        for name in run.inputs:
            if name not in request:
                raise RequestError(f"{name}: missing; the model's inputs are {list(run.inputs)}")
            spec = run.examples[name]
            try:
                value = np.asarray(request[name], dtype=spec.dtype)
            except (TypeError, ValueError):
                raise RequestError(
                    f"{name}: expected numbers of dtype {spec.dtype}, got {request[name]!r:.60}"
                ) from None
            if value.shape != spec.shape[1:]:
                raise RequestError(f"{name}: expected shape {list(spec.shape[1:])}, got {list(value.shape)}")
            prepared[name] = prepare(run.preprocessing, name, value[None])[0]
        return prepared

    def predict(self, run: LoadedRun, requests: list[dict[str, np.ndarray]], batch_size: int) -> list[dict[str, Any]]:
        """``{"prediction": outputs}``; with a classification loss also ``label`` and ``probabilities``."""
        results = []
        for start in range(0, len(requests), batch_size):
            chunk = requests[start : start + batch_size]
            inputs = [padded([r[name] for r in chunk], batch_size)[0] for name in run.inputs]
            outputs = np.asarray(run.apply(run.params, run.state, *inputs))[: len(chunk)]
            results += [self._describe(run.config["loss"]["type"], output) for output in outputs]
        return results

    @staticmethod
    def _describe(loss: str, output: np.ndarray) -> dict[str, Any]:
        result: dict[str, Any] = {"prediction": output.tolist()}
        if loss == "softmax_cross_entropy":
            probabilities = np.exp(output - output.max(-1, keepdims=True))
            probabilities /= probabilities.sum(-1, keepdims=True)
            result.update(label=int(np.argmax(output, -1)) if output.ndim == 1 else np.argmax(output, -1).tolist(),
                          probabilities=probabilities.tolist())  # fmt: skip
        elif loss == "binary_cross_entropy":
            result["probability"] = (1 / (1 + np.exp(-output))).tolist()
        return result
