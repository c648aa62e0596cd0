"""The character-level language model as a ``funcnet train`` task: ``task = "char_lm"``.

Its config sections (``data``, ``model``, ``optimizer``, ``trainer``, ``sample``) with their defaults and
presets, the data pipeline (text streams cut for truncated back-propagation through time), and the
report of a trained run (streamed bits per character of the best checkpoint, samples). A config names
this module in ``imports`` to train the task (``experiments/configs/charlm.toml``);
``python -m funcnet.experiments.rnn`` is the command-line wrapper around it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from funcnet.config.optimizer import make_optimizer
from funcnet.config.tasks import TASKS, Task, resolve_sections
from funcnet.core import Model
from funcnet.deploy.export import ProgramSpec, Serving
from funcnet.train.data import Batches
from funcnet.train.loop import fit
from funcnet.train.options import TrainerConfig
from funcnet.train.result import FitResult
from funcnet.train.run import LoadedRun
from funcnet.train.run_files import PREPROCESSING, write_json
from funcnet.train.state import data_mesh
from funcnet.train.stopping import FAILED_REASONS
from funcnet.validation import ConfigError, check_compute_dtype

from ..train.sequences import tbptt_dataset
from .charlm import char_lm, generation, lm_loss, sample, stream_bits_per_character
from .text import Vocabulary, load_corpus

TASK = "char_lm"
MAX_LENGTH = 100_000  # characters one predict request may ask for
IMPORTS = ["funcnet.experiments.charlm_task"]  # what a config names to train this task with ``funcnet train``

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
    "medium": {  # the larger run for a 2-core CPU
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


@dataclasses.dataclass(frozen=True)
class DataSection:
    """The ``data`` section: a text file or folder ("" for the default corpus), chunk lengths, the text's encoding."""

    path: str = ""
    seq_len: int = 64
    eval_seq_len: int = 256
    encoding: str = "utf-8"


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The ``model`` section: the arguments of ``charlm.char_lm`` (the vocabulary size comes from the data);
    ``compute_dtype = "bfloat16"`` runs the matmuls in mixed precision (``funcnet.precision``), ``""`` in float32."""

    embed: int = 64
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.0
    unroll: int = 1
    compute_dtype: str = ""


@dataclasses.dataclass(frozen=True)
class SampleSection:
    """The ``sample`` section: how much text to generate, how, and from which prime text."""

    length: int = 400
    temperature: float = 0.8
    prime: str = ""
    seed: int = 0


class CharLM(Task):
    """The character-level language model as a ``funcnet train`` task (``task = "char_lm"``)."""

    sections = ("data", "model", "optimizer", "trainer", "sample")
    one_device_per_core = True  # the LSTM's small kernels leave a core idle on one device (docs/design.md)

    def resolve(self, config: dict[str, Any]) -> dict[str, Any]:
        """The base config updated by ``config``, every section checked; ``task`` and ``imports`` set.

        >>> CharLM().resolve({"model": {"hidden": 12}})["model"]["hidden"]
        12
        """
        schemas = {"data": DataSection, "model": ModelSection, "sample": SampleSection}
        config = resolve_sections(config, self, TASK, _BASE, schemas)
        check_compute_dtype(config["model"].get("compute_dtype"), "model.compute_dtype")
        if config["trainer"]["shuffle"]:
            raise ConfigError("trainer.shuffle", "must be false: batches continue each text stream (TBPTT)")
        return {"task": TASK, "imports": IMPORTS, **config}

    def fit(self, config: dict[str, Any], run_dir: Path, restart: bool) -> tuple[FitResult, dict[str, Any]]:
        experiment = Experiment(config)
        print(experiment.describe())
        data, devices = config["data"], experiment.mesh.size
        split = f" split over {devices} devices" if devices > 1 else ""
        print(f"model: {config['model']}, seq_len {data['seq_len']}, batch {config['trainer']['batch_size']}{split}")
        write_json(run_dir / PREPROCESSING, {"vocabulary": experiment.vocab.chars})
        optimizer = make_optimizer(config["optimizer"])
        result = fit(
            experiment.lm, lm_loss, optimizer.transform, experiment.train, run_dir=run_dir,
            trainer=TrainerConfig.from_dict(config["trainer"]), validation=experiment.validation,
            learning_rate=optimizer.learning_rate, config=config, mesh=experiment.mesh,
            items_per_example=data["seq_len"], item_name="chars", restart=restart,
        )  # fmt: skip
        failed = result.stop_reason in FAILED_REASONS or result.best_params is None  # fit said why in one line
        return result, {} if failed else experiment.report(run_dir, result)

    def model(self, config: dict[str, Any], preprocessing: dict[str, Any]) -> Model:
        return char_lm(len(preprocessing["vocabulary"]), **config["model"])

    def evaluate(self, run: LoadedRun, config: dict[str, Any], split: str) -> dict[str, float]:
        """Bits per character of a split of the corpus, streamed (the carry handed from chunk to chunk), as
        the run's report computes them; characters outside the run's vocabulary count as its unknown one."""
        data = config["data"]
        corpus = load_corpus(data["path"], data.get("encoding", "utf-8"))
        text = {"train": corpus.train, "validation": corpus.validation, "test": corpus.test}[split]
        if not text:
            raise ConfigError("data.path", f"{corpus.source} has no {split} split")
        vocab = Vocabulary(run.preprocessing["vocabulary"])
        bpc = stream_bits_per_character(run.model, run.params, vocab.encode(text), seq_len=data["eval_seq_len"])
        return {"bpc": bpc, "characters": float(len(text))}

    def serving(self, run: LoadedRun) -> Serving:
        """A prime, length, temperature and seed in, text out (``funcnet.deploy.handlers.CharLM``): the programs
        ``generate`` (the sampling ``lax.scan``, any number of steps) and ``probabilities`` (the next character's
        distribution after each character of a batch of sequences, any batch and length)."""
        lm = run.model
        (steps,) = jax.export.symbolic_shape("steps")
        batch, time = jax.export.symbolic_shape("batch, time")
        key_data = jax.random.key_data(jax.random.key(0))

        def generate(weights, tokens, prime_len, temperature, key):
            return generation(lm, weights["params"], tokens, prime_len, temperature, key)

        def probabilities(weights, ids):
            return jax.nn.softmax(lm.apply(weights["params"], weights["state"], ids)[0], axis=-1)

        scalar = jax.ShapeDtypeStruct
        programs = {
            "generate": ProgramSpec(generate, {
                "tokens": scalar((steps + 1,), jnp.int32), "prime_len": scalar((), jnp.int32),
                "temperature": scalar((), jnp.float32), "key": scalar(key_data.shape, key_data.dtype),
            }),
            "probabilities": ProgramSpec(probabilities, {"ids": scalar((batch, time), jnp.int32)}),
        }  # fmt: skip
        defaults = {k: run.config["sample"][k] for k in ("prime", "length", "temperature", "seed")}
        return Serving("char_lm", {"chars": "".join(run.preprocessing["vocabulary"]), "defaults": defaults}, programs)


TASKS.register(TASK)(CharLM)


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

    def report(self, run_dir: Path, result: FitResult) -> dict[str, Any]:
        """Streamed bits per character of the best parameters (validation, test), and samples from them; printed."""
        best = result.best_state()
        seq_len = self.config["data"]["eval_seq_len"]
        results: dict[str, Any] = {
            "validation_bpc": stream_bits_per_character(
                self.lm, best.params, self.vocab.encode(self.corpus.validation), seq_len=seq_len
            )
        }
        if self.corpus.test:
            results["test_bpc"] = stream_bits_per_character(
                self.lm, best.params, self.vocab.encode(self.corpus.test), seq_len=seq_len
            )
        results["samples"] = samples(self.lm, best.params, self.vocab, self.config["sample"], 2)
        print(
            f"\nbest checkpoint: step {result.best_checkpoint}; validation {results['validation_bpc']:.3f} bits/char, "
            "streamed (the "
            f"carry handed from chunk to chunk; the evaluations above start each {self.config['data']['seq_len']}-"
            "character chunk from zeros)",
            end="",
        )
        print(f", test {results['test_bpc']:.3f}" if "test_bpc" in results else "")
        print(f"samples (temperature {self.config['sample']['temperature']}):\n")
        for text in results["samples"]:
            print(text + "\n" + "-" * 60)
        print(f"logs: tensorboard --logdir {run_dir}")
        return results


def samples(lm: Model, params: Any, vocab: Vocabulary, options: dict[str, Any], count: int = 1) -> list[str]:
    """``count`` samples of the ``sample`` section's length and temperature, seeds ``seed``, ``seed + 1``, ..."""
    return [
        sample(lm, params, vocab, length=options["length"], temperature=options["temperature"],
               prime=options["prime"], seed=options["seed"] + i)
        for i in range(count)
    ]  # fmt: skip
