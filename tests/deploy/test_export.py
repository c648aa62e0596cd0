"""funcnet export and the runtime: an artefact gives what its run gives, with no model code, and refuses faults in
one line naming the file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet.deploy as deploy
from funcnet.config import cli, load_run
from funcnet.config.deployment import served
from funcnet.deploy.requests import predict_requests

IRIS = [[5.0, 3.4, 1.5], [6.5, 3.0, 5.5], [5.9, 2.8, 4.2]]


def test_iris_artefact_predicts_what_the_run_does_at_several_batch_sizes(iris_run, iris_artefact):
    artefact, handler = deploy.load(iris_artefact), served(iris_run).handler
    assert artefact.kind == "supervised" and set(artefact.manifest["platforms"]) == {"cpu", "cuda"}
    signature = artefact.manifest["programs"]["forward"]
    assert signature["inputs"] == [{"name": "x", "shape": ["batch", 3], "dtype": "float32"}]
    for count in (1, 3, 40):
        requests = (IRIS * 14)[:count]
        got, want = artefact.predict(requests, batch_size=16), predict_requests(handler, requests, 16)
        # The same program lowered twice: equal up to float32 rounding of a different fusion order.
        np.testing.assert_allclose([g["prediction"] for g in got], [w["prediction"] for w in want], rtol=1e-6)
    assert artefact.compilations() == {"forward": 4}  # batches padded to 1, 4, 16 and 8 (40 = 16 + 16 + 8)


def test_char_lm_artefact_generates_the_runs_text_and_gives_its_probabilities(charlm_run, charlm_artefact):
    artefact, run = deploy.load(charlm_artefact), load_run(charlm_run)
    requests = ["the ", {"prime": "cat", "length": 70, "seed": 3, "temperature": 0.5}, {"length": 0}]
    got, want = artefact.predict(requests), predict_requests(served(charlm_run).handler, requests, 8)
    assert got[:2] == want[:2] and got[1]["prime"] == "cat" and len(got[1]["text"]) == 70
    assert got[2]["error"].startswith("length: expected an int from 1")
    probabilities = artefact.programs["probabilities"]
    for batch, time in ((1, 5), (3, 17)):
        vocab = len(run.preprocessing["vocabulary"])
        ids = np.random.default_rng(batch).integers(0, vocab, (batch, time)).astype(np.int32)
        expected = jax.nn.softmax(run.model.apply(run.params, run.state, jnp.asarray(ids))[0], -1)
        np.testing.assert_allclose(np.asarray(probabilities(ids)), expected, rtol=1e-5, atol=1e-7)


def test_sentiment_artefact_gives_every_nodes_distribution_as_the_run_does(tree_run, tree_artefact):
    artefact = deploy.load(tree_artefact)
    requests = ["(3 (2 a) (3 (2 good) (2 film)))", {"sentence": "not a good film at all"}, "(3 (2 a)"]
    got, want = artefact.predict(requests, batch_size=4), predict_requests(served(tree_run).handler, requests, 4)
    for g, w in zip(got[:2], want[:2], strict=True):
        assert [n["text"] for n in g["nodes"]] == [n["text"] for n in w["nodes"]]
        np.testing.assert_allclose([n["probabilities"] for n in g["nodes"]], [n["probabilities"] for n in w["nodes"]],
                                   atol=2e-4)  # fmt: skip
    assert got[2]["error"].startswith("tree: line 1")


def test_the_runtime_runs_with_no_model_code_importable(iris_artefact, tree_artefact, charlm_artefact):
    script = textwrap.dedent(f"""
        import importlib.abc, json, sys
        BLOCKED = ("funcnet.layers", "funcnet.train", "funcnet.experiments", "funcnet.config", "optax", "orbax")
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.startswith(BLOCKED):
                    raise ImportError(f"{{name}} may not be imported by the runtime")
        sys.meta_path.insert(0, Block())
        import funcnet.deploy as deploy
        out = [deploy.load(a).predict(r) for a, r in (
            ({str(iris_artefact)!r}, [[5.0, 3.4, 1.5]]),
            ({str(tree_artefact)!r}, [{{"sentence": "a good film"}}]),
            ({str(charlm_artefact)!r}, [{{"prime": "the", "length": 12}}]),
        )]
        print(json.dumps(out))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    iris, tree, text = json.loads(result.stdout)
    assert iris == deploy.load(iris_artefact).predict([[5.0, 3.4, 1.5]])
    assert tree[0]["nodes"][0]["text"] == "a good film" and len(text[0]["text"]) == 12


def test_each_kind_gives_an_example_request_it_takes(iris_artefact, tree_artefact, charlm_artefact):
    for directory in (iris_artefact, tree_artefact, charlm_artefact):
        artefact = deploy.load(directory)
        example = artefact.handler.example()
        [output] = artefact.predict([json.loads(json.dumps(example))])  # as it arrives over JSON
        assert "error" not in output, (directory, example, output)
    means = json.loads((iris_artefact / "artefact.json").read_text())["preprocessing"]["standardize"]["x"]["mean"]
    assert deploy.load(iris_artefact).handler.example() == [round(m, 4) for m in means]  # the training means


def test_funcnet_predict_takes_an_artefact_like_a_run(iris_run, iris_artefact, capsys, monkeypatch):
    outputs = []
    for directory in (iris_run, iris_artefact):
        monkeypatch.setattr("sys.stdin", iter(["[5.0, 3.4, 1.5]\n", "[1, 2]\n"]))
        assert cli.main(["predict", str(directory)]) == 1  # the second line is wrong in both
        outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    (run_good, run_bad), (art_good, art_bad) = outputs
    np.testing.assert_allclose(art_good["prediction"], run_good["prediction"], rtol=1e-6)
    assert art_bad == run_bad == {"line": 2, "error": "x: expected shape [3], got [2]"}


def test_export_refuses_a_directory_in_use_in_one_line(iris_run, iris_artefact, capsys):
    assert cli.main(["export", str(iris_run), "-o", str(iris_artefact)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith("exists and is not empty. Fix: choose a new directory for the artefact"), error


def _copy(artefact, tmp_path):
    import shutil

    return shutil.copytree(artefact, tmp_path / "copy")


def test_a_damaged_or_foreign_artefact_is_refused_in_one_line_naming_the_file(iris_artefact, tmp_path):
    copy = _copy(iris_artefact, tmp_path)
    program = copy / "programs" / "forward.stablehlo"
    program.write_bytes(program.read_bytes()[:100])
    with pytest.raises(deploy.ArtefactError, match=r"forward\.stablehlo: damaged \(its SHA-256 differs"):
        deploy.load(copy)
    (copy / "weights.npz").unlink()
    with pytest.raises(deploy.ArtefactError, match=r"weights\.npz: missing from the artefact"):
        deploy.load(copy)
    manifest = json.loads((copy / "artefact.json").read_text())
    (copy / "artefact.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(deploy.ArtefactError, match=r"artefact\.json: artefact format 99.*reads formats up to 1"):
        deploy.load(copy)
    (copy / "artefact.json").write_text("{not json")
    with pytest.raises(deploy.ArtefactError, match=r"artefact\.json: not a readable manifest"):
        deploy.load(copy)
    with pytest.raises(deploy.ArtefactError, match="is not an artefact"):
        deploy.load(tmp_path)


def test_a_program_of_an_unsupported_calling_convention_or_platform_is_refused(iris_artefact, tmp_path):
    copy = _copy(iris_artefact, tmp_path)
    manifest = json.loads((copy / "artefact.json").read_text())
    manifest["programs"]["forward"]["calling_convention"] = 999
    (copy / "artefact.json").write_text(json.dumps(manifest))
    with pytest.raises(deploy.ArtefactError, match=r"forward\.stablehlo: calling convention 999; this JAX"):
        deploy.load(copy)
    manifest["platforms"] = ["cuda"]
    (copy / "artefact.json").write_text(json.dumps(manifest))
    with pytest.raises(deploy.ArtefactError, match=r"exported for \['cuda'\], and this machine runs cpu"):
        deploy.load(copy)
