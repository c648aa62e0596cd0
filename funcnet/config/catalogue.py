"""The built-in components every config can name, registered here in one place.

Models, datasets (factories returning ``DataSplits``) and per-example losses are defined here; the
optimizers and learning-rate schedules in ``funcnet.config.optimizers`` and ``funcnet.config.learning_rates``.
The table at the end registers them all; ``funcnet.config`` imports this module once, so the
registries hold the built-ins whenever anything under ``funcnet.config`` is used. Your own components
are registered by your module (``@MODELS.register("name")``), named in a config's ``imports``.

>>> from funcnet.config.registry import DATASETS, LOSSES, MODELS
>>> "mlp" in MODELS.names() and "iris_like" in DATASETS.names() and "mse" in LOSSES.names()
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import layers, losses, metrics
from ..combinators import serial
from ..core import Model
from ..datasets import iris_like as _iris_like
from ..losses import LossFn
from ..train.data import ArrayDataset
from . import learning_rates, optimizers
from .components import DataSplits
from .registry import DATASETS, LOSSES, MODELS, OPTIMIZERS, SCHEDULES
from .supervised import Supervised
from .tasks import TASKS

_ACTIVATIONS = {"relu": layers.relu, "tanh": layers.tanh, "gelu": layers.gelu, "silu": layers.silu}


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

    standardize = {"x": {"mean": mu.tolist(), "std": sigma.tolist()}}
    return DataSplits(split(train), split(valid), split(test), preprocessing={"standardize": standardize})


def mse(target: str = "y") -> LossFn:
    """Per-example mean squared error against ``batch[target]``: ``funcnet.losses.per_example(losses.mse)``.

    >>> import jax.numpy as jnp
    >>> mse()(jnp.ones((2, 3)), {"y": jnp.zeros((2, 3))})["loss"].tolist()
    [1.0, 1.0]
    """
    return losses.per_example(losses.mse, target)


def softmax_cross_entropy(target: str = "y") -> LossFn:
    """Per-example cross-entropy with integer labels ``batch[target]``, and accuracy.

    >>> import jax.numpy as jnp
    >>> sorted(softmax_cross_entropy()(jnp.zeros((2, 3)), {"y": jnp.array([0, 2])}))
    ['accuracy', 'loss']
    """
    return losses.per_example(losses.softmax_cross_entropy, target, accuracy=metrics.accuracy)


def binary_cross_entropy(target: str = "y") -> LossFn:
    """Per-example cross-entropy of binary labels (0/1) ``batch[target]`` given logits of the same shape.

    >>> import jax.numpy as jnp
    >>> [round(v, 4) for v in binary_cross_entropy()(jnp.zeros((2, 1)), {"y": jnp.ones((2, 1))})["loss"].tolist()]
    [0.6931, 0.6931]
    """
    return losses.per_example(losses.binary_cross_entropy, target)


# ---------------------------------------------------------------------------------------------
# Every built-in component, by the name a config gives as its ``type``.

TASKS.register("supervised")(Supervised)
MODELS.register("mlp")(mlp)
DATASETS.register("lecture_random")(lecture_random)
DATASETS.register("iris_like")(iris_like)
LOSSES.register("mse")(mse)
LOSSES.register("softmax_cross_entropy")(softmax_cross_entropy)
LOSSES.register("binary_cross_entropy")(binary_cross_entropy)
for _name in ("sgd", "adam", "adamw", "adagrad", "rmsprop", "lamb", "lion"):
    OPTIMIZERS.register(_name)(getattr(optimizers, _name))
for _name in ("constant", "warmup_cosine", "warmup_linear", "linear", "exponential", "cosine", "piecewise_constant"):
    SCHEDULES.register(_name)(getattr(learning_rates, _name))
