"""The built-in optimizers: optax's, under the names a config uses (registered in ``funcnet.config.catalogue``).

Each factory takes the learning rate first (``make_optimizer`` passes an ``optax.Schedule``), then
keyword parameters that are the optimizer's config keys, range-checked with ``require``.

>>> from funcnet.config.registry import OPTIMIZERS
>>> OPTIMIZERS.names()  # doctest: +ELLIPSIS
[...'adam', 'adamw', ...'sgd']
"""

from __future__ import annotations

import optax

from ..validation import require


def _beta(key: str, value: float) -> None:
    require(0 <= value < 1, key, "a number in [0, 1)", value)


def _betas(b1: float, b2: float, eps: float = 0.0) -> None:
    _beta("b1", b1)
    _beta("b2", b2)
    require(eps >= 0, "eps", "a number >= 0", eps)


def sgd(learning_rate: optax.ScalarOrSchedule, momentum: float | None = None, nesterov: bool = False):
    """Stochastic gradient descent, with (Nesterov) momentum if ``momentum`` is set (``optax.sgd``).

    >>> import jax.numpy as jnp
    >>> tx = sgd(0.1, momentum=0.9)
    >>> tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))[0]["w"]
    Array([-0.1, -0.1], dtype=float32)
    """
    if momentum is not None:
        _beta("momentum", momentum)
    require(momentum is not None or not nesterov, "nesterov", "false unless momentum is set", nesterov)
    return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def adam(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam (``optax.adam``); ``weight_decay`` adds an L2 penalty: use adamw for decoupled decay.

    >>> import jax.numpy as jnp
    >>> tx = adam(0.1)
    >>> tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))[0]["w"].round(3)
    Array([-0.1, -0.1], dtype=float32)
    """
    _betas(b1, b2, eps)
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
):
    """Adam with decoupled weight decay, applied to every trained param (``optax.adamw``).

    >>> import jax.numpy as jnp
    >>> tx = adamw(0.1, weight_decay=0.5)
    >>> tx.update({"w": jnp.zeros(2)}, tx.init({"w": jnp.ones(2)}), {"w": jnp.ones(2)})[0]["w"]
    Array([-0.05, -0.05], dtype=float32)
    """
    _betas(b1, b2, eps)
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def adagrad(learning_rate: optax.ScalarOrSchedule, initial_accumulator_value: float = 0.1, eps: float = 1e-7):
    """Adagrad (``optax.adagrad``).

    >>> import jax.numpy as jnp
    >>> tx = adagrad(0.1, initial_accumulator_value=0.0)
    >>> tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))[0]["w"].round(3)
    Array([-0.1, -0.1], dtype=float32)
    """
    require(initial_accumulator_value >= 0, "initial_accumulator_value", "a number >= 0", initial_accumulator_value)
    return optax.adagrad(learning_rate, initial_accumulator_value=initial_accumulator_value, eps=eps)


def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
):
    """RMSProp (``optax.rmsprop``), optionally centered and with momentum.

    >>> import jax.numpy as jnp
    >>> tx = rmsprop(0.1, decay=0.75)
    >>> tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))[0]["w"]
    Array([-0.2, -0.2], dtype=float32)
    """
    _beta("decay", decay)
    if momentum is not None:
        _beta("momentum", momentum)
    return optax.rmsprop(learning_rate, decay=decay, eps=eps, centered=centered, momentum=momentum, nesterov=nesterov)


def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
):
    """LAMB: Adam with decoupled decay and a per-tensor trust ratio (``optax.lamb``).

    >>> import jax.numpy as jnp
    >>> tx = lamb(0.1)
    >>> tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}), {"w": jnp.ones(2)})[0]["w"]
    Array([-0.1, -0.1], dtype=float32)
    """
    _betas(b1, b2, eps)
    return optax.lamb(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def lion(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.99, weight_decay: float = 1e-3):
    """Lion: sign of an interpolated momentum, decoupled decay (``optax.lion``); use a 3-10x smaller rate.

    >>> import jax.numpy as jnp
    >>> tx = lion(0.1, weight_decay=0.0)
    >>> tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}), {"w": jnp.zeros(2)})[0]["w"]
    Array([-0.1, -0.1], dtype=float32)
    """
    _betas(b1, b2)
    return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)
