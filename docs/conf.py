"""Sphinx configuration: MyST Markdown pages, the API reference written from the package at build time.

    pip install -e '.[docs]'
    python -m sphinx -W -b html docs docs/_build/html        # warnings are errors, as in the tests

``api/*.md`` (from what the package exports: ``funcnet.__dir__()`` and each documented module's public names)
and ``config-reference.md`` (``config_reference.py``: from the code that checks configs) are generated here, so
the reference cannot drift from the code, and so are ``plots.md`` and ``_static/plots/`` (``plots.py``: from the
results recorded in ``experiments/results/``) and ``results/*.md`` (each recorded results file as a page); none
of them is in git.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import config_reference  # noqa: E402  (beside this file)
import plots  # noqa: E402  (beside this file)

import funcnet  # noqa: E402

project = "funcnet"
author = "the funcnet developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "README.md"]
html_theme = "sphinx_book_theme"
html_title = "funcnet"
html_static_path = ["_static"]
html_theme_options = {"show_toc_level": 2}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_heading_anchors = 3
nitpicky = False

# Module pages of the reference: (module, title, what it holds).
MODULES = [
    ("funcnet.train", "Training engine", "fit, evaluate, runs, checkpoints: the engine, no config files"),
    ("funcnet.tree_schedule", "Tree schedules", "a batch of trees as fixed-shape steps"),
    ("funcnet.parse_trees", "Parse trees", "PTB trees and vocabularies"),
    ("funcnet.layouts", "Module layouts", "module-network layouts and their batches"),
    ("funcnet.layers.nmn", "Module networks", "the modules, the compiled executor and its oracle"),
    ("funcnet.datasets.shapes", "SHAPES questions", "the generated visual questions"),
    ("funcnet.datasets.cache", "Fetched data sets", "public data sets in a checked cache"),
    ("funcnet.deploy", "Deployment runtime", "artefacts and the runtime that needs no model code"),
]


def _kind(obj) -> str:
    if inspect.isclass(obj):
        return "autoclass"
    return "autofunction" if callable(obj) else "autodata"


def _entries(module: str, names: list[str], objects: dict) -> list[str]:
    lines = []
    for name in names:
        lines += ["```{eval-rst}", f".. {_kind(objects[name])}:: {module}.{name}", "```", ""]
    return lines


def write_api() -> None:
    """``api/index.md`` (every name ``import funcnet`` gives) and one page per module of ``MODULES``."""
    folder = HERE / "api"
    folder.mkdir(exist_ok=True)
    top = {
        n: getattr(funcnet, n)
        for n in dir(funcnet)
        if not n.startswith("_") and not inspect.ismodule(getattr(funcnet, n))
    }
    pages = [
        "# API reference",
        "",
        "Every public name of `funcnet`, then the modules a user imports by path.",
        "",
        "```{toctree}",
        ":maxdepth: 1",
        "",
        *[m for m, _, _ in MODULES],
        "```",
        "",
        "## `funcnet`",
        "",
    ]
    pages += _entries("funcnet", sorted(top), top)
    (folder / "index.md").write_text("\n".join(pages))
    for module, title, about in MODULES:
        imported = __import__(module, fromlist=["_"])
        public = getattr(imported, "__all__", None) or [
            n
            for n, o in vars(imported).items()
            if not n.startswith("_") and getattr(o, "__module__", "").startswith(module) and not inspect.ismodule(o)
        ]
        objects = {n: getattr(imported, n) for n in public}
        text = [
            f"# {title}: `{module}`",
            "",
            about[0].upper() + about[1:] + ".",
            "",
            "```{eval-rst}",
            f".. automodule:: {module}",
            "   :no-members:",
            "```",
            "",
            *_entries(module, sorted(objects), objects),
        ]
        (folder / f"{module}.md").write_text("\n".join(text))


def write_results() -> None:
    """``results/<name>.md`` for every ``experiments/results/<name>.md``: the recorded tables as pages."""
    folder = HERE / "results"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.md"):
        old.unlink()
    for path in sorted((HERE.parent / "experiments" / "results").glob("*.md")):
        include = ["```{include} ../../experiments/results/" + path.name, ":relative-images:", "```", ""]
        (folder / path.name).write_text("\n".join(include))


write_api()
write_results()
config_reference.write(HERE / "config-reference.md")
plots.write()
