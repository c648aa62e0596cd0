"""Iris-style measurements generated in code: three species, Fisher's per-species statistics.

>>> iris_like(5).x.shape
(15, 3)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Per species: means and standard deviations of (sepal length, sepal width, petal length, petal
# width) in cm, as in Fisher's iris data (setosa, versicolor, virginica).
_MEANS = np.array([[5.006, 3.428, 1.462, 0.246], [5.936, 2.770, 4.260, 1.326], [6.588, 2.974, 5.552, 2.026]])
_STDS = np.array([[0.352, 0.379, 0.174, 0.105], [0.516, 0.314, 0.470, 0.198], [0.636, 0.322, 0.552, 0.275]])
_SLOPE = 0.6  # within-species correlation of petal width with petal length


class Split(NamedTuple):
    """Features ``[n, 3]`` (sepal length, sepal width, petal length) and targets ``[n, 1]`` (petal width)."""

    x: np.ndarray
    y: np.ndarray


def iris_like(n_per_species: int = 50, seed: int = 0) -> Split:
    """Generates ``3 * n_per_species`` iris-like flowers.

    >>> data = iris_like(10)
    >>> data.x.shape, data.y.shape
    ((30, 3), (30, 1))
    """
    rng = np.random.default_rng(seed)
    rows = []
    for mean, std in zip(_MEANS, _STDS, strict=True):
        z = rng.standard_normal((n_per_species, 4))
        # petal width follows petal length within the species: correlated standard scores.
        z[:, 3] = _SLOPE * z[:, 2] + np.sqrt(1 - _SLOPE**2) * z[:, 3]
        rows.append(np.clip(mean + std * z, 0.1, None))
    flowers = np.concatenate(rows).astype(np.float32)
    return Split(flowers[:, :3], flowers[:, 3:])
