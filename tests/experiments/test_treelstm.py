"""The Tree-LSTM experiment: grouped tree batches, per-tree metrics, end to end on the synthetic language."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from funcnet.datasets import sentiment_language
from funcnet.experiments import tree_sentiment as treelstm
from funcnet.parse_trees import Vocabulary, parse_tree
from funcnet.train.data import Position
from funcnet.train.tree_batches import TreeBatches

ROOT = Path(__file__).resolve().parents[2]
SST = ROOT.parent / "shared" / "data" / "sst"
TREES = [parse_tree(line) for line in sentiment_language(203, seed=5)]
VOCAB = Vocabulary.from_trees(TREES)


def test_every_tree_appears_once_per_epoch_in_few_shapes():
    batches = TreeBatches(TREES, VOCAB, 25, groups=4, width=8, seed=1)
    assert batches.batch_size == 28 and batches.steps_per_epoch == 8
    roots, shapes = 0, set()
    for batch in batches.epoch(0):
        assert all(value.shape[0] == 4 for value in batch.values())  # one group per device
        shapes.add((batch["leaf_tokens"].shape, batch["children"].shape))
        roots += int(batch["mask"].sum())
    assert roots == len(TREES) and len(shapes) <= 4


def test_position_restores_the_same_batches():
    batches = TreeBatches(TREES, VOCAB, 25, groups=2, width=8, seed=1)
    straight = batches.iterate()
    expected = [next(straight) for _ in range(12)]  # crosses into epoch 1
    resumed = batches.iterate(Position(1, 2))
    for want, got in zip(expected[10:], [next(resumed) for _ in range(2)], strict=True):
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_tree_metrics_by_hand():
    # One group, two trees whose roots are rows 0 and 1; row 2 is the dummy.
    logits = jnp.log(jnp.array([[[0.1, 0.1, 0.1, 0.3, 0.4], [0.5, 0.2, 0.1, 0.1, 0.1], [0.2] * 5]]))
    batch = {
        "labels": jnp.array([[4, 2, 0]]),
        "label_mask": jnp.array([[1.0, 1.0, 0.0]]),
        "node_tree": jnp.array([[0, 1, 0]]),
        "roots": jnp.array([[0, 1]]),
    }
    metrics = treelstm.tree_metrics(logits, batch)
    np.testing.assert_allclose(metrics["root_accuracy"], [[1.0, 0.0]])
    np.testing.assert_allclose(metrics["_binary_count"], [[1.0, 0.0]])  # the neutral root is dropped
    np.testing.assert_allclose(metrics["_binary_correct"], [[1.0, 0.0]])
    np.testing.assert_allclose(metrics["loss"], [[-np.log(0.4), -np.log(0.1)]], rtol=1e-5)
    np.testing.assert_allclose(metrics["_node_count"], [[1.0, 1.0]])


def test_end_to_end_tiny_run(tmp_path):
    command = [sys.executable, "-m", "funcnet.experiments.treelstm", "--preset", "tiny", "--run-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    # The subprocess inherits the 8 forced devices: 8 groups of 2 trees, 16 a batch, 4 steps x 2 epochs.
    assert results["steps"] == 8 and results["validation"]["trees"] == 20 and results["test"]["trees"] == 20
    assert 1 <= results["compilations_this_session"] <= 4  # at most one program per bucket (2 leaf x 2 step sizes)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["optimizer"]["sparse_rows"] == {"embed/embedding": "leaf_tokens"}
    for split in ("validation", "test"):
        assert {"root_accuracy", "binary_root_accuracy", "node_accuracy"} <= set(results[split])
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))


@pytest.mark.skipif(not SST.is_dir(), reason="../shared/data/sst is absent (it is present in CI)")
def test_sst_folder_loads():
    train, dev, test = treelstm.load_splits({"path": str(SST)})
    assert (len(train), len(dev), test) == (8544, 1101, None)


def test_mixed_precision_model_over_groups_and_its_config():
    # Two groups of trees (vmapped, as on several devices) through the bfloat16-matmul Tree-LSTM: the gradients
    # stay float32 and within bfloat16 rounding (~0.5% here) of the float32 model's; a bad dtype is a ConfigError.
    import jax

    batch = next(TreeBatches(TREES[:12], VOCAB, 12, groups=2, width=4).epoch(0))
    fields = [jnp.asarray(batch[f]) for f in treelstm.FIELDS]
    models = {cd: treelstm.sentiment_model(VOCAB.size, 8, 8, compute_dtype=cd) for cd in ("", "bfloat16")}
    params, _ = models[""].init(jax.random.key(0), *fields)

    def grads(model):
        return jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, {}, *fields)[0] ** 2)))(params)

    want, got = grads(models[""]), grads(models["bfloat16"])
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(got))
    flat = [jnp.concatenate([a.ravel() for a in jax.tree.leaves(t)]) for t in (got, want)]
    assert 0 < float(jnp.linalg.norm(flat[0] - flat[1]) / jnp.linalg.norm(flat[1])) < 2e-2
    assert treelstm.resolve_config("tiny", ["model.compute_dtype=bfloat16"])["model"]["compute_dtype"] == "bfloat16"
    with pytest.raises(treelstm.ConfigError, match="compute_dtype must be a floating dtype"):
        treelstm.resolve_config("tiny", ["model.compute_dtype=int8"])


def test_funcnet_train_of_the_treelstm_config_resolves_as_the_module():
    from funcnet.config import cli
    from funcnet.experiments import treelstm as module

    overrides = ["model.hidden=12", "trainer.epochs=3"]
    config_file = str(ROOT / "experiments" / "configs" / "treelstm.toml")
    resolved = cli.resolve(config_file, overrides)
    assert resolved == module.resolve_config("default", overrides)
    assert resolved["task"] == "tree_sentiment" and resolved["model"]["hidden"] == 12
