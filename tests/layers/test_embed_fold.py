"""``embed(..., deferred=True)``: the Embedded rows, which the LSTM folds into its input projection.

The reference is the same model with ``deferred=False`` (the rows looked up, then ``x @ w_ih`` over
them), whose LSTM is tested against the scanned step in test_lstm_scan.py. Folding computes
``(table @ w_ih + b)[ids]`` instead of ``table[ids] @ w_ih + b``: the same products, the bias added
earlier, so values and gradients agree to a few ulps (1e-5 fails on any wrong row, gate or order).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn

TOL = {"rtol": 1e-5, "atol": 1e-5}
B, T, V, F, H = 4, 6, 11, 3, 5
IDS = np.random.default_rng(0).integers(0, V, (B, T)).astype(np.int32)
LENGTHS = np.array([6, 2, 0, 4], np.int32)


def pair(body):
    """``(looked_up, deferred, params)``: ``body`` on the rows of ``embed(V, F)``, looked up and deferred,
    as ``(params, lengths) -> (loss, outputs)``, and params moved off their init."""
    layers = {name: fn.embed(V, F, deferred=name == "deferred") for name in ("looked_up", "deferred")}
    params = {"embed": layers["looked_up"].init(jax.random.key(0), IDS)[0]}
    params["body"] = body.init(jax.random.key(1), layers["looked_up"].apply(params["embed"], {}, IDS)[0])[0]
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda p: p + 0.3 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)

    def model(layer):
        def loss(p, *lengths):
            rows, _ = layer.apply(p["embed"], {}, jnp.asarray(IDS))
            out, _ = body.apply(p["body"], {}, rows, *lengths)
            ys = out[0] if isinstance(out, tuple) else out
            return jnp.sum(jnp.sin(ys) * jnp.arange(ys.shape[-1], dtype=ys.dtype)[None, None]), out

        return jax.value_and_grad(loss, has_aux=True)

    return model(layers["looked_up"]), model(layers["deferred"]), params


@pytest.mark.parametrize(
    ("body", "lengths"),
    [
        pytest.param(fn.rnn(fn.lstm_cell(H), return_carry=True), None, id="lstm"),
        pytest.param(fn.rnn(fn.lstm_cell(H), return_carry=True), LENGTHS, id="lstm-lengths"),
        pytest.param(fn.rnn(fn.lstm_cell(H), reverse=True), LENGTHS, id="lstm-reverse"),
        pytest.param(fn.rnn(fn.lstm_cell(H, forward_mode=True)), LENGTHS, id="lstm-forward-mode"),
        pytest.param(fn.rnn(fn.gru_cell(H)), LENGTHS, id="gru-looks-up"),
        pytest.param(fn.stacked_rnn([fn.lstm_cell(H), fn.lstm_cell(2)]), None, id="stacked"),
        pytest.param(fn.bidirectional(fn.rnn(fn.lstm_cell(H)), fn.rnn(fn.lstm_cell(2))), LENGTHS, id="bidirectional"),
    ],
)
def test_deferred_rows_give_the_same_values_and_gradients(body, lengths):
    looked_up, deferred, params = pair(body)
    inputs = () if lengths is None else (jnp.asarray(lengths),)
    (want_loss, want_out), want_grad = looked_up(params, *inputs)
    (got_loss, got_out), got_grad = deferred(params, *inputs)
    chex.assert_trees_all_close(got_out, want_out, **TOL)
    chex.assert_trees_all_close(got_grad, want_grad, **TOL)
    assert abs(float(got_loss - want_loss)) < 1e-4
    assert float(jnp.abs(got_grad["embed"]["embedding"]).sum()) > 0  # the table is trained through the fold


def test_deferred_rows_in_mixed_precision_are_as_close_to_float32_as_the_looked_up_rows():
    looked_up, deferred, params = pair(fn.rnn(fn.lstm_cell(H, compute_dtype="bfloat16")))
    _, reference, _ = pair(fn.rnn(fn.lstm_cell(H)))
    (_, want), want_grad = looked_up(params)
    (_, got), got_grad = deferred(params)
    _, exact_grad = reference(params)
    # Forward, both round the same operands (table rows and w_ih) to bfloat16 and multiply in float32.
    chex.assert_trees_all_close(got, want, **TOL)

    # Backward, the fold sums each id's dz in float32 before rounding it once; the looked-up path
    # rounds every row's dz. Neither is exact: the fold must be no further from float32.
    def errors(grad):  # max error per param, relative to the float32 gradient's largest entry
        return jax.tree.map(lambda g, e: float(jnp.abs(g - e).max() / jnp.abs(e).max()), grad, exact_grad)

    folded, rowwise = errors(got_grad), errors(want_grad)
    for name, error in jax.tree_util.tree_leaves_with_path(folded):
        assert error < 2e-2, (name, error)  # bfloat16-sized; a wrong term is off by O(1)
    assert jax.tree.all(jax.tree.map(lambda f, r: f <= 1.05 * r + 1e-6, folded, rowwise)), (folded, rowwise)


def test_out_of_range_ids_give_nan_outputs_only_in_their_sequence():
    layer, body = fn.embed(V, F, deferred=True), fn.rnn(fn.lstm_cell(H))
    params = {"embed": layer.init(jax.random.key(0), IDS)[0]}
    params["body"] = body.init(jax.random.key(1), jax.ShapeDtypeStruct((B, T, F), jnp.float32))[0]
    ids = jnp.asarray(IDS).at[1, 3].set(V).at[2, 0].set(-1)
    ys, _ = body.apply(params["body"], {}, layer.apply(params["embed"], {}, ids)[0])
    bad = jnp.isnan(ys).any(axis=(1, 2))
    assert bad.tolist() == [False, True, True, False]
    assert not jnp.isnan(ys[1, :3]).any()  # before the bad id the sequence is intact


def test_embedded_reads_like_its_rows_and_other_layers_ask_for_lookup():
    table = jnp.arange(V * F, dtype=jnp.float32).reshape(V, F)
    rows = fn.Embedded(table, jnp.asarray(IDS))
    assert (rows.shape, rows.dtype, rows.ndim) == ((B, T, F), jnp.float32, 3)
    np.testing.assert_array_equal(rows.lookup(), table[IDS])
    layer = fn.dense(2)
    params, _ = layer.init(jax.random.key(0), rows.lookup())
    assert layer.apply(params, {}, rows.lookup())[0].shape == (B, T, 2)
    for call in (lambda: layer.apply(params, {}, rows), lambda: layer.init(jax.random.key(0), rows)):
        with pytest.raises(fn.DTypeError, match=r"dense: expected an array, got Embedded rows .*Fix: rows\.lookup\(\)"):
            call()


def test_the_char_lm_trains_through_the_fold_like_the_looked_up_model():
    from funcnet.experiments.charlm import char_lm

    lm = char_lm(V, embed=F, hidden=H, layers=2)
    params, _ = lm.init(jax.random.key(0), jnp.asarray(IDS))
    reference = fn.embed(V, F)  # the same params, rows looked up first

    def loss(p, forward):
        logits, _ = forward(p)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    def folded(p):
        return lm.apply(p, {}, jnp.asarray(IDS))  # evaluation: from zero carries

    def looked_up(p):
        x, _ = reference.apply(p["embed"], {}, jnp.asarray(IDS))
        stacked = fn.stacked_rnn([fn.lstm_cell(H), fn.lstm_cell(H)], return_carry=True)
        (ys, _), _ = stacked.apply(p["rnn"], {}, x)
        return fn.dense(V).apply(p["head"], {}, ys)[0], None

    want = jax.grad(loss)(params, looked_up)
    got = jax.grad(loss)(params, folded)
    chex.assert_trees_all_close(got, want, **TOL)
