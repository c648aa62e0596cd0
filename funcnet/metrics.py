"""Metrics: accuracy, perplexity and bits per character, with optional masks.

Each takes the keyword-only ``reduction`` of ``funcnet.losses``: ``"mean"`` (the default),
``"per_example"`` (``[B]``: per-example accuracy, perplexity or bits) and ``"none"``; all but
``perplexity`` also take ``"sum"``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from .losses import Reduction, reduce, softmax_cross_entropy


def accuracy(
    logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None, *, reduction: Reduction = "mean"
) -> jax.Array:
    """Fraction of entries whose arg-max class equals the integer label (``"sum"``: their number).

    Example:
      >>> import jax.numpy as jnp
      >>> accuracy(jnp.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), jnp.array([0, 1, 1]))
      Array(0.6666667, dtype=float32)
    """
    correct = (jnp.argmax(jnp.asarray(logits), axis=-1) == jnp.asarray(labels)).astype(jnp.float32)
    return reduce(correct, mask, reduction=reduction, name="accuracy")


_PERPLEXITY_REDUCTIONS = ("mean", "per_example", "none")


def perplexity(
    logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None, *, reduction: Reduction = "mean"
) -> jax.Array:
    """``exp`` of the mean cross-entropy in nats: the effective number of equally likely choices.

    ``reduction="per_example"`` gives each example's perplexity (``exp`` of its mean cross-entropy;
    0.0 for an example with no valid entry), ``"none"`` each entry's ``1 / p(label)`` (0.0 where
    masked). A sum of perplexities means nothing, so ``"sum"`` raises.

    Raises:
      ValueError: ``reduction`` is not ``"mean"``, ``"per_example"`` or ``"none"``.

    Example:
      >>> import jax.numpy as jnp
      >>> perplexity(jnp.zeros((3, 4)), jnp.array([0, 1, 2]))  # uniform over 4 classes
      Array(4., dtype=float32)
    """
    if reduction not in _PERPLEXITY_REDUCTIONS:
        raise ValueError(
            f"perplexity: reduction must be one of {_PERPLEXITY_REDUCTIONS}, got {reduction!r}. Fix: for a total "
            "over entries, sum the cross-entropy instead (softmax_cross_entropy(..., reduction='sum'))."
        )
    nll = softmax_cross_entropy(logits, labels, reduction="none")
    value = jnp.exp(reduce(nll, mask, reduction=reduction, name="perplexity"))
    if mask is None or reduction == "mean":
        return value
    counted = reduce(jnp.ones_like(nll), mask, reduction=reduction, name="perplexity")  # 0.0: nothing valid
    return jnp.where(counted > 0, value, 0.0)


def bits_per_character(
    logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None, *, reduction: Reduction = "mean"
) -> jax.Array:
    """Cross-entropy in bits (nats / ln 2), the usual figure for character language models.

    Example:
      >>> import jax.numpy as jnp
      >>> bits_per_character(jnp.zeros((2, 4)), jnp.array([0, 1]))  # uniform over 4: 2 bits
      Array(2., dtype=float32)
    """
    nll = softmax_cross_entropy(logits, labels, reduction="none")
    return reduce(nll, mask, reduction=reduction, name="bits_per_character") / math.log(2.0)
