"""The README's code runs: every python block marked ``<!-- runs as a test -->`` is executed as it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- runs as a test -->"
BLOCKS = re.findall(re.escape(MARK) + r"\s*```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_marks_its_runnable_blocks():
    assert len(BLOCKS) >= 4, f"expected the tour, sequences, losses and combinator blocks, found {len(BLOCKS)}"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys):
    namespace: dict = {"__name__": f"readme_block_{index}"}
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), namespace)
    capsys.readouterr()
    if "classifier" in namespace:  # the sequences block: its outputs have the shapes the README says
        assert namespace["logits"].shape == (2, 2) and namespace["y"].shape == (2, 6, 64)
    if "layer" in namespace and "highway" in namespace:
        assert namespace["y"].shape == (4, 16) and sorted(namespace["params"]) == ["body", "gate"]
    if "metrics" in namespace:
        assert set(namespace["metrics"]) >= {"loss", "accuracy"}
