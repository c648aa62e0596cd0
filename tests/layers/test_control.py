"""cond and switch: the right branch, gradients through the taken branch, state and vmap."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import pytest

import funcnet as fn
from tests.test_combinators import counter

X = jnp.array([[1.0, -2.0, 3.0]])


def _cond():
    model = fn.cond(lambda x: x.sum() > 0, fn.dense(2), fn.dense(2))
    params, state = model.init(jax.random.key(0), X)
    return model, params, state


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cond_picks_the_branch_like_python(sign):
    model, params, state = _cond()
    x = sign * X
    branch = "true" if float(x.sum()) > 0 else "false"
    want, _ = fn.dense(2).apply(params[branch], {}, x)
    chex.assert_trees_all_close(model.apply(params, state, x)[0], want, rtol=1e-6)
    chex.assert_trees_all_close(jax.jit(model.apply)(params, state, x)[0], want, rtol=1e-6)


def test_cond_differentiates_through_the_taken_branch_only():
    model, params, state = _cond()
    grads = jax.grad(lambda p: model.apply(p, state, X)[0].sum())(params)
    assert float(jnp.abs(grads["true"]["kernel"]).sum()) > 0
    chex.assert_trees_all_equal(grads["false"], jax.tree.map(jnp.zeros_like, grads["false"]))
    want = jax.grad(lambda p: fn.dense(2).apply(p, {}, X)[0].sum())(params["true"])
    chex.assert_trees_all_close(grads["true"], want, rtol=1e-6)


def test_cond_updates_only_the_taken_branch_state():
    model = fn.cond(lambda x: x.sum() > 0, counter(), counter())
    params, state = model.init(jax.random.key(0), X)
    _, state = model.apply(params, state, X, train=True)
    _, state = model.apply(params, state, -X, train=True)
    _, state = model.apply(params, state, X, train=True)
    assert int(state["true"]["count"]) == 2 and int(state["false"]["count"]) == 1


def test_cond_under_vmap_uses_each_examples_predicate():
    model = fn.cond(lambda x: x.sum() > 0, fn.function(jnp.exp), fn.function(jnp.negative))
    xs = jnp.array([[1.0, 2.0], [-3.0, 1.0]])
    out = jax.vmap(lambda x: model.apply({}, {}, x)[0])(xs)
    chex.assert_trees_all_close(out, jnp.stack([jnp.exp(xs[0]), -xs[1]]), rtol=1e-6)


def test_cond_branches_must_agree_on_output_shapes():
    model = fn.cond(lambda x: x.sum() > 0, fn.dense(2), fn.dense(3))
    params, state = model.init(jax.random.key(0), X)
    with pytest.raises(fn.ShapeError, match="at cond: every branch must return outputs of the same shapes"):
        model.apply(params, state, X)


def test_switch_picks_each_branch_and_clamps():
    branches = [fn.function(lambda x, i, k=k: x * k) for k in (1.0, 10.0, 100.0)]
    model = fn.switch(lambda x, i: i, *branches)
    params, state = model.init(jax.random.key(0), X, 0)
    run = jax.jit(chex.assert_max_traces(lambda i: model.apply(params, state, X, i)[0], n=1))
    for i, k in [(0, 1.0), (1, 10.0), (2, 100.0), (7, 100.0), (-3, 1.0)]:
        chex.assert_trees_all_close(run(i), X * k)


def test_switch_gradients_flow_to_the_selected_branch():
    model = fn.switch(lambda x: (x[0, 0] > 0).astype(jnp.int32), a=fn.dense(2), b=fn.dense(2), c=fn.dense(2))
    params, state = model.init(jax.random.key(0), X)
    grads = jax.grad(lambda p: model.apply(p, state, X)[0].sum())(params)
    assert float(jnp.abs(grads["b"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["a"]["kernel"]).sum()) == 0 and float(jnp.abs(grads["c"]["kernel"]).sum()) == 0


def test_switch_needs_two_branches():
    with pytest.raises(ValueError, match="at least two branches"):
        fn.switch(lambda x: 0, fn.dense(2))
