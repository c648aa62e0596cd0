"""embed: lookup, gradients that touch only used rows, and errors."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn


def test_embed_looks_up_rows():
    layer = fn.embed(10, 3)
    ids = jnp.array([[1, 4], [4, 9]])
    params, state = layer.init(jax.random.key(0), ids)
    out, _ = layer.apply(params, state, ids)
    np.testing.assert_array_equal(out, np.asarray(params["embedding"])[np.asarray(ids)])


def test_embed_gradient_touches_only_used_rows_and_counts_repeats():
    layer = fn.embed(6, 2)
    ids = jnp.array([1, 3, 3])
    params, state = layer.init(jax.random.key(0), ids)
    grads = jax.grad(lambda p: layer.apply(p, state, ids)[0].sum())(params)["embedding"]
    np.testing.assert_array_equal(grads[:, 0], [0, 1, 0, 2, 0, 0])


def test_out_of_range_ids_give_nan_not_another_row():
    layer = fn.embed(4, 2)
    params, state = layer.init(jax.random.key(0), jnp.zeros(1, jnp.int32))
    out, _ = jax.jit(layer.apply)(params, state, jnp.array([0, 4, -1]))
    assert not np.isnan(out[0]).any() and np.isnan(out[1]).all() and np.isnan(out[2]).all()


def test_embed_errors():
    layer = fn.embed(4, 2)
    params, state = layer.init(jax.random.key(0), jnp.zeros(1, jnp.int32))
    with pytest.raises(fn.DTypeError, match=r"at embed: expected integer ids, got \(3,\) float32"):
        layer.apply(params, state, jnp.ones(3))
    with pytest.raises(fn.ParamsError, match=r"embedding should be \(5, 2\), got \(4, 2\) float32"):
        fn.embed(5, 2).apply(params, state, jnp.zeros(1, jnp.int32))
    with pytest.raises(ValueError, match="must be positive"):
        fn.embed(0, 2)
    chex.assert_shape(layer.apply(params, state, jnp.zeros((2, 3), jnp.int32))[0], (2, 3, 2))
