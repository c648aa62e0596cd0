"""The two-layer ReLU network of the classic "deep learning software" lecture, on random data.

N=64 examples, D_in=1000 inputs, H=100 hidden units, D_out=10 outputs, L2 loss, trained with
optax's Adam in a plain jitted loop: the smallest readable example of the raw API.

    python -m funcnet.experiments.mlp [--steps 500] [--learning-rate 1e-4] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

import funcnet as fn


def make_model() -> fn.Model:
    """``dense(100) -> relu -> dense(10)``, He-initialized hidden layer for the ReLU.

    >>> import jax, jax.numpy as jnp
    >>> params, _ = make_model().init(jax.random.key(0), jnp.ones((64, 1000)))
    >>> fn.param_count(params)
    101110
    """
    return fn.serial(
        hidden=fn.dense(100, kernel_init=fn.initializers.he_normal()),
        act=fn.relu(),
        out=fn.dense(10),
    )


def train(steps: int = 500, learning_rate: float = 1e-4, seed: int = 0, log_every: int = 50, log=print) -> list[float]:
    """Trains on one fixed random batch; returns the loss after every step.

    >>> losses = train(steps=20, log=lambda *a: None)
    >>> losses[-1] < losses[0]
    True
    """
    n, d_in, d_out = 64, 1000, 10
    x_key, y_key, init_key = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(x_key, (n, d_in))
    y = jax.random.normal(y_key, (n, d_out))

    model = make_model()
    params, state = model.init(init_key, x)
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)

    def loss_fn(params):
        y_pred, _ = model.apply(params, state, x)
        return fn.losses.mse(y_pred, y)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
        if i % log_every == 0 or i == steps - 1:
            log(f"step {i:4d}  loss {losses[-1]:.3e}")
    return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(f"two-layer ReLU net, N=64 D_in=1000 H=100 D_out=10, Adam {args.learning_rate}, {jax.devices()[0].platform}")
    print(fn.summary(make_model(), jax.ShapeDtypeStruct((64, 1000), jnp.float32)))
    start = time.perf_counter()
    losses = train(args.steps, args.learning_rate, args.seed)
    seconds = time.perf_counter() - start
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.3e} ({losses[0] / losses[-1]:.3g}x lower) in {seconds:.1f} s")


if __name__ == "__main__":
    main()
