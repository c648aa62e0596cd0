"""Metrics: accuracy, perplexity and bits per character, with optional masks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from .losses import _masked_mean, softmax_cross_entropy


def accuracy(logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
    """Fraction of entries whose arg-max class equals the integer label.

    Example:
      >>> import jax.numpy as jnp
      >>> accuracy(jnp.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), jnp.array([0, 1, 1]))
      Array(0.6666667, dtype=float32)
    """
    correct = (jnp.argmax(jnp.asarray(logits), axis=-1) == jnp.asarray(labels)).astype(jnp.float32)
    return _masked_mean(correct, mask)


def perplexity(logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
    """``exp`` of the mean cross-entropy in nats: the effective number of equally likely choices.

    Example:
      >>> import jax.numpy as jnp
      >>> perplexity(jnp.zeros((3, 4)), jnp.array([0, 1, 2]))  # uniform over 4 classes
      Array(4., dtype=float32)
    """
    return jnp.exp(softmax_cross_entropy(logits, labels, mask))


def bits_per_character(logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
    """Mean cross-entropy in bits (nats / ln 2), the usual figure for character language models.

    Example:
      >>> import jax.numpy as jnp
      >>> bits_per_character(jnp.zeros((2, 4)), jnp.array([0, 1]))  # uniform over 4: 2 bits
      Array(2., dtype=float32)
    """
    return softmax_cross_entropy(logits, labels, mask) / math.log(2.0)
