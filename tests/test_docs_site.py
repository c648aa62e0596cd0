"""The documentation site builds with warnings as errors, its reference covers every public name, and every
code block marked to run in its pages runs. Needs the ``docs`` extra (in the ``test`` extra, so CI builds it)."""

from __future__ import annotations

import doctest
import fcntl
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import funcnet
import funcnet as fn

DOCS = Path(__file__).resolve().parents[1] / "docs"
MARK = "<!-- runs as a test -->"
BLOCKS = [(page.name, block) for page in sorted(DOCS.glob("*.md"))
          for block in re.findall(re.escape(MARK) + r"\s*```python\n(.*?)```", page.read_text(), re.S)]  # fmt: skip

pytest.importorskip("sphinx", reason="the docs build needs the docs extra: pip install -e '.[docs]'")
pytest.importorskip("myst_parser", reason="the docs build needs the docs extra: pip install -e '.[docs]'")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The site, built once per test session: the first worker process builds it, the others wait and read it
    (a build also writes the generated pages into docs/, which two builds at once would race on)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this session's, never an older one's
    out = shared / "docs-html"
    with open(shared / "docs-html.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "index.html").is_file():
            command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                shutil.rmtree(out, ignore_errors=True)  # a failed build is never read as a good one
            assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_site_builds_with_warnings_as_errors_and_every_page_is_there(built):
    guides = ("getting-started", "model-contract", "layers", "recurrences", "trees", "module-networks", "training",
              "configs", "runs", "devices", "deploy", "benchmarks", "plots", "data", "design")  # fmt: skip
    for page in ("index", *guides, "config-reference", "api/index", "api/funcnet.train", "results/bench"):
        assert (built / f"{page}.html").is_file(), page


def test_the_reference_documents_every_public_name(built):
    reference = (built / "api" / "index.html").read_text()
    public = [n for n in dir(funcnet) if not n.startswith("_") and not inspect.ismodule(getattr(funcnet, n))]
    missing = [n for n in public if f'id="funcnet.{n}"' not in reference]
    assert not missing and len(public) > 50, missing


def test_the_config_reference_has_every_key_the_code_checks(built):
    import dataclasses

    import funcnet.experiments.charlm_task
    import funcnet.experiments.nmn_task
    import funcnet.experiments.tree_sentiment  # noqa: F401  (they register their tasks)
    from funcnet.config.tasks import TASKS
    from funcnet.train.options import TrainerConfig

    page = (built / "config-reference.html").read_text()
    missing = [f.name for f in dataclasses.fields(TrainerConfig) if f"trainer.{f.name}" not in page]
    assert not missing, missing
    for task in ("char_lm", "tree_sentiment", "nmn"):  # registered by the reference's generator
        defaults = TASKS.get(task)().resolve({})
        keys = [f"{s}.{k}" for s, v in defaults.items() if isinstance(v, dict) and s != "trainer" for k in v]
        assert keys and not [k for k in keys if k not in page], task


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def test_a_real_browser_shows_the_getting_started_page(built):
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if browser is None:
        pytest.skip(f"no headless browser on this machine (looked for {', '.join(BROWSERS)} on PATH)")
    page = (built / "getting-started.html").as_uri()
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    assert "<title>Getting started" in dom and "pip install -e" in dom  # the title and the first code block


def test_the_plots_page_draws_every_recorded_curve_and_benchmark(built):
    page = (built / "plots.html").read_text()
    curves = sorted((DOCS.parent / "experiments" / "results" / "curves").glob("*.json"))
    assert curves
    for name in [f"curves-{p.stem}" for p in curves] + ["ratios-bench", "ratios-bench_one_core"]:
        assert f"{name}.png" in page and (built / "_static" / "plots" / f"{name}.png").stat().st_size > 5000, name
    for path in curves:
        assert json.loads(path.read_text())["command"] in re.sub(r"<[^>]+>", "", page), path.name


def test_a_run_s_curves_are_recorded_thinned_without_counts(tmp_path):
    import optax

    from funcnet.train import fit_arrays

    x = np.random.default_rng(0).standard_normal((96, 2)).astype(np.float32)
    fit_arrays(fn.serial(fn.dense(1)), x, x[:, :1], loss=fn.losses.mse, optimizer=optax.sgd(0.1), epochs=8,
               batch_size=8, log_every=1, patience=None, run_dir=tmp_path / "run", progress=False)  # fmt: skip
    record_curves = _load(DOCS.parent / "experiments" / "record_curves.py")
    out = record_curves.record(tmp_path / "run", "line", "A line", "python make_line.py", points=20, folder=tmp_path)
    saved = json.loads(out.read_text())
    assert saved["command"] == "python make_line.py" and saved["machine"]
    assert set(saved["series"]) == {"train/loss", "validation/loss"}  # no learning rate, no counts
    train = saved["series"]["train/loss"]
    assert len(train) == 20 and train[0][1] > train[-1][1]  # 8 epochs x 10 steps, thinned to 20, falling
    assert len(saved["series"]["validation/loss"]) == 8
    with pytest.raises(SystemExit, match="no train/loss"):
        record_curves.record(tmp_path, "none", "x", "x", folder=tmp_path)


@pytest.mark.parametrize("script", ["docs/plots.py", "docs/config_reference.py", "experiments/record_curves.py"])
def test_the_docs_scripts_doctests_pass(script):
    module = _load(DOCS.parent / script)
    assert doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_repository_path_a_page_names_exists():
    pattern = r"`((?:funcnet|experiments|tests|docs|\.ci)/[A-Za-z0-9_./-]+)`"
    named = {(page.name, m.rstrip("/.")) for page in DOCS.glob("*.md") for m in re.findall(pattern, page.read_text())}
    assert len(named) > 20
    assert not [(page, path) for page, path in named if not (DOCS.parent / path).exists()]


def test_every_python_block_runs_or_says_why_not():
    unmarked = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        for block in re.finditer(r"```python\n", text):
            before = text[: block.start()].rstrip().rsplit("\n", 1)[-1]
            if before != MARK and not re.fullmatch(r"<!-- not run: .+ -->", before):
                unmarked.append(f"{page.name}:{text[: block.start()].count(chr(10)) + 1}")
    assert not unmarked, f"python blocks marked neither {MARK} nor <!-- not run: REASON -->: {unmarked}"


def test_every_guide_with_code_runs_some():
    with_blocks = {page for page, _ in BLOCKS}
    guides = ("getting-started", "model-contract", "layers", "recurrences", "trees", "module-networks", "training",
              "configs", "runs", "devices", "deploy")  # fmt: skip
    assert not [g for g in guides if f"{g}.md" not in with_blocks]


@pytest.mark.parametrize(("page", "code"), BLOCKS, ids=[f"{page}:{i}" for i, (page, _) in enumerate(BLOCKS)])
def test_a_page_block_runs(page, code, capsys):
    exec(compile(code, f"docs/{page}", "exec"), {"__name__": f"docs_{page}"})
    capsys.readouterr()
