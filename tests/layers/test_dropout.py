"""dropout: rate is the drop probability, expectation is preserved, keys are required in training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn


def test_rate_is_the_drop_probability_and_survivors_are_scaled():
    out, _ = fn.dropout(0.3).apply({}, {}, jnp.ones(100_000), key=jax.random.key(0), train=True)
    out = np.asarray(out)
    dropped = (out == 0).mean()
    # 100k Bernoulli(0.3) draws: standard error 0.0014; 0.01 is ~7 sigma.
    assert abs(dropped - 0.3) < 0.01
    np.testing.assert_allclose(out[out != 0], 1 / 0.7, rtol=1e-6)
    assert abs(out.mean() - 1.0) < 0.02


def test_identity_in_eval_mode_and_at_rate_zero():
    x = jnp.arange(5.0)
    np.testing.assert_array_equal(fn.dropout(0.9).apply({}, {}, x)[0], x)
    np.testing.assert_array_equal(fn.dropout(0.0).apply({}, {}, x, train=True)[0], x)


def test_deterministic_for_a_key_and_different_for_another():
    drop = fn.dropout(0.5)
    a = drop.apply({}, {}, jnp.ones(64), key=jax.random.key(1), train=True)[0]
    b = drop.apply({}, {}, jnp.ones(64), key=jax.random.key(1), train=True)[0]
    c = drop.apply({}, {}, jnp.ones(64), key=jax.random.key(2), train=True)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_broadcast_axes_share_the_mask():
    out, _ = fn.dropout(0.5, broadcast_axes=(1,)).apply({}, {}, jnp.ones((4, 10, 8)), key=jax.random.key(0), train=True)
    out = np.asarray(out)
    np.testing.assert_array_equal(out, np.broadcast_to(out[:, :1], out.shape))


def test_missing_key_in_training_names_the_layer_path():
    model = fn.serial(encoder=fn.serial(fn.dense(4), fn.dropout(0.1)))
    params, state = model.init(jax.random.key(0), jnp.ones((2, 3)))
    model.apply(params, state, jnp.ones((2, 3)))  # evaluation needs no key
    with pytest.raises(fn.KeyMissingError, match=r"at encoder/dropout_0: train=True needs a PRNG key"):
        model.apply(params, state, jnp.ones((2, 3)), train=True)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rate_out_of_range(rate):
    with pytest.raises(ValueError, match=r"rate is the drop probability and must be in \[0, 1\)"):
        fn.dropout(rate)
