"""The char-LM experiment: text handling, TBPTT carry, sampling, config equivalence, end to end with resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet.experiments import rnn
from funcnet.experiments.charlm import char_lm, sample
from funcnet.experiments.text import Vocabulary, load_corpus, stdlib_corpus
from funcnet.train.sequences import tbptt_dataset

ROOT = Path(__file__).resolve().parents[2]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare"


def test_default_corpus_is_deterministic_and_split_at_lines():
    a, b = stdlib_corpus(), stdlib_corpus()
    assert a == b
    assert a.train.endswith("\n") and a.validation.endswith("\n")
    total = len(a.train) + len(a.validation) + len(a.test)
    assert 0.85 < len(a.train) / total < 0.95
    assert all(c == "\n" or 32 <= ord(c) < 127 for c in a.train)


def test_tbptt_batches_continue_each_stream():
    ids = np.arange(1000, dtype=np.int32)
    data = tbptt_dataset(ids, batch_size=4, seq_len=7)
    first, second = data[np.arange(0, 4)], data[np.arange(4, 8)]
    np.testing.assert_array_equal(second["x"][:, 0], first["x"][:, -1] + 1)
    np.testing.assert_array_equal(first["y"], first["x"] + 1)
    # every chunk of every row appears exactly once
    everything = data[np.arange(len(data))]["x"].reshape(-1)
    assert len(np.unique(everything)) == everything.size


def test_carry_handed_between_chunks_equals_one_long_chunk():
    lm = char_lm(11, embed=4, hidden=8, layers=2)
    ids = jax.random.randint(jax.random.key(1), (3, 12), 0, 11)
    params, _ = lm.init(jax.random.key(0), ids)
    whole, state_whole = lm.apply(params, {}, ids)  # evaluation: from zeros
    part1, state = lm.apply(params, {}, ids[:, :5])
    part2, state = lm.apply(params, {}, ids[:, 5:], initial_carry=state["carry"])
    carry, carry_whole = state["carry"], state_whole["carry"]
    # Tolerance: the same float32 ops in the same order; scan splits change nothing but fusion.
    chex.assert_trees_all_close(jnp.concatenate([part1, part2], axis=1), whole, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(carry, carry_whole, rtol=1e-5, atol=1e-6)


def test_training_state_carries_over_and_evaluation_starts_from_zeros():
    lm = char_lm(11, embed=4, hidden=8)
    ids = jax.random.randint(jax.random.key(1), (2, 6), 0, 11)
    params, state = lm.init(jax.random.key(0), ids)
    _, state1 = lm.apply(params, state, ids, train=True)
    logits2, _ = lm.apply(params, state1, ids, train=True)
    want, _ = lm.apply(params, {}, ids, initial_carry=state1["carry"])
    chex.assert_trees_all_close(logits2, want)
    evaluated, _ = lm.apply(params, state1, ids)  # evaluation ignores the training carry
    from_zeros, _ = lm.apply(params, {}, ids, initial_carry=state["carry"])  # init's state: zero carries
    chex.assert_trees_all_close(evaluated, from_zeros)
    assert not jnp.allclose(evaluated, logits2)


def test_sampling_is_deterministic_and_uses_the_vocabulary():
    vocab = Vocabulary.from_text("abc def\n")
    lm = char_lm(vocab.size, embed=4, hidden=8)
    params, _ = lm.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    a = sample(lm, params, vocab, length=200, seed=3, prime="ab")
    assert a == sample(lm, params, vocab, length=200, seed=3, prime="ab")
    assert a != sample(lm, params, vocab, length=200, seed=4, prime="ab")
    assert len(a) == 200 and set(a) <= set(vocab.chars[1:])


def test_flags_config_file_and_overrides_say_the_same(tmp_path):
    (tmp_path / "c.toml").write_text("[model]\nhidden = 24\n[trainer]\nmax_steps = 7\n")
    from_file = rnn.resolve_config("tiny", str(tmp_path / "c.toml"))
    from_overrides = rnn.resolve_config("tiny", overrides=["model.hidden=24", "trainer.max_steps=7"])
    assert from_file == from_overrides


@pytest.mark.parametrize("preset", sorted(rnn.PRESETS))
def test_every_preset_is_a_valid_config(preset):
    config = rnn.resolve_config(preset)
    assert config["trainer"]["shuffle"] is False and config["trainer"]["metric"] == "bpc"


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"model\.hiden: unknown"):
        rnn.resolve_config("tiny", overrides=["model.hiden=3"])
    with pytest.raises(ValueError, match=r"trainer\.shuffle: must be false"):
        rnn.resolve_config("tiny", overrides=["trainer.shuffle=true"])
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        rnn.resolve_config("huge")


def test_mixed_precision_model_and_its_config():
    # The bfloat16-matmul model trains on float32 params: its gradients stay float32 and within bfloat16
    # rounding (observed 0.5% here; 2e-2 bound) of the float32 model's; a bad dtype is a ConfigError.
    ids = jax.random.randint(jax.random.key(1), (4, 9), 0, 11)
    models = {cd: char_lm(11, embed=4, hidden=8, layers=2, compute_dtype=cd) for cd in ("", "bfloat16")}
    params, state = models[""].init(jax.random.key(0), ids)

    def grads(model):
        return jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, state, ids, train=True)[0] ** 2)))(params)

    want, got = grads(models[""]), grads(models["bfloat16"])
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(got))
    flat = [jnp.concatenate([a.ravel() for a in jax.tree.leaves(t)]) for t in (got, want)]
    assert 1e-5 < float(jnp.linalg.norm(flat[0] - flat[1]) / jnp.linalg.norm(flat[1])) < 2e-2
    assert (
        rnn.resolve_config("tiny", overrides=["model.compute_dtype=bfloat16"])["model"]["compute_dtype"] == "bfloat16"
    )
    with pytest.raises(rnn.ConfigError, match=r"model\.compute_dtype: compute_dtype must be a floating dtype"):
        rnn.resolve_config("tiny", overrides=["model.compute_dtype=int8"])


def _text_file(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran"]
    lines = [" ".join(rng.choice(words, 8)) for _ in range(600)]
    path = tmp_path / "text.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(*args):
    command = [sys.executable, "-m", "funcnet.experiments.rnn", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def test_end_to_end_tiny_run_then_resume_then_sample(tmp_path):
    text, run_dir = _text_file(tmp_path), tmp_path / "run"
    out = _run("--preset", "tiny", "--data", str(text), "--run-dir", str(run_dir), "--steps", "30")
    assert "vocabulary" in out and "bits/char" in out and "tensorboard --logdir" in out
    assert list((run_dir / "logs").glob("events.out.tfevents.*"))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 30 and results["stop_reason"] == "done"
    characters = len(set(text.read_text()))
    assert results["validation_bpc"] < np.log2(characters)  # it learned more than "every character is equally likely"
    assert {"test_bpc", "history", "samples", "seconds_this_session"} <= set(results)
    assert json.loads((run_dir / "config.json").read_text())["task"] == "char_lm"
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir())[-1] == 30

    out = _run("--resume", str(run_dir), "--steps", "40")
    assert "resuming from step 30" in out
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 40

    out = _run("--sample-only", str(run_dir), "--sample-length", "50", "--prime", "the ")
    assert "best checkpoint: step" in out


def test_cpu_devices_flag_splits_each_batch_over_that_many_devices(tmp_path):
    # This session's XLA_FLAGS (8 forced devices, inherited) would give 8; the flag sets 2.
    run_dir = tmp_path / "run"
    out = _run("--preset", "tiny", "--data", str(_text_file(tmp_path)), "--run-dir", str(run_dir), "--steps", "10",
               "--cpu-devices", "2")  # fmt: skip
    assert "batch 8 split over 2 devices" in out
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 10
    bad = subprocess.run([sys.executable, "-m", "funcnet.experiments.rnn", "--cpu-devices", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "--cpu-devices: cpu_devices: expected a positive int" in bad.stderr


@pytest.mark.skipif(not SHAKESPEARE.is_dir(), reason="../shared/data/tinyshakespeare is absent (it is present in CI)")
def test_tiny_shakespeare_folder_loads_and_batches():
    corpus = load_corpus(SHAKESPEARE)
    assert corpus.test is None and Vocabulary.from_text(corpus.train).size == 66  # 65 characters + unknown
    config = rnn.resolve_config("tiny", overrides=[f"data.path={SHAKESPEARE}", "trainer.max_steps=5"])
    experiment = rnn.Experiment(config)
    assert len(corpus.train) == 1_003_836  # plain ASCII: one character per byte of train.txt
    batch = next(iter(experiment.train.epoch(0)))
    assert batch["x"].shape == (8, 16) and batch["x"].max() < 66 and batch["x"].min() > 0  # no unknown ids


def test_a_diverging_run_stops_in_one_line_with_exit_code_1(tmp_path, capsys):
    code = rnn.main(["--preset", "tiny", "--learning-rate", "1e8", "--run-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 1 and "the run diverged, stopping" in out and "Traceback" not in out
    assert json.loads((tmp_path / "run" / "results.json").read_text())["stop_reason"] == "diverged"


def test_funcnet_train_of_the_charlm_config_is_the_main_job(tmp_path, monkeypatch):
    """The config file and the module resolve the same config and write the same results.json."""
    from funcnet.config import cli

    text = _text_file(tmp_path)
    tiny = [f"{section}.{key}={json.dumps(value)}" for section, table in rnn.PRESETS["tiny"].items()
            for key, value in _flat(table)]  # fmt: skip
    overrides = [*tiny, f"data.path={text}", "trainer.progress=false"]
    config_file = str(ROOT / "experiments" / "configs" / "charlm.toml")
    assert cli.resolve(config_file, overrides) == rnn.resolve_config("default", overrides=overrides)
    assert cli.resolve(config_file, overrides) == rnn.resolve_config("tiny", overrides=overrides[len(tiny) :])
    flags = [arg for override in overrides for arg in ("-o", override)]
    assert cli.main(["train", config_file, "-s", str(tmp_path / "cli"), *flags]) == 0
    assert rnn.main(["--preset", "tiny", "--data", str(text), "-o", "trainer.progress=false",
                     "--run-dir", str(tmp_path / "module")]) == 0  # fmt: skip
    read = lambda run, name: json.loads((tmp_path / run / name).read_text())  # noqa: E731
    assert read("cli", "config.json") == read("module", "config.json")
    drop = lambda results: {k: v for k, v in results.items() if not k.endswith("_this_session")}  # noqa: E731
    assert drop(read("cli", "results.json")) == drop(read("module", "results.json"))


def _flat(table, prefix=""):
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
