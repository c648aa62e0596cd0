"""Errors a user can act on, and the checks that raise them.

Every funcnet error names the layer path where it happened (``encoder/dense_1``), what was
expected and what was received. A leaf layer raises with an empty path; each combinator that
the error passes through prepends the name it gave that child, so the message that reaches the
user holds the whole path without any layer knowing where it sits.

>>> import jax.numpy as jnp
>>> try:
...     check_last_axis("dense", jnp.zeros((32, 100, 128)), 256)
... except ShapeError as e:
...     print(str(e)[:60])
at dense: expected last axis 256, got (32, 100, 128) float32
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp


class LayerError(Exception):
    """Mixin for errors raised inside a model; carries the path of the failing layer.

    Attributes:
      layer: the type name of the layer that raised (``"dense"``).
      path: child names from the outermost combinator to the failing layer.
      detail: what was expected, what was received and how to fix it.

    >>> error = ShapeError("dense", "expected last axis 4, got (2, 3) float32.", path=("encoder", "dense_1"))
    >>> str(error)
    'at encoder/dense_1: expected last axis 4, got (2, 3) float32.'
    """

    def __init__(self, layer: str, detail: str, path: Sequence[str] = ()):
        self.layer = layer
        self.detail = detail
        self.path = tuple(path)
        super().__init__(str(self))

    def __str__(self) -> str:
        where = "/".join(self.path) if self.path else self.layer
        return f"at {where}: {self.detail}"

    def __reduce__(self):
        return (type(self), (self.layer, self.detail, self.path))


class ShapeError(LayerError, ValueError):
    """An input or parameter has the wrong rank or size.

    >>> import jax, jax.numpy as jnp, funcnet as fn
    >>> try:
    ...     fn.dense(2).init(jax.random.key(0), jnp.float32(1.0))
    ... except fn.ShapeError as e:
    ...     print(e)
    at dense: expected input of rank >= 1, got () float32.
    """


class DTypeError(LayerError, TypeError):
    """An input has the wrong dtype (floats where integer ids are expected, or the reverse).

    >>> import jax, jax.numpy as jnp, funcnet as fn
    >>> try:
    ...     fn.embed(10, 4).init(jax.random.key(0), jnp.ones(3))
    ... except TypeError as e:
    ...     print(e)
    at embed: expected integer ids, got (3,) float32. Fix: cast with x.astype(jnp.int32).
    """


class ParamsError(LayerError, ValueError):
    """The params or state given to ``apply`` do not belong to this model.

    >>> import jax.numpy as jnp, funcnet as fn
    >>> try:
    ...     fn.dense(2).apply({"w": jnp.ones(2)}, {}, jnp.ones(2))
    ... except fn.ParamsError as e:
    ...     print(str(e)[:70])
    at dense: params do not belong to this model: expected keys ['bias', '
    """


class KeyMissingError(LayerError, ValueError):
    """A layer needs a PRNG key (``train=True`` with dropout) and none was given.

    >>> import jax.numpy as jnp, funcnet as fn
    >>> try:
    ...     fn.dropout(0.5).apply({}, {}, jnp.ones(2), train=True)
    ... except fn.KeyMissingError as e:
    ...     print(str(e)[:53])
    at dropout: train=True needs a PRNG key and none was
    """


class ContractError(LayerError, TypeError):
    """A model, cell or function does not keep the model contract (``funcnet.core``).

    >>> import jax, jax.numpy as jnp, funcnet as fn
    >>> def scale(params, state, x):  # no key= and train=
    ...     return x * 2, state
    >>> model = fn.serial(fn.dense(2), fn.Model(lambda key, x: ({}, {}), scale, "scale"))
    >>> try:
    ...     model.init(jax.random.key(0), jnp.ones((1, 2)))
    ... except fn.ContractError as e:
    ...     print(str(e)[:70])
    at scale_0: apply must take the keywords key and train (the contract:
    """


class DataError(ValueError):
    """A data file cannot be used: its path, the line where known, what is wrong and the fix.

    >>> str(DataError("data/train.txt, line 3: label 7 is outside the 5 classes 0-4."))[:26]
    'data/train.txt, line 3: la'
    """


def prefix_path(error: LayerError, name: str) -> LayerError:
    """Returns ``error`` with ``name`` prepended to its path (used by combinators)."""
    error.path = (name, *error.path)
    error.args = (str(error),)
    return error


def describe(x: Any) -> str:
    """``(32, 100, 128) float32`` for an array or ShapeDtypeStruct; the type name otherwise."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{tuple(x.shape)} {jnp.dtype(x.dtype).name}"
    return type(x).__name__


def check_array(layer: str, x: Any) -> None:
    """Raises a TypeError unless ``x`` is an array: it has a shape and a dtype, and is no tuple.

    A tuple with a shape (``funcnet.Embedded``: rows not gathered yet) names its fix in ``ARRAY_HINT``.
    """
    if isinstance(x, tuple):
        hint = getattr(x, "ARRAY_HINT", None)
        if hint is None:
            got = ", ".join(describe(item) for item in x)
            hint = (
                f" ({got}). Fix: pass side inputs such as lengths or a mask as keywords, apply(..., lengths=lengths):"
                " combinators hand them to the layers that take them; or split a tuple with parallel(...)"
            )
        raise DTypeError(layer, f"expected an array, got {type(x).__name__}{hint}.")
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise DTypeError(layer, f"expected an array, got {describe(x)}.")


def check_rank(layer: str, x: Any, min_rank: int, max_rank: int | None = None, what: str = "") -> None:
    """Raises ShapeError unless ``min_rank <= x.ndim <= max_rank``."""
    check_array(layer, x)
    if x.ndim < min_rank or (max_rank is not None and x.ndim > max_rank):
        want = f"rank {min_rank}" if max_rank == min_rank else f"rank >= {min_rank}"
        if max_rank is not None and max_rank != min_rank:
            want = f"rank {min_rank} to {max_rank}"
        hint = f" ({what})" if what else ""
        raise ShapeError(layer, f"expected input of {want}{hint}, got {describe(x)}.")


def check_last_axis(layer: str, x: Any, size: int) -> None:
    """Raises ShapeError unless the last axis of ``x`` has ``size`` entries."""
    check_rank(layer, x, 1)
    if x.shape[-1] != size:
        raise ShapeError(
            layer,
            f"expected last axis {size}, got {describe(x)}. Fix: feed inputs whose last axis "
            f"is {size}, or re-initialize the layer with this input.",
        )


def check_floating(layer: str, x: Any) -> None:
    """Raises DTypeError unless ``x`` has a floating dtype."""
    check_array(layer, x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise DTypeError(
            layer,
            f"expected a floating-point input, got {describe(x)}. Fix: cast with "
            f"x.astype(jnp.float32), or put an embedding first if these are token ids.",
        )


def check_integer(layer: str, x: Any) -> None:
    """Raises DTypeError unless ``x`` has an integer dtype."""
    check_array(layer, x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise DTypeError(layer, f"expected integer ids, got {describe(x)}. Fix: cast with x.astype(jnp.int32).")


def check_params(layer: str, params: Any, expected: dict[str, Any], what: str = "params") -> None:
    """Raises ParamsError unless ``params`` has exactly the keys and shapes of ``expected``.

    Args:
      layer: the layer's type name.
      params: the dict given to apply.
      expected: name -> shape tuple (or None to check only presence).
      what: ``"params"`` or ``"state"``, for the message.
    """
    if not isinstance(params, dict):
        raise ParamsError(layer, f"expected {what} as a dict, got {type(params).__name__}.")
    if set(params) != set(expected):
        raise ParamsError(
            layer,
            f"{what} do not belong to this model: expected keys {sorted(expected)}, got "
            f"{sorted(params)}. Fix: pass the {what} returned by this model's init.",
        )
    for name, shape in expected.items():
        got = getattr(params[name], "shape", None)
        if shape is not None and tuple(got or ()) != tuple(shape):
            raise ParamsError(
                layer,
                f"{what} do not belong to this model: {name!r} should have shape {tuple(shape)}, "
                f"got {describe(params[name])}. Fix: re-initialize with inputs of the shape you apply to.",
            )
