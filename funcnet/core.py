"""The model contract: a model is a pair of pure functions over pytrees.

.. code-block:: python

    class Model(NamedTuple):
        init:  (key, *inputs) -> (params, state)
        apply: (params, state, *inputs, key=None, train=False) -> (outputs, state)
        name:  str   # the type name combinators use for positional names ("dense" -> "dense_0")

``init`` infers every shape from its inputs, which may be arrays or ``jax.ShapeDtypeStruct``;
``params`` and ``state`` are nested dicts with readable keys (``{}`` when there are none);
``apply`` always returns ``(outputs, state)``. Randomness comes from the one keyword ``key``;
``train`` switches dropout and batch statistics. Nothing is hidden: ``jax.grad``, ``jax.jit`` and
``jax.vmap`` compose with ``apply`` directly.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from .errors import LayerError, ParamsError, prefix_path

Params = dict[str, Any]
State = dict[str, Any]


class InitFn(Protocol):
    """``init(key, *inputs) -> (params, state)``; inputs may be arrays or ShapeDtypeStructs."""

    def __call__(self, key: jax.Array, *inputs: Any) -> tuple[Params, State]: ...


class ApplyFn(Protocol):
    """``apply(params, state, *inputs, key=None, train=False) -> (outputs, state)``."""

    def __call__(
        self, params: Params, state: State, *inputs: Any, key: jax.Array | None = None, train: bool = False
    ) -> tuple[Any, State]: ...


class Model(NamedTuple):
    """A model: ``init`` makes params and state from example inputs, ``apply`` runs it.

    Attributes:
      init: ``(key, *inputs) -> (params, state)``.
      apply: ``(params, state, *inputs, key=None, train=False) -> (outputs, state)``.
      name: type name used for positional child names (``dense`` -> ``dense_0``).

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> model = fn.dense(3)
      >>> params, state = model.init(jax.random.key(0), jnp.ones((2, 4)))
      >>> y, state = model.apply(params, state, jnp.ones((2, 4)))
      >>> y.shape
      (2, 3)
    """

    init: InitFn
    apply: ApplyFn
    name: str = "model"


def function(f: Callable[..., Any], name: str | None = None, check: Callable[..., Any] | None = None) -> Model:
    """Wraps a pure function ``f(*inputs) -> outputs`` as a parameter-free model.

    Args:
      f: a pure function of the inputs (no key, no train flag).
      name: the type name for positional naming; defaults to ``f.__name__``.
      check: optional validation called with the inputs at init and at apply (at trace time);
        it raises a ``LayerError`` (e.g. ``ShapeError(name, ...)``) for inputs ``f`` cannot take.

    Returns:
      A Model with ``params == state == {}``.

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> double = fn.function(lambda x: 2 * x, name="double")
      >>> double.apply({}, {}, jnp.ones(2))[0]
      Array([2., 2.], dtype=float32)
    """
    label = name or getattr(f, "__name__", "function")
    if label == "<lambda>":
        label = "function"

    def init(key, *inputs):
        del key
        if check is not None:
            check(*inputs)
        return {}, {}

    def apply(params, state, *inputs, key=None, train=False):
        del key, train
        if params or state:
            got = f"got params {sorted(params)} / state {sorted(state)}"
            raise ParamsError(label, f"{label} has no params or state, {got}.")
        if check is not None:
            check(*inputs)
        return f(*inputs), state

    return Model(init, apply, label)


# --- children: names, keys, and calls that put the child's name into errors -------------


def name_hash(name: str) -> int:
    """A stable 31-bit hash of a child's name (the same in every process and Python version)."""
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


def child_key(key: jax.Array | None, name: str) -> jax.Array | None:
    """The key a combinator gives the child called ``name``: ``fold_in(key, name_hash(name))``."""
    return None if key is None else jax.random.fold_in(key, name_hash(name))


def _check_model(model: Any, where: str) -> None:
    if isinstance(model, Model):
        return
    hint = ""
    if callable(model):
        hint = (
            " Fix: call layer factories (relu(), not relu), or wrap a plain function as a model "
            "with funcnet.function(f)."
        )
    raise TypeError(f"{where}: expected a funcnet Model, got {type(model).__name__} {model!r}.{hint}")


def name_children(models: Sequence[Model], named: Mapping[str, Model]) -> dict[str, Model]:
    """Names positional children by type and position (``dense_0``, ``dense_1``) then adds named ones.

    Example:
      >>> import funcnet as fn
      >>> list(name_children([fn.dense(2), fn.relu(), fn.dense(1)], {"head": fn.dense(1)}))
      ['dense_0', 'relu_0', 'dense_1', 'head']
    """
    children: dict[str, Model] = {}
    counts: dict[str, int] = {}
    for model in models:
        _check_model(model, f"child {len(children)}")
        index = counts.get(model.name, 0)
        counts[model.name] = index + 1
        children[f"{model.name}_{index}"] = model
    for name, model in named.items():
        _check_model(model, f"child {name!r}")
        if name in children:
            raise ValueError(f"child name {name!r} is used twice; positional children are named {list(children)}")
        if "/" in name:
            raise ValueError(f"child name {name!r} may not contain '/'")
        children[name] = model
    if not children:
        raise ValueError("a combinator needs at least one child model")
    return children


def init_child(name: str, model: Model, key: jax.Array, *inputs: Any) -> tuple[Params, State]:
    """``model.init`` with the child's key, its name prepended to any LayerError's path."""
    try:
        return model.init(child_key(key, name), *inputs)
    except LayerError as error:
        raise prefix_path(error, name) from None


def init_children(children: Mapping[str, Model], key: jax.Array, *inputs: Any) -> tuple[Params, State]:
    """Initializes every child on the same inputs; returns their params and state by name."""
    params, state = {}, {}
    for name, model in children.items():
        p, s = init_child(name, model, key, *inputs)
        put(params, name, p)
        put(state, name, s)
    return params, state


def apply_child(
    name: str, model: Model, params: Params, state: State, *inputs: Any, key=None, train: bool = False
) -> tuple[Any, State]:
    """``model.apply`` on the child's slice of params/state, with its key and its name in errors."""
    try:
        return model.apply(params.get(name, {}), state.get(name, {}), *inputs, key=child_key(key, name), train=train)
    except LayerError as error:
        raise prefix_path(error, name) from None


def output_spec(model: Model, params: Params, state: State, *inputs: Any) -> Any:
    """The ShapeDtypeStructs of ``model.apply``'s outputs (eval mode), computed without running it."""
    out, _ = jax.eval_shape(lambda p, s, *xs: model.apply(p, s, *xs), params, state, *inputs)
    return out


def put(tree: dict[str, Any], name: str, value: dict[str, Any]) -> None:
    """Stores a child's params or state under ``name``, leaving out empty dicts."""
    if value:
        tree[name] = value


def check_children(layer: str, tree: Params, names: Sequence[str], what: str = "params") -> None:
    """Raises ParamsError if ``tree`` holds keys that are not children of this combinator."""
    if not isinstance(tree, dict):
        raise ParamsError(layer, f"expected {what} as a dict, got {type(tree).__name__}.")
    unknown = sorted(set(tree) - set(names))
    if unknown:
        raise ParamsError(
            layer,
            f"{what} do not belong to this model: unexpected keys {unknown}; its children are "
            f"{list(names)}. Fix: pass the {what} returned by this model's init.",
        )


# --- utilities --------------------------------------------------------------------------


def param_count(params: Any) -> int:
    """The number of scalars in a pytree of arrays (or ShapeDtypeStructs).

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> params, _ = fn.dense(3).init(jax.random.key(0), jnp.ones((1, 4)))
      >>> param_count(params)
      15
    """
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def _path_str(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def summary(model: Model, *inputs: Any) -> str:
    """A table of every parameter and state array: path, shape, dtype and count.

    Computed with ``jax.eval_shape``: no arrays are allocated, so it works for models too large
    to initialize on this machine. Inputs may be arrays or ``jax.ShapeDtypeStruct``.

    Example:
      >>> import jax, funcnet as fn
      >>> x = jax.ShapeDtypeStruct((8, 4), "float32")
      >>> print(summary(fn.serial(fn.dense(3), fn.relu()), x))
      path                  shape   dtype    count
      params/dense_0/bias   (3,)    float32  3
      params/dense_0/kernel (4, 3)  float32  12
      input  (8, 4) float32
      output (8, 3) float32
      params 15 (60 B), state 0 (0 B)
    """
    params, state = jax.eval_shape(model.init, jax.random.key(0), *inputs)
    outputs = output_spec(model, params, state, *inputs)
    rows = [("path", "shape", "dtype", "count")]
    for kind, tree in (("params", params), ("state", state)):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            rows.append(
                (
                    f"{kind}/{_path_str(path)}",
                    str(tuple(leaf.shape)),
                    jnp.dtype(leaf.dtype).name,
                    str(np.prod(leaf.shape, dtype=int)),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [" ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + " " + row[3] for row in rows]

    def specs(tree):
        return ", ".join(f"{tuple(s.shape)} {jnp.dtype(s.dtype).name}" for s in jax.tree.leaves(tree))

    def nbytes(tree):
        return sum(int(np.prod(s.shape)) * jnp.dtype(s.dtype).itemsize for s in jax.tree.leaves(tree))

    lines.append(f"input  {specs(inputs)}")
    lines.append(f"output {specs(outputs)}")
    lines.append(
        f"params {param_count(params):,} ({nbytes(params):,} B), state {param_count(state):,} ({nbytes(state):,} B)"
    )
    return "\n".join(line.rstrip() for line in lines)
