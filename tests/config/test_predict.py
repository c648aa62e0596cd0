"""funcnet predict: every task's runs, JSON lines in and out, bad lines as error records, few compilations."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np

from funcnet.config import cli, load_run
from funcnet.config.deployment import served
from funcnet.deploy.requests import batch_sizes, predict_lines
from funcnet.experiments import charlm
from funcnet.experiments.text import Vocabulary
from funcnet.parse_trees import num_nodes, parse_tree


def _predict(run_dir, lines, capsys, **options):
    code = cli.main(["predict", str(run_dir), "-", *[f"--{k}={v}" for k, v in options.items()]])
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines()]


def test_supervised_predictions_prepare_raw_inputs_and_bad_lines_get_error_records(iris_run, capsys, monkeypatch):
    lines = ["[5.0, 3.4, 1.5]", '{"x": [6.5, 3.0, 5.5]}', "", "[1, 2]", "{oops", '{"z": 1}', '{"x": ["a", 1, 2]}']
    monkeypatch.setattr("sys.stdin", iter(line + "\n" for line in lines))
    code, records = _predict(iris_run, lines, capsys)
    assert code == 1  # some lines failed; the others still ran
    assert [r["line"] for r in records] == [1, 2, 4, 5, 6, 7]  # the blank line 3 is skipped
    run = load_run(iris_run)
    stats = run.preprocessing["standardize"]["x"]
    raw = np.array([[5.0, 3.4, 1.5], [6.5, 3.0, 5.5]], np.float32)
    x = (raw - np.array(stats["mean"], np.float32)) / np.array(stats["std"], np.float32)
    expected = np.asarray(run.model.apply(run.params, run.state, jnp.asarray(x))[0])
    np.testing.assert_allclose([records[0]["prediction"], records[1]["prediction"]], expected, rtol=1e-5, atol=1e-6)
    assert records[2]["error"] == "x: expected shape [3], got [2]"
    assert records[3]["error"].startswith("not JSON")
    assert "z: not an input of the model" in records[4]["error"]
    assert records[5]["error"].startswith("x: expected numbers of dtype float32")


def test_a_file_of_many_lines_compiles_once_per_batch_size(iris_run):
    lines = [json.dumps([float(i), 3.0, 1.5]) for i in range(150)]  # batches of 64, 64 and 22 -> padded to 32
    handler = served(iris_run).handler
    records = list(predict_lines(handler, lines, batch_size=64))
    assert len(records) == 150 and all("prediction" in r for r in records)
    assert handler.forward.compilations() == 2  # sizes 64 and 32, not one program per line
    assert batch_sizes(64) == [1, 2, 4, 8, 16, 32, 64]


def test_char_lm_predictions_echo_the_prime_and_equal_the_sampler(charlm_run, capsys, monkeypatch):
    lines = [
        '"the "',
        '{"prime": "cat", "length": 25, "seed": 3, "temperature": 0.5}',
        '{"length": 0}',
        '{"primer": "a"}',
    ]
    monkeypatch.setattr("sys.stdin", iter(line + "\n" for line in lines))
    code, records = _predict(charlm_run, lines, capsys)
    assert code == 1 and records[0]["prime"] == "the " and records[1]["prime"] == "cat"
    run = load_run(charlm_run)
    vocab = Vocabulary(run.preprocessing["vocabulary"])
    options = run.config["sample"]
    want = charlm.sample(run.model, run.params, vocab, length=options["length"], temperature=options["temperature"],
                         prime="the ", seed=options["seed"])  # fmt: skip
    assert records[0]["text"] == want
    assert records[1]["text"] == charlm.sample(run.model, run.params, vocab, length=25, temperature=0.5, prime="cat",
                                               seed=3)  # fmt: skip
    handler = served(charlm_run).handler
    assert len(list(predict_lines(handler, lines[:2]))) == 2
    assert handler.generate.compilations() == 1  # both requests in one bucket: one program
    assert records[2]["error"].startswith("length: expected an int from 1")
    assert "Did you mean 'prime'?" in records[3]["error"]


def test_sentiment_predictions_give_every_node_and_do_not_depend_on_the_batch(tree_run, capsys, monkeypatch):
    trees = ["(3 (2 a) (3 (2 good) (2 film)))", "(1 (2 not) (3 (2 a) (3 (3 good) (2 film))))"]
    lines = [json.dumps(t) for t in trees] + [
        '{"sentence": "a good film"}',
        '"(3 (2 a)"',
        '{"tree": "(2 (2 a) (2 b) (2 c))"}',
    ]
    monkeypatch.setattr("sys.stdin", iter(line + "\n" for line in lines))
    code, records = _predict(tree_run, lines, capsys)
    assert code == 1
    for record, tree in zip(records[:2], trees, strict=True):
        assert len(record["nodes"]) == num_nodes(parse_tree(tree))
        assert record["nodes"][0]["probabilities"] == record["probabilities"]
        assert abs(sum(record["probabilities"]) - 1) < 1e-3
    assert records[0]["nodes"][0]["text"] == "a good film" and records[0]["nodes"][2]["text"] == "good film"
    assert records[2]["nodes"][0]["text"] == "a good film"  # a sentence becomes a right-branching tree
    (alone,) = predict_lines(served(tree_run).handler, [lines[1]], batch_size=1)
    # Padding slots and other trees do not leak into a tree's nodes (probabilities rounded to 4 places; other
    # batch shapes may round the last place differently).
    assert [n["text"] for n in alone["nodes"]] == [n["text"] for n in records[1]["nodes"]]
    np.testing.assert_allclose(
        [n["probabilities"] for n in alone["nodes"]], [n["probabilities"] for n in records[1]["nodes"]], atol=2e-4
    )
    assert records[3]["error"].startswith("tree: line 1")
    assert "the Tree-LSTM is binary" in records[4]["error"]
