"""Models compose with JAX's transforms: vmap(grad), jacfwd, hessian, custom_vjp."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

import funcnet as fn
from funcnet import losses

MODEL = fn.serial(fn.dense(8), fn.tanh(), fn.dense(3))
X = jax.random.normal(jax.random.key(1), (6, 5))
Y = jax.random.normal(jax.random.key(2), (6, 3))
PARAMS, STATE = MODEL.init(jax.random.key(0), X)


def _loss(params, x, y):
    return losses.mse(MODEL.apply(params, STATE, x)[0], y)


def test_per_example_gradients_equal_a_loop_of_single_example_gradients():
    per_example = jax.vmap(jax.grad(_loss), in_axes=(None, 0, 0))(PARAMS, X[:, None], Y[:, None])
    for i in range(len(X)):
        single = jax.grad(_loss)(PARAMS, X[i : i + 1], Y[i : i + 1])
        # Tolerance: vmap batches the matmuls; float32 sums may associate differently.
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], per_example), single, rtol=1e-5, atol=1e-6)


def test_mean_of_per_example_gradients_is_the_batch_gradient():
    per_example = jax.vmap(jax.grad(_loss), in_axes=(None, 0, 0))(PARAMS, X[:, None], Y[:, None])
    chex.assert_trees_all_close(
        jax.tree.map(lambda a: a.mean(0), per_example), jax.grad(_loss)(PARAMS, X, Y), rtol=1e-5, atol=1e-6
    )


def test_jacfwd_through_a_model_matches_jacrev_and_the_linear_case():
    x = X[0]
    f = lambda x: MODEL.apply(PARAMS, STATE, x[None])[0][0]  # noqa: E731
    chex.assert_trees_all_close(jax.jacfwd(f)(x), jax.jacrev(f)(x), rtol=1e-5, atol=1e-6)
    linear = fn.dense(3)
    p, _ = linear.init(jax.random.key(0), x[None])
    jac = jax.jacfwd(lambda x: linear.apply(p, {}, x)[0])(x)
    chex.assert_trees_all_close(jac, p["kernel"].T, rtol=1e-6)


def test_hessian_of_a_quadratic_model_is_exact():
    # loss(w) = mean((x w)^2) for a bias-free dense layer: Hessian = 2 x^T x / (n * out).
    linear = fn.dense(1, use_bias=False)
    p, _ = linear.init(jax.random.key(0), X)

    def loss(kernel):
        return jnp.mean(linear.apply({"kernel": kernel}, {}, X)[0] ** 2)

    hess = jax.hessian(loss)(p["kernel"])[:, 0, :, 0]
    chex.assert_trees_all_close(hess, 2 * X.T @ X / len(X), rtol=1e-5)


@jax.custom_vjp
def _relu(x):
    return jnp.maximum(x, 0.0)


def _relu_fwd(x):
    return _relu(x), x > 0


def _relu_bwd(positive, g):
    return (jnp.where(positive, g, 0.0),)


_relu.defvjp(_relu_fwd, _relu_bwd)


def test_a_custom_vjp_layer_matches_autodiff():
    custom = fn.serial(fn.dense(8), fn.function(_relu, name="custom_relu"), fn.dense(3))
    plain = fn.serial(fn.dense(8), fn.relu(), fn.dense(3))
    params, state = custom.init(jax.random.key(0), X)
    renamed = {"dense_0": params["dense_0"], "dense_1": params["dense_1"]}

    def loss(model, p):
        return losses.mse(model.apply(p, state, X)[0], Y)

    chex.assert_trees_all_close(loss(custom, params), loss(plain, renamed))
    chex.assert_trees_all_close(
        jax.grad(lambda p: loss(custom, p))(params), jax.grad(lambda p: loss(plain, p))(renamed), rtol=1e-6
    )
