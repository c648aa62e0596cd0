"""Convolutions over channels-last inputs ``[batch, *spatial, channels]``: ``conv``, ``conv1d``, ``conv2d``.

Kernels are ``[*kernel_size, in_channels // feature_group_count, features]`` (``HWIO`` in 2D), the
layout ``funcnet.initializers`` computes fan-in and fan-out for. The work is one call to
``lax.conv_general_dilated``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .. import initializers
from ..core import Model
from ..errors import ParamsError, ShapeError, check_floating, check_params, describe
from ..initializers import Initializer
from ._spatial import Padding, check_spatial_rank, explicit_padding, is_int, padding_pairs, sizes


def _conv(
    name: str,
    features: int,
    kernel_size: Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    use_bias: bool = True,
    kernel_init: Initializer | None = None,
    bias_init: Initializer | None = None,
    dtype: jnp.dtype | None = None,
) -> Model:
    if not is_int(features) or features < 1:
        raise ValueError(f"{name}: features must be a positive int, got {features!r}")
    if is_int(kernel_size) or not isinstance(kernel_size, Sequence) or not kernel_size:
        raise ValueError(
            f"{name}: kernel_size must be a sequence with one size per spatial axis, got {kernel_size!r}. "
            f"Fix: conv(features, (3, 3)) for 2D, or use conv1d/conv2d, which accept an int."
        )
    n = len(kernel_size)
    kernel_size = sizes(name, kernel_size, n, "kernel_size")
    strides = sizes(name, strides, n, "strides")
    dilation = sizes(name, dilation, n, "dilation")
    padding = padding_pairs(name, padding, n)
    if not is_int(feature_group_count) or feature_group_count < 1 or features % feature_group_count:
        raise ValueError(
            f"{name}: feature_group_count must be a positive int that divides features={features}, "
            f"got {feature_group_count!r}"
        )
    groups = int(feature_group_count)
    windows = tuple((k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True))
    spatial = tuple(range(1, n + 1))
    # Channels last: lhs/out (batch, channels, *spatial) = (0, n+1, 1..n); rhs (out, in, *spatial) = (n+1, n, 0..n-1).
    dimension_numbers = lax.ConvDimensionNumbers((0, n + 1, *spatial), (n + 1, n, *range(n)), (0, n + 1, *spatial))
    kernel_init = kernel_init or initializers.glorot_uniform()
    bias_init = bias_init or initializers.zeros()

    def check_input(x):
        check_spatial_rank(name, x, n)
        check_floating(name, x)
        return explicit_padding(name, x, padding, windows, strides)

    def init(key, x):
        check_input(x)
        if x.shape[-1] % groups:
            raise ShapeError(
                name,
                f"expected input channels (last axis) divisible by feature_group_count={groups}, got {describe(x)}. "
                f"Fix: use a feature_group_count that divides {x.shape[-1]}.",
            )
        param_dtype = dtype or x.dtype
        kernel_key, bias_key = jax.random.split(key)
        params = {"kernel": kernel_init(kernel_key, (*kernel_size, x.shape[-1] // groups, features), param_dtype)}
        if use_bias:
            params["bias"] = bias_init(bias_key, (features,), param_dtype)
        return params, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        check_params(name, params, {"kernel": None, "bias": (features,)} if use_bias else {"kernel": None})
        kernel = params["kernel"]
        if kernel.ndim != n + 2 or tuple(kernel.shape[:n]) != kernel_size or kernel.shape[-1] != features:
            raise ParamsError(
                name,
                f"params do not belong to this model: kernel should be [{', '.join(map(str, kernel_size))}, in, "
                f"{features}], got {describe(kernel)}.",
            )
        pads = check_input(x)
        in_channels = kernel.shape[-2] * groups
        if x.shape[-1] != in_channels:
            raise ShapeError(
                name,
                f"expected {in_channels} input channels (last axis), got {describe(x)}. Fix: feed inputs with "
                f"{in_channels} channels, or re-initialize the layer with this input.",
            )
        compute_dtype = jnp.result_type(x.dtype, kernel.dtype)
        y = lax.conv_general_dilated(
            x.astype(compute_dtype),
            kernel.astype(compute_dtype),
            window_strides=strides,
            padding=pads,
            rhs_dilation=dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=groups,
        )
        if use_bias:
            y = y + params["bias"].astype(compute_dtype).reshape((1,) * (y.ndim - 1) + (-1,))
        return y, state

    return Model(init, apply, name)


def conv(
    features: int,
    kernel_size: Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    use_bias: bool = True,
    kernel_init: Initializer | None = None,
    bias_init: Initializer | None = None,
    dtype: jnp.dtype | None = None,
) -> Model:
    """An N-d convolution ``[batch, *spatial, in] -> [batch, *spatial_out, features]``, N = len(kernel_size).

    ``in`` is inferred at init. With ``padding="SAME"`` each output spatial size is
    ``ceil(size / stride)``; with ``"VALID"`` it is ``(size - (k - 1) * dilation - 1) // stride + 1``.

    Args:
      features: number of output channels.
      kernel_size: window size per spatial axis, e.g. ``(3, 3)``.
      strides: step per spatial axis (an int applies to all).
      padding: ``"SAME"``, ``"VALID"``, an int (both sides of every spatial axis) or one
        ``(low, high)`` pair per spatial axis.
      dilation: kernel dilation per spatial axis (atrous convolution; an int applies to all).
      feature_group_count: split input and output channels into this many groups, each
        convolved separately (``in`` groups with ``features == in`` is a depthwise convolution).
      use_bias: add a learned bias.
      kernel_init: initializer of the kernel (Glorot uniform by default).
      bias_init: initializer of the bias (zeros by default).
      dtype: params dtype; defaults to the input's dtype.

    Returns:
      A Model with params ``{"kernel": [*kernel_size, in // feature_group_count, features],
      "bias": [features]}``.

    Raises:
      ValueError: at construction, for bad hyper-parameters.
      ShapeError: the input is not ``[batch, *spatial, channels]`` with N spatial axes, its channels
        differ from the kernel's (or are not divisible by ``feature_group_count``), or a spatial
        axis is smaller than the dilated window.
      DTypeError: the input is not floating point.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcnet.layers.conv import conv
      >>> layer = conv(4, (3, 3, 3), strides=2)
      >>> params, state = layer.init(jax.random.key(0), jnp.ones((1, 8, 8, 8, 2)))
      >>> layer.apply(params, state, jnp.ones((1, 8, 8, 8, 2)))[0].shape
      (1, 4, 4, 4, 4)
    """
    return _conv(
        "conv",
        features,
        kernel_size,
        strides=strides,
        padding=padding,
        dilation=dilation,
        feature_group_count=feature_group_count,
        use_bias=use_bias,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=dtype,
    )


def conv1d(features: int, kernel_size: int | Sequence[int], **kwargs: Any) -> Model:
    """A 1D convolution over ``[batch, length, channels]``; keyword arguments as for ``conv``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcnet.layers.conv import conv1d
      >>> layer = conv1d(8, 5, padding="VALID")
      >>> params, state = layer.init(jax.random.key(0), jnp.ones((2, 20, 3)))
      >>> params["kernel"].shape, layer.apply(params, state, jnp.ones((2, 20, 3)))[0].shape
      ((5, 3, 8), (2, 16, 8))
    """
    return _conv("conv1d", features, sizes("conv1d", kernel_size, 1, "kernel_size"), **kwargs)


def conv2d(features: int, kernel_size: int | Sequence[int], **kwargs: Any) -> Model:
    """A 2D convolution over ``[batch, height, width, channels]``; keyword arguments as for ``conv``.

    An int ``kernel_size`` means a square window.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcnet.layers.conv import conv2d
      >>> layer = conv2d(16, 3, strides=2)
      >>> params, state = layer.init(jax.random.key(0), jnp.ones((2, 28, 28, 1)))
      >>> params["kernel"].shape, layer.apply(params, state, jnp.ones((2, 28, 28, 1)))[0].shape
      ((3, 3, 1, 16), (2, 14, 14, 16))
    """
    return _conv("conv2d", features, sizes("conv2d", kernel_size, 2, "kernel_size"), **kwargs)
