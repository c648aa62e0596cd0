"""The LSTM run over a whole sequence at once, with a custom derivative that makes its gradient fast.

``rnn(lstm_cell(H))`` uses this instead of scanning the one-step cell; the result is the same
function (to float rounding), with the same params. Why it is faster, on CPU:

- Autodiff of a scanned cell adds the ``[H, 4H]`` recurrent-weight gradient (and the input-weight
  gradient) into accumulators at EVERY step of the backward loop. Here the backward loop only
  produces the pre-activation gradients ``dz_t: [batch, 4H]``; the weight gradients are then ONE
  large matmul each over all ``time * batch`` rows (``h_{t-1}^T dz`` and ``x^T dz``), after the loop.
- The input projection ``x @ w_ih`` is one matmul over the whole sequence before the loop. For
  ``Embedded`` rows (``embed(..., deferred=True)``) it is folded: ``(table @ w_ih + b)[ids]``, one
  ``[vocab, 4H]`` matmul and a gather, whose gradient is a scatter-add and two small matmuls.
- The forward loop saves what the backward loop multiplies, so it recomputes no transcendental.
- ``sigmoid(z) = (1 + tanh(z / 2)) / 2``: all four gates are one ``tanh`` over ``[batch, 4H]``
  (XLA's CPU ``tanh`` is ~3x cheaper than its ``exp``-and-divide logistic). The identity is exact;
  in float32 the two forms differ by about one ulp of the gate value.

Two derivatives, one function:

- The default is a ``jax.custom_vjp`` (reverse mode: ``jax.grad``, ``jax.vjp``, and grad of grad),
  written out by hand, ``_vjp_backward``. With ``compute_dtype`` (e.g. bfloat16, see
  ``funcnet.precision``) every matmul, in the loops and over the whole sequence, runs on operands
  rounded to ``compute_dtype`` (the weights once, before the loops) with products in the working
  dtype (float32); states, gates and gradients stay in it. Without it the same code runs its
  matmuls in the working dtype. Details that count on a 2-core CPU:

  - The forward loop saves, instead of the gates, the factors that the backward step multiplies
    (``dz_t = [gc, gc, gc, gh] * factors_t``, see ``_vjp_backward``): the backward step is one
    multiply, one matmul and a few adds.
  - The forward loop writes ``factors_t`` over ``zx_t`` (the input projection, already read), and
    the backward loop writes ``dz_t`` over ``factors_t``: no ``[T, B, 4H]`` buffer is zero-filled.
  - The forward loop writes ``h_{t-1}`` transposed into ``[H, T, B]``, so the recurrent-weight
    gradient after the loop is ``h_prev [H, T * B] @ dz [T * B, 4H]`` on the row-major operands the
    CPU kernels take. (JAX's transpose of a matmul always puts the cotangent first, ``dz^T h_prev``,
    and XLA then copies ``dz`` transposed first: the main reason found why the custom JVP below
    trains slower. ``experiments/bench/charlstm.py`` measures both, ``funcnet`` and ``funcnet_jvp``.)
  - On CPU each step's recurrent product is four smaller ones joined by a concatenate: ``h @ w_hh``
    as one ``[H, H]`` block per gate, and ``dz_t @ w_hh^T`` as four column blocks of ``w_hh^T``
    (``_recurrent_dot``). XLA's CPU runtime runs the four faster than one ``[B, H] x [H, 4H]``
    product in the charlstm bench's shapes (``experiments/bench/small_matmul.py``: ``four_gates``
    against ``fused``). Other platforms take the one product.
  - No bfloat16 array is written one step at a time (XLA's CPU backend would convert the whole
    ``[T, ...]`` buffer to float32 and back at every step): the saved arrays are rounded after the loops.

- ``forward_mode=True`` takes a ``jax.custom_jvp`` instead (``_recurrence``), for ``jax.jvp``,
  ``jax.jacfwd``, ``jax.hessian`` and forward-over-reverse products, which a ``custom_vjp``
  forbids. Its rule is the tangent recurrence written so that it is LINEAR in the tangents, with
  every coefficient a value saved by the forward loop, and the weight terms (``x dw_ih + h_{t-1}
  dw_hh + db``) computed for the whole sequence before the loop. Reverse mode is JAX's transpose of
  that rule: a backward loop whose only per-step matmul is ``dz_t @ w_hh^T``, then the
  whole-sequence weight matmuls. Higher derivatives differentiate the rule itself (correct, not
  fast). No ``compute_dtype`` there.

Shapes: ``B`` batch, ``T`` time, ``F`` input features, ``H`` hidden units. The loops run over
time. The custom VJP works time-major and contracts the ``(T, B)`` axes in ``dot_general`` without
a reshape, so a batch sharded over devices stays sharded. The custom JVP's whole-sequence matmuls
use batch-major ``[B * T, .]`` rows (a reshape of ``[B, T, .]``; merging a sharded batch axis under
the time axis would gather it), and its loops read and write those arrays in place, one time slice
per step.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from ..precision import compute_dtype_of, rounded_dot
from ._scan import unroll_for
from .embed import Embedded, take_rows


class _Saved(NamedTuple):
    """What the forward loop keeps for the tangent loop, each ``[T, B, H]`` in processing order."""

    h: jax.Array  # carry h after each step (frozen past a sequence's end)
    c: jax.Array  # carry c after each step (frozen past a sequence's end)
    i: jax.Array  # input gate
    f: jax.Array  # forget gate
    g: jax.Array  # candidate
    o: jax.Array  # output gate
    tanh_c: jax.Array  # tanh of the step's new memory cell


def _gate_affine(hidden: int, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """``scale, shift: [1, 4H]`` with ``tanh(z * scale) * scale + shift`` = sigmoid on i, f, o and tanh on g."""
    half, one, zero = (jnp.full((hidden,), v, dtype) for v in (0.5, 1.0, 0.0))
    return jnp.concatenate([half, half, one, half])[None], jnp.concatenate([half, half, zero, half])[None]


def _update(pre, h, c, v, scale, shift):
    """One step from its pre-activations ``pre: [B, 4H]``: the gates ``(i, f, g, o)``, ``c'``, ``tanh(c')``
    and ``h'``; where ``v`` (``[B]`` or None) is False the state is frozen (past a sequence's end)."""
    a = jnp.tanh(pre * scale) * scale + shift  # [B, 4H]: i, f, g, o
    i, f, g, o = jnp.split(a, 4, axis=1)
    c_new = f * c + i * g
    tanh_c = jnp.tanh(c_new)
    h_new = o * tanh_c
    if v is not None:
        h_new = jnp.where(v[:, None], h_new, h)
        c_new = jnp.where(v[:, None], c_new, c)
    return (i, f, g, o), c_new, tanh_c, h_new


def _forward(w_ih, w_hh, b, xs, h0, c0, valid, reverse, unroll, save):
    """The recurrence on ``xs: [B, T, F]``; returns ``ys [B, T, H]``, the final ``h, c`` and ``_Saved`` or None."""
    batch, time, features = xs.shape
    hidden = w_hh.shape[0]
    zx = (xs.reshape(batch * time, features) @ w_ih).reshape(batch, time, 4 * hidden)  # one matmul
    scale, shift = _gate_affine(hidden, zx.dtype)
    bias = b[None]

    def step(carry, inputs):
        h, c = carry
        t, v = inputs if valid is not None else (inputs, None)
        z = lax.dynamic_index_in_dim(zx, t, axis=1, keepdims=False)  # [B, 4H]
        (i, f, g, o), c_new, tanh_c, h_new = _update(z + h @ w_hh + bias, h, c, v, scale, shift)
        return (h_new, c_new), (_Saved(h_new, c_new, i, f, g, o, tanh_c) if save else h_new)

    steps = jnp.arange(time)
    inputs = steps if valid is None else (steps, valid)
    (h, c), out = lax.scan(step, (h0, c0), inputs, reverse=reverse, unroll=unroll_for(time, unroll))
    hs = out.h if save else out  # [T, B, H]
    if valid is not None:
        hs = jnp.where(valid[..., None], hs, jnp.zeros_like(hs))  # outputs exactly zero past the end
    return jnp.swapaxes(hs, 0, 1), h, c, (out if save else None)


def _previous(seq: jax.Array, first: jax.Array, reverse: bool) -> jax.Array:
    """The carry before each step: ``seq [T, B, H]`` moved one step along the processing order, ``first`` in front."""
    if reverse:
        return jnp.concatenate([seq[1:], first[None]], 0)
    return jnp.concatenate([first[None], seq[:-1]], 0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(7, 8))
def _recurrence(w_ih, w_hh, b, xs, h0, c0, valid, reverse, unroll):
    ys, h, c, _ = _forward(w_ih, w_hh, b, xs, h0, c0, valid, reverse, unroll, save=False)
    return ys, h, c


def _zero(t: Any) -> bool:
    return isinstance(t, SymbolicZero)


def _recurrence_jvp(reverse, unroll, primals, tangents):
    w_ih, w_hh, b, xs, h0, c0, valid = primals
    dw_ih, dw_hh, db, dxs, dh0, dc0, _ = tangents
    batch, time, features = xs.shape
    hidden = w_hh.shape[0]
    ys, h, c, saved = _forward(w_ih, w_hh, b, xs, h0, c0, valid, reverse, unroll, save=True)

    # The forcing of the tangent recurrence, dz_t's part that does not go through the carry:
    # xs dw_ih + db + h_{t-1} dw_hh + dxs w_ih, as [B * T, 4H] matmuls over the whole sequence.
    # Its transpose (reverse mode) is x^T dz, sum(dz), h_{t-1}^T dz and dz w_ih^T: one matmul each.
    rows = []
    if not (_zero(dw_ih) and _zero(db)):
        dw_ih = jnp.zeros_like(w_ih) if _zero(dw_ih) else dw_ih
        db = jnp.zeros_like(b) if _zero(db) else db
        ones = jnp.ones((batch, time, 1), xs.dtype)
        x1 = jnp.concatenate([xs, ones], 2).reshape(batch * time, features + 1)
        rows.append(x1 @ jnp.concatenate([dw_ih, db[None]], 0))
    if not _zero(dw_hh):
        h_prev = jnp.swapaxes(_previous(saved.h, h0, reverse), 0, 1).reshape(batch * time, hidden)
        rows.append(h_prev @ dw_hh)
    if not _zero(dxs):
        rows.append(dxs.reshape(batch * time, features) @ w_ih)
    if rows:
        forcing = sum(rows[1:], rows[0]).reshape(batch, time, 4 * hidden)
    else:
        forcing = jnp.zeros((batch, time, 4 * hidden), xs.dtype)
    dh0 = jnp.zeros_like(h0) if _zero(dh0) else dh0
    dc0 = jnp.zeros_like(c0) if _zero(dc0) else dc0
    c_prev = _previous(saved.c, c0, reverse)
    # w_hh^T materialized once, [4H, H] row-major: the tangent loop multiplies dh by it transposed, so
    # the backward loop (the transpose) multiplies dz_t by it as stored. Without the barrier XLA
    # folds the transposes away and the backward matmul reads w_hh transposed, which was slower on a
    # 2-core CPU (the funcnet_jvp system of experiments/bench/charlstm.py runs this rule).
    w_hh_t = lax.optimization_barrier(w_hh.T)

    def step(carry, inputs):
        dh, dc = carry
        if valid is not None:
            t, i, f, g, o, cp, tc, v = inputs
        else:
            (t, i, f, g, o, cp, tc), v = inputs, None
        # Read from the batch-major forcing: the transpose then writes dz_t into one batch-major
        # buffer in place, ready for the [B * T, 4H] weight matmuls (no transpose of dz).
        dz_in = lax.dynamic_index_in_dim(forcing, t, axis=1, keepdims=False)
        # Every tangent below is multiplied only by saved values (never by an expression of them),
        # so partial evaluation adds no residuals, and the transpose computes the four blocks of dz
        # separately and joins them with one concatenate (the transpose of split).
        dz = dz_in + lax.dot_general(dh, w_hh_t, (((1,), (1,)), ((), ())))  # dh @ w_hh
        dz_i, dz_f, dz_g, dz_o = jnp.split(dz, 4, axis=1)
        di = dz_i * i - (dz_i * i) * i  # sigmoid' = s (1 - s)
        df = dz_f * f - (dz_f * f) * f
        dg = dz_g - (dz_g * g) * g  # tanh' = 1 - t^2
        do = dz_o * o - (dz_o * o) * o
        dc_new = dc * f + df * cp + dg * i + di * g
        dh_new = do * tc + (dc_new * o - ((dc_new * o) * tc) * tc)
        dy = dh_new
        if v is not None:
            dy = jnp.where(v[:, None], dh_new, jnp.zeros_like(dh_new))
            dh_new = jnp.where(v[:, None], dh_new, dh)
            dc_new = jnp.where(v[:, None], dc_new, dc)
        return (dh_new, dc_new), dy

    inputs = (jnp.arange(time), saved.i, saved.f, saved.g, saved.o, c_prev, saved.tanh_c)
    inputs = inputs if valid is None else (*inputs, valid)
    (dh, dc), dys = lax.scan(step, (dh0, dc0), inputs, reverse=reverse, unroll=unroll_for(time, unroll))
    return (ys, h, c), (jnp.swapaxes(dys, 0, 1), dh, dc)


_recurrence.defjvp(_recurrence_jvp, symbolic_zeros=True)

# ---------------------------------------------------------------- the default: a custom VJP


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _project(xs, w_ih, dtype):
    """The input projection of the whole sequence, time-major: ``zx [T, B, 4H] = x_t @ w_ih``.

    Its own VJP so that the weight gradient is ``x [T * B, F]^T @ dz`` contracted over ``(T, B)``
    with ``x`` first (see the module doc on JAX's transpose), on operands rounded to ``dtype``.
    """
    return _project_fwd(xs, w_ih, dtype)[0]


def _project_fwd(xs, w_ih, dtype):
    xs_low, w_ih_low = jnp.swapaxes(xs, 0, 1).astype(dtype), w_ih.astype(dtype)
    return rounded_dot(xs_low, w_ih_low, ((2,), (0,)), dtype, xs.dtype), (xs_low, w_ih_low)


def _project_bwd(dtype, residuals, dz):
    xs_low, w_ih_low = residuals
    dz_low = dz.astype(dtype)  # rounded once for both matmuls
    d_w_ih = rounded_dot(xs_low, dz_low, ((0, 1), (0, 1)), dtype, dz.dtype)
    d_xs = rounded_dot(dz_low, w_ih_low, ((2,), (1,)), dtype, dz.dtype)  # [T, B, F]
    return jnp.swapaxes(d_xs, 0, 1), d_w_ih


_project.defvjp(_project_fwd, _project_bwd)


def _project_rows(xs: Embedded, w_ih, b, dtype):
    """``_project`` of the rows ``table[ids]`` plus the bias, folded: ``(table @ w_ih + b)[ids]``, time-major.

    One ``[vocab, 4H]`` matmul and a gather; autodiff's backward is a scatter-add into ``[vocab, 4H]``
    and two small matmuls, instead of the ``[T * B, F]`` matmuls of the rows.
    """
    table = rounded_dot(xs.table, w_ih, ((1,), (0,)), dtype, xs.dtype) + b[None]
    return take_rows(table, xs.ids.T)


def _recurrent_dot(x, w, blocks, dtype, work):
    """``x @ w`` on ``dtype`` operands; on CPU as one product per column block of ``w`` (``blocks``, split
    before the loop), joined by a concatenate (see the module doc). Unused blocks are dead code elsewhere."""

    def one(x, w, blocks):
        return rounded_dot(x, w, ((1,), (0,)), dtype, work)

    def per_block(x, w, blocks):
        return jnp.concatenate([rounded_dot(x, b, ((1,), (0,)), dtype, work) for b in blocks], 1)

    return lax.platform_dependent(x, w, blocks, cpu=per_block, default=one)


class _VjpSaved(NamedTuple):
    """What the forward loop keeps for the backward loop, in the working dtype.

    Past a sequence's end the step is the identity: zero factors and ``k``, ``f`` one.
    """

    factors: jax.Array  # [T, B, 4H]: g i(1-i), c f(1-f), i(1-g^2), tanh(c') o(1-o); zero past the end
    k: jax.Array  # [T, B, H]: o (1 - tanh(c')^2) = d h' / d c' at fixed o; zero past the end
    f: jax.Array  # [T, B, H]: forget gate = d c' / d c; one past the end
    h_prev_t: jax.Array  # [H, T, B]: the carry h before each step, transposed
    w_hh_low: jax.Array  # [H, 4H], rounded


def _vjp_forward(zx, w_hh, b, h0, c0, valid, reverse, unroll, dtype, save):
    """The recurrence from the input projection ``zx [T, B, 4H]`` and the bias ``b`` (None: in ``zx``),
    matmuls on ``dtype`` operands; returns ``ys [B, T, H]``, the final ``h, c`` and ``_VjpSaved`` or None."""
    time, batch, _ = zx.shape
    hidden, work = w_hh.shape[0], zx.dtype
    w_hh_low = w_hh.astype(dtype)  # rounded once, outside the loop (XLA would convert it in every step)
    gate_blocks = jnp.split(w_hh_low, 4, axis=1)  # [H, H] each: the product per gate on CPU
    scale, shift = _gate_affine(hidden, work)

    def step(carry, inputs):
        h, c, *buffers = carry
        t, v = inputs if valid is not None else (inputs, None)
        # Saving, step t overwrites zx[t] (read just here) with its factors, so no [T, B, 4H] buffer
        # is zero-filled for them, and writes h_{t-1} into column t of h_prev_t.
        z = lax.dynamic_index_in_dim(buffers[0] if save else zx, t, keepdims=False)
        pre = z + _recurrent_dot(h, w_hh_low, gate_blocks, dtype, work)
        pre = pre if b is None else pre + b[None]  # added here, where it fuses: not over [T, B, 4H]
        (i, f, g, o), c_new, tanh_c, h_new = _update(pre, h, c, v, scale, shift)
        if not save:
            return (h_new, c_new), h_new
        factors = jnp.concatenate([g * i * (1 - i), c * f * (1 - f), i * (1 - g * g), tanh_c * o * (1 - o)], 1)
        k = o * (1 - tanh_c * tanh_c)
        if v is not None:  # the backward step past the end passes dh and dc through: dz = 0, f = 1
            factors = jnp.where(v[:, None], factors, jnp.zeros_like(factors))
            k = jnp.where(v[:, None], k, jnp.zeros_like(k))
            f = jnp.where(v[:, None], f, jnp.ones_like(f))
        factors_buffer = lax.dynamic_update_index_in_dim(buffers[0], factors, t, 0)
        h_prev_t = lax.dynamic_update_slice_in_dim(buffers[1], h.T[:, None, :], t, axis=1)
        return (h_new, c_new, factors_buffer, h_prev_t), (h_new, k, f)

    inputs = jnp.arange(time) if valid is None else (jnp.arange(time), valid)
    init = (h0, c0, zx, jnp.zeros((hidden, time, batch), work)) if save else (h0, c0)
    final, out = lax.scan(step, init, inputs, reverse=reverse, unroll=unroll_for(time, unroll))
    hs = out[0] if save else out  # [T, B, H]
    if valid is not None:
        hs = jnp.where(valid[..., None], hs, jnp.zeros_like(hs))  # outputs exactly zero past the end
    saved = _VjpSaved(final[2], *out[1:], final[3], w_hh_low) if save else None
    return jnp.swapaxes(hs, 0, 1), final[0], final[1], saved


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _vjp_recurrence(zx, w_hh, b, h0, c0, valid, reverse, unroll, dtype):
    ys, h, c, _ = _vjp_forward(zx, w_hh, b, h0, c0, valid, reverse, unroll, dtype, save=False)
    return ys, h, c


def _vjp_recurrence_fwd(zx, w_hh, b, h0, c0, valid, reverse, unroll, dtype):
    ys, h, c, saved = _vjp_forward(zx, w_hh, b, h0, c0, valid, reverse, unroll, dtype, save=True)
    return (ys, h, c), (saved, valid, b)


def _vjp_backward(reverse, unroll, dtype, residuals, cotangents):
    """The backward loop gives ``dz_t`` (and ``dh, dc``); the weight gradient is a matmul after it.

    With ``gh = dh + dy_t`` the cotangent of ``h_t`` and ``gc = dc + gh k_t`` that of ``c_t``, the
    pre-activation cotangent is ``dz_t = [gc, gc, gc, gh] * factors_t`` (gates i, f, g, o), and the
    carry's is ``(dz_t @ w_hh^T, gc f_t)``. ``dz`` is also ``zx``'s cotangent.
    """
    saved, valid, b = residuals
    dys, dh, dc = cotangents
    work = dys.dtype
    w_hh_t = lax.optimization_barrier(saved.w_hh_low.T)  # [4H, H] row-major: the loop's matmul reads it as stored
    column_blocks = jnp.array_split(w_hh_t, min(4, w_hh_t.shape[1]), axis=1)  # [4H, ~H/4] each, on CPU

    def step(carry, inputs):
        dh, dc, buffer = carry
        t, dy, k, f, v = inputs if valid is not None else (*inputs, None)
        gh = dh + dy  # past the end dz = 0 (zero factors), dc passes (k = 0, f = 1), dh passes, dy is dropped
        gc = dc + gh * k
        # dz_t overwrites factors_t in place, and the matmul reads it back from the buffer (so that
        # the buffer's only other reader runs after the write: XLA then copies nothing).
        dz = jnp.concatenate([gc, gc, gc, gh], 1) * lax.dynamic_index_in_dim(buffer, t, keepdims=False)
        buffer = lax.dynamic_update_index_in_dim(buffer, dz, t, 0)
        dz = lax.dynamic_index_in_dim(buffer, t, keepdims=False)
        dh_new = _recurrent_dot(dz, w_hh_t, column_blocks, dtype, work)
        if v is not None:
            dh_new = jnp.where(v[:, None], dh_new, dh)
        return (dh_new, gc * f, buffer), None

    inputs = (jnp.arange(dys.shape[1]), jnp.swapaxes(dys, 0, 1), saved.k, saved.f)
    inputs = inputs if valid is None else (*inputs, valid)
    rolled = unroll_for(dys.shape[1], unroll)
    (dh0, dc0, dz), _ = lax.scan(step, (dh, dc, saved.factors), inputs, reverse=not reverse, unroll=rolled)
    # Contracted over (T, B), h_prev first; dz is rounded once, here.
    d_w_hh = rounded_dot(saved.h_prev_t, dz.astype(dtype), ((1, 2), (0, 1)), dtype, work)
    return dz, d_w_hh, None if b is None else jnp.sum(dz, (0, 1)), dh0, dc0, None


_vjp_recurrence.defvjp(_vjp_recurrence_fwd, _vjp_backward)


def lstm_scan(
    params: dict[str, jax.Array],
    xs: jax.Array,
    carry: tuple[jax.Array, jax.Array],
    lengths: jax.Array | None = None,
    *,
    reverse: bool = False,
    unroll: int = 1,
    compute_dtype: Any = None,
    forward_mode: bool = False,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """``lstm_cell``'s equations over ``xs: [B, T, F]`` in one recurrence with a fast derivative.

    The same function as scanning ``lstm_cell(H).apply`` over time (see ``rnn``): gates i, f, g, o
    from ``x @ w_ih + h @ w_hh + b``, carry frozen and outputs exactly zero past each sequence's
    ``lengths`` (``int [B]``), ``reverse=True`` reading each sequence backwards within its length.
    Inputs are not validated here (``rnn`` does it); every array must have one dtype.

    Args:
      params: ``{"w_ih": [F, 4H], "w_hh": [H, 4H]}`` and optionally ``"b": [4H]``.
      xs: inputs ``[B, T, F]``, or ``Embedded`` rows (``funcnet.layers.embed``): ``table [V, F]`` at
        ``ids [B, T]``, folded into the input projection (``(table @ w_ih + b)[ids]``) by the default
        derivative, looked up first by ``forward_mode``.
      carry: ``(h, c)``, each ``[B, H]``.
      lengths: optional ``int [B]``.
      reverse: process time backwards.
      unroll: steps per loop iteration of both loops (forward and derivative).
      compute_dtype: the matmul operands' dtype (e.g. ``"bfloat16"``: mixed precision, products and
        everything else in ``xs``'s dtype). ``None``: ``xs``'s own dtype.
      forward_mode: False (default): the custom VJP, reverse-mode derivatives only (the fastest
        gradient). True: the custom JVP, which forward mode (``jax.jvp``, ``jax.jacfwd``,
        ``jax.hessian``) differentiates too; its gradient is slower on CPU.

    Returns:
      ``(ys [B, T, H], (h, c))``: the outputs and the final carry.

    Raises:
      TypeError: ``compute_dtype`` is not a floating dtype.
      ValueError: ``forward_mode`` with a ``compute_dtype`` other than ``xs``'s dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> params = {"w_ih": jnp.ones((3, 8)) * 0.1, "w_hh": jnp.zeros((2, 8)), "b": jnp.zeros(8)}
      >>> ys, (h, c) = lstm_scan(params, jnp.ones((4, 5, 3)), (jnp.zeros((4, 2)), jnp.zeros((4, 2))))
      >>> ys.shape, bool((ys[:, -1] == h).all())
      ((4, 5, 2), True)
    """
    dtype = compute_dtype_of("lstm", compute_dtype)
    check_forward_mode(dtype, forward_mode, xs.dtype)
    if isinstance(xs, Embedded) and forward_mode:
        xs = xs.lookup()  # the custom JVP takes the rows
    h0, c0 = carry
    batch, time = xs.shape[:2]
    if time == 0:
        return jnp.zeros((batch, 0, h0.shape[-1]), xs.dtype), (h0, c0)
    b = params.get("b")
    b = jnp.zeros((params["w_hh"].shape[1],), xs.dtype) if b is None else b
    valid = None if lengths is None else jnp.arange(time)[:, None] < lengths[None, :]  # [T, B]
    if forward_mode:
        ys, h, c = _recurrence(params["w_ih"], params["w_hh"], b, xs, h0, c0, valid, reverse, unroll)
    else:
        dtype = xs.dtype if dtype is None else dtype
        if isinstance(xs, Embedded):
            zx, b = _project_rows(xs, params["w_ih"], b, dtype), None
        else:
            zx = _project(xs, params["w_ih"], dtype)
        ys, h, c = _vjp_recurrence(zx, params["w_hh"], b, h0, c0, valid, reverse, unroll, dtype)
    return ys, (h, c)


def check_forward_mode(compute_dtype: Any, forward_mode: bool, dtype: Any = None) -> None:
    """Raises ValueError if ``forward_mode`` is asked for with mixed precision (a ``compute_dtype``
    other than ``dtype``, the params' dtype where known), which only the custom VJP implements."""
    if forward_mode and compute_dtype is not None and compute_dtype != dtype:
        raise ValueError(
            f"lstm: forward_mode=True has no mixed precision (compute_dtype={jnp.dtype(compute_dtype).name}); "
            "its custom JVP runs the matmuls in the params' dtype. Drop one of the two."
        )
