"""Composition that takes what users write: plain callables, keyword inputs (lengths, masks), contract errors."""

from __future__ import annotations

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn

X = jnp.linspace(-1.0, 1.0, 24).reshape(4, 6)


# --- plain callables between layers ------------------------------------------------------


def test_plain_callables_equal_their_layers_in_serial():
    with_callable = fn.serial(fn.dense(8), jax.nn.relu, fn.dense(3))
    with_layer = fn.serial(fn.dense(8), fn.relu(), fn.dense(3))
    params, state = with_callable.init(jax.random.key(0), X)
    same_params, _ = with_layer.init(jax.random.key(0), X)
    chex.assert_trees_all_equal(params, same_params)  # relu has no params: the same names and keys
    chex.assert_trees_all_close(with_callable.apply(params, state, X)[0], with_layer.apply(params, state, X)[0])
    assert (with_callable.apply(params, state, X)[0] != with_callable.apply(params, state, -X)[0]).any()


def test_plain_callables_in_parallel_fanout_and_residual_are_named_after_them():
    model = fn.fanout(jnp.tanh, lambda x: 2 * x, fn.dense(2))
    params, state = model.init(jax.random.key(0), X)
    (a, b, c), _ = model.apply(params, state, X)
    chex.assert_trees_all_close(a, jnp.tanh(X))
    chex.assert_trees_all_close(b, 2 * X)
    assert list(params) == ["dense_0"] and c.shape == (4, 2)
    assert list(fn.name_children([jnp.tanh, lambda x: x, jax.nn.relu], {})) == ["tanh_0", "function_0", "relu_0"]

    pair = fn.parallel(jnp.negative, jnp.exp)
    (neg, exp), _ = pair.apply({}, {}, X, X)
    chex.assert_trees_all_close((neg, exp), (-X, jnp.exp(X)))

    block = fn.residual(fn.dense(6), jax.nn.relu)
    params, state = block.init(jax.random.key(1), X)
    kernel = params["dense_0"]
    want = X + jax.nn.relu(X @ kernel["kernel"] + kernel["bias"][None])
    chex.assert_trees_all_close(block.apply(params, state, X)[0], want, rtol=1e-6)


def test_a_factory_or_cell_given_instead_of_a_layer_names_the_fix():
    with pytest.raises(
        TypeError, match=r"child 2: dense is a layer factory, not a layer. Fix: call it: dense\(\.\.\.\)"
    ):
        fn.serial(fn.dense(3), jax.nn.relu, fn.dense)
    with pytest.raises(TypeError, match=r"child 0: 'lstm' is a recurrent cell.*Fix: .* rnn\(cell\)"):
        fn.serial(fn.lstm_cell(4))
    with pytest.raises(TypeError, match=r"child 'tree': 'binary_tree_lstm' is a tree cell. Fix: .*tree\(cell\)"):
        fn.serial(tree=fn.binary_tree_lstm_cell(4))

    def block():  # a user's factory: detected when it returns a model at trace time
        return fn.dense(3)

    model = fn.serial(fn.dense(3), block, fn.dense(2))
    with pytest.raises(
        fn.ContractError, match=r"at block_0: block\(\) cannot take the inputs \(4, 3\) float32.*call it: block\(\)"
    ):
        model.init(jax.random.key(0), X)

    with pytest.raises(fn.ContractError, match=r"at function_0: function\(inputs\) returned a model \(dense\)"):
        fn.serial(fn.dense(3), lambda x: fn.dense(2), fn.dense(2)).init(jax.random.key(0), X)


# --- the contract, checked with the layer's path ---------------------------------------------


def _no_keywords(name="scale"):
    def init(key, x):
        del key, x
        return {}, {}

    def apply(params, state, x):  # no key= and train=
        return 2 * x, state

    return fn.Model(init, apply, name)


def _returns_outputs_only():
    def init(key, x):
        del key, x
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return 2 * x  # the state is missing

    return fn.Model(init, apply, "double")


def test_an_apply_without_key_and_train_is_refused_with_its_path():
    model = fn.serial(encoder=fn.serial(fn.dense(6), _no_keywords()))
    with pytest.raises(fn.ContractError, match=r"at encoder/scale_0: apply must take the keywords key and train") as e:
        model.init(jax.random.key(0), X)
    assert "apply(params, state, x)" in str(e.value) and "Fix: add '*, key=None, train=False'" in str(e.value)
    assert isinstance(e.value, TypeError)


def test_an_apply_that_returns_no_state_is_refused_with_its_path():
    model = fn.serial(fn.dense(6), head=_returns_outputs_only())
    params, state = model.init(jax.random.key(0), X)  # the last child's output is not needed at init
    with pytest.raises(fn.ContractError, match=r"at head: apply must return \(outputs, state\).*got \(4, 6\) float32"):
        model.apply(params, state, X)


def test_an_init_that_returns_no_pair_is_refused():
    bad = fn.Model(lambda key, x: {"w": jnp.ones(2)}, lambda p, s, x, *, key=None, train=False: (x, s), "bad")
    with pytest.raises(fn.ContractError, match=r"at bad_0: init must return \(params, state\) with params and state"):
        fn.serial(bad).init(jax.random.key(0), X)


# --- keyword inputs -------------------------------------------------------------------


def test_keyword_inputs_reach_only_the_layers_that_take_them_and_are_announced():
    model = fn.serial(fn.embed(10, 4), fn.rnn(fn.gru_cell(5)), fn.global_avg_pool())
    assert set(fn.core.keyword_inputs(model.apply)) == {"lengths", "initial_carry"}
    assert "lengths=None" in str(inspect.signature(model.apply))
    ids, lengths = jnp.array([[1, 2, 3, 0], [4, 5, 6, 7]]), jnp.array([3, 4])
    params, state = model.init(jax.random.key(0), ids, lengths=lengths)
    pooled, _ = model.apply(params, state, ids, lengths=lengths)
    by_hand = fn.rnn(fn.gru_cell(5)).apply(params["rnn_0"], {}, params["embed_0"]["embedding"][ids], lengths)[0]
    chex.assert_trees_all_close(pooled[0], by_hand[0, :3].mean(0), rtol=1e-6)
    chex.assert_trees_all_close(pooled[1], by_hand[1].mean(0), rtol=1e-6)


def test_a_keyword_input_no_layer_takes_is_refused_with_a_suggestion():
    model = fn.serial(fn.embed(10, 4), fn.rnn(fn.gru_cell(5)))
    ids = jnp.ones((2, 3), jnp.int32)
    params, state = model.init(jax.random.key(0), ids)
    with pytest.raises(
        fn.ContractError, match=r"no layer of this model takes the keyword input 'lenghts'.*mean 'lengths'"
    ):
        model.apply(params, state, ids, lenghts=jnp.array([3, 3]))
    with pytest.raises(fn.ContractError, match=r"at serial: .*'mask'; its layers take none"):
        fn.serial(fn.dense(2)).init(jax.random.key(0), X, mask=None)


def test_a_tuple_where_an_array_belongs_points_to_keyword_inputs():
    model = fn.serial(fn.parallel(fn.embed(10, 4), lambda n: n), fn.rnn(fn.gru_cell(5)))
    ids, lengths = jnp.ones((2, 3), jnp.int32), jnp.array([3, 2])
    expected = r"at rnn_0: expected an array, got tuple \(\(2, 3, 4\) float32, \(2,\) int32\)\. Fix: pass side inputs"
    with pytest.raises(fn.DTypeError, match=expected + r" such as lengths .* as keywords"):
        model.init(jax.random.key(0), ids, lengths)


def _padded(rows, time, pad_value):
    """Token ids [batch, time]: each row's tokens, then ``pad_value`` up to ``time``."""
    return jnp.array([list(r) + [pad_value] * (time - len(r)) for r in rows], jnp.int32)


ROWS = ([3, 1, 4, 1, 5], [9, 2], [6, 5, 3, 5])


def bilstm_classifier():
    # The README's BiLSTM classifier: lengths reach bidirectional and the pooling, nothing else.
    return fn.serial(
        fn.embed(10, 8),
        fn.bidirectional(fn.rnn(fn.lstm_cell(6)), fn.rnn(fn.lstm_cell(6))),
        fn.global_avg_pool(),
        fn.dense(2),
    )


def test_bilstm_classifier_with_lengths_ignores_padding_and_equals_unpadded_runs():
    model = bilstm_classifier()
    lengths = jnp.array([len(r) for r in ROWS])
    ids = _padded(ROWS, 7, 0)
    params, state = model.init(jax.random.key(0), ids, lengths=lengths)
    logits, _ = model.apply(params, state, ids, lengths=lengths)
    other_padding, _ = model.apply(params, state, _padded(ROWS, 7, 8), lengths=lengths)
    chex.assert_trees_all_close(logits, other_padding, rtol=1e-6)
    for i, row in enumerate(ROWS):
        alone, _ = model.apply(params, state, jnp.array([row], jnp.int32))  # no padding, no lengths
        chex.assert_trees_all_close(logits[i], alone[0], rtol=1e-5, atol=1e-6)
    # the sequence outputs too, at every real position
    encoder = fn.serial(fn.embed(10, 8), fn.bidirectional(fn.rnn(fn.lstm_cell(6)), fn.rnn(fn.lstm_cell(6))))
    enc_params = {"embed_0": params["embed_0"], "bidirectional_0": params["bidirectional_0"]}
    ys, _ = encoder.apply(enc_params, {}, ids, lengths=lengths)
    for i, row in enumerate(ROWS):
        alone, _ = encoder.apply(enc_params, {}, jnp.array([row], jnp.int32))
        chex.assert_trees_all_close(ys[i, : len(row)], alone[0], rtol=1e-5, atol=1e-6)
    assert not jnp.allclose(logits[0], logits[1])  # the rows differ, so must their predictions


def test_stack_hands_keyword_inputs_to_every_layer():
    layer = fn.serial(fn.rnn(fn.gru_cell(4)))
    model = fn.stack(layer, 2)
    xs, lengths = jnp.ones((2, 5, 4)), jnp.array([5, 2])
    params, state = model.init(jax.random.key(0), xs, lengths=lengths)
    ys, _ = model.apply(params, state, xs, lengths=lengths)
    assert bool((ys[1, 2:] == 0).all()) and not bool((ys[0, 2:] == 0).all())


# --- cells and tree cells keep the same contract -----------------------------------------


def test_a_cell_is_initialized_and_summarized_like_a_model():
    cell = fn.lstm_cell(3)
    carry, x = cell.initial_carry((2,)), jnp.ones((2, 5))
    params, state = fn.init_child("cell", cell, jax.random.key(0), carry, x)
    ((new_carry, y), _) = fn.apply_child("cell", cell, {"cell": params}, {}, carry, x)
    assert y.shape == (2, 3) and new_carry.c.shape == (2, 3) and state == {}
    assert "params/b" in fn.summary(cell, carry, x)
    with pytest.raises(fn.ShapeError, match=r"at lstm: expected carry arrays of shape \(2, 3\)"):
        cell.init(jax.random.key(0), cell.initial_carry((4,)), x)


def test_tree_cell_apply_is_leaf_for_leaves_and_node_for_the_others():
    cell = fn.binary_tree_lstm_cell(4)
    x = jax.random.normal(jax.random.key(1), (3, 5))
    params, state = cell.init(jax.random.key(0), x)
    leaves = cell.leaf(params, x)
    kids = fn.TreeCarry(*(jnp.stack([a[:2], a[1:]]) for a in leaves))  # [2 nodes, 2 children, H]
    kids = fn.TreeCarry(*(jnp.concatenate([k, jnp.zeros_like(k[:1])]) for k in kids))  # a third, childless node
    mask = jnp.array([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    step, _ = cell.apply(params, state, x, kids, mask)
    nodes = cell.node(params, kids, mask)
    chex.assert_trees_all_close(step.h[:2], nodes.h[:2])
    chex.assert_trees_all_close(step.h[2], leaves.h[2])
    chex.assert_trees_all_close(cell.apply(params, state, x)[0], leaves)


# --- recurrent mistakes ------------------------------------------------------------------


def test_bidirectional_refuses_a_reversed_child():
    with pytest.raises(ValueError, match=r"backward is rnn\(\.\.\., reverse=True\).*would read .* forwards\. Fix"):
        fn.bidirectional(fn.rnn(fn.lstm_cell(3)), fn.rnn(fn.lstm_cell(3), reverse=True))
    with pytest.raises(ValueError, match=r"forward is rnn\(\.\.\., reverse=True\), so both directions would read"):
        fn.bidirectional(fn.rnn(fn.lstm_cell(3), reverse=True), fn.rnn(fn.lstm_cell(3)))


# --- help(funcnet) ---------------------------------------------------------------------


def test_help_lists_the_public_functions():
    import pydoc

    text = pydoc.render_doc(fn, renderer=pydoc.plaintext)
    for name in ("serial(", "dense(", "init_child(", "apply_child(", "summary("):
        assert name in text, f"help(funcnet) does not list {name}"
    assert set(fn.__all__) >= {"serial", "Model", "ContractError", "losses"}
    assert all(hasattr(fn, name) for name in fn.__all__)


def test_numpy_reference_of_global_avg_pool_with_lengths():
    xs = np.random.default_rng(0).standard_normal((3, 5, 2)).astype(np.float32)
    lengths = np.array([5, 1, 0])
    got, _ = fn.global_avg_pool().apply({}, {}, jnp.asarray(xs), lengths=jnp.asarray(lengths))
    want = np.stack([xs[0].mean(0), xs[1, :1].mean(0), np.zeros(2, np.float32)])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    with pytest.raises(fn.DTypeError, match="expected integer lengths, got \\(3,\\) float32"):
        fn.global_avg_pool().apply({}, {}, jnp.asarray(xs), lengths=jnp.ones(3))
    with pytest.raises(
        fn.ShapeError, match="one length per sequence: got input \\(3, 5, 2\\) float32, lengths \\(2,\\)"
    ):
        fn.global_avg_pool().apply({}, {}, jnp.asarray(xs), lengths=jnp.array([1, 2]))


def encoder_block(features=8):
    # The README's pre-norm Transformer encoder block: lengths reach only the attention.
    return fn.serial(
        fn.residual(fn.layer_norm(), fn.multi_head_attention(2)),
        fn.residual(fn.layer_norm(), fn.dense(16), jax.nn.gelu, fn.dense(features)),
    )


def test_padded_transformer_encoder_block_ignores_padding_and_equals_unpadded_runs():
    block = encoder_block()
    lengths = jnp.array([5, 2, 4])
    x = jax.random.normal(jax.random.key(0), (3, 6, 8))
    params, state = block.init(jax.random.key(1), x, lengths=lengths)
    y, _ = block.apply(params, state, x, lengths=lengths)
    real = jnp.arange(6)[None, :, None] < lengths[:, None, None]  # [batch, time, 1]
    noise = jax.random.normal(jax.random.key(2), x.shape)
    y_other, _ = block.apply(params, state, jnp.where(real, x, noise), lengths=lengths)  # other padding
    chex.assert_trees_all_close(jnp.where(real, y, 0.0), jnp.where(real, y_other, 0.0), rtol=1e-5, atol=1e-6)
    for i, n in enumerate(lengths.tolist()):
        alone, _ = block.apply(params, state, x[i : i + 1, :n])  # no padding, no lengths
        chex.assert_trees_all_close(y[i, :n], alone[0], rtol=1e-5, atol=1e-5)
    unmasked, _ = block.apply(params, state, x)  # without lengths the padding is attended to
    assert not jnp.allclose(unmasked[1, :2], y[1, :2], atol=1e-4)
    six, _ = fn.stack(block, 2).init(jax.random.key(3), x, lengths=lengths)
    assert jax.tree.leaves(six)[0].shape[0] == 2


def test_residual_and_stack_given_several_positional_inputs_point_to_keyword_inputs():
    block = fn.residual(fn.layer_norm(), fn.multi_head_attention(2))
    x, mask = jnp.ones((2, 3, 4)), fn.padding_mask(jnp.array([3, 1]), 3)
    got = r"got 3: \(\(2, 3, 4\) float32, None, \(2, 1, 1, 3\) bool\)\. "
    with pytest.raises(fn.ShapeError, match=r"at residual: takes one input x, " + got + r"Fix: .* keyword .*mask=mask"):
        block.init(jax.random.key(0), x, None, mask)
    params, state = block.init(jax.random.key(0), x, mask=mask)
    with pytest.raises(fn.ShapeError, match=r"at stack: takes one input x, got 2"):
        fn.stack(block, 2).apply(jax.tree.map(lambda a: a[None], params), state, x, mask)
