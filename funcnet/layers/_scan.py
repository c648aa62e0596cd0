"""Unrolling a ``lax.scan`` whose length may be symbolic."""

from __future__ import annotations

from typing import Any


def unroll_for(length: Any, unroll: int) -> int:
    """``unroll`` for a ``lax.scan`` of ``length`` steps, or 1 when the length is symbolic (a program exported
    with ``jax.export`` for any length, ``funcnet export``): JAX cannot unroll a loop of symbolic length by a
    constant factor, so such a loop runs rolled.

    >>> import jax
    >>> unroll_for(100, 2), unroll_for(jax.export.symbolic_shape("time")[0], 2)
    (2, 1)
    """
    return unroll if isinstance(length, int) else 1
