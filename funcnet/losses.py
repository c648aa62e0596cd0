"""Losses: scalar means over the valid entries, with an optional mask.

A ``mask`` (bool or 0/1, broadcastable to the per-entry losses) leaves out padding: the mean is
taken over the entries where it is true, so padded batches give the same loss as unpadded ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from .errors import DTypeError, ShapeError, describe


def _masked_mean(values: jax.Array, mask: ArrayLike | None) -> jax.Array:
    if mask is None:
        return jnp.mean(values)
    mask = jnp.broadcast_to(jnp.asarray(mask, values.dtype), values.shape)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _check_same_shape(name: str, a: ArrayLike, b: ArrayLike) -> None:
    if jnp.shape(a) != jnp.shape(b):
        raise ShapeError(
            name, f"predictions and targets must have the same shape, got {describe(a)} and {describe(b)}."
        )


def mse(predictions: ArrayLike, targets: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
    """Mean squared error over every entry (where ``mask`` is true).

    Example:
      >>> import jax.numpy as jnp
      >>> mse(jnp.array([1.0, 3.0]), jnp.array([1.0, 1.0]))
      Array(2., dtype=float32)
    """
    _check_same_shape("mse", predictions, targets)
    return _masked_mean(jnp.square(jnp.asarray(predictions) - jnp.asarray(targets)), mask)


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
    """Cross-entropy between ``softmax(logits)`` and integer labels, in nats, averaged.

    Args:
      logits: ``[..., classes]`` unnormalized scores.
      labels: ``[...]`` integer class ids.
      mask: ``[...]``, true where the example counts.

    Raises:
      ShapeError: ``labels.shape != logits.shape[:-1]``.
      DTypeError: the labels are not integers (one-hot targets: use ``optax.softmax_cross_entropy``).

    Example:
      >>> import jax.numpy as jnp
      >>> logits = jnp.log(jnp.array([[0.5, 0.5], [0.9, 0.1]]))
      >>> round(float(softmax_cross_entropy(logits, jnp.array([0, 0]))), 4)  # (ln 2 + ln(1/0.9)) / 2
      0.3993
      >>> round(float(softmax_cross_entropy(logits, jnp.array([0, 0]), mask=jnp.array([False, True]))), 4)
      0.1054
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise DTypeError("softmax_cross_entropy", f"expected integer labels, got {describe(labels)}.")
    if logits.shape[:-1] != labels.shape:
        raise ShapeError(
            "softmax_cross_entropy",
            f"labels must have the shape of logits without the class axis: logits {describe(logits)}, "
            f"labels {describe(labels)}.",
        )
    log_probs = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
    nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    return _masked_mean(nll, mask)


def binary_cross_entropy(logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
    """Cross-entropy of independent binary labels (0/1) given logits, computed stably.

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(binary_cross_entropy(jnp.array([0.0]), jnp.array([1.0]))), 4)  # ln 2
      0.6931
    """
    _check_same_shape("binary_cross_entropy", logits, labels)
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels, logits.dtype)
    losses = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return _masked_mean(losses, mask)
