"""Runs of every task and their artefacts, made once per test session (a plugin of tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from funcnet.config import cli, deployment
from funcnet.experiments import rnn, treelstm


@pytest.fixture(scope="session")
def iris_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("iris")
    (folder / "iris.toml").write_text(
        '[model]\ntype = "mlp"\nhidden = [8]\nfeatures = 1\n[dataset]\ntype = "iris_like"\nn_per_species = 20\n'
        '[loss]\ntype = "mse"\n[optimizer]\ntype = "adam"\nlearning_rate = 0.01\n'
        "[trainer]\nepochs = 2\nbatch_size = 8\nprogress = false\n"
    )
    assert cli.main(["train", str(folder / "iris.toml"), "-s", str(folder / "run")]) == 0
    return folder / "run"


@pytest.fixture(scope="session")
def charlm_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("charlm")
    text = folder / "text.txt"
    rng = np.random.default_rng(0)
    text.write_text("\n".join(" ".join(rng.choice(["the", "cat", "sat", "on", "a", "mat"], 8)) for _ in range(400)))
    code = rnn.main(
        ["--preset", "tiny", "--data", str(text), "--run-dir", str(folder / "run"), "-o", "trainer.progress=false"]
    )
    assert code == 0
    return folder / "run"


@pytest.fixture(scope="session")
def tree_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tree")
    code = treelstm.main(
        ["--preset", "tiny", "--run-dir", str(folder / "run"), "-o", "trainer.progress=false", "-o", "trainer.epochs=1"]
    )
    assert code == 0
    return folder / "run"


@pytest.fixture(scope="session")
def iris_artefact(iris_run, tmp_path_factory):
    return deployment.export_run(iris_run, tmp_path_factory.mktemp("export") / "iris")


@pytest.fixture(scope="session")
def charlm_artefact(charlm_run, tmp_path_factory):
    return deployment.export_run(charlm_run, tmp_path_factory.mktemp("export") / "charlm")


@pytest.fixture(scope="session")
def tree_artefact(tree_run, tmp_path_factory):
    return deployment.export_run(tree_run, tmp_path_factory.mktemp("export") / "tree")
