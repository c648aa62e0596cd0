"""rnn, bidirectional, stacked_rnn: the scan against a Python loop, lengths, reversal, gradients, transforms, errors."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import funcnet as fn
from funcnet.layers.cells import Cell, LSTMCarry, gru_cell, lstm_cell, simple_rnn_cell
from funcnet.layers.recurrent import bidirectional, reverse_sequences, rnn, stacked_rnn

# float32 scan vs float32 Python loop of the same cell over <= 6 steps: the same operations in
# a different compiled grouping differ by a few ulps (~1e-7); 1e-5 catches any wrong step or mask.
TOL = {"rtol": 1e-5, "atol": 1e-5}
B, T, F, H = 3, 6, 4, 5
LENGTHS = np.array([6, 2, 0], np.int32)  # full, partial, empty
CELLS = {"simple_rnn": simple_rnn_cell, "lstm": lstm_cell, "gru": gru_cell}


def abstract_run(model, *inputs, **kwargs):
    """``model.apply(*model.init(key, *inputs), *inputs)`` traced, not compiled: shapes, and any trace-time error."""
    return jax.eval_shape(lambda: model.apply(*model.init(jax.random.key(0), *inputs), *inputs, **kwargs)[0])


def normal(seed, shape, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def setup(name, seed=0, hidden=H):
    cell = CELLS[name](hidden)
    xs = normal(seed, (B, T, F))
    params, state = rnn(cell).init(jax.random.key(seed), xs)
    return cell, params, state, xs


def loop(cell, params, xs, carry=None):
    """The reference: a Python loop calling the cell on each step of ``xs: [batch, time, F]``.

    Jitted only for speed (an unrolled loop; op-by-op dispatch is ~10x slower); jit/eager agreement
    of rnn is tested on its own.
    """
    return _loop(cell, params, xs, carry)


@functools.partial(jax.jit, static_argnums=0)
def _loop(cell, params, xs, carry):
    carry = cell.initial_carry(xs.shape[:1]) if carry is None else carry
    ys = []
    for t in range(xs.shape[1]):
        (carry, y), _ = cell.apply(params, {}, carry, xs[:, t])
        ys.append(y)
    return (jnp.stack(ys, 1) if ys else jnp.zeros((xs.shape[0], 0, H))), carry


def loop_each_alone(cell, params, xs, lengths, reverse=False):
    """Each sequence run alone on its unpadded prefix (reversed if asked); outputs zero-padded."""
    return _loop_each_alone(cell, params, xs, tuple(int(n) for n in lengths), reverse)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))  # for speed, like loop
def _loop_each_alone(cell, params, xs, lengths, reverse):
    ys, carries = [], []
    for b, n in enumerate(lengths):
        seq = xs[b : b + 1, :n]
        seq = seq[:, ::-1] if reverse else seq
        y, carry = _loop(cell, params, seq, None)
        y = y[:, ::-1] if reverse else y
        ys.append(jnp.concatenate([y, jnp.zeros((1, xs.shape[1] - n, y.shape[-1]))], 1))
        carries.append(carry)
    return jnp.concatenate(ys), jax.tree.map(lambda *c: jnp.concatenate(c), *carries)


@pytest.mark.parametrize("name", list(CELLS))
def test_scan_equals_python_loop_forward_and_gradients(name):
    cell, params, state, xs = setup(name)
    layer = rnn(cell, return_carry=True)
    (ys, carry), _ = layer.apply(params, state, xs)
    chex.assert_trees_all_close((ys, carry), loop(cell, params, xs), **TOL)

    def loss(run):
        def f(params, xs):
            ys, carry = run(params, xs)
            return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(jax.tree.leaves(carry)[-1] ** 2)

        return jax.grad(f, argnums=(0, 1))(params, xs)

    grads = loss(lambda p, x: layer.apply(p, state, x)[0])
    chex.assert_trees_all_close(grads, loss(lambda p, x: loop(cell, p, x)), **TOL)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_lengths_equal_each_sequence_run_alone(name):
    cell, params, state, xs = setup(name, seed=1)
    layer = rnn(cell, return_carry=True)
    (ys, carry), _ = layer.apply(params, state, xs, jnp.asarray(LENGTHS))
    want_ys, want_carry = loop_each_alone(cell, params, xs, LENGTHS)
    chex.assert_trees_all_close((ys, carry), (want_ys, want_carry), **TOL)
    for b, n in enumerate(LENGTHS):  # exactly zero, not merely small
        np.testing.assert_array_equal(ys[b, n:], 0.0)
    # The empty sequence keeps the initial carry exactly.
    chex.assert_trees_all_equal(
        jax.tree.map(lambda c: c[2], carry), jax.tree.map(lambda c: c[0], cell.initial_carry((1,)))
    )

    def grads(run):
        return jax.grad(lambda p, x: sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(run(p, x))), argnums=(0, 1))(
            params, xs
        )

    got = grads(lambda p, x: layer.apply(p, state, x, jnp.asarray(LENGTHS))[0])
    chex.assert_trees_all_close(got, grads(lambda p, x: loop_each_alone(cell, p, x, LENGTHS)), **TOL)
    for b, n in enumerate(LENGTHS):  # padding never reaches the loss
        np.testing.assert_array_equal(got[1][b, n:], 0.0)


def test_reverse_without_lengths_is_a_plain_reversal():
    cell, params, state, xs = setup("lstm", seed=2)
    (ys, carry), _ = rnn(cell, reverse=True, return_carry=True).apply(params, state, xs)
    want_ys, want_carry = loop(cell, params, xs[:, ::-1])
    chex.assert_trees_all_close((ys, carry), (want_ys[:, ::-1], want_carry), **TOL)


def test_reverse_within_lengths():
    cell, params, state, xs = setup("gru", seed=3)
    (ys, carry), _ = rnn(cell, reverse=True, return_carry=True).apply(params, state, xs, jnp.asarray(LENGTHS))
    chex.assert_trees_all_close((ys, carry), loop_each_alone(cell, params, xs, LENGTHS, reverse=True), **TOL)


def test_reverse_sequences():
    xs = jnp.arange(12).reshape(2, 6, 1)
    out = reverse_sequences(xs, jnp.array([4, 9]))  # lengths beyond time are clipped
    np.testing.assert_array_equal(out[..., 0], [[3, 2, 1, 0, 4, 5], [11, 10, 9, 8, 7, 6]])
    np.testing.assert_array_equal(reverse_sequences(out, jnp.array([4, 9])), xs)
    np.testing.assert_array_equal(reverse_sequences(xs), xs[:, ::-1])


@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_bidirectional_equals_forward_and_reversed_runs(merge):
    fwd_cell, bwd_cell = lstm_cell(H), gru_cell(H)
    layer = bidirectional(rnn(fwd_cell), rnn(bwd_cell), merge=merge)
    xs, lengths = normal(4, (B, T, F)), jnp.asarray(LENGTHS)
    params, state = layer.init(jax.random.key(0), xs, lengths)
    assert sorted(params) == ["backward", "forward"] and state == {}
    ys, _ = layer.apply(params, state, xs, lengths)
    fwd, _ = loop_each_alone(fwd_cell, params["forward"], xs, LENGTHS)
    bwd, _ = loop_each_alone(bwd_cell, params["backward"], xs, LENGTHS, reverse=True)
    want = jnp.concatenate([fwd, bwd], -1) if merge == "concat" else fwd + bwd
    chex.assert_trees_all_close(ys, want, **TOL)


def test_bidirectional_carries_and_stacked_children():
    layer = bidirectional(
        rnn(lstm_cell(2), return_carry=True), stacked_rnn([gru_cell(3), gru_cell(2)], return_carry=True)
    )
    xs = normal(5, (B, T, F))
    ys, (carry_f, carries_b) = abstract_run(layer, xs, jnp.asarray(LENGTHS))
    chex.assert_shape(ys, (B, T, 4))
    assert isinstance(carry_f, LSTMCarry) and [c.shape for c in carries_b] == [(B, 3), (B, 2)]
    with pytest.raises(fn.ShapeError, match="at bidirectional: cannot merge the outputs"):
        abstract_run(bidirectional(rnn(lstm_cell(2), return_carry=True), rnn(lstm_cell(2))), xs)
    with pytest.raises(fn.ShapeError, match=r"merge='sum' needs outputs of one shape"):
        abstract_run(bidirectional(rnn(lstm_cell(2)), rnn(lstm_cell(3)), merge="sum"), xs)


def test_initial_carry_is_used_and_kept_in_its_dtype():
    cell, params, state, xs = setup("lstm", seed=6)
    carry0 = LSTMCarry(normal(7, (B, H)), normal(8, (B, H)))
    (ys, carry), _ = rnn(cell, return_carry=True).apply(params, state, xs, None, carry0)
    chex.assert_trees_all_close((ys, carry), loop(cell, params, xs, carry0), **TOL)
    # A plain (h, c) tuple is accepted and returned as LSTMCarry.
    (_, again), _ = rnn(cell, return_carry=True).apply(params, state, xs, None, tuple(carry0))
    assert isinstance(again, LSTMCarry)
    # Truncated BPTT: two halves with the carry handed over equal one run over the whole.
    (_, half), _ = rnn(cell, return_carry=True).apply(params, state, xs[:, :3])
    (ys2, end), _ = rnn(cell, return_carry=True).apply(params, state, xs[:, 3:], None, half)
    (ys_all, end_all), _ = rnn(cell, return_carry=True).apply(params, state, xs)
    chex.assert_trees_all_close((ys2, end), (ys_all[:, 3:], end_all), **TOL)


@pytest.mark.parametrize(("name", "reverse"), [("lstm", False), ("gru", True), ("simple_rnn", False)])
def test_check_grads_float64(name, reverse):
    with jax.enable_x64(True):
        cell = CELLS[name](2)
        xs = normal(9, (2, 3, 2), jnp.float64)
        layer = rnn(cell, reverse=reverse)
        params, state = layer.init(jax.random.key(0), xs)
        assert params["w_ih"].dtype == jnp.float64
        lengths = jnp.array([3, 2])

        def f(params, xs):
            return layer.apply(params, state, xs, lengths)[0]

        # float64 central differences on a smooth function: check_grads' default tolerances hold.
        # Jitted, so each numerical evaluation reuses one compiled scan. The LSTM's default derivative
        # is a custom VJP, reverse mode only (forward mode: lstm_cell(forward_mode=True), test_lstm_scan.py).
        modes = ["rev"] if name == "lstm" else ["fwd", "rev"]
        check_grads(jax.jit(f), (params, xs), order=1, modes=modes)


def test_jit_agrees_with_eager_and_does_not_retrace():
    cell, params, state, xs = setup("lstm", seed=10)
    layer = rnn(cell, return_carry=True, unroll=2)
    eager, _ = layer.apply(params, state, xs, jnp.asarray(LENGTHS))
    run = jax.jit(chex.assert_max_traces(lambda p, x, n: layer.apply(p, state, x, n)[0], n=1))
    chex.assert_trees_all_close(run(params, xs, jnp.asarray(LENGTHS)), eager, **TOL)
    # New values of the same shapes (other lengths too) reuse the one trace.
    run(params, normal(11, (B, T, F)), jnp.array([1, 5, 3], jnp.int32))
    run(jax.tree.map(lambda p: p * 0.5, params), xs, jnp.array([0, 0, 6], jnp.int32))


def test_vmap_over_examples():
    cell, params, state, xs = setup("gru", seed=12)
    layer = rnn(cell)
    batched, _ = layer.apply(params, state, xs, jnp.asarray(LENGTHS))
    one = jax.vmap(lambda x, n: layer.apply(params, state, x[None], n[None])[0][0])(xs, jnp.asarray(LENGTHS))
    chex.assert_trees_all_close(one, batched, **TOL)


def test_step_keys_and_state_reach_the_cell():
    """A toy cell whose output is its step key's first random bit: rnn passes fold_in(key, t)."""

    def init(key, carry, x):
        del key, carry, x
        return {}, {"steps": jnp.zeros((), jnp.int32)}

    def apply(params, state, carry, x, *, key=None, train=False):
        y = jax.random.uniform(key, x.shape) if train else x
        return (carry + 1, y), {"steps": state["steps"] + 1}

    noisy = Cell(init, apply, lambda batch_shape, dtype=jnp.float32: jnp.zeros(batch_shape, dtype), "noisy")
    layer = rnn(noisy, reverse=True)
    xs, key = jnp.ones((2, 4, 3)), jax.random.key(3)
    params, state = layer.init(key, xs)
    ys, state = layer.apply(params, state, xs, key=key, train=True)
    assert int(state["steps"]) == 4
    for t in range(4):
        chex.assert_trees_all_equal(ys[:, t], jax.random.uniform(jax.random.fold_in(key, t), (2, 3)))


def test_stacked_rnn_equals_chained_layers_and_dropout_is_off_at_eval():
    cells = [lstm_cell(4), gru_cell(3), lstm_cell(2)]
    model = stacked_rnn(cells, dropout=0.5, return_carry=True)
    xs, lengths = normal(13, (B, T, F)), jnp.asarray(LENGTHS)
    params, state = model.init(jax.random.key(0), xs, lengths)
    assert list(params) == ["lstm_0", "gru_0", "lstm_1"] and state == {}
    (ys, carries), _ = model.apply(params, state, xs, lengths)  # train=False: no dropout, no key needed
    h, want_carries = xs, []
    for cell, name in zip(cells, params, strict=True):
        (h, c), _ = rnn(cell, return_carry=True).apply(params[name], {}, h, lengths)
        want_carries.append(c)
    chex.assert_trees_all_close((ys, carries), (h, tuple(want_carries)), **TOL)
    # Carries handed back in continue the run exactly like one layer's initial carry.
    (_, again), _ = model.apply(params, state, xs, lengths, carries)
    (_, want), _ = rnn(cells[0], return_carry=True).apply(params["lstm_0"], {}, xs, lengths, carries[0])
    chex.assert_trees_all_close(again[0], want, **TOL)


def test_stacked_rnn_dropout_in_training():
    model = stacked_rnn([lstm_cell(H), lstm_cell(H)], dropout=0.5)
    xs, lengths = normal(14, (B, T, F)), jnp.asarray(LENGTHS)
    params, state = model.init(jax.random.key(0), xs)
    with pytest.raises(fn.KeyMissingError, match="at dropout_0: train=True needs a PRNG key"):
        abstract_run(model, xs, train=True)
    with pytest.raises(fn.KeyMissingError, match="at encoder/dropout_0"):
        abstract_run(fn.serial(encoder=model), xs, train=True)
    key = jax.random.key(1)
    run = jax.jit(lambda key, train: model.apply(params, state, xs, lengths, key=key, train=train)[0], static_argnums=1)
    train1, train2, other = run(key, True), run(key, True), run(jax.random.key(2), True)
    evaluation = run(key, False)
    chex.assert_trees_all_equal(train1, train2)  # deterministic given the key
    assert not np.allclose(train1, evaluation) and not np.allclose(train1, other)
    for b, n in enumerate(LENGTHS):
        np.testing.assert_array_equal(train1[b, n:], 0.0)
    # No dropout after the last layer: its output is layer 1 applied to dropped-out layer-0 outputs.
    h0, _ = rnn(lstm_cell(H)).apply(params["lstm_0"], {}, xs, lengths)
    dropped, _ = fn.dropout(0.5).apply({}, {}, h0, key=fn.children.child_key(key, "dropout_0"), train=True)
    want, _ = rnn(lstm_cell(H)).apply(params["lstm_1"], {}, dropped, lengths)
    chex.assert_trees_all_close(train1, want, **TOL)
    abstract_run(stacked_rnn([lstm_cell(H)], dropout=0.5), xs, train=True)  # no layer after: no key needed


def test_rnn_errors():
    cell, params, state, xs = setup("lstm")
    layer = rnn(cell)
    with pytest.raises(fn.ShapeError, match=r"at rnn: expected input of rank 3 \(\[batch, time, features\]\), got"):
        layer.apply(params, state, xs[0])
    with pytest.raises(fn.DTypeError, match=r"at rnn: expected a floating-point input, got \(3, 6, 4\) int32"):
        layer.apply(params, state, xs.astype(jnp.int32))
    with pytest.raises(
        fn.ShapeError, match=r"at rnn: input \(3, 6, 7\) float32 does not fit the params: 'w_ih' is \(4, 20\) float32"
    ):
        layer.apply(params, state, jnp.ones((B, T, 7)))
    with pytest.raises(fn.ShapeError, match=r"expected lengths of shape \(3,\).*got \(3, 1\) int32"):
        layer.apply(params, state, xs, jnp.ones((B, 1), jnp.int32))
    with pytest.raises(fn.DTypeError, match=r"at rnn: expected integer lengths, got \(3,\) float32"):
        layer.apply(params, state, xs, jnp.ones(B))
    with pytest.raises(fn.ShapeError, match=r"expected initial_carry like LSTMCarry\(h=\(3, 5\), c=\(3, 5\)\)"):
        layer.apply(params, state, xs, None, lstm_cell(H).initial_carry((2,)))
    with pytest.raises(fn.ParamsError, match="at rnn: params do not belong to this model"):
        layer.apply(rnn(gru_cell(H)).init(jax.random.key(0), xs)[0], state, xs)
    with pytest.raises(fn.ShapeError, match=r"at rnn_0: input \(3, 6, 7\) float32 does not fit"):
        model = fn.serial(rnn(cell), fn.dense(2))
        model.apply(model.init(jax.random.key(0), xs)[0], {}, jnp.ones((B, T, 7)))
    with pytest.raises(fn.ShapeError, match=r"at stacked_rnn: expected initial_carry as a tuple of 2 carries"):
        stacked = stacked_rnn([cell, cell])
        stacked.apply(stacked.init(jax.random.key(0), xs)[0], {}, xs, None, (cell.initial_carry((B,)),))
    with pytest.raises(fn.ShapeError, match=r"at lstm_1: input \(3, 6, 5\) float32 does not fit"):
        stacked_rnn([lstm_cell(H), lstm_cell(H)]).apply({"lstm_0": params, "lstm_1": params}, {}, xs)
    with pytest.raises(TypeError, match="rnn: expected a Cell"):
        rnn(fn.dense(3))
    with pytest.raises(ValueError, match="merge must be 'concat' or 'sum'"):
        bidirectional(layer, layer, merge="mean")
    with pytest.raises(ValueError, match="dropout is the drop probability"):
        stacked_rnn([cell], dropout=1.0)
