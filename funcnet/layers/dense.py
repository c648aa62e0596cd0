"""Dense (fully connected) layer: ``y = x @ kernel + bias`` over the last axis."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .. import initializers
from ..core import Model
from ..errors import ParamsError, check_floating, check_last_axis, check_params, check_rank, describe
from ..initializers import Initializer
from ..precision import compute_dtype_of, matmul


def dense(
    features: int,
    *,
    use_bias: bool = True,
    kernel_init: Initializer | None = None,
    bias_init: Initializer | None = None,
    dtype: jnp.dtype | None = None,
    compute_dtype: Any = None,
) -> Model:
    """A dense layer mapping ``[..., in]`` to ``[..., features]``; ``in`` is inferred at init.

    Args:
      features: size of the output's last axis.
      use_bias: add a learned bias.
      kernel_init: initializer of the ``[in, features]`` kernel (Glorot uniform by default;
        use ``initializers.he_normal()`` before a ReLU).
      bias_init: initializer of the bias (zeros by default).
      dtype: params dtype; defaults to the input's dtype.
      compute_dtype: the matmul's operand dtype, e.g. ``"bfloat16"``: mixed precision, the product
        accumulated and returned in the input's dtype, params and gradients in their own
        (``funcnet.precision``; reverse-mode derivatives only). ``None``: ``x @ kernel`` as is.

    Returns:
      A Model with params ``{"kernel": [in, features], "bias": [features]}``.

    Raises:
      ShapeError: the input is a scalar, or its last axis differs from the kernel's.
      DTypeError: the input is not floating point (token ids need ``embed`` first).
      TypeError: ``compute_dtype`` is not a floating dtype.

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> layer = fn.dense(3)
      >>> params, state = layer.init(jax.random.key(0), jnp.ones((2, 5)))
      >>> params["kernel"].shape, params["bias"].shape
      ((5, 3), (3,))
    """
    if not isinstance(features, int) or features < 1:
        raise ValueError(f"dense: features must be a positive int, got {features!r}")
    kernel_init = kernel_init or initializers.glorot_uniform()
    bias_init = bias_init or initializers.zeros()
    cd = compute_dtype_of("dense", compute_dtype)

    def init(key, x):
        check_rank("dense", x, 1)
        check_floating("dense", x)
        param_dtype = dtype or x.dtype
        kernel_key, bias_key = jax.random.split(key)
        params = {"kernel": kernel_init(kernel_key, (x.shape[-1], features), param_dtype)}
        if use_bias:
            params["bias"] = bias_init(bias_key, (features,), param_dtype)
        return params, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        expected = {"kernel": None, "bias": None} if use_bias else {"kernel": None}
        check_params("dense", params, expected)
        kernel = params["kernel"]
        if kernel.ndim != 2 or kernel.shape[1] != features:
            raise ParamsError(
                "dense",
                f"params do not belong to this model: kernel should be [in, {features}], got {describe(kernel)}.",
            )
        check_floating("dense", x)
        check_last_axis("dense", x, kernel.shape[0])
        y = matmul(x, kernel, cd)
        if use_bias:
            y = y + params["bias"].reshape((1,) * (y.ndim - 1) + (-1,))
        return y, state

    return Model(init, apply, "dense")
