"""serial, parallel, fanout, residual and stack: composition, naming, state, keys, errors."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn


def counter(name: str = "counter") -> fn.Model:
    """A stateful toy: counts its train-mode calls and adds the count to its input."""

    def init(key, x):
        del key, x
        return {}, {"count": jnp.zeros((), jnp.int32)}

    def apply(params, state, x, *, key=None, train=False):
        del params, key
        count = state["count"] + 1 if train else state["count"]
        return x + count, {"count": count}

    return fn.Model(init, apply, name)


def noise() -> fn.Model:
    """A toy that returns its key's randomness, to see which key a child received."""

    def init(key, x):
        del key, x
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, train
        if key is None:  # init infers output shapes by calling apply without a key
            return x, state
        return x + jax.random.uniform(key, x.shape), state

    return fn.Model(init, apply, "noise")


X = jnp.arange(12.0).reshape(3, 4) / 10


def test_serial_equals_applying_children_in_turn():
    a, b = fn.dense(5), fn.dense(2)
    model = fn.serial(first=a, second=b)
    params, state = model.init(jax.random.key(0), X)
    h, _ = a.apply(params["first"], {}, X)
    want, _ = b.apply(params["second"], {}, h)
    chex.assert_trees_all_close(model.apply(params, state, X)[0], want, rtol=1e-6)


def test_serial_threads_state_of_each_child():
    model = fn.serial(counter(), fn.dense(4), counter())
    params, state = model.init(jax.random.key(0), X)
    assert set(state) == {"counter_0", "counter_1"} and set(params) == {"dense_0"}
    _, state = model.apply(params, state, X, train=True)
    _, state = model.apply(params, state, X, train=True)
    assert int(state["counter_0"]["count"]) == 2 and int(state["counter_1"]["count"]) == 2
    _, state = model.apply(params, state, X)
    assert int(state["counter_0"]["count"]) == 2


def test_serial_gives_each_child_its_own_key():
    model = fn.serial(noise(), noise())
    params, state = model.init(jax.random.key(0), X)
    key = jax.random.key(5)
    out, _ = model.apply(params, state, jnp.zeros(3), key=key)
    first = jax.random.uniform(jax.random.fold_in(key, fn.children.name_hash("noise_0")), (3,))
    second = jax.random.uniform(jax.random.fold_in(key, fn.children.name_hash("noise_1")), (3,))
    chex.assert_trees_all_close(out, first + second, rtol=1e-6)


def test_parallel_splits_inputs_and_accepts_a_tuple():
    model = fn.parallel(fn.dense(2), fn.dense(3))
    xs = (jnp.ones((2, 4)), jnp.ones((2, 5)))
    params, state = model.init(jax.random.key(0), *xs)
    separate, _ = model.apply(params, state, *xs)
    as_tuple, _ = model.apply(params, state, xs)
    chex.assert_trees_all_equal(separate, as_tuple)
    chex.assert_trees_all_close(separate[1], fn.dense(3).apply(params["dense_1"], {}, xs[1])[0])
    with pytest.raises(fn.ShapeError, match="at parallel: expected 2 inputs \\(one per child\\), got 3"):
        model.apply(params, state, *xs, xs[0])


def test_fanout_then_parallel_in_serial():
    model = fn.serial(fn.fanout(fn.dense(3), fn.dense(3)), fn.parallel(fn.tanh(), fn.relu()))
    params, state = model.init(jax.random.key(0), X)
    (a, b), _ = model.apply(params, state, X)
    h0 = fn.dense(3).apply(params["fanout_0"]["dense_0"], {}, X)[0]
    h1 = fn.dense(3).apply(params["fanout_0"]["dense_1"], {}, X)[0]
    chex.assert_trees_all_close((a, b), (jnp.tanh(h0), jax.nn.relu(h1)), rtol=1e-6)


def test_residual_adds_the_input():
    model = fn.residual(fn.dense(4), fn.tanh())
    params, state = model.init(jax.random.key(0), X)
    inner = fn.serial(fn.dense(4), fn.tanh())
    chex.assert_trees_all_close(model.apply(params, state, X)[0], X + inner.apply(params, {}, X)[0], rtol=1e-6)


def test_residual_rejects_a_shape_change():
    with pytest.raises(fn.ShapeError, match=r"at block: the wrapped model must keep its input's shape: input \(3, 4\)"):
        fn.serial(block=fn.residual(fn.dense(5))).init(jax.random.key(0), X)


def test_stack_equals_python_loop_of_layers():
    layer = fn.residual(fn.dense(4), fn.tanh())
    model = fn.stack(layer, 5)
    params, state = model.init(jax.random.key(0), X)
    assert params["dense_0"]["kernel"].shape == (5, 4, 4)
    h = X
    for i in range(5):
        h, _ = layer.apply(jax.tree.map(lambda a: a[i], params), {}, h)
    # Tolerance: scan and the loop run the same float32 ops; allow for fusion differences.
    chex.assert_trees_all_close(model.apply(params, state, X)[0], h, rtol=1e-5, atol=1e-6)


def test_stack_layers_are_initialized_differently_and_get_their_own_keys():
    model = fn.stack(noise(), 3)
    params, state = model.init(jax.random.key(0), X)
    key = jax.random.key(9)
    out, _ = model.apply(params, state, jnp.zeros(2), key=key)
    want = sum(jax.random.uniform(jax.random.fold_in(key, i), (2,)) for i in range(3))
    chex.assert_trees_all_close(out, want, rtol=1e-6)
    dense_params, _ = fn.stack(fn.dense(4), 3).init(jax.random.key(0), X)
    kernels = dense_params["kernel"]
    assert not np.allclose(kernels[0], kernels[1])


def test_stack_threads_per_layer_state():
    model = fn.stack(counter(), 3)
    params, state = model.init(jax.random.key(0), X)
    assert state["count"].shape == (3,)
    out, state = model.apply(params, state, X, train=True)
    chex.assert_trees_all_close(out, X + 3.0)
    np.testing.assert_array_equal(state["count"], [1, 1, 1])


def test_stack_rejects_a_shape_change_and_bad_n():
    with pytest.raises(
        fn.ShapeError, match=r"at stack: a stacked model must map its input to an output of the same shape"
    ):
        fn.stack(fn.dense(3), 2).init(jax.random.key(0), X)
    with pytest.raises(ValueError, match="n >= 1"):
        fn.stack(fn.dense(4), 0)


def test_stack_compiles_one_body():
    model = fn.stack(fn.residual(fn.dense(4), fn.tanh()), 32)
    params, state = model.init(jax.random.key(0), X)
    jaxpr = jax.make_jaxpr(lambda p: model.apply(p, state, X)[0])(params)
    assert str(jaxpr).count("dot_general") == 1
