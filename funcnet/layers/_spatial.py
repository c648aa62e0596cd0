"""Helpers shared by the layers over spatial axes (conv, pool): sizes, padding and layout checks."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from jax import lax

from ..errors import ShapeError, check_array, describe

Padding = str | int | Sequence[tuple[int, int]]


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def sizes(layer: str, value: Any, n: int, what: str) -> tuple[int, ...]:
    """An int or a length-``n`` sequence of positive ints, as a tuple of ``n`` ints."""
    values = (value,) * n if is_int(value) else tuple(value) if isinstance(value, Sequence) else (value,)
    if len(values) != n or not all(is_int(v) and v >= 1 for v in values):
        raise ValueError(f"{layer}: {what} must be a positive int or {n} positive ints, got {value!r}")
    return tuple(int(v) for v in values)


def padding_pairs(layer: str, padding: Any, n: int) -> str | tuple[tuple[int, int], ...]:
    """``"SAME"``/``"VALID"``, or ``padding`` as ``n`` (low, high) pairs of non-negative ints."""
    if isinstance(padding, str):
        if padding.upper() in ("SAME", "VALID"):
            return padding.upper()
        raise ValueError(f"{layer}: padding must be 'SAME', 'VALID', an int or (low, high) pairs, got {padding!r}")
    pairs = ((padding, padding),) * n if is_int(padding) else padding
    ok = isinstance(pairs, Sequence) and len(pairs) == n
    ok = ok and all(isinstance(p, Sequence) and len(p) == 2 and all(is_int(v) and v >= 0 for v in p) for p in pairs)
    if not ok:
        raise ValueError(
            f"{layer}: padding must be 'SAME', 'VALID', a non-negative int or {n} (low, high) pairs of "
            f"non-negative ints (one per spatial axis), got {padding!r}"
        )
    return tuple((int(lo), int(hi)) for lo, hi in pairs)


def explicit_padding(
    layer: str, x: Any, padding: Any, windows: Sequence[int], strides: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """(low, high) pairs for the spatial axes of ``x``; raises ShapeError if a window does not fit.

    ``windows`` are the effective (dilated) window sizes.
    """
    sizes = tuple(x.shape[1:-1])
    if isinstance(padding, str):
        padding = tuple(tuple(p) for p in lax.padtype_to_pads(sizes, windows, strides, padding))
    for size, window, (lo, hi) in zip(sizes, windows, padding, strict=True):
        if size + lo + hi < window:
            raise ShapeError(
                layer,
                f"the spatial axes {sizes} with padding {padding} are smaller than the window {tuple(windows)}, "
                f"got {describe(x)}. Fix: feed larger inputs, pad them, or use a smaller (or undilated) window.",
            )
    return padding


def layout(n: int) -> str:
    names = {1: ["length"], 2: ["height", "width"], 3: ["depth", "height", "width"]}
    return "[" + ", ".join(["batch", *names.get(n, [f"spatial_{i}" for i in range(n)]), "channels"]) + "]"


def check_spatial_rank(layer: str, x: Any, n: int) -> None:
    """Raises ShapeError unless ``x`` is ``[batch, *spatial, channels]`` with ``n`` spatial axes."""
    check_array(layer, x)
    if x.ndim != n + 2:
        fix = "add a batch axis with x[None] for a single example" if x.ndim == n + 1 else "channels go last"
        raise ShapeError(layer, f"expected input of rank {n + 2} ({layout(n)}), got {describe(x)}. Fix: {fix}.")
