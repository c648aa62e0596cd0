"""Multi-head scaled dot-product attention (Vaswani et al. 2017) and the masks it takes.

Shapes: query ``[batch..., Tq, Dq]``, context ``[batch..., Tk, Dk]`` (the query itself for
self-attention), masks broadcastable to ``[batch..., heads, Tq, Tk]`` with True where a query
may attend to a key (self-attention also takes ``lengths [batch...]``, which masks the padded keys)::

    q = query @ Wq + bq                        # [batch..., Tq, H, Dh]
    k, v = context @ Wk + bk, context @ Wv + bv  # [batch..., Tk, H, Dh]
    w = softmax(q·k / sqrt(Dh) where mask)     # [batch..., H, Tq, Tk], in float32
    y = (w @ v) @ Wo + bo                      # [batch..., Tq, out]
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import initializers
from ..core import Model
from ..errors import (
    DTypeError,
    KeyMissingError,
    LayerError,
    ParamsError,
    ShapeError,
    check_array,
    check_floating,
    check_last_axis,
    check_params,
    check_rank,
    describe,
)
from ..initializers import Initializer
from ..precision import compute_dtype_of, matmul
from .dropout import keep_mask

_NAME = "attention"
_PROJECTIONS = ("query", "key", "value", "out")


def causal_mask(length: int) -> jax.Array:
    """A lower-triangular mask ``bool[1, 1, length, length]``: query ``t`` attends to keys ``0..t``.

    Example:
      >>> from funcnet.layers.attention import causal_mask
      >>> causal_mask(3)[0, 0].astype(int)
      Array([[1, 0, 0],
             [1, 1, 0],
             [1, 1, 1]], dtype=int32)
    """
    if not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"causal_mask: length must be a positive int, got {length!r}")
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def padding_mask(lengths: jax.typing.ArrayLike, max_length: int) -> jax.Array:
    """Masks the keys past each sequence's length: ``bool[batch..., 1, 1, max_length]``.

    Args:
      lengths: integer lengths ``[batch...]``.
      max_length: the padded length ``Tk`` of the keys.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcnet.layers.attention import padding_mask
      >>> padding_mask(jnp.array([1, 3]), 3)[:, 0, 0].astype(int)
      Array([[1, 0, 0],
             [1, 1, 1]], dtype=int32)
    """
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"padding_mask: expected integer lengths, got {describe(lengths)}")
    positions = jnp.arange(max_length).reshape((1,) * lengths.ndim + (max_length,))
    return (positions < lengths[..., None])[..., None, None, :]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    """The logical AND of boolean masks, broadcast together; ``None`` entries are skipped.

    Returns None when every mask is None (attend everywhere).

    Example:
      >>> import jax.numpy as jnp
      >>> from funcnet.layers.attention import causal_mask, combine_masks, padding_mask
      >>> combine_masks(causal_mask(3), padding_mask(jnp.array([2]), 3), None)[0, 0].astype(int)
      Array([[1, 0, 0],
             [1, 1, 0],
             [1, 1, 0]], dtype=int32)
    """
    present = [m for m in masks if m is not None]
    if not present:
        return None
    for m in present:
        if jnp.asarray(m).dtype != jnp.bool_:
            raise TypeError(f"combine_masks: expected boolean masks, got {describe(m)}")
    try:
        shape = np.broadcast_shapes(*(np.shape(m) for m in present))
    except ValueError:
        raise ValueError(f"combine_masks: shapes {[np.shape(m) for m in present]} do not broadcast together") from None
    combined = jnp.broadcast_to(present[0], shape)
    for m in present[1:]:
        combined = combined & jnp.broadcast_to(m, shape)
    return combined


def multi_head_attention(
    num_heads: int,
    *,
    qkv_features: int | None = None,
    out_features: int | None = None,
    use_bias: bool = True,
    dropout_rate: float = 0.0,
    causal: bool = False,
    kernel_init: Initializer | None = None,
    dtype: jnp.dtype | None = None,
    compute_dtype: Any = None,
) -> Model:
    """Multi-head attention of ``query [batch..., Tq, Dq]`` over ``context [batch..., Tk, Dk]``.

    ``apply(params, state, query, context=None, mask=None, *, lengths=None, key=None, train=False)``
    returns ``[batch..., Tq, out_features]``; ``context=None`` is self-attention. ``mask`` is boolean,
    broadcastable to ``[batch..., num_heads, Tq, Tk]``, True where a query may attend to a key
    (see ``padding_mask``, ``causal_mask``, ``combine_masks``). ``lengths``, integer ``[batch...]``,
    is for self-attention of padded sequences: keys at positions ``>= lengths[b]`` are masked (as
    ``mask=padding_mask(lengths, T)``, combined with ``mask`` and ``causal``); ``init`` takes the same
    ``context``, ``mask`` and ``lengths``. Logits and softmax are computed in (at least) float32;
    masked logits are set to the most negative finite float, so a fully masked query row attends
    uniformly instead of giving NaN.

    Args:
      num_heads: number of heads ``H``.
      qkv_features: total size ``H * Dh`` of queries, keys and values (default: ``Dq``); must
        be divisible by ``num_heads``.
      out_features: size of the output's last axis (default: ``Dq``).
      use_bias: add learned biases to the four projections.
      dropout_rate: drop probability of the attention weights when ``train=True``.
      causal: also mask keys after each query (needs ``Tq == Tk``).
      kernel_init: initializer, called with the flat 2-D shapes ``[D, H * Dh]`` and
        ``[H * Dh, out]`` then reshaped, so fans are those of a dense layer (Glorot uniform by default).
      dtype: params dtype; defaults to the query's dtype.
      compute_dtype: the operand dtype of the four projections, e.g. ``"bfloat16"``: mixed precision,
        products accumulated and returned in the inputs' dtype, params and gradients in their own
        (``funcnet.precision``; reverse-mode derivatives only). Logits and softmax stay in float32.
        ``None``: the projections in the operands' own dtype.

    Returns:
      A Model ("attention") with params in Flax's layout: ``query``, ``key`` and ``value`` each
      ``{"kernel": [D, H, Dh], "bias": [H, Dh]}`` (``D`` is ``Dq`` for the query, ``Dk`` for the
      others), and ``out`` ``{"kernel": [H, Dh, out], "bias": [out]}``.

    Raises:
      ValueError: bad hyper-parameters (at construction).
      TypeError: ``compute_dtype`` is not a floating dtype (at construction).
      ShapeError: ``Dq`` not divisible by ``num_heads`` (at init), inputs of rank < 2, last axes
        that differ from the params, different batch axes, a mask that does not broadcast,
        ``causal`` with ``Tq != Tk``, ``lengths`` not of the batch axes' shape, or ``lengths``
        with an explicit ``context``.
      DTypeError: non-floating inputs, a non-boolean mask, or non-integer lengths.
      KeyMissingError: ``train=True`` with ``dropout_rate > 0`` and no ``key``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcnet.layers.attention import multi_head_attention, padding_mask
      >>> layer = multi_head_attention(2, causal=True)
      >>> x = jnp.ones((3, 5, 8))  # [batch, time, features]
      >>> params, state = layer.init(jax.random.key(0), x)
      >>> params["query"]["kernel"].shape, params["out"]["kernel"].shape
      ((8, 2, 4), (2, 4, 8))
      >>> y, state = layer.apply(params, state, x, lengths=jnp.array([5, 2, 3]))  # padded sequences
      >>> y.shape
      (3, 5, 8)
    """
    for name, value in (("num_heads", num_heads), ("qkv_features", qkv_features), ("out_features", out_features)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"multi_head_attention: {name} must be a positive int, got {value!r}")
    if qkv_features is not None and qkv_features % num_heads:
        raise ValueError(
            f"multi_head_attention: qkv_features ({qkv_features}) must be divisible by num_heads ({num_heads})"
        )
    if not 0.0 <= float(dropout_rate) < 1.0:
        raise ValueError(f"multi_head_attention: dropout_rate must be in [0, 1), got {dropout_rate!r}")
    kernel_init = kernel_init or initializers.glorot_uniform()
    bias_init = initializers.zeros()
    cd = compute_dtype_of("multi_head_attention", compute_dtype)

    def init(key, query, context=None, mask=None, *, lengths=None):
        _check_inputs(query, query if context is None else context, causal)
        _check_lengths(lengths, query, context)
        context = query if context is None else context
        dq, dk = query.shape[-1], context.shape[-1]
        features = qkv_features or dq
        if features % num_heads:
            raise ShapeError(
                _NAME,
                f"qkv_features defaults to the query's last axis, {dq}, which is not divisible by "
                f"num_heads={num_heads}. Fix: pass qkv_features=<a multiple of {num_heads}>, or choose "
                f"num_heads dividing {dq}.",
            )
        head_dim, out = features // num_heads, out_features or dq
        _check_mask(mask, (*query.shape[:-2], num_heads, query.shape[-2], context.shape[-2]))
        param_dtype = dtype or query.dtype
        kernel_keys = jax.random.split(key, len(_PROJECTIONS))
        params = {}
        for name, kernel_key, d_in in zip(_PROJECTIONS[:3], kernel_keys[:3], (dq, dk, dk), strict=True):
            kernel = kernel_init(kernel_key, (d_in, features), param_dtype)
            params[name] = {"kernel": kernel.reshape(d_in, num_heads, head_dim)}
            if use_bias:
                params[name]["bias"] = bias_init(kernel_key, (num_heads, head_dim), param_dtype)
        kernel = kernel_init(kernel_keys[3], (features, out), param_dtype)
        params["out"] = {"kernel": kernel.reshape(num_heads, head_dim, out)}
        if use_bias:
            params["out"]["bias"] = bias_init(kernel_keys[3], (out,), param_dtype)
        return params, {}

    def apply(params, state, query, context=None, mask=None, *, lengths=None, key=None, train=False):
        if state:
            raise ParamsError(_NAME, f"attention has no state, got {sorted(state)}. Fix: pass the state init returned.")
        dq, dk, head_dim = _check_params(params, num_heads, qkv_features, out_features, use_bias)
        _check_inputs(query, query if context is None else context, causal, dq, dk)
        _check_lengths(lengths, query, context)
        context = query if context is None else context
        mask_shape = (*query.shape[:-2], num_heads, query.shape[-2], context.shape[-2])
        _check_mask(mask, mask_shape)
        dropout = train and dropout_rate > 0.0
        if dropout and key is None:
            raise KeyMissingError(
                _NAME,
                f"train=True with dropout_rate={dropout_rate} needs a PRNG key and none was given. Fix: call "
                "apply(..., key=jax.random.key(seed), train=True), or train=False for evaluation.",
            )
        if lengths is not None:
            mask = combine_masks(mask, padding_mask(lengths, query.shape[-2]))
        if causal:
            mask = combine_masks(mask, jnp.tril(jnp.ones(mask_shape[-2:], dtype=bool)))

        q = _project(query, params["query"], cd)  # [batch..., Tq, H, Dh]
        k = _project(context, params["key"], cd)  # [batch..., Tk, H, Dh]
        v = _project(context, params["value"], cd)  # [batch..., Tk, H, Dh]
        logits_dtype = jnp.promote_types(q.dtype, jnp.float32)
        logits = jnp.einsum("...qhd,...khd->...hqk", q.astype(logits_dtype), k.astype(logits_dtype))
        logits = logits / math.sqrt(head_dim)
        if mask is not None:
            logits = jnp.where(jnp.broadcast_to(mask, logits.shape), logits, jnp.finfo(logits_dtype).min)
        weights = jax.nn.softmax(logits, axis=-1)  # [batch..., H, Tq, Tk]
        if dropout:
            keep = keep_mask(key, dropout_rate, weights)
            weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
        heads = jnp.einsum("...hqk,...khd->...qhd", weights.astype(v.dtype), v)  # [batch..., Tq, H, Dh]
        out_kernel = params["out"]["kernel"]  # [H, Dh, out]
        y = matmul(heads.reshape(*heads.shape[:-2], -1), out_kernel.reshape(-1, out_kernel.shape[-1]), cd)
        if use_bias:
            y = y + params["out"]["bias"].reshape((1,) * (y.ndim - 1) + (-1,))
        return y, state

    return Model(init, apply, _NAME)


def _project(x: jax.Array, params: dict[str, jax.Array], compute_dtype: Any) -> jax.Array:
    """``[batch..., T, D] @ [D, H, Dh] (+ [H, Dh]) -> [batch..., T, H, Dh]``, one (mixed-precision) matmul."""
    kernel = params["kernel"]
    y = matmul(x, kernel.reshape(kernel.shape[0], -1), compute_dtype).reshape(*x.shape[:-1], *kernel.shape[1:])
    if "bias" in params:
        y = y + params["bias"].reshape((1,) * (y.ndim - 2) + params["bias"].shape)
    return y


def _check_inputs(query, context, causal: bool, dq: int | None = None, dk: int | None = None) -> None:
    for what, x, size in (("query", query, dq), ("context", context, dk)):
        try:
            check_floating(_NAME, x)
            check_rank(_NAME, x, 2, what="[batch..., length, features]")
            if size is not None:
                check_last_axis(_NAME, x, size)
        except LayerError as error:
            raise type(error)(_NAME, f"{what}: {error.detail}") from None
    if query.shape[:-2] != context.shape[:-2]:
        raise ShapeError(
            _NAME,
            f"query and context must have the same batch axes, got query {describe(query)} and context "
            f"{describe(context)}. Fix: broadcast them to one batch shape first.",
        )
    if causal and query.shape[-2] != context.shape[-2]:
        raise ShapeError(
            _NAME,
            f"causal=True needs as many queries as keys (Tq == Tk), got query {describe(query)} and context "
            f"{describe(context)}. Fix: use causal=False and pass an explicit mask for cross-attention.",
        )


def _check_lengths(lengths, query, context) -> None:
    """Raises unless ``lengths`` is None, or integer ``[batch...]`` for self-attention (``context`` None)."""
    if lengths is None:
        return
    check_array(_NAME, lengths)
    if context is not None:
        raise ShapeError(
            _NAME,
            f"lengths are those of the self-attended sequence, but an explicit context was given: got lengths "
            f"{describe(lengths)} with query {describe(query)} and context {describe(context)}. Fix: for "
            f"cross-attention mask the context's padding with mask=padding_mask(context_lengths, Tk), "
            f"Tk = {context.shape[-2]}; for self-attention leave context=None.",
        )
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise DTypeError(
            _NAME, f"lengths: expected integer lengths, got {describe(lengths)}. Fix: pass lengths.astype(jnp.int32)."
        )
    batch = tuple(query.shape[:-2])
    if tuple(lengths.shape) != batch:
        raise ShapeError(
            _NAME,
            f"lengths: expected one length per sequence, shape {batch} (the query's batch axes [batch...] of "
            f"{describe(query)}), got {describe(lengths)}. Fix: pass lengths of shape {batch}.",
        )


def _check_mask(mask, target: tuple[int, ...]) -> None:
    if mask is None:
        return
    check_array(_NAME, mask)
    if mask.dtype != jnp.bool_:
        raise DTypeError(
            _NAME,
            f"mask: expected a boolean mask (True = attend), got {describe(mask)}. Fix: pass mask.astype(bool), "
            "or build it with padding_mask / causal_mask.",
        )
    trailing = target[len(target) - mask.ndim :]
    fits = mask.ndim <= len(target) and all(m in (1, t) for m, t in zip(mask.shape, trailing, strict=True))
    if not fits:
        raise ShapeError(
            _NAME,
            f"mask: expected a shape broadcastable to [batch..., heads, Tq, Tk] = {target}, got {describe(mask)}. "
            "Fix: padding_mask(lengths, Tk) gives [batch, 1, 1, Tk]; causal_mask(T) gives [1, 1, T, T].",
        )


def _check_params(params, num_heads: int, qkv_features, out_features, use_bias: bool) -> tuple[int, int, int]:
    """Checks every key and shape; returns ``(Dq, Dk, Dh)``."""
    check_params(_NAME, params, dict.fromkeys(_PROJECTIONS))
    names = ("kernel", "bias") if use_bias else ("kernel",)
    for name in _PROJECTIONS:
        check_params(_NAME, params[name], dict.fromkeys(names), what=f"params[{name!r}]")
    q_kernel, k_kernel, out_kernel = (params[n]["kernel"] for n in ("query", "key", "out"))
    if q_kernel.ndim != 3 or q_kernel.shape[1] != num_heads or k_kernel.ndim != 3 or out_kernel.ndim != 3:
        raise ParamsError(
            _NAME,
            f"params do not belong to this model: kernels should be [in, {num_heads}, head_dim] and "
            f"[{num_heads}, head_dim, out], got query {describe(q_kernel)}, out {describe(out_kernel)}.",
        )
    dq, _, head_dim = q_kernel.shape
    dk, out = k_kernel.shape[0], out_kernel.shape[-1]
    if (qkv_features or num_heads * head_dim) != num_heads * head_dim or (out_features or out) != out:
        raise ParamsError(
            _NAME,
            f"params do not belong to this model (qkv_features={qkv_features}, out_features={out_features}): "
            f"got query kernel {describe(q_kernel)}, out kernel {describe(out_kernel)}.",
        )
    kernels = {name: (d, num_heads, head_dim) for name, d in (("query", dq), ("key", dk), ("value", dk))}
    kernels["out"] = (num_heads, head_dim, out)
    for name, shape in kernels.items():
        bias = (out,) if name == "out" else shape[1:]
        expected = {"kernel": shape, "bias": bias} if use_bias else {"kernel": shape}
        check_params(_NAME, params[name], expected, what=f"params[{name!r}]")
    return dq, dk, head_dim
