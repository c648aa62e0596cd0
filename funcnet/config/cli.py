"""The ``funcnet`` command: train from a config file, evaluate a run.

    funcnet train CONFIG -s RUN_DIR [-o key=value ...]   # train, or resume if RUN_DIR has checkpoints
    funcnet train CONFIG -s RUN_DIR --restart            # start over (the old checkpoints moved aside)
    funcnet train CONFIG -s RUN_DIR --cpu-devices [N]    # on N JAX CPU devices (alone: one per core)
    funcnet train CONFIG -s RUN_DIR --coordinator HOST:PORT --num-processes N --process-id I  # one of N processes
    funcnet evaluate RUN_DIR [--split validation|test|train] [--checkpoint best|latest|STEP] [--data key=value]

Every config error (unknown keys, wrong types, missing values, unknown component types) is
reported with its key path before anything is built or compiled. ``RUN_DIR`` receives
``config.json`` (the resolved config), ``checkpoints/``, ``logs/`` and ``results.json``.

Exit codes: 0 finished (early stopping included); 130 / 143 stopped by SIGINT / SIGTERM after saving
(every process of a multi-process run saves the same step); 1 failed (a NaN, a lost peer process);
2 a bad config or command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from ..train.checkpoint import CheckpointError, CheckpointSaveError, restore_run
from ..train.data import make_batches
from ..train.devices import add_cpu_devices_flag, use_cpu_devices_flag
from ..train.distributed import Processes, SetupError, join
from ..train.lock import RunLocked
from ..train.loop import evaluate, fit
from ..train.run_files import PREPROCESSING, update_record, write_json
from ..train.state import abstract_train_state, data_mesh
from ..train.stopping import BAD_CONFIG, FAILED, exit_code
from ..validation import ConfigError
from .components import DataSplits, build_component
from .optimizer import make_optimizer
from .registry import DATASETS, LOSSES, MODELS
from .run_config import RunConfig, apply_overrides, load_config, resolved_config, validate_config
from .runs import recorded_imports


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


def _load(config_path: str, overrides: Sequence[str]) -> dict[str, Any]:
    config = apply_overrides(load_config(config_path), overrides)
    run = validate_config(config, search_dirs=[os.getcwd(), os.path.dirname(os.path.abspath(config_path))])
    make_optimizer(run.optimizer)  # validates the optimizer section before anything is compiled
    return resolved_config(run)


def train(
    config_path: str,
    run_dir: str,
    overrides: Sequence[str] = (),
    processes: Processes | None = None,
    restart: bool = False,
) -> int:
    """``funcnet train``: returns the process exit code (``funcnet.train.stopping.exit_code``).

    ``processes``: how to join a multi-process run (``--coordinator``, ``--num-processes``, ``--process-id``);
    with None, or all three None, the run is joined only where JAX detects a cluster launcher (``srun``,
    ``mpirun``, Cloud TPU). The config is validated first: a bad config exits before any process waits.
    ``restart``: start over from step 0, the previous checkpoints moved aside (``fit(restart=True)``).
    """
    resolved = _load(config_path, overrides)
    if join(*(processes or Processes()), peer_timeout=resolved["trainer"]["peer_timeout"]):
        print(f"process {jax.process_index()} of {jax.process_count()} joined the run: {jax.device_count()} devices")
    saved = Path(run_dir) / "config.json"
    if saved.exists():
        previous = json.loads(saved.read_text())
        if previous != resolved:
            changed = sorted(k for k in set(previous) | set(resolved) if previous.get(k) != resolved.get(k))
            raise SystemExit(
                f"error: {run_dir} holds a run with another config (sections differ: {changed}). "
                "Fix: use a new run directory, or the same config to resume that run."
            )
    write_json(saved, resolved)
    update_record(run_dir, imports=module_files(resolved.get("imports", [])))  # what evaluate will import
    run = Run(validate_config(resolved))
    if run.splits.preprocessing is not None:  # what reopening the run needs to prepare raw inputs
        write_json(Path(run_dir) / PREPROCESSING, run.splits.preprocessing)
    validation = run.batches("validation") if run.splits.validation is not None else None
    start = time.perf_counter()
    result = fit(
        run.model,
        run.loss_fn,
        run.optimizer.transform,
        run.train,
        run_dir=run_dir,
        trainer=run.config.trainer,
        validation=validation,
        learning_rate=run.optimizer.learning_rate,
        inputs=run.splits.inputs,
        config=resolved,
        mesh=run.mesh,
        sparse_rows=run.optimizer.sparse_rows,
        restart=restart,
    )
    done = Path(run_dir) / "results.json"
    if result.trained == 0 and done.exists() and _same_end(json.loads(done.read_text()), result):
        print(f"the run had finished at step {result.step} ({result.stop_reason}); results unchanged in {done}")
        return exit_code(result.stop_reason, result.signal)
    results = {
        "stop_reason": result.stop_reason,
        "steps": result.step,
        "epoch": result.epoch,
        "best_step": result.best_step,
        f"best_validation_{run.config.trainer.metric}": result.best_metric,
        "validation_history": result.history,
        "seconds_this_session": time.perf_counter() - start,
        "devices": run.mesh.size,
    }
    if run.splits.test is not None and result.stop_reason in ("done", "early_stopping"):
        step, state = run.restore(run_dir, "best")
        results["test"] = {"checkpoint": step, **evaluate(run.model, run.loss_fn, state, run.batches("test"),
                                                          inputs=run.splits.inputs, mesh=run.mesh)}  # fmt: skip
    write_json(Path(run_dir) / "results.json", results)
    print(f"{result.stop_reason} at step {result.step}; results in {Path(run_dir) / 'results.json'}")
    return exit_code(result.stop_reason, result.signal)


def module_files(names: Sequence[str]) -> dict[str, str | None]:
    """The file each imported module was loaded from (None for a namespace or built-in module)."""
    return {name: getattr(sys.modules.get(name), "__file__", None) for name in names}


def _same_end(results: dict[str, Any], result: Any) -> bool:
    """Whether ``results.json`` already records this ending (with nothing trained: a finished run run again)."""
    return results.get("steps") == result.step and results.get("stop_reason") == result.stop_reason


def evaluate_run(
    run_dir: str, split: str = "validation", checkpoint: str = "best", data: Sequence[str] = ()
) -> dict[str, float]:
    """``funcnet evaluate``: metrics of a checkpoint of ``run_dir`` on a split.

    ``data`` overrides keys of the run's dataset section (``path=other.txt``), to evaluate the
    trained model on other data built by the same dataset factory.
    """
    saved = Path(run_dir) / "config.json"
    if not saved.exists():
        raise SystemExit(f"error: {run_dir} is not a run directory (no config.json)")
    config = apply_overrides(json.loads(saved.read_text()), [f"dataset.{item}" for item in data])
    run = Run(validate_config(config, search_dirs=recorded_imports(run_dir, config.get("imports", []))))
    step, state = run.restore(run_dir, checkpoint)
    metrics = evaluate(run.model, run.loss_fn, state, run.batches(split), inputs=run.splits.inputs, mesh=run.mesh)
    return {"checkpoint": step, "split": split, **metrics}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``funcnet`` console script."""
    parser = argparse.ArgumentParser(prog="funcnet", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p_train = commands.add_parser("train", help="train from a config file (resumes if RUN_DIR has checkpoints)")
    p_train.add_argument("config", help="a .toml or .json config file")
    p_train.add_argument("-s", "--serialization-dir", dest="run_dir", required=True, help="the run directory")
    p_train.add_argument("-o", "--override", action="append", default=[], help="key.path=value (repeatable)")
    p_train.add_argument(
        "--restart", action="store_true", help="start over from step 0 (the previous checkpoints are moved aside)"
    )
    add_cpu_devices_flag(p_train)
    group = p_train.add_argument_group(
        "several processes (one per host; srun, mpirun and Cloud TPU need none of these)"
    )
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, where the run's processes meet")
    group.add_argument("--num-processes", metavar="N", type=int, help="how many processes the run has")
    group.add_argument("--process-id", metavar="I", type=int, help="this process's index, 0 to N-1")
    p_eval = commands.add_parser("evaluate", help="evaluate a checkpoint of a run")
    p_eval.add_argument("run_dir")
    p_eval.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    p_eval.add_argument("--checkpoint", default="best", help="best, latest or a step number")
    p_eval.add_argument("--data", action="append", default=[], help="key=value for the dataset section (repeatable)")
    args = parser.parse_args(argv)
    use_cpu_devices_flag(p_train, getattr(args, "cpu_devices", None))  # train only
    try:
        if args.command == "train":
            processes = Processes(args.coordinator, args.num_processes, args.process_id)
            return train(args.config, args.run_dir, args.override, processes, restart=args.restart)
        print(json.dumps(evaluate_run(args.run_dir, args.split, args.checkpoint, args.data), indent=2))
        return 0
    except (ConfigError, FileNotFoundError, SetupError, RunLocked, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return BAD_CONFIG
    except (CheckpointSaveError, OSError) as error:  # a full disk also fails results.json: one line, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
