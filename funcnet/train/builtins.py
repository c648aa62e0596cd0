"""Components every config can name: models, datasets and per-example losses.

Dataset factories return ``DataSplits``: map-style datasets for ``train`` and, optionally,
``validation`` and ``test``, plus the batch keys the model takes as inputs.

>>> from funcnet.train.registry import DATASETS, LOSSES, MODELS
>>> "mlp" in MODELS.names() and "iris_like" in DATASETS.names() and "mse" in LOSSES.names()
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import layers
from ..combinators import serial
from ..core import Model
from ..datasets import iris_like as _iris_like
from .data import ArrayDataset, Dataset
from .registry import DATASETS, LOSSES, MODELS


class DataSplits(NamedTuple):
    """What a dataset factory returns.

    Attributes:
      train: the training examples.
      validation: examples for evaluation during training (early stopping, best checkpoint).
      test: held-out examples, evaluated once with the best checkpoint at the end.
      inputs: the batch keys passed to ``model.apply``, in order.
    """

    train: Dataset
    validation: Dataset | None = None
    test: Dataset | None = None
    inputs: tuple[str, ...] = ("x",)


_ACTIVATIONS = {"relu": layers.relu, "tanh": layers.tanh, "gelu": layers.gelu, "silu": layers.silu}


@MODELS.register("mlp")
def mlp(hidden: Sequence[int] = (100,), features: int = 10, activation: str = "relu", dropout: float = 0.0) -> Model:
    """A multi-layer perceptron: ``dense -> activation [-> dropout]`` per hidden size, then ``dense(features)``.

    >>> import jax, jax.numpy as jnp
    >>> params, _ = mlp(hidden=[8], features=2).init(jax.random.key(0), jnp.ones((1, 3)))
    >>> sorted(params)
    ['dense_0', 'dense_1']
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    children: list[Model] = []
    for size in hidden:
        children += [layers.dense(int(size)), _ACTIVATIONS[activation]()]
        if dropout:
            children.append(layers.dropout(dropout))
    return serial(*children, layers.dense(features))


@DATASETS.register("lecture_random")
def lecture_random(n: int = 64, d_in: int = 1000, d_out: int = 10, seed: int = 0) -> DataSplits:
    """The lecture's random regression data: ``n`` inputs of ``d_in`` normals, targets of ``d_out`` normals.

    There is nothing to generalize to, so the validation split is the training set itself: the
    run shows the optimizer fitting it.

    >>> len(lecture_random(n=8).train)
    8
    """
    rng = np.random.default_rng(seed)
    data = ArrayDataset(
        x=rng.standard_normal((n, d_in)).astype(np.float32), y=rng.standard_normal((n, d_out)).astype(np.float32)
    )
    return DataSplits(train=data, validation=data)


@DATASETS.register("iris_like")
def iris_like(n_per_species: int = 100, seed: int = 0, validation_fraction: float = 0.2) -> DataSplits:
    """Iris-style regression (three measurements predict petal width), standardized, split train/validation/test.

    >>> splits = iris_like(n_per_species=20)
    >>> len(splits.train), len(splits.validation), len(splits.test)
    (36, 12, 12)
    """
    data = _iris_like(n_per_species, seed)
    order = np.random.default_rng(seed + 1).permutation(len(data.x))
    n_hold = round(validation_fraction * len(order))
    train, valid, test = order[2 * n_hold :], order[:n_hold], order[n_hold : 2 * n_hold]
    mu, sigma = data.x[train].mean(0), data.x[train].std(0)

    def split(rows):
        return ArrayDataset(x=((data.x[rows] - mu) / sigma).astype(np.float32), y=data.y[rows])

    return DataSplits(split(train), split(valid), split(test))


def _per_example(values: jax.Array) -> jax.Array:
    return values.reshape(values.shape[0], -1).mean(axis=1)


@LOSSES.register("mse")
def mse(target: str = "y") -> Any:
    """Per-example mean squared error against ``batch[target]``.

    >>> import jax.numpy as jnp
    >>> mse()(jnp.ones((2, 3)), {"y": jnp.zeros((2, 3))}).tolist()
    [1.0, 1.0]
    """

    def loss(outputs: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
        return _per_example(jnp.square(outputs - batch[target]))

    return loss


@LOSSES.register("softmax_cross_entropy")
def softmax_cross_entropy(target: str = "y") -> Any:
    """Per-example cross-entropy with integer labels ``batch[target]``, and accuracy.

    >>> import jax.numpy as jnp
    >>> sorted(softmax_cross_entropy()(jnp.zeros((2, 3)), {"y": jnp.array([0, 2])}))
    ['accuracy', 'loss']
    """

    def loss(logits: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        labels = batch[target]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
        return {"loss": _per_example(nll), "accuracy": _per_example(correct)}

    return loss
