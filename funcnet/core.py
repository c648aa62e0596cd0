"""The model contract: a model is a pair of pure functions over pytrees.

.. code-block:: python

    class Model(NamedTuple):
        init:  (key, *inputs, **keyword_inputs) -> (params, state)
        apply: (params, state, *inputs, key=None, train=False, **keyword_inputs) -> (outputs, state)
        name:  str   # the type name combinators use for positional names ("dense" -> "dense_0")

``init`` infers every shape from its inputs, which may be arrays or ``jax.ShapeDtypeStruct``;
``params`` and ``state`` are nested dicts with readable keys (``{}`` when there are none);
``apply`` always returns ``(outputs, state)``. Randomness comes from the one keyword ``key``;
``train`` switches dropout and batch statistics. Nothing is hidden: ``jax.grad``, ``jax.jit`` and
``jax.vmap`` compose with ``apply`` directly.

**Keyword inputs** travel beside the main input: ``lengths`` of padded sequences, an attention
``mask``, an ``initial_carry``. A layer takes one by naming it as a parameter with a default (or
keyword-only); a combinator hands each keyword input to every child whose ``init``/``apply`` names
it, and refuses one that none of its children takes. So a padded sequence model stays a plain
``serial`` called with ``apply(params, state, ids, lengths=lengths)``.

Cells (``funcnet.layers.Cell``: one step of a recurrence) and tree cells (``TreeCell``) follow the
same contract, with extra functions for the loops that run them.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from .errors import ContractError, ParamsError, describe

Params = dict[str, Any]
State = dict[str, Any]


class InitFn(Protocol):
    """``init(key, *inputs, **keyword_inputs) -> (params, state)``; inputs may be arrays or ShapeDtypeStructs."""

    def __call__(self, key: jax.Array, *inputs: Any, **keyword_inputs: Any) -> tuple[Params, State]: ...


class ApplyFn(Protocol):
    """``apply(params, state, *inputs, key=None, train=False, **keyword_inputs) -> (outputs, state)``."""

    def __call__(
        self,
        params: Params,
        state: State,
        *inputs: Any,
        key: jax.Array | None = None,
        train: bool = False,
        **keyword_inputs: Any,
    ) -> tuple[Any, State]: ...


class Model(NamedTuple):
    """A model: ``init`` makes params and state from example inputs, ``apply`` runs it.

    Attributes:
      init: ``(key, *inputs, **keyword_inputs) -> (params, state)``.
      apply: ``(params, state, *inputs, key=None, train=False, **keyword_inputs) -> (outputs, state)``.
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


# --- keyword inputs, read from signatures -------------------------------------------------

_RESERVED = frozenset({"key", "train"})


class _Signature(NamedTuple):
    keywords: frozenset[str] | None  # keyword inputs it names; None: it takes **kwargs (any)
    key_and_train: bool  # whether key= and train= can be passed (named, or **kwargs)
    text: str  # the signature as written, for messages


_SIGNATURES: weakref.WeakKeyDictionary[Any, _Signature] = weakref.WeakKeyDictionary()


def _signature(f: Callable[..., Any]) -> _Signature:
    try:
        return _SIGNATURES[f]
    except (KeyError, TypeError):
        pass
    signature = signature_of(f)
    if signature is None:  # no signature to read (some builtins): takes no keyword inputs
        return _Signature(frozenset(), True, "(...)")
    parameters = signature.parameters.values()
    any_keyword = any(p.kind is p.VAR_KEYWORD for p in parameters)
    named = {
        p.name
        for p in parameters
        if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)
    }
    found = _Signature(
        None if any_keyword else frozenset(named - _RESERVED),
        any_keyword or _RESERVED <= named,
        str(signature),
    )
    try:
        _SIGNATURES[f] = found
    except TypeError:  # not weakly referenceable: read again next time
        pass
    return found


def keyword_inputs(f: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword inputs ``f`` takes: parameters with a default or keyword-only, but ``key`` and ``train``.

    ``None`` means any (``f`` takes ``**kwargs``). Combinators hand a child exactly these.

    Example:
      >>> import funcnet as fn
      >>> sorted(keyword_inputs(fn.rnn(fn.lstm_cell(4)).apply))
      ['initial_carry', 'lengths']
      >>> keyword_inputs(fn.dense(4).apply)
      frozenset()
    """
    return _signature(f).keywords


def announce(f: Callable[..., Any], keywords: frozenset[str] | None) -> None:
    """Sets the signature of ``f(..., **keywords)`` to name ``keywords`` (kept as ``**`` if None).

    Combinators call it on the ``init``/``apply`` they return, so that ``keyword_inputs`` and
    ``help`` show the keyword inputs their children take.
    """
    if keywords is None:
        return
    signature = inspect.signature(f)
    kept = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    have = {p.name for p in kept}
    added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in sorted(keywords - have)]
    f.__signature__ = signature.replace(parameters=kept + added)  # type: ignore[attr-defined]


def check_takes_key_and_train(model: Any) -> None:
    """Raises ContractError unless ``model.apply`` takes the keywords ``key`` and ``train``."""
    found = _signature(model.apply)
    if not found.key_and_train:
        raise ContractError(
            model.name,
            f"apply must take the keywords key and train (the contract: apply(params, state, *inputs, "
            f"key=None, train=False)), but {model.name}'s apply is apply{found.text}. Fix: add "
            "'*, key=None, train=False' to its parameters (and 'del key, train' if it uses neither).",
        )


def check_returns_pair(model: Any, result: Any, method: str) -> None:
    """Raises ContractError unless ``result`` is ``(outputs, state)`` (apply) or ``(params, state)`` (init)."""
    first = "params" if method == "init" else "outputs"
    ok = isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)
    if ok and method == "init":
        ok = isinstance(result[0], dict)
    if not ok:
        got = jax.tree.map(describe, result) if isinstance(result, tuple) else describe(result)
        raise ContractError(
            model.name,
            f"{method} must return ({first}, state) with {'params and state' if method == 'init' else 'state'} "
            f"as dicts, got {got}. Fix: return {first}, state (state is {{}} for a model without state).",
        )


def _is_model_like(x: Any) -> bool:
    return all(callable(getattr(x, a, None)) for a in ("init", "apply")) and isinstance(getattr(x, "name", None), str)


def _check_binds(
    label: str, signature: inspect.Signature | None, inputs: tuple[Any, ...], keywords: dict[str, Any]
) -> None:
    """Raises ContractError if a function of this signature cannot take these inputs (a factory: ``block()``)."""
    if signature is None:
        return
    try:
        signature.bind(*inputs, **keywords)
    except TypeError as error:
        got = ", ".join(describe(x) for x in inputs)
        raise ContractError(
            label,
            f"{label}{signature} cannot take the inputs {got} ({error}). Fix: a function in a model takes the "
            f"previous layer's outputs; if {label} builds a layer, call it: {label}().",
        ) from None


def signature_of(f: Callable[..., Any]) -> inspect.Signature | None:
    """``inspect.signature(f)``, or None for a callable without one (some builtins)."""
    try:
        return inspect.signature(f)
    except (TypeError, ValueError):
        return None


def function(f: Callable[..., Any], name: str | None = None, check: Callable[..., Any] | None = None) -> Model:
    """Wraps a pure function ``f(*inputs, **keyword_inputs) -> outputs`` as a parameter-free model.

    Combinators wrap plain callables with it for you (``serial(fn.dense(8), jax.nn.relu)``). Keyword
    inputs that ``f`` names (``def pool(ys, *, lengths)``) reach it like any layer's.

    Args:
      f: a pure function of the inputs (no key, no train flag).
      name: the type name for positional naming; defaults to ``f.__name__``.
      check: optional validation called with the inputs at init and at apply (at trace time);
        it raises a ``LayerError`` (e.g. ``ShapeError(name, ...)``) for inputs ``f`` cannot take.

    Returns:
      A Model with ``params == state == {}``.

    Raises:
      ContractError: at trace time, if ``f`` returns a model (``f`` is a layer factory: call it).

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> double = fn.function(lambda x: 2 * x, name="double")
      >>> double.apply({}, {}, jnp.ones(2))[0]
      Array([2., 2.], dtype=float32)
    """
    label = name or getattr(f, "__name__", "function")
    if label == "<lambda>":
        label = "function"
    keywords, signature = keyword_inputs(f), signature_of(f)

    def init(key, *inputs, **keyword_inputs):
        del key, keyword_inputs
        if check is not None:
            check(*inputs)
        return {}, {}

    def apply(params, state, *inputs, key=None, train=False, **keyword_inputs):
        del key, train
        if params or state:
            got = f"got params {sorted(params)} / state {sorted(state)}"
            raise ParamsError(label, f"{label} has no params or state, {got}.")
        if check is not None:
            check(*inputs)
        _check_binds(label, signature, inputs, keyword_inputs)
        outputs = f(*inputs, **keyword_inputs)
        if _is_model_like(outputs):
            raise ContractError(
                label,
                f"{label}(inputs) returned a model ({outputs.name}), not arrays: {label} builds a layer. "
                f"Fix: call it once where the model is built, e.g. serial(..., {label}(), ...).",
            )
        return outputs, state

    announce(init, keywords)
    announce(apply, keywords)
    return Model(init, apply, label)


def output_spec(model: Model, params: Params, state: State, *inputs: Any, **keyword_inputs: Any) -> Any:
    """The ShapeDtypeStructs of ``model.apply``'s outputs (eval mode), computed without running it.

    Example:
      >>> import jax, funcnet as fn
      >>> x = jax.ShapeDtypeStruct((2, 5), "float32")
      >>> params, state = jax.eval_shape(fn.dense(3).init, jax.random.key(0), x)
      >>> output_spec(fn.dense(3), params, state, x).shape
      (2, 3)
    """

    def run(p, s, xs, kw):
        return model.apply(p, s, *xs, **kw)

    out, _ = jax.eval_shape(run, params, state, inputs, keyword_inputs)
    return out


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


def param_path(key_path: Sequence[Any]) -> str:
    """``"encoder/dense_0/kernel"`` for a ``jax.tree_util`` key path: how funcnet names a param everywhere.

    Example:
      >>> import jax
      >>> [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path({"a": {"b": 1}, "c": [2]})[0]]
      ['a/b', 'c/0']
    """
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in key_path)


def summary(model: Model, *inputs: Any, **keyword_inputs: Any) -> str:
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
    params, state = jax.eval_shape(
        lambda k, xs, kw: model.init(k, *xs, **kw), jax.random.key(0), inputs, keyword_inputs
    )
    outputs = output_spec(model, params, state, *inputs, **keyword_inputs)
    rows = [("path", "shape", "dtype", "count")]
    for kind, tree in (("params", params), ("state", state)):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            rows.append(
                (
                    f"{kind}/{param_path(path)}",
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
