"""Normalization over the feature axis (``layer_norm``, ``rms_norm``) and over the batch (``batch_norm``).

Statistics are computed in float32 (or wider) even for bfloat16/float16 inputs, and the output has the
input's dtype. Inputs are channels-last: ``[batch, *spatial, features]``.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp
from jax import lax

from ..core import Model
from ..errors import ParamsError, ShapeError, check_floating, check_last_axis, check_params, check_rank, describe


def _compute_dtype(dtype) -> jnp.dtype:
    """The dtype statistics are computed in: float32, or the input's dtype if wider."""
    return jnp.promote_types(dtype, jnp.float32)


def _row(v: jax.Array, ndim: int) -> jax.Array:
    """Reshapes a ``[F]`` vector to broadcast against a rank-``ndim`` array (no implicit rank promotion)."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


def _check_vectors(layer: str, x, tree: dict, expected: list[str], what: str = "params") -> None:
    """Checks ``tree`` holds exactly ``expected`` vectors ``[F]``, and that ``x`` is floating with last axis F."""
    check_params(layer, tree, dict.fromkeys(expected), what=what)
    check_floating(layer, x)
    if not expected:
        check_rank(layer, x, 1)
        return
    first = tree[expected[0]]
    if first.ndim != 1:
        raise ParamsError(
            layer,
            f"{what} do not belong to this model: {expected[0]!r} should be a vector [features], "
            f"got {describe(first)}. Fix: pass the {what} returned by this model's init.",
        )
    check_last_axis(layer, x, first.shape[0])
    check_params(layer, tree, dict.fromkeys(expected, first.shape), what=what)


def _affine(y: jax.Array, params: dict, use_scale: bool, use_bias: bool) -> jax.Array:
    if use_scale:
        y = y * _row(params["scale"].astype(y.dtype), y.ndim)
    if use_bias:
        y = y + _row(params["bias"].astype(y.dtype), y.ndim)
    return y


def _check_epsilon(layer: str, epsilon: float) -> None:
    if not float(epsilon) > 0.0:
        raise ValueError(f"{layer}: epsilon must be positive (it keeps the division finite), got {epsilon!r}")


def layer_norm(*, epsilon: float = 1e-5, use_scale: bool = True, use_bias: bool = True, dtype=None) -> Model:
    """Normalizes each vector over its last axis to zero mean and unit variance, then scales and shifts.

    ``y = (x - mean(x)) / sqrt(var(x) + epsilon) * scale + bias``, statistics over the last axis of
    ``[..., features]``; every leading position is normalized on its own (no batch coupling).

    Args:
      epsilon: added to the variance.
      use_scale: learn a per-feature ``scale`` (initialized to ones).
      use_bias: learn a per-feature ``bias`` (initialized to zeros).
      dtype: params dtype; defaults to the input's dtype.

    Returns:
      A Model with params ``{"scale": [features], "bias": [features]}`` (those enabled).

    Raises:
      ShapeError: the input is a scalar, or its last axis differs from the params'.
      DTypeError: the input is not floating point.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcnet.layers.norm import layer_norm
      >>> norm = layer_norm()
      >>> params, state = norm.init(jax.random.key(0), jnp.ones((2, 3)))
      >>> y, _ = norm.apply(params, state, jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]]))
      >>> jnp.round(y, 3)
      Array([[-1.225,  0.   ,  1.225],
             [-0.707, -0.707,  1.414]], dtype=float32)
    """
    _check_epsilon("layer_norm", epsilon)
    names = [n for n, on in (("scale", use_scale), ("bias", use_bias)) if on]

    def init(key, x):
        del key
        check_rank("layer_norm", x, 1)
        check_floating("layer_norm", x)
        features, param_dtype = x.shape[-1], dtype or x.dtype
        params = {"scale": jnp.ones((features,), param_dtype), "bias": jnp.zeros((features,), param_dtype)}
        return {n: params[n] for n in names}, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        _check_vectors("layer_norm", x, params, names)
        xf = x.astype(_compute_dtype(x.dtype))
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        centered = xf - mean
        var = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)
        y = centered * lax.rsqrt(var + epsilon)
        return _affine(y, params, use_scale, use_bias).astype(x.dtype), state

    return Model(init, apply, "layer_norm")


def rms_norm(*, epsilon: float = 1e-6, use_scale: bool = True, dtype=None) -> Model:
    """Divides each vector by its root mean square over the last axis: ``x / sqrt(mean(x**2) + eps) * scale``.

    Unlike ``layer_norm`` it neither centers nor adds a bias (Zhang & Sennrich, 2019).

    Args:
      epsilon: added to the mean square.
      use_scale: learn a per-feature ``scale`` (initialized to ones).
      dtype: params dtype; defaults to the input's dtype.

    Returns:
      A Model with params ``{"scale": [features]}`` (``{}`` without scale).

    Raises:
      ShapeError: the input is a scalar, or its last axis differs from the scale's.
      DTypeError: the input is not floating point.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcnet.layers.norm import rms_norm
      >>> norm = rms_norm()
      >>> params, state = norm.init(jax.random.key(0), jnp.ones((1, 2)))
      >>> y, _ = norm.apply(params, state, jnp.array([[1.0, 7.0]]))  # rms = sqrt((1 + 49) / 2) = 5
      >>> [round(v, 3) for v in y[0].tolist()]
      [0.2, 1.4]
    """
    _check_epsilon("rms_norm", epsilon)
    names = ["scale"] if use_scale else []

    def init(key, x):
        del key
        check_rank("rms_norm", x, 1)
        check_floating("rms_norm", x)
        return ({"scale": jnp.ones((x.shape[-1],), dtype or x.dtype)} if use_scale else {}), {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        _check_vectors("rms_norm", x, params, names)
        xf = x.astype(_compute_dtype(x.dtype))
        y = xf * lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + epsilon)
        return _affine(y, params, use_scale, False).astype(x.dtype), state

    return Model(init, apply, "rms_norm")


def batch_norm(
    *,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    axis_name: Hashable | None = None,
    dtype=None,
) -> Model:
    """Normalizes each feature over the batch (and spatial) axes of ``[batch, *spatial, features]``.

    With ``train=True`` it normalizes with the batch's mean and biased variance and returns the
    running statistics updated as ``running = momentum * running + (1 - momentum) * batch``; with
    ``train=False`` it normalizes with the running statistics and returns the state unchanged.

    Data parallelism: inside ``jax.jit`` with the batch sharded over devices (``NamedSharding``),
    the statistics are already those of the whole global batch; no ``axis_name`` is needed. Set
    ``axis_name`` only where each call sees part of the batch: under ``jax.shard_map`` over a mesh
    axis, or under ``jax.vmap`` over single examples. There the mean and the mean of squares are
    averaged with ``lax.pmean`` (``var = E[x^2] - E[x]^2``, clipped at 0) and come out identical on
    every shard, so the new running statistics are unbatched/replicated::

        bn = batch_norm(axis_name="batch")
        per_example = jax.vmap(lambda x: bn.apply(params, state, x, train=True),
                               axis_name="batch", out_axes=(0, None))   # y batched, state not
        y, state = per_example(x)   # == batch_norm().apply(params, state, x, train=True)

    and under ``jax.shard_map(..., in_specs=(P(), P(), P("data")), out_specs=(P("data"), P()))``
    with ``axis_name="data"``. Calling a model built with ``axis_name`` outside such a transform
    fails with JAX's "unbound axis name" error.

    Args:
      momentum: weight of the old running statistics in each update, in [0, 1].
      epsilon: added to the variance.
      use_scale: learn a per-feature ``scale`` (initialized to ones).
      use_bias: learn a per-feature ``bias`` (initialized to zeros).
      axis_name: a named axis (vmap or shard_map) to average batch statistics over.
      dtype: params dtype; defaults to the input's dtype. The state is float32 (or wider).

    Returns:
      A Model with params ``{"scale": [F], "bias": [F]}`` and state ``{"mean": [F], "var": [F]}``
      (zeros and ones at init).

    Raises:
      ShapeError: the input is a scalar; its last axis differs from the state's; or ``train=True``
        on a single vector without ``axis_name`` (no batch to take statistics over).
      DTypeError: the input is not floating point.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcnet.layers.norm import batch_norm
      >>> bn = batch_norm(momentum=0.9)
      >>> x = jnp.array([[1.0, 10.0], [3.0, 30.0]])
      >>> params, state = bn.init(jax.random.key(0), x)
      >>> y, state = bn.apply(params, state, x, train=True)
      >>> jnp.round(y, 3), state["mean"]
      (Array([[-1., -1.],
             [ 1.,  1.]], dtype=float32), Array([0.2, 2. ], dtype=float32))
    """
    _check_epsilon("batch_norm", epsilon)
    if not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"batch_norm: momentum (weight of the running statistics) must be in [0, 1], got {momentum!r}")
    names = [n for n, on in (("scale", use_scale), ("bias", use_bias)) if on]

    def init(key, x):
        del key
        check_rank("batch_norm", x, 1)
        check_floating("batch_norm", x)
        features, param_dtype, stat_dtype = x.shape[-1], dtype or x.dtype, _compute_dtype(x.dtype)
        params = {"scale": jnp.ones((features,), param_dtype), "bias": jnp.zeros((features,), param_dtype)}
        state = {"mean": jnp.zeros((features,), stat_dtype), "var": jnp.ones((features,), stat_dtype)}
        return {n: params[n] for n in names}, state

    def apply(params, state, x, *, key=None, train=False):
        del key
        _check_vectors("batch_norm", x, state, ["mean", "var"], what="state")
        check_params("batch_norm", params, dict.fromkeys(names, state["mean"].shape))
        xf = x.astype(_compute_dtype(x.dtype))
        axes = tuple(range(x.ndim - 1))
        if not train:
            mean, var, new_state = state["mean"].astype(xf.dtype), state["var"].astype(xf.dtype), state
        else:
            if axis_name is None and x.ndim < 2:
                raise ShapeError(
                    "batch_norm",
                    f"train=True needs a batch to take statistics over, expected [batch, ..., features], got "
                    f"{describe(x)}. Fix: feed a batch, or vmap over examples with batch_norm(axis_name=...).",
                )
            mean = jnp.mean(xf, axis=axes)
            if axis_name is None:
                var = jnp.mean(jnp.square(xf - _row(mean, xf.ndim)), axis=axes)
            else:
                mean, mean_sq = lax.pmean((mean, jnp.mean(jnp.square(xf), axis=axes)), axis_name)
                var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
            new_state = {
                name: (momentum * state[name] + (1.0 - momentum) * lax.stop_gradient(stat)).astype(state[name].dtype)
                for name, stat in (("mean", mean), ("var", var))
            }
        y = (xf - _row(mean, xf.ndim)) * _row(lax.rsqrt(var + epsilon), xf.ndim)
        return _affine(y, params, use_scale, use_bias).astype(x.dtype), new_state

    return Model(init, apply, "batch_norm")
