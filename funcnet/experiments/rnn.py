"""Character-level LSTM language model: ``python -m funcnet.experiments.rnn``.

Trains embedding -> stacked LSTM -> dense with truncated back-propagation through time on a long
text, the carry handed from batch to batch, with funcnet's training engine: Adam with warmup and
cosine decay, gradient clipping, validation bits per character, the best checkpoint kept,
TensorBoard logs. Then it samples text from the best checkpoint and writes ``results.json``.

With no ``--data`` it trains on the running Python's standard-library sources (no download; see
``funcnet.experiments.text``). Every option is a config value: a flag, ``-o section.key=value``
and a ``--config`` TOML/JSON file with the sections ``data``, ``model``, ``optimizer``, ``trainer``
and ``sample`` say the same thing (flags win over the file, the file over the preset).

The run is the ``char_lm`` task of ``funcnet train`` (``funcnet.experiments.charlm_task``): ``funcnet train
experiments/configs/charlm.toml -s RUN_DIR`` resolves the same config as this command's default
preset and writes the same ``config.json`` and ``results.json``.

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

from funcnet.config.run_config import apply_overrides, load_config, merge_configs
from funcnet.config.runs import load_run
from funcnet.config.tasks import choose_devices, train_run
from funcnet.errors import DataError
from funcnet.train.devices import add_cpu_devices_flag, use_cpu_devices_flag
from funcnet.validation import ConfigError

from .charlm_task import PRESETS, CharLM, Experiment, samples
from .text import Vocabulary

__all__ = ["PRESETS", "CharLM", "Experiment", "main", "resolve_config"]

# Flags are shorthands for config keys.
FLAGS = {
    "data": "data.path", "seq-len": "data.seq_len", "embed": "model.embed", "hidden": "model.hidden",
    "layers": "model.layers", "dropout": "model.dropout", "learning-rate": "optimizer.learning_rate",
    "steps": "trainer.max_steps", "batch-size": "trainer.batch_size", "eval-every": "trainer.eval_every",
    "seed": "trainer.seed", "temperature": "sample.temperature", "prime": "sample.prime",
    "sample-length": "sample.length",
}  # fmt: skip


def resolve_config(preset: str = "default", file: str | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    """Preset, then file, then overrides; every section checked, with key paths in errors.

    >>> resolve_config("tiny", overrides=["model.hidden=12"])["model"]["hidden"]
    12
    """
    if preset not in PRESETS:
        raise ConfigError("preset", f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    config = merge_configs(PRESETS[preset], load_config(file)) if file else dict(PRESETS[preset])
    return CharLM().resolve(apply_overrides(config, overrides))


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
            config = CharLM().resolve(config)
        else:
            config = resolve_config(args.preset, args.config, overrides)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.sample_only:
        try:
            run = load_run(args.sample_only)
        except FileNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"best checkpoint: step {run.step}\n")
        vocab = Vocabulary(run.preprocessing["vocabulary"])
        print(samples(run.model, run.params, vocab, config["sample"])[0])
        return 0
    if args.cpu_devices is None:  # one device per core where that is faster: on CPU, for this LSTM
        choose_devices(config)
    run_dir = Path(args.resume or args.run_dir or time.strftime("runs/rnn-%Y%m%d-%H%M%S"))
    if not args.resume and (run_dir / "checkpoints").exists():
        print(f"error: {run_dir} already holds a run; continue it with --resume {run_dir}", file=sys.stderr)
        return 2
    try:
        return train_run(config, run_dir, changeable=("trainer", "sample") if args.resume else ())
    except (DataError, FileNotFoundError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
