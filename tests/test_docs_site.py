"""The documentation site builds with warnings as errors, its reference covers every public name, and every
code block marked to run in its pages runs. Needs the ``docs`` extra (in the ``test`` extra, so CI builds it)."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import funcnet

DOCS = Path(__file__).resolve().parents[1] / "docs"
MARK = "<!-- runs as a test -->"
BLOCKS = [(page.name, block) for page in sorted(DOCS.glob("*.md"))
          for block in re.findall(re.escape(MARK) + r"\s*```python\n(.*?)```", page.read_text(), re.S)]  # fmt: skip

pytest.importorskip("sphinx", reason="the docs build needs the docs extra: pip install -e '.[docs]'")
pytest.importorskip("myst_parser", reason="the docs build needs the docs extra: pip install -e '.[docs]'")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_site_builds_with_warnings_as_errors_and_every_page_is_there(built):
    pages = ("index", "getting-started", "module-networks", "data", "design", "config-reference", "api/index")
    for page in (*pages, "api/funcnet.train"):
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


def test_the_pages_mark_code_to_run():
    assert BLOCKS, "expected a runnable block in the getting-started page"


@pytest.mark.parametrize(("page", "code"), BLOCKS, ids=[f"{page}:{i}" for i, (page, _) in enumerate(BLOCKS)])
def test_a_page_block_runs(page, code, capsys):
    exec(compile(code, f"docs/{page}", "exec"), {"__name__": f"docs_{page}"})
    capsys.readouterr()
