"""Losses and metrics against NumPy, with masks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import losses, metrics

RNG = np.random.default_rng(0)
LOGITS = RNG.standard_normal((4, 5, 7)).astype(np.float32)
LABELS = RNG.integers(0, 7, (4, 5))
MASK = RNG.random((4, 5)) > 0.3


def _nll(logits, labels):
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]


def test_softmax_cross_entropy_with_and_without_mask():
    nll = _nll(LOGITS, LABELS)
    np.testing.assert_allclose(losses.softmax_cross_entropy(LOGITS, LABELS), nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(losses.softmax_cross_entropy(LOGITS, LABELS, MASK), nll[MASK].mean(), rtol=1e-5)


def test_masked_loss_equals_loss_on_the_unpadded_entries():
    padded_logits = np.concatenate([LOGITS, 100 * RNG.standard_normal((4, 3, 7)).astype(np.float32)], axis=1)
    padded_labels = np.concatenate([LABELS, np.zeros((4, 3), int)], axis=1)
    mask = np.arange(8) < 5
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(padded_logits, padded_labels, mask[None]),
        losses.softmax_cross_entropy(LOGITS, LABELS),
        rtol=1e-6,
    )


def test_cross_entropy_is_stable_for_large_logits():
    logits = jnp.array([[1000.0, 0.0], [-1000.0, 0.0]])
    value = losses.softmax_cross_entropy(logits, jnp.array([0, 0]))
    np.testing.assert_allclose(value, 500.0, rtol=1e-6)


def test_mse_and_binary_cross_entropy():
    a, b = RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4))
    np.testing.assert_allclose(losses.mse(a, b), ((a - b) ** 2).mean(), rtol=1e-6)
    logits, labels = RNG.standard_normal(10).astype(np.float32), (RNG.random(10) > 0.5).astype(np.float32)
    p = 1 / (1 + np.exp(-logits))
    want = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean()
    np.testing.assert_allclose(losses.binary_cross_entropy(logits, labels), want, rtol=1e-5)
    np.testing.assert_allclose(losses.binary_cross_entropy(jnp.array([200.0]), jnp.array([0.0])), 200.0, rtol=1e-6)


def test_loss_errors():
    with pytest.raises(fn.ShapeError, match=r"labels must have the shape of logits without the class axis"):
        losses.softmax_cross_entropy(LOGITS, LABELS[:, :2])
    with pytest.raises(fn.DTypeError, match="expected integer labels"):
        losses.softmax_cross_entropy(LOGITS, LABELS.astype(np.float32))
    with pytest.raises(fn.ShapeError, match=r"at mse: predictions and targets must have the same shape"):
        losses.mse(jnp.ones((3, 1)), jnp.ones(3))


def test_metrics():
    predicted = LOGITS.argmax(-1)
    np.testing.assert_allclose(metrics.accuracy(LOGITS, LABELS), (predicted == LABELS).mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics.accuracy(LOGITS, LABELS, MASK), (predicted == LABELS)[MASK].mean(), rtol=1e-6)
    nll = _nll(LOGITS, LABELS)
    np.testing.assert_allclose(metrics.perplexity(LOGITS, LABELS), np.exp(nll.mean()), rtol=1e-5)
    np.testing.assert_allclose(metrics.bits_per_character(LOGITS, LABELS), nll.mean() / math.log(2), rtol=1e-5)


def test_losses_jit_and_grad():
    grad = jax.jit(jax.grad(losses.softmax_cross_entropy))(jnp.asarray(LOGITS), jnp.asarray(LABELS))
    probs = np.exp(LOGITS) / np.exp(LOGITS).sum(-1, keepdims=True)
    want = (probs - np.eye(7)[LABELS]) / LABELS.size
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)
