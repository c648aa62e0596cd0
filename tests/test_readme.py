"""The README's code runs: every python block marked ``<!-- runs as a test -->`` is executed as it is."""

from __future__ import annotations

import re
from pathlib import Path

import jax.numpy as jnp
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- runs as a test -->"
BLOCKS = re.findall(re.escape(MARK) + r"\s*```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_marks_its_runnable_blocks():
    assert BLOCKS and "fn.serial(" in BLOCKS[0], "expected the tour (the guides' blocks run in test_docs_site.py)"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys):
    namespace: dict = {"__name__": f"readme_block_{index}"}
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), namespace)
    capsys.readouterr()
    if index == 0:  # the tour (test_the_readme_marks_its_runnable_blocks): one step of training ran
        assert namespace["value"].shape == () and bool(jnp.isfinite(namespace["value"]))
        assert sorted(namespace["params"]) == ["hidden", "out"]  # named by keyword, dropout has no params
