"""Properties every layer must have, checked on each layer of the catalogue.

- init inferred the output shape that apply returns (``jax.eval_shape`` of init + apply agrees
  with a real call), and ``jax.eval_shape(model.init, ...)`` gives the params' shapes;
- ``jax.jit`` and eager agree;
- a second jitted call with the same shapes does not retrace;
- gradients with respect to params and float inputs match finite differences (float64);
- ``jax.vmap`` over examples equals applying to the batch;
- a batch sharded over a mesh of Explicit axes gives the unsharded result (random draws included).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import funcnet as fn


def _floats(*shape):
    return lambda key, dtype=jnp.float32: jax.random.normal(key, shape, dtype)


def _ids(*shape, vocab=11):
    return lambda key, dtype=None: jax.random.randint(key, shape, 0, vocab)


# (name, model factory, input makers). Shapes are small: gradient checks run in float64.
CATALOGUE = [
    ("dense", lambda: fn.dense(3), [_floats(4, 5)]),
    ("dense_3d", lambda: fn.dense(3, use_bias=False), [_floats(2, 4, 5)]),
    ("embed", lambda: fn.embed(11, 4), [_ids(3, 5)]),
    ("conv1d", lambda: fn.conv1d(3, 3, strides=2, padding="SAME"), [_floats(2, 7, 2)]),
    ("conv2d", lambda: fn.conv2d(2, (2, 3), dilation=(1, 2), padding="VALID"), [_floats(2, 5, 6, 3)]),
    ("max_pool", lambda: fn.max_pool((2, 2)), [_floats(2, 4, 4, 3)]),
    ("avg_pool", lambda: fn.avg_pool(3, strides=1, padding="SAME"), [_floats(2, 5, 2)]),
    ("layer_norm", lambda: fn.layer_norm(), [_floats(4, 6)]),
    ("rms_norm", lambda: fn.rms_norm(), [_floats(4, 6)]),
    ("batch_norm", lambda: fn.batch_norm(), [_floats(8, 3)]),
    ("attention", lambda: fn.multi_head_attention(2), [_floats(2, 3, 4)]),
    ("attention_causal_dropout", lambda: fn.multi_head_attention(2, causal=True, dropout_rate=0.3), [_floats(2, 3, 4)]),
    ("attention_cross", lambda: fn.multi_head_attention(2, qkv_features=6), [_floats(2, 3, 4), _floats(2, 5, 3)]),
    ("dropout", lambda: fn.dropout(0.5), [_floats(4, 3)]),
    ("rnn_lstm", lambda: fn.rnn(fn.lstm_cell(3)), [_floats(2, 4, 3)]),
    ("rnn_gru_reverse", lambda: fn.rnn(fn.gru_cell(3), reverse=True, return_carry=True), [_floats(2, 4, 3)]),
    (
        "bidirectional",
        lambda: fn.bidirectional(fn.rnn(fn.simple_rnn_cell(2)), fn.rnn(fn.lstm_cell(2))),
        [_floats(2, 3, 2)],
    ),
    ("stacked_rnn", lambda: fn.stacked_rnn([fn.lstm_cell(3), fn.gru_cell(2)], dropout=0.3), [_floats(2, 4, 3)]),
    ("flatten", lambda: fn.flatten(), [_floats(2, 3, 4)]),
    ("reshape", lambda: fn.reshape((2, -1)), [_floats(2, 6)]),
    ("relu", lambda: fn.relu(), [_floats(3, 4)]),
    ("gelu", lambda: fn.gelu(), [_floats(3, 4)]),
    ("tanh", lambda: fn.tanh(), [_floats(3, 4)]),
    ("softmax", lambda: fn.softmax(), [_floats(3, 4)]),
    ("serial", lambda: fn.serial(fn.dense(4), fn.relu(), fn.dense(2)), [_floats(3, 5)]),
    ("residual", lambda: fn.residual(fn.dense(5), fn.tanh()), [_floats(3, 5)]),
    ("stack", lambda: fn.stack(fn.residual(fn.layer_norm(), fn.dense(5)), 3), [_floats(3, 5)]),
    ("fanout", lambda: fn.fanout(fn.dense(2), fn.dense(3)), [_floats(3, 5)]),
    ("cond", lambda: fn.cond(lambda x: x.sum() > 0, fn.dense(2), fn.dense(2)), [_floats(3, 5)]),
]
IDS = [case[0] for case in CATALOGUE]


def _make(case, dtype=jnp.float32):
    _, factory, makers = case
    keys = jax.random.split(jax.random.key(42), len(makers) + 1)
    inputs = [make(k, dtype) for make, k in zip(makers, keys[1:], strict=True)]
    model = factory()
    params, state = model.init(keys[0], *inputs)
    return model, params, state, inputs


@pytest.mark.parametrize("case", CATALOGUE, ids=IDS)
def test_init_predicts_apply_shapes(case):
    model, params, state, inputs = _make(case)
    specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs]
    abstract = jax.eval_shape(model.init, jax.random.key(0), *specs)
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract, (params, state))
    predicted = jax.eval_shape(lambda p, s, *xs: model.apply(p, s, *xs), params, state, *specs)
    outputs = model.apply(params, state, *inputs)
    chex.assert_trees_all_equal_shapes_and_dtypes(predicted, outputs)


@pytest.mark.parametrize("case", CATALOGUE, ids=IDS)
def test_jit_agrees_with_eager_and_does_not_retrace(case):
    chex.clear_trace_counter()  # counts are per function definition, shared by the parametrized cases
    model, params, state, inputs = _make(case)
    key = jax.random.key(1)
    eager = model.apply(params, state, *inputs, key=key, train=True)
    jitted = jax.jit(chex.assert_max_traces(lambda p, s, k, *xs: model.apply(p, s, *xs, key=k, train=True), n=1))
    # Tolerance: XLA may fuse and reorder float32 reductions under jit.
    chex.assert_trees_all_close(jitted(params, state, key, *inputs), eager, rtol=1e-5, atol=1e-5)
    fresh = [x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x for x in inputs]
    jitted(params, state, key, *fresh)  # same shapes: a retrace would raise


@pytest.mark.parametrize("case", CATALOGUE, ids=IDS)
def test_gradients_match_finite_differences(case):
    with jax.enable_x64(True):
        model, params, state, inputs = _make(case, jnp.float64)
        if case[0] == "embed":
            params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        floats = [i for i, x in enumerate(inputs) if jnp.issubdtype(x.dtype, jnp.floating)]

        def f(p, *xs):
            args = list(inputs)
            for i, x in zip(floats, xs, strict=True):
                args[i] = x
            out, _ = model.apply(p, state, *args, key=jax.random.key(3), train=True)
            return jax.tree.map(jnp.sum, out)  # a scalar per output keeps the check small

        # float64 central differences: the default tolerance (1e-5 relative) applies.
        check_grads(f, (params, *[inputs[i] for i in floats]), order=1, modes=["rev"])


# cond's predicate reads the whole batch (x.sum()), so per-example results differ by design;
# tests/layers/test_control.py checks cond under vmap with a per-example predicate.
PER_EXAMPLE = [case for case in CATALOGUE if case[0] != "cond"]


@pytest.mark.parametrize("case", PER_EXAMPLE, ids=[case[0] for case in PER_EXAMPLE])
def test_vmap_over_examples_equals_batch(case):
    model, params, state, inputs = _make(case)
    batched, _ = model.apply(params, state, *inputs)

    def one(*xs):
        out, _ = model.apply(params, state, *[x[None] for x in xs])
        return jax.tree.map(lambda a: a[0], out)

    # Tolerance: per-example matmuls may accumulate in another order than the batched one.
    chex.assert_trees_all_close(jax.vmap(one)(*inputs), batched, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CATALOGUE, ids=IDS)
def test_a_batch_sharded_over_an_explicit_mesh_gives_the_unsharded_result(case):
    """jax.make_mesh gives Explicit axes: random masks and selects must follow the batch's sharding."""
    model, params, state, inputs = _make(case)
    inputs = [jnp.concatenate([x] * (8 // math.gcd(x.shape[0], 8))) for x in inputs]  # a batch of a multiple of 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    sharded = jax.device_put(inputs, NamedSharding(mesh, P("data")))
    apply = jax.jit(lambda p, s, k, *xs: model.apply(p, s, *xs, key=k, train=True))
    key = jax.random.key(5)
    expected = model.apply(params, state, *inputs, key=key, train=True)  # eager: one compilation fewer
    with jax.set_mesh(mesh):  # as under jit with in_shardings on this mesh (make_train_step(mesh=mesh))
        outputs, new_state = apply(params, state, key, *sharded)
    # Tolerance: the same masks (drawn from the key and the global shape alone); only reductions split
    # across devices (batch statistics) may round apart.
    chex.assert_trees_all_close((outputs, new_state), expected, rtol=1e-5, atol=1e-6)
    assert all(leaf.sharding.spec[0] == "data" for leaf in jax.tree.leaves(outputs) if leaf.ndim)
