"""Documentation that runs: every doctest in the package passes, every public name has an example."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import funcnet

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(funcnet.__path__, "funcnet.") if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", ["funcnet", *MODULES])
def test_doctests_pass(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}; run with pytest -s to see them"


PUBLIC = sorted(
    name for name in dir(funcnet) if not name.startswith("_") and not inspect.ismodule(getattr(funcnet, name))
)


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_has_a_docstring_with_an_example(name):
    obj = getattr(funcnet, name)
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"funcnet.{name} has no docstring"
    assert ">>>" in doc, f"funcnet.{name}'s docstring has no example"


@pytest.mark.parametrize("module", [funcnet.initializers, funcnet.losses, funcnet.metrics, funcnet.layers])
def test_public_module_members_have_examples(module):
    for name, obj in vars(module).items():
        if not name.startswith("_") and inspect.isfunction(obj) and obj.__module__.startswith(module.__name__):
            assert ">>>" in (inspect.getdoc(obj) or ""), f"{module.__name__}.{name} has no example"


def test_help_reads_as_a_tour():
    text = inspect.getdoc(funcnet).lower()
    for words in ("a tour", "serial", "jax.grad", "per-example", "shapeerror", "python -m funcnet.experiments.mlp"):
        assert words in text
