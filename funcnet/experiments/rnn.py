"""Character-level LSTM language model: ``python -m funcnet.experiments.rnn``.

Trains embedding -> stacked LSTM -> dense with truncated back-propagation through time on a long
text, the carry handed from batch to batch, with funcnet's training engine: Adam with warmup and
cosine decay, gradient clipping, validation bits per character, the best checkpoint kept,
TensorBoard logs. Then it samples text from the best checkpoint and writes ``results.json``.

With no ``--data`` it trains on the running Python's standard-library sources (no download; see
``funcnet.experiments.text``). Every option is a config value: a flag, ``-o section.key=value``
and a ``--config`` TOML/JSON file with the sections ``data``, ``model``, ``optimizer``, ``trainer``
and ``sample`` say the same thing (flags win over the file, the file over the preset).

    python -m funcnet.experiments.rnn                              # the default run, a few minutes on CPU
    python -m funcnet.experiments.rnn --data ../shared/data/tinyshakespeare --preset large
    python -m funcnet.experiments.rnn --cpu-devices                # one JAX device per core, the batch split
    python -m funcnet.experiments.rnn --resume runs/rnn-...        # continue (e.g. with a larger --steps)
    python -m funcnet.experiments.rnn --sample-only runs/rnn-... --temperature 0.5 --prime "def "
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax

from funcnet.config.optimizer import make_optimizer
from funcnet.config.run_config import apply_overrides, load_config, merge_configs
from funcnet.errors import DataError
from funcnet.train.checkpoint import restore_run
from funcnet.train.data import Batches
from funcnet.train.devices import add_cpu_devices_flag, use_cpu_devices_flag
from funcnet.train.loop import fit
from funcnet.train.options import TrainerConfig
from funcnet.train.run_files import write_json
from funcnet.train.state import abstract_train_state, data_mesh
from funcnet.train.stopping import FAILED_REASONS, exit_code
from funcnet.validation import ConfigError, check_arguments, check_compute_dtype

from .charlm import char_lm, lm_loss, sample, stream_bits_per_character
from .text import Vocabulary, load_corpus, tbptt_dataset

_BASE: dict[str, Any] = {
    "data": {"path": "", "seq_len": 64, "eval_seq_len": 256},
    "model": {"embed": 64, "hidden": 256, "layers": 1, "dropout": 0.0, "unroll": 2},
    "optimizer": {
        "type": "adam", "learning_rate": 3e-3, "grad_clip_norm": 1.0,
        "schedule": {"type": "warmup_cosine", "warmup_steps": 100, "decay_steps": 1500, "end_value": 3e-4},
    },
    "trainer": {
        "max_steps": 1500, "batch_size": 32, "eval_every": 250, "log_every": 50, "metric": "bpc",
        "shuffle": False, "keep_checkpoints": 2,
    },
    "sample": {"length": 400, "temperature": 0.8, "prime": "", "seed": 0},
}  # fmt: skip
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "medium": {  # the larger run that fits a 2-core CPU in about half an hour
        "data": {"seq_len": 100},
        "model": {"embed": 64, "hidden": 512, "layers": 1, "dropout": 0.1},
        "optimizer": {"learning_rate": 2e-3, "schedule": {"decay_steps": 3000, "end_value": 1e-4}},
        "trainer": {"max_steps": 3000, "batch_size": 32, "eval_every": 300},
    },
    "large": {  # a GPU-sized model
        "data": {"seq_len": 100},
        "model": {"embed": 64, "hidden": 512, "layers": 2, "dropout": 0.25},
        "optimizer": {"learning_rate": 2e-3, "schedule": {"decay_steps": 6000, "end_value": 1e-4}},
        "trainer": {"max_steps": 6000, "batch_size": 64, "eval_every": 500},
    },
    "tiny": {  # for tests: seconds
        "data": {"seq_len": 16, "eval_seq_len": 32},
        "model": {"embed": 8, "hidden": 16, "unroll": 1},
        "optimizer": {"schedule": {"warmup_steps": 2, "decay_steps": 20}},
        "trainer": {"max_steps": 20, "batch_size": 8, "eval_every": 10, "log_every": 5},
        "sample": {"length": 40},
    },
}
# Flags are shorthands for config keys.
FLAGS = {
    "data": "data.path", "seq-len": "data.seq_len", "embed": "model.embed", "hidden": "model.hidden",
    "layers": "model.layers", "dropout": "model.dropout", "learning-rate": "optimizer.learning_rate",
    "steps": "trainer.max_steps", "batch-size": "trainer.batch_size", "eval-every": "trainer.eval_every",
    "seed": "trainer.seed", "temperature": "sample.temperature", "prime": "sample.prime",
    "sample-length": "sample.length",
}  # fmt: skip


def data_options(path: str = "", seq_len: int = 64, eval_seq_len: int = 256, encoding: str = "utf-8") -> None:
    """The ``data`` section: a text file or folder ("" for the default corpus), chunk lengths, the text's encoding."""


def model_options(
    embed: int = 64, hidden: int = 256, layers: int = 1, dropout: float = 0.0, unroll: int = 1, compute_dtype: str = ""
) -> None:
    """The ``model`` section: the arguments of ``charlm.char_lm`` (the vocabulary size comes from the data);
    ``compute_dtype = "bfloat16"`` runs the matmuls in mixed precision (``funcnet.precision``), ``""`` in float32."""


def sample_options(length: int = 400, temperature: float = 0.8, prime: str = "", seed: int = 0) -> None:
    """The ``sample`` section: how much text to generate, how, and from which prime text."""


def resolve_config(preset: str = "default", file: str | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    """Preset, then file, then overrides; every section checked, with key paths in errors.

    >>> resolve_config("tiny", overrides=["model.hidden=12"])["model"]["hidden"]
    12
    """
    if preset not in PRESETS:
        raise ConfigError("preset", f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    config = merge_configs(_BASE, PRESETS[preset])
    if file:
        config = merge_configs(config, load_config(file))
    config = apply_overrides(config, overrides)
    unknown = sorted(set(config) - set(_BASE))
    if unknown:
        raise ConfigError(unknown[0], f"unknown section; the sections are {sorted(_BASE)}")
    for section, options in (("data", data_options), ("model", model_options), ("sample", sample_options)):
        check_arguments(options, config[section], section, section)
    check_compute_dtype(config["model"].get("compute_dtype"), "model.compute_dtype")
    config["trainer"] = TrainerConfig.from_dict(config["trainer"]).to_dict()
    if config["trainer"]["shuffle"]:
        raise ConfigError("trainer.shuffle", "must be false: batches continue each text stream (TBPTT)")
    make_optimizer(config["optimizer"])
    return config


class Experiment:
    """The data, model and loss of one resolved config."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        data, trainer = config["data"], config["trainer"]
        self.corpus = load_corpus(data["path"], data.get("encoding", "utf-8"))
        self.vocab = Vocabulary.from_text(self.corpus.train)
        self.lm = char_lm(self.vocab.size, **config["model"])
        self.mesh = data_mesh()
        self.train = Batches(
            tbptt_dataset(self.vocab.encode(self.corpus.train), trainer["batch_size"], data["seq_len"]),
            trainer["batch_size"], shuffle=False, multiple_of=self.mesh.size,
        )  # fmt: skip
        eval_size = trainer["eval_batch_size"] or trainer["batch_size"]
        valid = tbptt_dataset(self.vocab.encode(self.corpus.validation), eval_size, data["eval_seq_len"])
        self.validation = Batches(valid, eval_size, shuffle=False, multiple_of=self.mesh.size)

    def describe(self) -> str:
        c = self.corpus
        sizes = f"{len(c.train):,} / {len(c.validation):,} / {len(c.test or ''):,} characters (train/valid/test)"
        return f"data: {c.source}\n      {sizes}, vocabulary {self.vocab.size - 1} characters (+1 unknown)"

    def restore_best(self, run_dir: Path):
        trainer = self.config["trainer"]
        example = next(iter(self.train.epoch(0)))["x"]
        optimizer = make_optimizer(self.config["optimizer"]).transform
        abstract = abstract_train_state(self.lm, optimizer, jax.random.key(0), example, mesh=self.mesh)
        return restore_run(run_dir / "checkpoints", abstract, metric=trainer["metric"], mode=trainer["mode"])

    def samples(self, params, count: int = 1) -> list[str]:
        options = self.config["sample"]
        return [
            sample(self.lm, params, self.vocab, length=options["length"], temperature=options["temperature"],
                   prime=options["prime"], seed=options["seed"] + i)
            for i in range(count)
        ]  # fmt: skip


def train(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Trains (or resumes) a run, samples from its best checkpoint and writes ``results.json``."""
    experiment = Experiment(config)
    print(experiment.describe())
    data = config["data"]
    devices = experiment.mesh.size
    split = f" split over {devices} devices" if devices > 1 else ""
    print(f"model: {config['model']}, seq_len {data['seq_len']}, batch {config['trainer']['batch_size']}{split}")
    write_json(run_dir / "config.json", config)
    optimizer = make_optimizer(config["optimizer"])
    start = time.perf_counter()
    result = fit(
        experiment.lm, lm_loss, optimizer.transform, experiment.train, run_dir=run_dir,
        trainer=TrainerConfig.from_dict(config["trainer"]), validation=experiment.validation,
        learning_rate=optimizer.learning_rate, config=config, mesh=experiment.mesh,
        items_per_example=data["seq_len"], item_name="chars",
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if result.stop_reason in FAILED_REASONS:  # said in one line by fit; nothing to evaluate or sample
        failed = {"stop_reason": result.stop_reason, "signal": None, "steps": result.step, "config": config}
        write_json(run_dir / "results.json", failed)
        return failed
    step, state = experiment.restore_best(run_dir)
    results: dict[str, Any] = {
        "stop_reason": result.stop_reason, "signal": result.signal, "steps": result.step, "best_step": step,
        "wall_seconds_this_session": round(seconds, 1),
        "best_validation_bpc_chunks": result.best_metric,
        "final_validation_bpc_chunks": result.history[-1]["bpc"] if result.history else None,
        "validation_bpc": stream_bits_per_character(
            experiment.lm, state.params, experiment.vocab.encode(experiment.corpus.validation),
            seq_len=data["eval_seq_len"],
        ),
        "history": result.history, "config": config,
    }  # fmt: skip
    if experiment.corpus.test:
        results["test_bpc"] = stream_bits_per_character(
            experiment.lm, state.params, experiment.vocab.encode(experiment.corpus.test), seq_len=data["eval_seq_len"]
        )
    write_json(run_dir / "results.json", results)
    print(
        f"\nbest checkpoint: step {step}; validation {results['validation_bpc']:.3f} bits/char, streamed (the carry "
        f"handed from chunk to chunk; the evaluations above start each {data['seq_len']}-character chunk from zeros)",
        end="",
    )
    print(f", test {results['test_bpc']:.3f}" if "test_bpc" in results else "")
    print(f"samples (temperature {config['sample']['temperature']}):\n")
    for text in experiment.samples(state.params, 2):
        print(text + "\n" + "-" * 60)
    print(f"results: {run_dir / 'results.json'}; logs: tensorboard --logdir {run_dir}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m funcnet.experiments.rnn", description=__doc__.splitlines()[0],
        epilog="Flags are shorthands: " + ", ".join(f"--{f} = {k}" for f, k in FLAGS.items()),
    )  # fmt: skip
    parser.add_argument("--preset", default="default", help=f"one of {sorted(PRESETS)}")
    parser.add_argument("--config", help="a TOML or JSON file with data/model/optimizer/trainer/sample sections")
    parser.add_argument("-o", "--override", action="append", default=[], help="section.key=value (repeatable)")
    parser.add_argument("--run-dir", help="where checkpoints, logs and results go (default: runs/rnn-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue that run (budget flags may change)")
    parser.add_argument("--sample-only", metavar="RUN_DIR", help="sample from a trained run, no training")
    add_cpu_devices_flag(parser)
    for flag, key in FLAGS.items():
        parser.add_argument(f"--{flag}", help=f"= -o {key}=VALUE")
    args = parser.parse_args(argv)
    use_cpu_devices_flag(parser, args.cpu_devices)
    overrides = list(args.override) + [f"{FLAGS[f]}={v}" for f in FLAGS if (v := getattr(args, f.replace("-", "_")))]
    try:
        existing = args.resume or args.sample_only
        if existing:
            saved = json.loads((Path(existing) / "config.json").read_text())
            config = apply_overrides(saved, overrides)
            changed = [k for k in ("data", "model", "optimizer") if config[k] != saved[k]]
            if changed:
                raise ConfigError(changed[0], "cannot change when resuming or sampling a run (trainer and sample can)")
            config["trainer"] = TrainerConfig.from_dict(config["trainer"]).to_dict()
        else:
            config = resolve_config(args.preset, args.config, overrides)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.sample_only:
        experiment = Experiment(config)
        try:
            step, state = experiment.restore_best(Path(args.sample_only))
        except FileNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"best checkpoint: step {step}\n")
        print(experiment.samples(state.params)[0])
        return 0
    run_dir = Path(args.resume or args.run_dir or time.strftime("runs/rnn-%Y%m%d-%H%M%S"))
    if not args.resume and (run_dir / "checkpoints").exists():
        print(f"error: {run_dir} already holds a run; continue it with --resume {run_dir}", file=sys.stderr)
        return 2
    try:
        results = train(config, run_dir)
    except (DataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return exit_code(results["stop_reason"], results["signal"])


if __name__ == "__main__":
    sys.exit(main())
