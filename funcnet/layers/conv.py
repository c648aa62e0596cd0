"""Convolutions over channels-last inputs ``[batch, *spatial, channels]``: ``conv``, ``conv1d``, ``conv2d``.

Kernels are ``[*kernel_size, in_channels // feature_group_count, features]`` (``HWIO`` in 2D), the
layout ``funcnet.initializers`` computes fan-in and fan-out for. The work is one call to
``lax.conv_general_dilated``; with ``compute_dtype`` (mixed precision, as ``funcnet.precision.matmul``)
its operands are rounded and a custom VJP runs the two gradient convolutions on rounded operands too.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .. import initializers
from ..core import Model
from ..errors import ParamsError, ShapeError, check_floating, check_params, describe
from ..initializers import Initializer
from ..precision import compute_dtype_of
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
    compute_dtype: Any = None,
) -> Model:
    cd = compute_dtype_of(name, compute_dtype)
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
        spec = _ConvSpec(strides, pads, dilation, dimension_numbers, groups)
        result_dtype = jnp.result_type(x.dtype, kernel.dtype)
        if cd is None or cd == result_dtype:
            y = _plain_conv(x.astype(result_dtype), kernel.astype(result_dtype), spec, None)
        else:
            y, result_dtype = _mixed_conv(x, kernel, spec, cd), x.dtype
        if use_bias:
            y = y + params["bias"].astype(result_dtype).reshape((1,) * (y.ndim - 1) + (-1,))
        return y, state

    return Model(init, apply, name)


class _ConvSpec(NamedTuple):
    """The static arguments of one channels-last convolution (hashable: the custom VJP keeps it)."""

    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]  # (low, high) per spatial axis
    dilation: tuple[int, ...]  # of the kernel
    dimension_numbers: lax.ConvDimensionNumbers
    groups: int  # feature_group_count


def _plain_conv(x: jax.Array, kernel: jax.Array, spec: _ConvSpec, out_dtype: Any) -> jax.Array:
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=spec.strides,
        padding=spec.padding,
        rhs_dilation=spec.dilation,
        dimension_numbers=spec.dimension_numbers,
        feature_group_count=spec.groups,
        preferred_element_type=out_dtype,
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _mixed_conv(x: jax.Array, kernel: jax.Array, spec: _ConvSpec, dtype: Any) -> jax.Array:
    """The convolution of ``x`` and ``kernel`` rounded to ``dtype``, accumulated and returned in ``x``'s dtype."""
    return _mixed_conv_fwd(x, kernel, spec, dtype)[0]


def _mixed_conv_fwd(x, kernel, spec, dtype):
    low_x, low_kernel = x.astype(dtype), kernel.astype(dtype)
    y = _plain_conv(low_x, low_kernel, spec, jnp.promote_types(x.dtype, dtype)).astype(x.dtype)
    primal_dtypes = (jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype))  # residuals must be arrays
    return y, (low_x, low_kernel, primal_dtypes)


def _mixed_conv_bwd(spec, dtype, residuals, g):
    """Both gradients as convolutions of rounded operands, products in float32.

    They are the convolutions of JAX's transpose rules (no input dilation, no batch groups): the
    input's gradient convolves the cotangent, dilated by the strides, with the spatially reversed
    kernel; the kernel's correlates the input with the cotangent, batch and channel axes swapped so
    that the batch is summed over. (The rules themselves would cast the rounded operand back up, run
    both in float32 with the cotangent unrounded, and round the gradients to ``dtype``.)
    """
    low_x, low_kernel, (x_like, kernel_like) = residuals
    low_g, accumulate = g.astype(dtype), jnp.promote_types(dtype, jnp.float32)
    n, groups = low_x.ndim - 2, spec.groups
    windows = [(k - 1) * d + 1 for k, d in zip(low_kernel.shape[:n], spec.dilation, strict=True)]
    reach = [(o - 1) * s + 1 for o, s in zip(g.shape[1:-1], spec.strides, strict=True)]  # dilated output extent
    lows, sizes = [lo for lo, _ in spec.padding], low_x.shape[1:-1]
    channels_last, swapped = (0, n + 1, *range(1, n + 1)), (n + 1, 0, *range(1, n + 1))

    kernel = low_kernel  # [*k, in / G, features] -> [*k, in, features / G]: group g's outputs become its inputs
    if groups > 1:
        *k, group_in, features = kernel.shape
        kernel = jnp.moveaxis(kernel.reshape(*k, group_in, groups, features // groups), n + 1, n)
        kernel = kernel.reshape(*k, groups * group_in, features // groups)
    d_x = lax.conv_general_dilated(
        low_g,
        lax.rev(kernel, tuple(range(n))),
        window_strides=(1,) * n,
        padding=[(w - 1 - lo, size - r + lo) for w, lo, size, r in zip(windows, lows, sizes, reach, strict=True)],
        lhs_dilation=spec.strides,
        rhs_dilation=spec.dilation,
        dimension_numbers=lax.ConvDimensionNumbers(channels_last, (n, n + 1, *range(n)), channels_last),
        feature_group_count=groups,
        preferred_element_type=accumulate,
    )
    d_kernel = lax.conv_general_dilated(
        low_x,
        low_g,
        window_strides=spec.dilation,
        padding=[(lo, r - size + w - lo - 1) for w, lo, size, r in zip(windows, lows, sizes, reach, strict=True)],
        rhs_dilation=spec.strides,
        dimension_numbers=lax.ConvDimensionNumbers(swapped, swapped, (n, n + 1, *range(n))),
        batch_group_count=groups,
        preferred_element_type=accumulate,
    )
    return d_x.astype(x_like.dtype), d_kernel.astype(kernel_like.dtype)


_mixed_conv.defvjp(_mixed_conv_fwd, _mixed_conv_bwd)


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
    compute_dtype: Any = None,
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
      compute_dtype: the convolution's operand dtype, e.g. ``"bfloat16"``: mixed precision, the
        products accumulated and returned in the input's dtype, params and gradients in their own
        (as ``funcnet.precision.matmul``; reverse-mode derivatives only). ``None``: the operands
        in their common dtype.

    Returns:
      A Model with params ``kernel: [*kernel_size, in // feature_group_count, features]`` and
      ``bias: [features]``.

    Raises:
      ValueError: at construction, for bad hyper-parameters.
      TypeError: at construction, ``compute_dtype`` is not a floating dtype.
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
        compute_dtype=compute_dtype,
    )


def conv1d(features: int, kernel_size: int | Sequence[int], **options: Any) -> Model:
    """A 1D convolution over ``[batch, length, channels]``; keyword ``options`` as for ``conv``.

    Raises:
      TypeError: an option ``conv`` does not take (the message lists those it takes).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcnet.layers.conv import conv1d
      >>> layer = conv1d(8, 5, padding="VALID")
      >>> params, state = layer.init(jax.random.key(0), jnp.ones((2, 20, 3)))
      >>> params["kernel"].shape, layer.apply(params, state, jnp.ones((2, 20, 3)))[0].shape
      ((5, 3, 8), (2, 16, 8))
    """
    options = _options("conv1d", options)
    return _conv("conv1d", features, sizes("conv1d", kernel_size, 1, "kernel_size"), **options)


def conv2d(features: int, kernel_size: int | Sequence[int], **options: Any) -> Model:
    """A 2D convolution over ``[batch, height, width, channels]``; keyword ``options`` as for ``conv``.

    An int ``kernel_size`` means a square window.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcnet.layers.conv import conv2d
      >>> layer = conv2d(16, 3, strides=2, compute_dtype="bfloat16")  # bfloat16 operands, float32 sums
      >>> params, state = layer.init(jax.random.key(0), jnp.ones((2, 28, 28, 1)))
      >>> y, state = layer.apply(params, state, jnp.ones((2, 28, 28, 1)))
      >>> params["kernel"].shape, y.shape, y.dtype
      ((3, 3, 1, 16), (2, 14, 14, 16), dtype('float32'))
    """
    options = _options("conv2d", options)
    return _conv("conv2d", features, sizes("conv2d", kernel_size, 2, "kernel_size"), **options)


def _options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` if ``conv`` takes every one; a TypeError naming the public factory otherwise."""
    takes = [p.name for p in inspect.signature(conv).parameters.values() if p.kind is p.KEYWORD_ONLY]
    for option in options:
        if option not in takes:
            raise TypeError(f"{name}() got an unexpected keyword argument {option!r}; it takes {takes}")
    return options
