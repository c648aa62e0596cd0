"""funcnet evaluate: every task's runs reopened without the optimizer, equal to what the run reported."""

from __future__ import annotations

import json

import pytest

from funcnet.config import cli


def _evaluate(run_dir, capsys, *options):
    code = cli.main(["evaluate", str(run_dir), *options])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err.strip().splitlines()[-1])


def test_supervised_test_split_equals_the_runs_own_evaluation(iris_run, capsys):
    code, metrics = _evaluate(iris_run, capsys, "--split", "test")
    reported = json.loads((iris_run / "results.json").read_text())["test"]
    assert code == 0 and metrics["checkpoint"] == reported["checkpoint"]
    assert metrics["loss"] == pytest.approx(reported["loss"], rel=1e-5)
    assert metrics["count"] == reported["count"]


def test_char_lm_bits_per_character_equal_the_runs_report(charlm_run, capsys):
    code, metrics = _evaluate(charlm_run, capsys, "--split", "validation")
    results = json.loads((charlm_run / "results.json").read_text())
    assert code == 0 and metrics["checkpoint"] == results["best_step"]
    assert metrics["bpc"] == pytest.approx(results["validation_bpc"], rel=1e-5)


def test_char_lm_evaluates_other_text_with_the_runs_vocabulary(charlm_run, tmp_path, capsys):
    other = tmp_path / "other.txt"
    lines = ["QQQ sat" if i % 10 == 0 else "the cat sat on the mat." for i in range(2000)]
    other.write_text("\n".join(lines))  # Q: never seen in training, read as the unknown character
    code, metrics = _evaluate(charlm_run, capsys, "--split", "validation", "--data", f"path={other}")
    assert code == 0 and metrics["characters"] < len(other.read_text())  # the validation part of the other text
    assert 0 < metrics["bpc"] < 20


def test_sentiment_accuracies_equal_the_runs_own(tree_run, capsys):
    code, metrics = _evaluate(tree_run, capsys, "--split", "validation", "--checkpoint", "best")
    reported = json.loads((tree_run / "results.json").read_text())["validation"]
    assert code == 0
    for name in ("root_accuracy", "binary_root_accuracy", "node_accuracy"):
        assert metrics[name] == pytest.approx(reported[name], abs=1e-6), name


def test_a_python_fit_run_without_a_config_is_told_how_to_reopen_it(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    code, error = _evaluate(tmp_path, capsys)
    assert code == 2 and "has no config.json" in error and "load_run(run_dir, model)" in error


def test_a_split_the_data_does_not_have_is_one_line(tree_run, capsys, monkeypatch):
    code, error = _evaluate(tree_run, capsys, "--split", "test", "--data", "test_size=0")
    assert code == 2 and error.startswith("error: data.path: the synthetic language has no test trees"), error
