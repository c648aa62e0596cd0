"""Losses and metrics against NumPy, with masks and every reduction; per_example and the registered losses."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet import losses, metrics
from funcnet.config import catalogue
from funcnet.config.components import build_component
from funcnet.config.registry import LOSSES
from funcnet.train.state import create_train_state
from funcnet.train.step import eval_step_fn

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


# --- reductions ------------------------------------------------------------------------------------
# Each loss and metric as (function, inputs of a given rank, NumPy per-entry values). Ranks are those
# of the per-entry values: [B], [B, T], [B, T, U].


def _bce(logits, labels):
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def _case(name, shape):
    rng = np.random.default_rng(len(shape))
    if name in ("mse", "binary_cross_entropy"):
        a = rng.standard_normal(shape).astype(np.float32)
        b = (
            (rng.random(shape) > 0.5).astype(np.float32)
            if name == "binary_cross_entropy"
            else rng.standard_normal(shape)
        )
        b = b.astype(np.float32)
        entries = (a - b) ** 2 if name == "mse" else _bce(a, b)
        return getattr(losses, name), (a, b), entries
    logits = rng.standard_normal((*shape, 5)).astype(np.float32)
    labels = rng.integers(0, 5, shape)
    if name == "accuracy":
        return metrics.accuracy, (logits, labels), (logits.argmax(-1) == labels).astype(np.float64)
    nll = _nll(logits.astype(np.float64), labels)
    if name == "bits_per_character":
        return metrics.bits_per_character, (logits, labels), nll / math.log(2)
    return losses.softmax_cross_entropy, (logits, labels), nll


def _mask(shape):
    mask = np.random.default_rng(7).random(shape) > 0.4
    mask.flat[0] = True
    if len(shape) > 1:
        mask[1] = False  # an example with no valid entry: 0.0 per example
    return mask


def _reference(entries, mask, reduction):
    """The reductions as written in the task, with a loop over examples for "per_example"."""
    valid = np.ones(entries.shape, bool) if mask is None else np.broadcast_to(mask, entries.shape)
    if reduction == "none":
        return np.where(valid, entries, 0.0)
    if reduction == "sum":
        return entries[valid].sum()
    if reduction == "mean":
        return entries[valid].mean()
    return np.array([row[v].mean() if v.any() else 0.0 for row, v in zip(entries, valid, strict=True)])


NAMES = ["mse", "binary_cross_entropy", "softmax_cross_entropy", "accuracy", "bits_per_character"]
SHAPES = [(6,), (4, 5), (3, 4, 2)]
REDUCTIONS = ["mean", "sum", "per_example", "none"]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"rank{len(s)}")
@pytest.mark.parametrize("name", NAMES)
def test_reduction_matches_numpy(name, shape, masked, reduction):
    fn_, inputs, entries = _case(name, shape)
    mask = _mask(shape) if masked else None
    got = fn_(*inputs, mask, reduction=reduction)
    want = _reference(entries, mask, reduction)
    assert got.shape == np.shape(want)
    # float32 losses against float64 NumPy: a few ulps per entry, summed over at most 24 entries.
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_per_example_by_hand():
    predictions = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [4.0, 4.0, 4.0]])
    mask = jnp.array([[True, False, True], [False, False, False], [True, True, True]])
    # squared errors against 0: [1, 4, 9], [0, 0, 0], [16, 16, 16]
    got = losses.mse(predictions, jnp.zeros((3, 3)), mask, reduction="per_example")
    np.testing.assert_allclose(got, [5.0, 0.0, 16.0])
    np.testing.assert_allclose(losses.mse(predictions, jnp.zeros((3, 3)), mask, reduction="sum"), 58.0)
    np.testing.assert_allclose(
        losses.mse(jnp.array([1.0, 2.0]), jnp.zeros(2), [True, False], reduction="per_example"), [1.0, 0.0]
    )


def test_per_example_of_a_sequence_loss_is_the_per_row_masked_mean():
    got = losses.softmax_cross_entropy(LOGITS, LABELS, MASK, reduction="per_example")
    rows = [losses.softmax_cross_entropy(LOGITS[i], LABELS[i], MASK[i]) for i in range(len(LABELS))]
    np.testing.assert_allclose(got, rows, rtol=1e-6)


def test_a_mask_of_leading_axes_broadcasts_over_the_trailing_ones():
    a, b = RNG.standard_normal((3, 4, 2)).astype(np.float32), RNG.standard_normal((3, 4, 2)).astype(np.float32)
    rows = np.array([True, False, True])
    got = losses.mse(a, b, rows[:, None, None], reduction="per_example")
    np.testing.assert_allclose(got, np.where(rows, ((a - b) ** 2).mean((1, 2)), 0.0), rtol=1e-6)


def test_nan_in_masked_entries_does_not_leak_into_the_loss():
    predictions = jnp.array([[1.0, jnp.nan], [2.0, 3.0]])
    mask = jnp.array([[True, False], [True, True]])
    for reduction in REDUCTIONS:
        assert np.isfinite(losses.mse(predictions, jnp.zeros((2, 2)), mask, reduction=reduction)).all(), reduction


def test_masked_entries_get_no_gradient():
    predictions = jnp.array([[1.0, 5.0], [2.0, 3.0]])
    mask = jnp.array([[True, False], [True, True]])
    grad = jax.grad(lambda p: losses.mse(p, jnp.zeros((2, 2)), mask))(predictions)
    np.testing.assert_allclose(grad, [[2 / 3, 0.0], [4 / 3, 2.0]], rtol=1e-6)  # d/dp of sum(p^2) / 3


def test_per_example_perplexity_and_bits():
    nll = _nll(LOGITS.astype(np.float64), LABELS)
    mask = MASK.copy()
    mask[2] = False
    per_row = np.array([row[m].mean() if m.any() else np.nan for row, m in zip(nll, mask, strict=True)])
    want = np.where(mask.any(1), np.exp(np.nan_to_num(per_row)), 0.0)
    np.testing.assert_allclose(metrics.perplexity(LOGITS, LABELS, mask, reduction="per_example"), want, rtol=1e-5)
    np.testing.assert_allclose(
        metrics.perplexity(LOGITS, LABELS, reduction="per_example"), np.exp(nll.mean(1)), rtol=1e-5
    )
    want_bits = np.nan_to_num(per_row) / math.log(2)
    np.testing.assert_allclose(
        metrics.bits_per_character(LOGITS, LABELS, mask, reduction="per_example"), want_bits, rtol=1e-5
    )
    none = metrics.perplexity(LOGITS, LABELS, mask, reduction="none")
    np.testing.assert_allclose(none, np.where(mask, np.exp(nll), 0.0), rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_reduction_names_the_allowed_values(name):
    fn_, inputs, _ = _case(name, (4, 3))
    allowed = r"\('mean', 'sum', 'per_example', 'none'\), got 'avg'"
    with pytest.raises(ValueError, match=rf"^{name}: reduction must be one of {allowed}"):
        fn_(*inputs, reduction="avg")


def test_perplexity_refuses_a_sum():
    with pytest.raises(
        ValueError, match=r"perplexity: reduction must be one of \('mean', 'per_example', 'none'\), got 'sum'"
    ):
        metrics.perplexity(LOGITS, LABELS, reduction="sum")


def test_reduction_errors_name_the_loss():
    with pytest.raises(fn.ShapeError, match=r"at mse: reduction='per_example' needs a leading batch axis, got \(\)"):
        losses.mse(jnp.float32(1.0), jnp.float32(2.0), reduction="per_example")
    with pytest.raises(
        fn.ShapeError, match=r"at softmax_cross_entropy: the mask must broadcast to .* \(4, 5\), got \(4,\) bool"
    ):
        losses.softmax_cross_entropy(LOGITS, LABELS, MASK[:, 0])


def test_reduction_is_keyword_only():
    with pytest.raises(TypeError):
        losses.mse(jnp.ones(2), jnp.ones(2), None, "sum")


# --- per_example: the engine's loss functions ---------------------------------------------------------


def test_per_example_returns_the_per_example_values_of_the_loss_and_metrics():
    loss_fn = losses.per_example(
        losses.softmax_cross_entropy, "labels", accuracy=metrics.accuracy, bits=metrics.bits_per_character
    )
    values = loss_fn(LOGITS, {"labels": LABELS, "x": LOGITS})
    assert sorted(values) == ["accuracy", "bits", "loss"]
    nll = _nll(LOGITS.astype(np.float64), LABELS)
    np.testing.assert_allclose(values["loss"], nll.mean(1), rtol=1e-5)
    np.testing.assert_allclose(values["bits"], nll.mean(1) / math.log(2), rtol=1e-5)
    np.testing.assert_allclose(values["accuracy"], (LOGITS.argmax(-1) == LABELS).mean(1), rtol=1e-6)


def test_per_example_names_a_missing_target_and_the_batch_keys():
    loss_fn = losses.per_example(losses.mse, target="label")
    with pytest.raises(KeyError, match=r"target 'label' is not in the batch; it holds \['x', 'y'\]"):
        loss_fn(jnp.ones((2, 1)), {"x": jnp.ones((2, 1)), "y": jnp.ones((2, 1))})


def test_per_example_refuses_what_is_not_a_function():
    with pytest.raises(TypeError, match="accuracy must be a loss or metric function, got ArrayImpl"):
        losses.per_example(losses.mse, accuracy=metrics.accuracy(LOGITS, LABELS))


def test_the_engine_averages_per_example_values_over_the_real_examples():
    x = RNG.standard_normal((8, 3)).astype(np.float32)
    y = RNG.standard_normal((8, 2)).astype(np.float32)
    model = fn.dense(2)
    state = create_train_state(model, optax.sgd(0.1), jax.random.key(0), x)
    batch = {"x": x, "y": y, "mask": np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)}
    got = eval_step_fn(model, losses.per_example(losses.mse))(state, batch)
    outputs, _ = model.apply(state.params, state.model_state, x)
    np.testing.assert_allclose(got["loss"], ((np.asarray(outputs) - y)[:5] ** 2).mean(), rtol=1e-6)
    assert float(got["count"]) == 5.0


# --- the losses config files name ----------------------------------------------------------------------

LOSS_CASES = {
    "mse": (losses.per_example(losses.mse, "t"), "float"),
    "binary_cross_entropy": (losses.per_example(losses.binary_cross_entropy, "t"), "binary"),
    "softmax_cross_entropy": (
        losses.per_example(losses.softmax_cross_entropy, "t", accuracy=metrics.accuracy),
        "labels",
    ),
}


def _batch(kind):
    if kind == "labels":
        return LOGITS, {"t": LABELS}
    outputs = RNG.standard_normal((4, 5, 3)).astype(np.float32)
    targets = (RNG.random((4, 5, 3)) > 0.5) if kind == "binary" else RNG.standard_normal((4, 5, 3))
    return outputs, {"t": targets.astype(np.float32)}


@pytest.mark.parametrize("name", sorted(LOSS_CASES))
def test_registered_losses_are_per_example_of_funcnet_losses(name):
    direct, kind = LOSS_CASES[name]
    registered = build_component(LOSSES, {"type": name, "target": "t"}, "loss")
    outputs, batch = _batch(kind)
    got, want = registered(outputs, batch), direct(outputs, batch)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_registered_losses_give_what_the_optax_versions_gave():
    """The registered losses before funcnet.losses: optax per entry, averaged over every non-batch axis."""
    values = catalogue.softmax_cross_entropy()(LOGITS, {"y": LABELS})
    old = optax.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS).reshape(4, -1).mean(1)
    np.testing.assert_allclose(values["loss"], old, rtol=1e-6)
    np.testing.assert_allclose(values["accuracy"], (LOGITS.argmax(-1) == LABELS).reshape(4, -1).mean(1), rtol=1e-7)
    outputs, targets = (
        RNG.standard_normal((4, 5, 3)).astype(np.float32),
        RNG.standard_normal((4, 5, 3)).astype(np.float32),
    )
    np.testing.assert_allclose(
        catalogue.mse()(outputs, {"y": targets})["loss"], ((outputs - targets) ** 2).reshape(4, -1).mean(1), rtol=1e-6
    )
