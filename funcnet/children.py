"""What a combinator does with its children: names, keys, calls that keep the contract, keyword inputs.

These are the helpers funcnet's own combinators are built from; a combinator of your own uses the
same ones::

    def twice(model):  # apply model, then the same model (shared params) again
        def init(key, x, **keywords):
            return init_child("inner", model, key, x, **keywords)

        def apply(params, state, x, *, key=None, train=False, **keywords):
            y, s = apply_child("inner", model, {"inner": params}, {"inner": state}, x, key=key, train=train, **keywords)
            ...

- ``name_children`` names positional children by type and position (``dense_0``) and wraps plain
  callables with ``function``;
- ``init_child`` / ``apply_child`` call a child with its own key (``child_key``), the keyword
  inputs it takes, contract checks, and its name prepended to the path of any error;
- ``forwarding`` makes a combinator announce and check the keyword inputs its children take;
- ``output_spec`` (``funcnet.core``) gives a child's output shapes, to initialize the next child.
"""

from __future__ import annotations

import difflib
import inspect
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax

from .core import (
    Model,
    Params,
    State,
    announce,
    check_returns_pair,
    check_takes_key_and_train,
    function,
    keyword_inputs,
    output_spec,
    signature_of,
)
from .errors import ContractError, LayerError, ParamsError, prefix_path


def name_hash(name: str) -> int:
    """A stable 31-bit hash of a child's name (the same in every process and Python version).

    Example:
      >>> name_hash("dense_0") == name_hash("dense_0") != name_hash("dense_1")
      True
    """
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


def child_key(key: jax.Array | None, name: str) -> jax.Array | None:
    """The key a combinator gives the child called ``name``: ``fold_in(key, name_hash(name))``.

    Example:
      >>> import jax
      >>> child_key(None, "dropout_0") is None
      True
    """
    return None if key is None else jax.random.fold_in(key, name_hash(name))


def _returns_a_model(f: Callable[..., Any]) -> bool:
    """Whether ``f`` is a funcnet factory (``fn.relu``, ``fn.dense``): it builds a model, it is not one."""
    if not getattr(f, "__module__", "").startswith("funcnet."):
        return False
    annotation = getattr(f, "__annotations__", {}).get("return")
    return annotation in ("Model", "Cell", "TreeCell", Model)


def as_model(child: Any, where: str) -> Model:
    """``child`` itself if it is a model, ``function(child)`` for a plain callable; TypeError otherwise."""
    if isinstance(child, Model):
        return child
    if hasattr(child, "initial_carry"):
        raise TypeError(
            f"{where}: {child.name!r} is a recurrent cell (one step, (carry, x) -> (carry, y)), not a model of "
            f"sequences. Fix: run it over [batch, time, features] with rnn(cell)."
        )
    if hasattr(child, "leaf") and hasattr(child, "node"):
        raise TypeError(f"{where}: {child.name!r} is a tree cell. Fix: run it over batches of trees with tree(cell).")
    if callable(child) and _returns_a_model(child):
        parameters = (signature_of(child) or inspect.Signature()).parameters.values()
        required = any(p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD for p in parameters)
        call = f"{child.__name__}({'...' if required else ''})"
        raise TypeError(f"{where}: {child.__name__} is a layer factory, not a layer. Fix: call it: {call}.")
    if callable(child):
        return function(child)
    raise TypeError(f"{where}: expected a funcnet Model or a function of arrays, got {type(child).__name__} {child!r}.")


def name_children(models: Sequence[Any], named: Mapping[str, Any]) -> dict[str, Model]:
    """Names positional children by type and position (``dense_0``, ``dense_1``) then adds named ones.

    Plain callables (``jax.nn.relu``, ``lambda x: x * 2``) become parameter-free models
    (``function``), named after the callable (``relu_0``; ``function_0`` for a lambda).

    Example:
      >>> import jax, funcnet as fn
      >>> list(name_children([fn.dense(2), jax.nn.relu, fn.dense(1)], {"head": fn.dense(1)}))
      ['dense_0', 'relu_0', 'dense_1', 'head']
    """
    children: dict[str, Model] = {}
    counts: dict[str, int] = {}
    for child in models:
        model = as_model(child, f"child {len(children)}")
        index = counts.get(model.name, 0)
        counts[model.name] = index + 1
        children[f"{model.name}_{index}"] = model
    for name, child in named.items():
        model = as_model(child, f"child {name!r}")
        if name in children:
            raise ValueError(f"child name {name!r} is used twice; positional children are named {list(children)}")
        if "/" in name:
            raise ValueError(f"child name {name!r} may not contain '/'")
        children[name] = model
    if not children:
        raise ValueError("a combinator needs at least one child model")
    return children


def keywords_for(f: Callable[..., Any], keywords: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword inputs of ``keywords`` that ``f`` takes (all of them if it takes ``**kwargs``)."""
    if not keywords:
        return {}
    takes = keyword_inputs(f)
    return dict(keywords) if takes is None else {k: v for k, v in keywords.items() if k in takes}


def init_child(name: str, model: Model, key: jax.Array, *inputs: Any, **keywords: Any) -> tuple[Params, State]:
    """``model.init`` with the child's key and the keyword inputs it takes; its name prefixes any error's path.

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> params, state = init_child("head", fn.dense(2), jax.random.key(0), jnp.ones((1, 3)), lengths=None)
      >>> params["kernel"].shape
      (3, 2)
    """
    try:
        check_takes_key_and_train(model)
        result = model.init(child_key(key, name), *inputs, **keywords_for(model.init, keywords))
        check_returns_pair(model, result, "init")
        return result
    except LayerError as error:
        raise prefix_path(error, name) from None


def apply_child(
    name: str,
    model: Model,
    params: Params,
    state: State,
    *inputs: Any,
    key: jax.Array | None = None,
    train: bool = False,
    **keywords: Any,
) -> tuple[Any, State]:
    """``model.apply`` on the child's slice ``params[name]``/``state[name]``, with its key, ``train`` and keywords.

    The keyword inputs the child does not take are left out. A child whose apply lacks ``key``/``train``
    or does not return ``(outputs, state)`` raises ContractError; every LayerError gets ``name`` on its path.

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> params = {"head": fn.dense(2).init(jax.random.key(0), jnp.ones((1, 3)))[0]}
      >>> y, state = apply_child("head", fn.dense(2), params, {}, jnp.ones((1, 3)), train=True)
      >>> y.shape, state
      ((1, 2), {})
    """
    try:
        check_takes_key_and_train(model)
        result = model.apply(
            params.get(name, {}),
            state.get(name, {}),
            *inputs,
            key=child_key(key, name),
            train=train,
            **keywords_for(model.apply, keywords),
        )
        check_returns_pair(model, result, "apply")
        return result
    except LayerError as error:
        raise prefix_path(error, name) from None


def child_output_spec(name: str, model: Model, params: Params, state: State, *inputs: Any, **keywords: Any) -> Any:
    """``output_spec`` of a child, with its keyword inputs and its name on the path of any error."""
    try:
        return output_spec(model, params, state, *inputs, **keywords_for(model.apply, keywords))
    except LayerError as error:
        raise prefix_path(error, name) from None


def init_children(children: Mapping[str, Model], key: jax.Array, *inputs: Any, **keywords: Any) -> tuple[Params, State]:
    """Initializes every child on the same inputs; returns their params and state by name."""
    params, state = {}, {}
    for name, model in children.items():
        p, s = init_child(name, model, key, *inputs, **keywords)
        put(params, name, p)
        put(state, name, s)
    return params, state


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


def children_keywords(children: Iterable[Any]) -> frozenset[str] | None:
    """The keyword inputs any of ``children`` takes in init or apply (None: any, some child takes ``**kwargs``)."""
    names: set[str] = set()
    for model in children:
        for f in (model.init, model.apply):
            takes = keyword_inputs(f)
            if takes is None:
                return None
            names |= takes
    return frozenset(names)


def _refuse(layer: str, keywords: Mapping[str, Any], takes: frozenset[str] | None) -> None:
    unknown = sorted(set(keywords) - takes) if takes is not None else []
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(takes), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ContractError(
            layer,
            f"no layer of this model takes the keyword input {unknown[0]!r}; its layers take "
            f"{sorted(takes) or 'none'}.{hint} Fix: give keyword inputs only to models with a layer that uses them.",
        )


def forwarding(model: Model, children: Iterable[Any]) -> Model:
    """``model`` announcing (in its signature) and checking the keyword inputs its ``children`` take.

    ``model.init``/``model.apply`` take ``**keywords`` and hand them to their children with
    ``init_child``/``apply_child``. The returned model refuses a keyword that no child takes (a typo
    would otherwise be ignored), and ``keyword_inputs`` of it lists the children's.

    Example:
      >>> import funcnet as fn
      >>> sorted(fn.core.keyword_inputs(fn.serial(fn.dense(4), fn.multi_head_attention(2)).apply))
      ['context', 'lengths', 'mask']
    """
    takes = children_keywords(children)

    def init(key, *inputs, **keywords):
        _refuse(model.name, keywords, takes)
        return model.init(key, *inputs, **keywords)

    def apply(params, state, *inputs, key=None, train=False, **keywords):
        _refuse(model.name, keywords, takes)
        return model.apply(params, state, *inputs, key=key, train=train, **keywords)

    announce(init, takes)
    announce(apply, takes)
    return Model(init, apply, model.name)
