"""Recurrent cells: each equation against a hand-written NumPy step, initialization, batch shapes, errors."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import funcnet as fn
from funcnet.layers.cells import Cell, LSTMCarry, gru_cell, lstm_cell, simple_rnn_cell

# float32 cell vs float64 NumPy on O(1) values with sizes <= 5: observed differences ~1e-7;
# 1e-5 leaves room for rounding without hiding a wrong gate or a swapped block.
TOL = {"rtol": 1e-5, "atol": 1e-5}
F, H = 3, 2


def init_cell(cell, x):
    """``cell.init`` with the zero carry for the batch axes of ``x``."""
    return cell.init(jax.random.key(0), cell.initial_carry(x.shape[:-1]), x)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def fixed_params(cell, seed):
    """The params init makes, filled with fixed N(0, 1) numbers (so every bias is non-zero)."""
    shapes, _ = jax.eval_shape(lambda x: init_cell(cell, x), jax.ShapeDtypeStruct((1, F), jnp.float32))
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(s.shape).astype(np.float32) for name, s in sorted(shapes.items())}


def gate(p, name, g):
    """Gate ``g``'s block of a kernel or bias: columns g*H:(g+1)*H, as float64."""
    return np.asarray(p[name], np.float64)[..., g * H : (g + 1) * H]


X = np.array([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7]], np.float32)  # [batch=2, F]
H0 = np.array([[0.1, -0.2], [0.4, 0.0]], np.float32)  # [batch=2, H]
C0 = np.array([[-0.3, 0.8], [0.2, -0.5]], np.float32)


def test_simple_rnn_step_matches_numpy():
    cell = simple_rnn_cell(H)
    p = fixed_params(cell, 0)
    (h, y), state = cell.apply(p, {}, jnp.asarray(H0), jnp.asarray(X))
    want = np.tanh(X.astype(np.float64) @ p["w_ih"] + H0 @ p["w_hh"] + p["b"])
    chex.assert_trees_all_close(h, want, **TOL)
    chex.assert_trees_all_equal(h, y)
    assert state == {}
    relu = simple_rnn_cell(H, activation=jax.nn.relu)
    (h, _), _ = relu.apply(p, {}, jnp.asarray(H0), jnp.asarray(X))
    chex.assert_trees_all_close(h, np.maximum(X.astype(np.float64) @ p["w_ih"] + H0 @ p["w_hh"] + p["b"], 0), **TOL)


def test_lstm_step_matches_numpy_gate_by_gate():
    cell = lstm_cell(H)
    p = fixed_params(cell, 1)
    x, h0, c0 = X.astype(np.float64), H0.astype(np.float64), C0.astype(np.float64)

    def z(g):  # blocks in the documented order i, f, g, o
        return x @ gate(p, "w_ih", g) + h0 @ gate(p, "w_hh", g) + gate(p, "b", g)

    i, f, g, o = sigmoid(z(0)), sigmoid(z(1)), np.tanh(z(2)), sigmoid(z(3))
    c = f * c0 + i * g
    h = o * np.tanh(c)
    (carry, y), _ = cell.apply(p, {}, LSTMCarry(jnp.asarray(H0), jnp.asarray(C0)), jnp.asarray(X))
    assert isinstance(carry, LSTMCarry)
    chex.assert_trees_all_close(carry, LSTMCarry(h, c), **TOL)
    chex.assert_trees_all_equal(y, carry.h)


def test_lstm_toy_case_by_hand():
    # Zero kernels, default bias: i = o = sigmoid(0) = 1/2, f = sigmoid(1), g = tanh(0) = 0.
    cell = lstm_cell(1)
    params, _ = init_cell(cell, jnp.ones((1, 1)))
    params = {**params, "w_ih": jnp.zeros((1, 4)), "w_hh": jnp.zeros((1, 4))}
    (carry, _), _ = cell.apply(params, {}, LSTMCarry(jnp.zeros((1, 1)), jnp.full((1, 1), 2.0)), jnp.ones((1, 1)))
    c = 2.0 / (1 + np.exp(-1.0))
    chex.assert_trees_all_close(carry, LSTMCarry(np.full((1, 1), 0.5 * np.tanh(c)), np.full((1, 1), c)), **TOL)


def test_gru_step_matches_numpy_pytorch_equations():
    cell = gru_cell(H)
    p = fixed_params(cell, 2)
    x, h0 = X.astype(np.float64), H0.astype(np.float64)
    b_hn = np.asarray(p["b_hn"], np.float64)
    r = sigmoid(x @ gate(p, "w_ih", 0) + gate(p, "b", 0) + h0 @ gate(p, "w_hh", 0))
    z = sigmoid(x @ gate(p, "w_ih", 1) + gate(p, "b", 1) + h0 @ gate(p, "w_hh", 1))
    n = np.tanh(x @ gate(p, "w_ih", 2) + gate(p, "b", 2) + r * (h0 @ gate(p, "w_hh", 2) + b_hn))
    h = (1 - z) * n + z * h0
    (carry, y), _ = cell.apply(p, {}, jnp.asarray(H0), jnp.asarray(X))
    chex.assert_trees_all_close(carry, h, **TOL)
    chex.assert_trees_all_equal(y, carry)


@pytest.mark.parametrize("make", [simple_rnn_cell, lstm_cell, gru_cell])
def test_use_bias_false_drops_biases(make):
    cell = make(H, use_bias=False)
    params, _ = init_cell(cell, jnp.ones((2, F)))
    assert sorted(params) == ["w_hh", "w_ih"]
    carry = cell.initial_carry((2,))
    (_, y), _ = cell.apply(params, {}, carry, jnp.zeros((2, F)))
    # No bias and zero input/carry: every pre-activation is 0, so tanh/GRU give exactly 0 and the LSTM too (g = 0).
    np.testing.assert_array_equal(y, np.zeros((2, H)))


def test_init_shapes_blocks_and_forget_bias():
    features, hidden = 40, 30
    params, state = init_cell(lstm_cell(hidden, forget_bias=2.0), jnp.ones((1, features)))
    assert state == {}
    chex.assert_shape([params["w_ih"], params["w_hh"], params["b"]], [(40, 120), (30, 120), (120,)])
    np.testing.assert_array_equal(params["b"], np.repeat([0.0, 2.0, 0.0, 0.0], hidden))
    limit = np.sqrt(6 / (features + hidden))  # Glorot per gate block: fan_in F, fan_out H
    assert float(jnp.abs(params["w_ih"]).max()) <= limit
    assert float(jnp.abs(params["w_ih"]).max()) > 0.9 * limit  # 4,800 draws reach the edge of the range
    for g in range(4):  # each [H, H] block of the recurrent kernel is orthogonal on its own
        block = np.asarray(params["w_hh"][:, g * hidden : (g + 1) * hidden], np.float64)
        np.testing.assert_allclose(block @ block.T, np.eye(hidden), atol=1e-5)  # float32 QR: ~1e-6 error
    blocks = np.split(np.asarray(params["w_hh"]), 4, axis=1)
    assert not np.allclose(blocks[0], blocks[1])  # the gates get different keys


def test_custom_initializers_and_dtypes():
    cell = gru_cell(2, kernel_init=fn.initializers.constant(0.5), recurrent_init=fn.initializers.zeros())
    params, _ = init_cell(cell, jnp.ones((1, 3)))
    np.testing.assert_array_equal(params["w_ih"], np.full((3, 6), 0.5))
    np.testing.assert_array_equal(params["w_hh"], np.zeros((2, 6)))
    params, _ = init_cell(lstm_cell(2), jnp.ones((1, 3), jnp.bfloat16))
    assert {p.dtype for p in params.values()} == {jnp.dtype(jnp.bfloat16)}
    params, _ = init_cell(lstm_cell(2, dtype=jnp.float32), jnp.ones((1, 3), jnp.bfloat16))
    assert {p.dtype for p in params.values()} == {jnp.dtype(jnp.float32)}
    spec_params, _ = jax.eval_shape(lambda x: init_cell(lstm_cell(2), x), jax.ShapeDtypeStruct((4, 3), jnp.float32))
    assert spec_params["w_ih"].shape == (3, 8)


@pytest.mark.parametrize("batch_shape", [(), (2, 3)])
def test_any_leading_batch_shape(batch_shape):
    cell = lstm_cell(H)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((*batch_shape, F)), jnp.float32)
    params, _ = init_cell(cell, x)
    carry = cell.initial_carry(batch_shape)
    chex.assert_shape(list(carry), [(*batch_shape, H)] * 2)
    (_, y), _ = cell.apply(params, {}, carry, x)
    # The same step on the examples flattened into one batch axis.
    flat, _ = cell.apply(params, {}, cell.initial_carry((int(np.prod(batch_shape)),)), x.reshape(-1, F))
    chex.assert_trees_all_close(y.reshape(-1, H), flat[1], **TOL)


def test_initial_carry_dtype_and_structure():
    assert isinstance(lstm_cell(2).initial_carry((3,)), LSTMCarry)
    assert gru_cell(2).initial_carry((3,), jnp.bfloat16).dtype == jnp.bfloat16
    np.testing.assert_array_equal(simple_rnn_cell(2).initial_carry((1,)), np.zeros((1, 2)))
    assert isinstance(gru_cell(2), Cell) and [c.name for c in (simple_rnn_cell(1), lstm_cell(1), gru_cell(1))] == [
        "simple_rnn",
        "lstm",
        "gru",
    ]


@pytest.mark.parametrize("make", [simple_rnn_cell, lstm_cell, gru_cell])
def test_step_gradients_float64(make):
    with jax.enable_x64(True):
        cell = make(2)
        x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3)))
        params, _ = init_cell(cell, x)
        carry = jax.tree.map(lambda c: c + 0.3, cell.initial_carry((2,), jnp.float64))

        def f(params, carry, x):
            return cell.apply(params, {}, carry, x)[0]

        # float64 central differences: check_grads' default tolerances are tight here. Jitted, so
        # the numerical evaluations reuse one compiled step; order 2 also checks Hessian-vector products.
        check_grads(jax.jit(f), (params, carry, x), order=2, modes=["fwd", "rev"])


def test_cell_errors():
    with pytest.raises(ValueError, match="lstm: hidden must be a positive int, got 0"):
        lstm_cell(0)
    cell = lstm_cell(H)
    params, _ = init_cell(cell, jnp.ones((2, F)))
    carry = cell.initial_carry((2,))
    with pytest.raises(fn.ShapeError, match=r"at lstm: expected last axis 3, got \(2, 5\) float32"):
        cell.apply(params, {}, carry, jnp.ones((2, 5)))
    with pytest.raises(fn.DTypeError, match=r"at lstm: expected a floating-point input, got \(2, 3\) int32"):
        cell.apply(params, {}, carry, jnp.ones((2, F), jnp.int32))
    with pytest.raises(fn.ShapeError, match=r"expected carry arrays of shape \(2, 2\).*got \(3, 2\) float32"):
        cell.apply(params, {}, cell.initial_carry((3,)), jnp.ones((2, F)))
    with pytest.raises(fn.ShapeError, match=r"at lstm: expected the carry LSTMCarry\(h, c\), got \(2, 2\) float32"):
        cell.apply(params, {}, jnp.zeros((2, H)), jnp.ones((2, F)))
    with pytest.raises(fn.ParamsError, match=r"expected keys \['b', 'w_hh', 'w_ih'\], got \['b', 'b_hn'"):
        cell.apply(init_cell(gru_cell(H), jnp.ones((2, F)))[0], {}, carry, jnp.ones((2, F)))
    with pytest.raises(fn.ParamsError, match=r"'w_hh' should have shape \(2, 8\), got \(4, 16\) float32"):
        cell.apply(init_cell(lstm_cell(4), jnp.ones((2, F)))[0], {}, carry, jnp.ones((2, F)))
    with pytest.raises(fn.ShapeError, match=r"at gru: expected input of rank >= 1 \(\[\*batch, features\]\)"):
        init_cell(gru_cell(H), jnp.float32(1.0))
