"""The non-modular baseline of the module-network experiment: a CNN over the image and an LSTM over the question.

As the VQA baselines the NMN paper compares against (Antol et al. 2015): the image's cells through the same
encoder the modules read (``funcnet.layers.nmn.grid_cells``, a convolution whose kernel and stride are a
cell), flattened; the question's words embedded and read by an LSTM; the two concatenated and classified
by an MLP. One network for every question: what the modules' composition buys shows on the systematic
split, whose colour-shape pairs no training question names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import funcnet as fn
from funcnet.core import Model
from funcnet.datasets.shapes import COLORS, GRID, SHAPES
from funcnet.layers.nmn import grid_cells
from funcnet.parse_trees import Vocabulary

QUESTION_LENGTH = 24  # words: the longest question of the grammar has 21
_GRAMMAR = ("is", "there", "a", "shape", "or", "above", "below", "left", "right", "of")


def question_vocabulary() -> Vocabulary:
    """The words of the generator's grammar (id 0 unknown, and padding)."""
    return Vocabulary.from_tokens(["<unk>", *_GRAMMAR, *COLORS, *SHAPES])


def question_tokens(question: str, vocab: Vocabulary) -> np.ndarray:
    """int32 [QUESTION_LENGTH]: the question's word ids, zero-padded.

    >>> question_tokens("is there a red circle?", question_vocabulary())[:6].tolist()
    [1, 2, 3, 11, 14, 0]
    """
    words = question.lower().rstrip("?").split()
    if len(words) > QUESTION_LENGTH:
        raise ValueError(f"question {question!r}: {len(words)} words, more than {QUESTION_LENGTH}")
    tokens = np.zeros(QUESTION_LENGTH, np.int32)
    tokens[: len(words)] = [vocab.encode(word) for word in words]
    return tokens


def baseline_model(vocab_size: int, features: int = 32, hidden: int = 64) -> Model:
    """``apply(params, state, image [G, T, H, W, C], question int [G, T, QUESTION_LENGTH]) -> logits [G, T, 2]``."""
    children = {
        "cells": grid_cells(GRID, features, hidden),
        "embed": fn.embed(vocab_size, hidden),
        "lstm": fn.rnn(fn.lstm_cell(hidden), return_carry=True),
        "hidden": fn.dense(hidden),
        "out": fn.dense(2),
    }

    def encode(params, image, question):
        n = image.shape[0]
        cells, _ = children["cells"].apply(params["cells"], {}, image)
        words, _ = children["embed"].apply(params["embed"], {}, question)
        (_, carry), _ = children["lstm"].apply(params["lstm"], {}, words, (question > 0).sum(-1))
        return jnp.concatenate([cells.reshape(n, -1), carry.h], -1)

    def init(key, image, question):
        keys = dict(zip(children, jax.random.split(key, len(children)), strict=True))
        n = image.shape[0] * image.shape[1]
        image = jax.ShapeDtypeStruct((n, *image.shape[2:]), image.dtype)
        question = jax.ShapeDtypeStruct((n, question.shape[-1]), question.dtype)
        params = {"cells": children["cells"].init(keys["cells"], image)[0]}
        params["embed"], _ = children["embed"].init(keys["embed"], question)
        params["lstm"], _ = children["lstm"].init(keys["lstm"], jnp.zeros((1, question.shape[-1], hidden)))
        joint = jax.eval_shape(encode, params, image, question)
        params["hidden"], _ = children["hidden"].init(keys["hidden"], jnp.zeros((1, joint.shape[-1])))
        params["out"], _ = children["out"].init(keys["out"], jnp.zeros((1, hidden)))
        return params, {}

    def apply(params, state, image, question, *, key=None, train=False):
        del key, train
        groups, per_group = question.shape[:2]
        joint = encode(params, image.reshape(-1, *image.shape[2:]), question.reshape(-1, question.shape[-1]))
        h, _ = children["hidden"].apply(params["hidden"], {}, joint)
        logits, _ = children["out"].apply(params["out"], {}, jax.nn.relu(h))
        return logits.reshape(groups, per_group, 2), state

    return Model(init, apply, "cnn_lstm")
