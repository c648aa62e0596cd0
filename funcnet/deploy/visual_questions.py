"""The request handler of a module network on SHAPES-style questions: a question about a scene in, yes or no out.

A request names the question, as text in the generator's grammar or as a layout, and the image, as a scene
(one entry per cell, row by row: ``"red circle"`` or ``""``), a seed (the generator's random scene) or the
pixels themselves::

    {"question": "is there a red shape above a circle?", "scene": ["", "red square", "", "", "blue circle", ...]}
    {"layout": "exists(and(find[red], transform[above](find[circle])))", "seed": 7}

Out: ``{"answer": "yes", "probability": 0.9993, "layout": "exists(...)"}``. A batch of questions is
scheduled like the Tree-LSTM's trees (``funcnet.layouts.layout_batch``), ``max(B, width)`` wide, so a
batch takes as many steps as its deepest layout. Imports: numpy, jax, and funcnet's layouts and generator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..datasets.shapes import COLORS, GRID, SHAPES, parse_question, random_scene, render
from ..layouts import Layout, LayoutError, LayoutVocab, body_tree, check_layout, parse_layout
from ..tree_schedule import schedule
from .handlers import TREE_FIELDS, tree_buckets
from .requests import RequestError, padded_size

_IMAGE_KEYS = ("scene", "seed", "image")


def scene_of(cells: Any) -> np.ndarray:
    """A scene (``funcnet.datasets.shapes``) from its cells' descriptions, row by row; RequestError naming the cell.

    >>> scene_of(["red circle"] + [""] * 8)[0, 0].tolist()
    [0, 0]
    """
    if not isinstance(cells, list) or len(cells) != GRID * GRID:
        raise RequestError(f"scene: expected a list of {GRID * GRID} cells, row by row, got {cells!r:.60}")
    scene = np.full((GRID * GRID, 2), -1, np.int8)
    for index, cell in enumerate(cells):
        words = str(cell or "").split()
        if not words:
            continue
        if len(words) != 2 or words[0] not in COLORS or words[1] not in SHAPES:
            raise RequestError(f"scene[{index}]: expected '' or a colour and a shape ({COLORS}, {SHAPES}), "
                               f"got {cell!r}")  # fmt: skip
        scene[index] = COLORS.index(words[0]), SHAPES.index(words[1])
    return scene.reshape(GRID, GRID, 2)


class VisualQuestions:
    """The handler (see the module docstring). ``words``: the module words (``LayoutVocab.create``); ``width``:
    the schedule's width the model trained with; ``image_shape``: ``[H, W, C]``; ``forward(image, *fields)``:
    the model on one group (``image [1, T, H, W, C]`` and the ``TreeBatch`` fields, each with a leading axis of
    1) -> logits ``[1, T, 2]``."""

    def __init__(self, words: Mapping[str, Sequence[str]], width: int, image_shape: Sequence[int],
                 forward: Callable[..., Any]):  # fmt: skip
        self.vocab, self.width, self.forward = LayoutVocab.create(words), width, forward
        self.image_shape = tuple(image_shape)

    def prepare(self, request: Any) -> tuple[Layout, np.ndarray]:
        if not isinstance(request, dict):
            raise RequestError(f"expected an object with a question (or layout) and a scene, got {request!r:.60}")
        unknown = sorted(set(request) - {"question", "layout", *_IMAGE_KEYS})
        if unknown:
            fields = "question or layout, and scene, seed or image"
            raise RequestError(f"{unknown[0]}: not a field; the fields are {fields}")
        if len({"question", "layout"} & set(request)) != 1:
            raise RequestError("question: expected a question or a layout (one of them)")
        try:
            if "question" in request:
                layout = parse_question(str(request["question"]))
            else:
                layout = parse_layout(str(request["layout"]))
            check_layout(layout, self.vocab, "layout")
        except LayoutError as error:
            raise RequestError(f"{'question' if 'question' in request else 'layout'}: {error}") from None
        return layout, self._image(request)

    def _image(self, request: Mapping[str, Any]) -> np.ndarray:
        given = [key for key in _IMAGE_KEYS if key in request]
        if len(given) != 1:
            raise RequestError("scene: expected a scene, a seed or an image (one of them)")
        if given[0] == "scene":
            return render(scene_of(request["scene"]))
        if given[0] == "seed":
            seed = request["seed"]
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise RequestError(f"seed: expected an int >= 0, got {seed!r:.60}")
            return render(random_scene(np.random.default_rng(seed)))
        try:
            image = np.asarray(request["image"], np.float32)
        except (TypeError, ValueError):
            raise RequestError("image: expected numbers") from None
        if image.shape != self.image_shape:
            raise RequestError(f"image: expected shape {list(self.image_shape)}, got {list(image.shape)}")
        return image

    def predict(self, prepared: list[tuple[Layout, np.ndarray]], batch_size: int) -> list[dict[str, Any]]:
        outputs = []
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start : start + batch_size]
            size = padded_size(len(chunk), batch_size)
            trees = [body_tree(layout, self.vocab) for layout, _ in chunk]
            batch = schedule(trees, self.vocab.find, width=max(size, self.width), num_trees=size,
                             buckets=tree_buckets(trees, size))  # fmt: skip
            images = np.zeros((1, size, *self.image_shape), np.float32)
            images[0, : len(chunk)] = [image for _, image in chunk]
            logits = np.asarray(self.forward(images, *[getattr(batch, f)[None] for f in TREE_FIELDS]))[0]
            yes = 1 / (1 + np.exp(logits[:, 0] - logits[:, 1]))
            outputs += [{"answer": "yes" if p > 0.5 else "no", "probability": round(float(p), 4), "layout": str(layout)}
                        for (layout, _), p in zip(chunk, yes, strict=False)]  # fmt: skip
        return outputs

    def example(self) -> dict[str, Any]:
        scene = ["", "red square", "", "", "blue circle", "", "green triangle", "", ""]
        return {"question": "is there a red shape above a circle?", "scene": scene}
