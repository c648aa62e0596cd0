"""The scan over scheduled steps that the tree layer and the module-network executor share.

A batch of trees (or of module layouts) scheduled by ``funcnet.tree_schedule.schedule`` is a buffer of
``R`` rows: leaf rows ``0 .. L-1``, internal slot ``w`` of step ``s`` at row ``L + s*W + w``, and a dummy
row ``R-1`` that stays zero. ``scan_steps`` runs the steps in order::

    for s in range(S):                                       # lax.scan
        kids = tuple(buf[children[s]] for buf in buffers)    # [W, K, ...] each: the children's rows
        out, y = node(kids, per_step[s])                     # one batched call for the W slots
        buf[L + s*W : L + (s+1)*W] = out * internal_mask[s]  # padding slots exactly zero

A node is scheduled after all its children, so each gather reads finished rows, and padding slots write
zeros that no real node reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ._scan import unroll_for


def zero_unless(keep: jax.Array, a: jax.Array, dtype: Any) -> jax.Array:
    """``a`` where ``keep: [n]`` is positive, exactly zero elsewhere (NaN-safe), cast to ``dtype``.

    >>> zero_unless(jnp.array([1.0, 0.0]), jnp.array([[2.0], [jnp.nan]]), jnp.float32).tolist()
    [[2.0], [0.0]]
    """
    keep = keep.reshape(keep.shape + (1,) * (a.ndim - keep.ndim))
    return jnp.where(keep > 0, a, jnp.zeros_like(a)).astype(dtype)


def scan_steps(
    node: Callable[[tuple[jax.Array, ...], Any], tuple[tuple[jax.Array, ...], Any]],
    num_leaves: int,
    buffers: tuple[jax.Array, ...],
    children: jax.Array,
    internal_mask: jax.Array,
    per_step: Any,
    *,
    unroll: int | bool = 1,
) -> tuple[tuple[jax.Array, ...], Any]:
    """Runs the steps of a schedule over ``buffers`` (see the module docstring).

    Args:
      node: ``node(kids, per_step[s]) -> (outputs, y)``: ``kids`` the children's rows of each buffer,
        ``[W, K, ...]``; ``outputs`` one ``[W, ...]`` array per buffer; ``y`` stacked over the steps.
      num_leaves: ``L``, the rows before the first step's.
      buffers: ``[R, ...]`` arrays, leaf rows filled, the rest zero.
      children: ``int [S, W, K]`` buffer rows of each slot's children (absent ones: the dummy row).
      internal_mask: ``[S, W]``, 1 for real slots.
      per_step: a pytree of ``[S, ...]`` arrays passed to ``node`` a step at a time (or None).
      unroll: steps per scan iteration.

    Returns:
      The final buffers and the stacked ``y``.

    >>> buffers = (jnp.array([[1.0], [2.0], [0.0], [0.0]]),)  # two leaves, one slot, the dummy row
    >>> node = lambda kids, _: ((kids[0].sum(1),), None)      # a parent is the sum of its children
    >>> out, _ = scan_steps(node, 2, buffers, jnp.array([[[0, 1]]]), jnp.ones((1, 1)), None)
    >>> out[0].ravel().tolist()
    [1.0, 2.0, 3.0, 0.0]
    """
    steps, width = internal_mask.shape

    def step(buffers, xs):
        children, internal_mask, s, extra = xs
        kids = tuple(jnp.take(buf, children, axis=0, mode="clip") for buf in buffers)
        out, y = node(kids, extra)
        row = num_leaves + s * width
        written = tuple(
            lax.dynamic_update_slice(buf, zero_unless(internal_mask, a, buf.dtype), (row,) + (0,) * (buf.ndim - 1))
            for buf, a in zip(buffers, out, strict=True)
        )
        return written, y

    xs = (children, internal_mask, jnp.arange(steps), per_step)
    return lax.scan(step, tuple(buffers), xs, unroll=unroll_for(steps, unroll))
