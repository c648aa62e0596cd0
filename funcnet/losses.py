"""Losses over the valid entries, with an optional mask and a choice of reduction.

A ``mask`` (bool or 0/1, broadcastable to the per-entry losses) leaves out padding: only the
entries where it is true count, so padded batches give the same loss as unpadded ones.

``reduction`` (keyword-only, here and in ``funcnet.metrics``) says what comes back:

- ``"mean"`` (the default): the mean over the valid entries, a scalar.
- ``"sum"``: the sum over the valid entries, a scalar.
- ``"per_example"``: ``[B]``, for each example along the first axis the mean over its valid
  entries (0.0 for an example with none), the per-example values ``funcnet.train``'s steps take.
- ``"none"``: the per-entry values, with masked entries set to 0.

``per_example(loss)`` turns a loss (and metrics) into the training engine's
``loss_fn(outputs, batch) -> {"loss": [B], ...}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from .errors import DTypeError, ShapeError, describe

Reduction = Literal["mean", "sum", "per_example", "none"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "per_example", "none")


def _check_reduction(name: str, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}.")


def reduce(
    values: ArrayLike, mask: ArrayLike | None = None, *, reduction: Reduction = "mean", name: str = "reduce"
) -> jax.Array:
    """Reduces per-entry values over the entries where ``mask`` is true: what every loss here ends with.

    Args:
      values: per-entry values, ``[B, ...]`` for ``reduction="per_example"``.
      mask: bool or 0/1, broadcastable to ``values``; None: every entry counts.
      reduction: ``"mean"``, ``"sum"``, ``"per_example"`` or ``"none"`` (see the module docstring).
      name: the loss's name, for error messages.

    Raises:
      ValueError: an unknown ``reduction``.
      ShapeError: the mask does not broadcast to ``values``, or ``"per_example"`` of a scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> values, mask = jnp.array([[1.0, 3.0], [5.0, 7.0]]), jnp.array([[True, True], [True, False]])
      >>> reduce(values, mask).tolist(), reduce(values, mask, reduction="per_example").tolist()
      (3.0, [2.0, 5.0])
    """
    _check_reduction(name, reduction)
    values = jnp.asarray(values)
    if reduction == "per_example" and values.ndim == 0:
        raise ShapeError(
            name,
            f"reduction='per_example' needs a leading batch axis, got {describe(values)}. "
            "Fix: pass a batch of examples, or use reduction='mean'.",
        )
    rest = tuple(range(1, values.ndim))  # the axes of one example
    if mask is None:
        if reduction == "none":
            return values
        if reduction == "sum":
            return jnp.sum(values)
        return jnp.mean(values, axis=rest if reduction == "per_example" else None)
    valid = _broadcast_mask(name, mask, values.shape)
    masked = jnp.where(valid, values, jnp.zeros((), values.dtype))  # padding may hold NaNs: never multiply by it
    if reduction == "none":
        return masked
    if reduction == "sum":
        return jnp.sum(masked)
    axis = rest if reduction == "per_example" else None
    count = jnp.sum(valid, axis=axis, dtype=jnp.promote_types(values.dtype, jnp.float32))  # exact beyond 256
    mean = jnp.sum(masked, axis=axis) / jnp.maximum(count, 1.0)
    return mean.astype(values.dtype) if jnp.issubdtype(values.dtype, jnp.floating) else mean


def _broadcast_mask(name: str, mask: ArrayLike, shape: tuple[int, ...]) -> jax.Array:
    mask = jnp.asarray(mask)
    try:
        fits = jnp.broadcast_shapes(mask.shape, shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise ShapeError(
            name,
            f"the mask must broadcast to the per-entry losses' shape {shape}, got {describe(mask)}. "
            "Fix: give the mask the shape of the targets (or of its leading axes, with trailing axes of size 1).",
        )
    return jnp.broadcast_to(mask != 0, shape)


def _check_same_shape(name: str, a: ArrayLike, b: ArrayLike) -> None:
    if jnp.shape(a) != jnp.shape(b):
        raise ShapeError(
            name, f"predictions and targets must have the same shape, got {describe(a)} and {describe(b)}."
        )


def _check_class_labels(name: str, logits: ArrayLike, labels: ArrayLike) -> tuple[jax.Array, jax.Array]:
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise DTypeError(
            name,
            f"expected integer labels, got {describe(labels)}. Fix: pass class ids (labels.astype(jnp.int32)); "
            "for one-hot targets use optax.softmax_cross_entropy.",
        )
    if logits.shape[:-1] != labels.shape:
        raise ShapeError(
            name,
            f"labels must have the shape of logits without the class axis: logits {describe(logits)}, "
            f"labels {describe(labels)}.",
        )
    return logits, labels


def mse(
    predictions: ArrayLike, targets: ArrayLike, mask: ArrayLike | None = None, *, reduction: Reduction = "mean"
) -> jax.Array:
    """Squared error of every entry (where ``mask`` is true), reduced as ``reduction`` says.

    Example:
      >>> import jax.numpy as jnp
      >>> mse(jnp.array([1.0, 3.0]), jnp.array([1.0, 1.0]))
      Array(2., dtype=float32)
    """
    _check_same_shape("mse", predictions, targets)
    squares = jnp.square(jnp.asarray(predictions) - jnp.asarray(targets))
    return reduce(squares, mask, reduction=reduction, name="mse")


def softmax_cross_entropy(
    logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None, *, reduction: Reduction = "mean"
) -> jax.Array:
    """Cross-entropy between ``softmax(logits)`` and integer labels, in nats.

    Args:
      logits: ``[..., classes]`` unnormalized scores.
      labels: ``[...]`` integer class ids.
      mask: ``[...]``, true where the entry counts.
      reduction: ``"mean"``, ``"sum"``, ``"per_example"`` or ``"none"`` (see the module docstring).

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
    logits, labels = _check_class_labels("softmax_cross_entropy", logits, labels)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
    nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    return reduce(nll, mask, reduction=reduction, name="softmax_cross_entropy")


def binary_cross_entropy(
    logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None, *, reduction: Reduction = "mean"
) -> jax.Array:
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
    return reduce(losses, mask, reduction=reduction, name="binary_cross_entropy")


LossFn = Callable[[Any, Mapping[str, jax.Array]], dict[str, jax.Array]]


def per_example(loss: Callable[..., jax.Array], target: str = "y", **metrics: Callable[..., jax.Array]) -> LossFn:
    """The training engine's loss function ``(outputs, batch) -> {"loss": [B], **{name: [B]}}``.

    Each of ``loss`` and ``metrics`` is called as ``fn(outputs, batch[target], reduction="per_example")``;
    ``funcnet.train``'s steps then average the values over the batch's real examples.

    Args:
      loss: a loss of this module, or any ``(outputs, targets, *, reduction) -> values``.
      target: the batch key of the targets.
      **metrics: name -> a metric of ``funcnet.metrics`` (or a loss), reported beside the loss.

    Returns:
      ``loss_fn(outputs, batch)``, which raises KeyError when the batch has no ``target``.

    Example:
      >>> import jax.numpy as jnp, funcnet as fn
      >>> loss_fn = per_example(fn.losses.softmax_cross_entropy, accuracy=fn.metrics.accuracy)
      >>> values = loss_fn(jnp.array([[2.0, 0.0], [0.0, 2.0]]), {"y": jnp.array([0, 0])})
      >>> {name: [round(v, 3) for v in value.tolist()] for name, value in values.items()}
      {'loss': [0.127, 2.127], 'accuracy': [1.0, 0.0]}
    """
    for name, function in {"loss": loss, **metrics}.items():
        if not callable(function):
            raise TypeError(
                f"per_example: {name} must be a loss or metric function, got {type(function).__name__}. "
                "Fix: pass the function itself, e.g. funcnet.losses.mse, not its result."
            )

    def loss_fn(outputs: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        if target not in batch:
            raise KeyError(
                f"the loss's target {target!r} is not in the batch; it holds {sorted(batch)}. "
                "Fix: pass per_example(..., target=<the key of the targets>)."
            )
        targets = batch[target]
        values = {"loss": loss(outputs, targets, reduction="per_example")}
        return values | {name: metric(outputs, targets, reduction="per_example") for name, metric in metrics.items()}

    return loss_fn
