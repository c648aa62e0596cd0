"""SHAPES-style questions: answers recomputed by an independent reading of each layout on the scene; balanced,
deterministic splits; the systematic split's held-out pairs; questions that parse back to their layouts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from funcnet.datasets.shapes import (
    CELL,
    COLORS,
    GRID,
    HELD_OUT,
    SHAPES,
    parse_question,
    render,
    shapes_questions,
)
from funcnet.layouts import Layout, LayoutError

STEP = {"above": (-1, 0), "below": (1, 0), "left_of": (0, -1), "right_of": (0, 1)}


def _cells(node: Layout, scene: np.ndarray) -> set[tuple[int, int]]:
    """The (row, column) cells a layout below ``exists`` denotes, read from the scene cell by cell."""
    if node.module == "find":
        index, table = (0, COLORS) if node.word in COLORS else (1, SHAPES)
        return {(r, c) for r in range(GRID) for c in range(GRID) if scene[r, c, 0] >= 0
                and table[scene[r, c, index]] == node.word}  # fmt: skip
    parts = [_cells(child, scene) for child in node.children]
    if node.module == "and":
        return parts[0] & parts[1]
    if node.module == "or":
        return parts[0] | parts[1]
    dr, dc = STEP[node.word]  # the cells one step that way from a cell of the input
    return {(r + dr, c + dc) for r, c in parts[0] if 0 <= r + dr < GRID and 0 <= c + dc < GRID}


@pytest.mark.parametrize("split", ["train", "like_training", "systematic"])
def test_answers_follow_from_the_scene_and_are_balanced(split):
    examples = shapes_questions(600, seed=3, split=split)
    for example in examples:
        assert example.layout.module == "exists"
        assert int(bool(_cells(example.layout.children[0], example.scene))) == example.answer, example.question
    assert sum(e.answer for e in examples) == 300
    assert {e.layout.depth() for e in examples} >= {3, 4, 5, 6, 7}  # (the systematic split has no depth 2)


def test_the_image_shows_the_scene():
    example = shapes_questions(1, seed=0)[0]
    assert np.array_equal(render(example.scene), example.image)
    for r in range(GRID):
        for c in range(GRID):
            centre = example.image[r * CELL + CELL // 2, c * CELL + CELL // 2]
            assert (centre.sum() > 0) == (example.scene[r, c, 0] >= 0)  # every shape covers its cell's centre


def test_the_systematic_split_asks_what_training_never_names():
    def pairs(question):
        words = question.rstrip("?").split()
        return {(a, b) for a, b in itertools.pairwise(words) if a in COLORS and b in SHAPES}

    train = shapes_questions(2000, seed=0, split="train")
    systematic = shapes_questions(300, seed=0, split="systematic")
    assert not set().union(*(pairs(e.question) for e in train)) & set(HELD_OUT)
    assert all(pairs(e.question) & set(HELD_OUT) for e in systematic)
    named = set().union(*(pairs(e.question) for e in train))
    assert len(named) == len(COLORS) * len(SHAPES) - len(HELD_OUT)  # every other pair is trained on


def test_splits_are_deterministic_and_differ_by_seed_and_split():
    a, b = shapes_questions(50, seed=1), shapes_questions(50, seed=1)
    assert [e.question for e in a] == [e.question for e in b] and all(
        np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True)
    )
    assert [e.question for e in a] != [e.question for e in shapes_questions(50, seed=2)]
    assert [e.question for e in a] != [e.question for e in shapes_questions(50, seed=1, split="like_training")]


def test_every_question_parses_to_its_layout():
    for example in shapes_questions(500, seed=5) + shapes_questions(200, seed=5, split="systematic"):
        assert parse_question(example.question) == example.layout


@pytest.mark.parametrize(
    ("question", "message"),
    [
        ("where is a red shape?", "start with 'is there a'"),
        ("is there a purple shape?", "expected a colour or a shape at 'purple'"),
        ("is there a red shape near a circle?", "unexpected 'near a circle'"),
        ("is there a red shape above?", "expected 'a' after 'above'"),
    ],
)
def test_a_question_outside_the_grammar_says_where(question, message):
    with pytest.raises(LayoutError, match=message):
        parse_question(question)
