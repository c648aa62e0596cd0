"""Iris-style regression: sepal length, sepal width and petal length predict petal width.

The data are generated here (no download): three species with the per-species means and
standard deviations of Fisher's iris measurements, petal width depending linearly on petal
length within each species plus noise. A small MLP on standardized inputs learns the mapping
across species (a piecewise relation a single global mean cannot capture).

    python -m funcnet.experiments.regression [--steps 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import jax
import numpy as np
import optax

import funcnet as fn

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


def train(steps: int = 2000, seed: int = 0, log=print) -> dict[str, float]:
    """Fits ``dense(16) -> tanh -> dense(1)`` with Adam; returns held-out RMSE and R^2.

    >>> result = train(steps=200, log=lambda *a: None)
    >>> result["test_rmse"] < result["baseline_rmse"]
    True
    """
    data = iris_like(100, seed)
    order = np.random.default_rng(seed + 1).permutation(len(data.x))
    n_train = int(0.8 * len(order))
    tr, te = order[:n_train], order[n_train:]
    mu, sigma = data.x[tr].mean(0), data.x[tr].std(0)
    x_train, x_test = (data.x[tr] - mu) / sigma, (data.x[te] - mu) / sigma
    y_train, y_test = data.y[tr], data.y[te]

    model = fn.serial(fn.dense(16), fn.tanh(), fn.dense(1))
    params, state = model.init(jax.random.key(seed), x_train)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    def loss_fn(params, x, y):
        return fn.losses.mse(model.apply(params, state, x)[0], y)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params, x_train, y_train)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for i in range(steps):
        params, opt_state, loss = step(params, opt_state)
        if i % max(1, steps // 10) == 0:
            log(f"step {i:5d}  train mse {float(loss):.4f}")

    test_mse = float(loss_fn(params, x_test, y_test))
    baseline_mse = float(np.mean((y_test - y_train.mean()) ** 2))
    return {
        "test_rmse": test_mse**0.5,
        "baseline_rmse": baseline_mse**0.5,
        "test_r2": 1.0 - test_mse / float(np.var(y_test)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = train(args.steps, args.seed)
    print(
        f"held-out petal width: RMSE {result['test_rmse']:.3f} cm (predicting the mean: "
        f"{result['baseline_rmse']:.3f} cm), R^2 {result['test_r2']:.3f}"
    )


if __name__ == "__main__":
    main()
