"""SHAPES-style visual questions generated in code (after Andreas et al. 2016), each with its module layout.

An image is a 3x3 grid of cells (``CELL`` pixels square), each empty or holding a red, green or blue
circle, square or triangle. A question asks whether something is there, and its layout is the network a
neural module network runs for it (``funcnet.layouts``)::

    is there a red shape above a circle?        exists(and(find[red], transform[above](find[circle])))
    is there a green square or a blue shape?    exists(or(and(find[green], find[square]), find[blue]))

``transform[above](x)`` attends to the cells directly above ``x``'s cells (one row up, same column); the
other relations are ``below``, ``left_of`` and ``right_of``, their neighbours one cell away. Noun phrases
chain up to two relations, so layouts run from depth 2 to 8.

Splits (``shapes_questions``): ``train`` and ``like_training`` draw questions the same way (different
seeds); ``systematic`` asks only about colour-shape pairs (``HELD_OUT``: "a red circle", "a green square",
"a blue triangle") that no ``train`` question names, though the words occur in other combinations and
the shapes in every image. Each split is balanced: half the answers are yes. Everything follows from the
seed.

>>> examples = shapes_questions(4, seed=0)
>>> examples[0].image.shape, [e.answer for e in examples]
((30, 30, 3), [0, 1, 0, 1])
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..layouts import Layout, LayoutError

COLORS = ("red", "green", "blue")
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("above", "below", "left_of", "right_of")
GRID, CELL = 3, 10
HELD_OUT = (("red", "circle"), ("green", "square"), ("blue", "triangle"))
SPLITS = ("train", "like_training", "systematic")
WORDS = {"find": COLORS + SHAPES, "transform": RELATIONS}  # the module words (``LayoutVocab.create``)
_RGB = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9]], np.float32)
_FULL = (1 << GRID * GRID) - 1
_COLUMN = [sum(1 << (row * GRID + col) for row in range(GRID)) for col in range(GRID)]


class Example(NamedTuple):
    """One visual question."""

    image: np.ndarray  # float32 [GRID*CELL, GRID*CELL, 3], values in [0, 1]
    scene: np.ndarray  # int8 [GRID, GRID, 2]: each cell's colour and shape index, -1 where empty
    question: str
    layout: Layout
    answer: int  # 1: yes, 0: no


def _masks() -> np.ndarray:
    """bool [3, CELL, CELL]: the pixels of a circle, a square and a triangle (apex up) in a cell."""
    y, x = np.mgrid[0:CELL, 0:CELL] + 0.5
    middle = CELL / 2
    circle = (y - middle) ** 2 + (x - middle) ** 2 <= (0.36 * CELL) ** 2
    square = (np.abs(y - middle) <= 0.3 * CELL) & (np.abs(x - middle) <= 0.3 * CELL)
    top, bottom = 0.2 * CELL, 0.8 * CELL
    triangle = (y >= top) & (y <= bottom) & (np.abs(x - middle) <= 0.5 * (y - top) * 0.6 + 0.5)
    return np.stack([circle, square, triangle])


_SHAPE_MASKS = _masks()


def render(scene: np.ndarray) -> np.ndarray:
    """The image of a scene: black background, each shape filled with its colour.

    >>> scene = np.full((GRID, GRID, 2), -1, np.int8); scene[0, 0] = (0, 1)   # a red square, top left
    >>> image = render(scene); image[5, 5].tolist() == _RGB[0].tolist(), float(image[25, 25].sum())
    (True, 0.0)
    """
    image = np.zeros((GRID * CELL, GRID * CELL, 3), np.float32)
    for row in range(GRID):
        for col in range(GRID):
            color, shape = scene[row, col]
            if color >= 0:
                cell = image[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL]
                cell[_SHAPE_MASKS[shape]] = _RGB[color]
    return image


def cell_sets(scene: np.ndarray) -> dict[str, int]:
    """Each ``find`` word's cells as a bit set (bit ``3*row + col``)."""
    sets = dict.fromkeys(COLORS + SHAPES, 0)
    for index, (color, shape) in enumerate(scene.reshape(-1, 2)):
        if color >= 0:
            sets[COLORS[color]] |= 1 << index
            sets[SHAPES[shape]] |= 1 << index
    return sets


def _related(relation: str, cells: int) -> int:
    """The cells one step ``relation`` of ``cells``: ``above`` is one row up, same column."""
    if relation == "above":
        return cells >> GRID
    if relation == "below":
        return (cells << GRID) & _FULL
    if relation == "left_of":
        return (cells & ~_COLUMN[0]) >> 1
    if relation == "right_of":
        return ((cells & ~_COLUMN[-1]) << 1) & _FULL
    raise LayoutError(f"unknown relation {relation!r}; relations: {RELATIONS}")


def evaluate(layout: Layout, sets: dict[str, int]) -> int | bool:
    """A layout's value on a scene's ``cell_sets``: a cell set, or the answer at ``exists``.

    >>> from funcnet.layouts import parse_layout
    >>> evaluate(parse_layout("exists(transform[above](find[red]))"), {"red": 0b000_000_001})  # red at top
    False
    """
    module, word, children = layout
    if module == "find":
        return sets[word]
    values = [evaluate(child, sets) for child in children]
    if module == "transform":
        return _related(word, values[0])
    if module == "and":
        return values[0] & values[1]
    if module == "or":
        return values[0] | values[1]
    if module == "exists":
        return values[0] != 0
    raise LayoutError(f"unknown module {module!r}")


def _base(rng: np.random.Generator, pairs: str) -> tuple[Layout, str, bool]:
    """A colour, a shape or both: its layout, its words, and whether it names a held-out pair."""
    kind = rng.integers(3)
    color, shape = COLORS[rng.integers(3)], SHAPES[rng.integers(3)]
    if pairs == "held_out" and rng.random() < 0.5:
        kind, (color, shape) = 2, HELD_OUT[rng.integers(len(HELD_OUT))]
    if kind == 0:
        return Layout("find", color), f"{color} shape", False
    if kind == 1:
        return Layout("find", shape), shape, False
    both = Layout("and", None, (Layout("find", color), Layout("find", shape)))
    return both, f"{color} {shape}", (color, shape) in HELD_OUT


def _noun_phrase(rng: np.random.Generator, relations: int, pairs: str) -> tuple[Layout, str, bool]:
    layout, text, held = _base(rng, pairs)
    if relations:
        relation = RELATIONS[rng.integers(len(RELATIONS))]
        other, other_text, other_held = _noun_phrase(rng, relations - 1, pairs)
        layout = Layout("and", None, (layout, Layout("transform", relation, (other,))))
        text, held = f"{text} {relation.replace('_', ' ')} a {other_text}", held or other_held
    return layout, text, held


def random_question(rng: np.random.Generator, pairs: str = "any") -> tuple[Layout, str, bool]:
    """A question's layout, its text and whether it names a held-out pair (``pairs="held_out"`` names them
    more often)."""
    relations = int(rng.choice(3, p=[0.35, 0.4, 0.25]))
    layout, text, held = _noun_phrase(rng, relations, pairs)
    if rng.random() < 0.25:
        other, other_text, other_held = _noun_phrase(rng, 0, pairs)
        layout, text, held = Layout("or", None, (layout, other)), f"{text} or a {other_text}", held or other_held
    return Layout("exists", None, (layout,)), f"is there a {text}?", held


def random_scene(rng: np.random.Generator) -> np.ndarray:
    """int8 [GRID, GRID, 2]: each cell empty with probability 1/4, else a uniform colour and shape."""
    scene = np.stack([rng.integers(len(COLORS), size=(GRID, GRID)), rng.integers(len(SHAPES), size=(GRID, GRID))], -1)
    scene[rng.random((GRID, GRID)) < 0.25] = -1
    return scene.astype(np.int8)


def shapes_questions(n: int, seed: int = 0, split: str = "train", tries: int = 64) -> list[Example]:
    """``n`` examples of a split (see the module docstring), answers alternating no, yes.

    Each example draws a question, then up to ``tries`` scenes for one with the wanted answer (a new
    question if none has it).
    """
    if split not in SPLITS:
        raise ValueError(f"shapes_questions: unknown split {split!r}; splits: {SPLITS}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    examples = []
    while len(examples) < n:
        want = len(examples) % 2
        layout, question, held = random_question(rng, "held_out" if split == "systematic" else "any")
        if held != (split == "systematic"):
            continue
        for _ in range(tries):
            scene = random_scene(rng)
            if int(evaluate(layout, cell_sets(scene))) == want:
                examples.append(Example(render(scene), scene, question, layout, want))
                break
    return examples


def parse_question(text: str) -> Layout:
    """The layout of a question in the generator's grammar; LayoutError saying what was expected where.

    >>> str(parse_question("is there a red shape left of a circle?"))
    'exists(and(find[red], transform[left_of](find[circle])))'
    """
    words = text.strip().lower().rstrip("?").split()
    if words[:3] != ["is", "there", "a"]:
        raise LayoutError(f"question {text!r}: expected it to start with 'is there a'")
    layout, i = _parse_noun_phrase(text, words, 3)
    if i < len(words) and words[i] == "or":
        if words[i + 1 : i + 2] != ["a"]:
            raise LayoutError(f"question {text!r}: expected 'a' after 'or'")
        other, i = _parse_noun_phrase(text, words, i + 2)
        layout = Layout("or", None, (layout, other))
    if i != len(words):
        raise LayoutError(f"question {text!r}: unexpected {' '.join(words[i:])!r}")
    return Layout("exists", None, (layout,))


def _parse_noun_phrase(text: str, words: list[str], i: int) -> tuple[Layout, int]:
    word = words[i] if i < len(words) else ""
    if word in COLORS and i + 1 < len(words) and words[i + 1] in SHAPES:
        layout, i = Layout("and", None, (Layout("find", word), Layout("find", words[i + 1]))), i + 2
    elif word in COLORS and words[i + 1 : i + 2] == ["shape"]:
        layout, i = Layout("find", word), i + 2
    elif word in SHAPES:
        layout, i = Layout("find", word), i + 1
    else:
        raise LayoutError(f"question {text!r}: expected a colour or a shape at {word or 'the end'!r}; "
                          f"colours {COLORS}, shapes {SHAPES}")  # fmt: skip
    relation = None
    if words[i : i + 2] in (["left", "of"], ["right", "of"]):
        relation, i = f"{words[i]}_of", i + 2
    elif words[i : i + 1] in (["above"], ["below"]):
        relation, i = words[i], i + 1
    if relation:
        if words[i : i + 1] != ["a"]:
            raise LayoutError(f"question {text!r}: expected 'a' after {relation.replace('_', ' ')!r}")
        other, i = _parse_noun_phrase(text, words, i + 1)
        layout = Layout("and", None, (layout, Layout("transform", relation, (other,))))
    return layout, i
