"""Data-dependent control flow compiled once: ``cond`` and ``switch`` over ``lax.cond``/``lax.switch``.

Every branch is initialized (its params always exist); at apply time only the taken branch runs
on the device, and gradients flow through the taken branch only. The untaken branches' state
passes through unchanged. All branches must return outputs of the same shapes and dtypes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax import lax

from ..children import apply_child, check_children, forwarding, init_children, name_children
from ..core import Model
from ..errors import ShapeError


def _branch_fn(name: str, model: Model, train: bool):
    def run(operands):
        params, state, inputs, key, keywords = operands
        out, child_state = apply_child(name, model, params, state, *inputs, key=key, train=train, **keywords)
        new_state = dict(state)
        if child_state:
            new_state[name] = child_state
        return out, new_state

    return run


def _branched(layer: str, select: Callable[..., Any], children: dict[str, Model], is_cond: bool) -> Model:
    def init(key, *inputs, **keywords):
        return init_children(children, key, *inputs, **keywords)

    def apply(params, state, *inputs, key=None, train=False, **keywords):
        check_children(layer, params, list(children))
        check_children(layer, state, list(children), "state")
        branches = [_branch_fn(name, model, train) for name, model in children.items()]
        operands = (params, state, inputs, key, keywords)
        selector = select(*inputs)
        try:
            if is_cond:
                return lax.cond(selector, branches[0], branches[1], operands)
            return lax.switch(selector, branches, operands)
        except TypeError as error:
            shapes = {
                name: jax.tree.map(lambda s: f"{s.shape} {s.dtype}", jax.eval_shape(b, operands)[0])
                for name, b in zip(children, branches, strict=True)
            }
            raise ShapeError(
                layer, f"every branch must return outputs of the same shapes and dtypes, got {shapes}."
            ) from error

    return forwarding(Model(init, apply, layer), children.values())


def cond(pred_fn: Callable[..., Any], true_model: Model, false_model: Model) -> Model:
    """Applies ``true_model`` where ``pred_fn(*inputs)`` is True, else ``false_model``.

    The predicate is a scalar boolean computed from the inputs (traced, so it may depend on
    their values). Params are ``{"true": ..., "false": ...}``. Under ``jax.vmap`` the predicate
    becomes a batch of booleans and JAX runs both branches and selects, which is still correct.

    Args:
      pred_fn: ``(*inputs) -> bool[]``.
      true_model: the model applied when the predicate holds.
      false_model: the model applied otherwise; same output shapes as ``true_model``.

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> model = fn.cond(lambda x: x.sum() > 0, fn.function(jnp.exp), fn.function(jnp.negative))
      >>> params, state = model.init(jax.random.key(0), jnp.ones(2))
      >>> model.apply(params, state, -jnp.ones(2))[0]
      Array([1., 1.], dtype=float32)
    """
    children = name_children([], {"true": true_model, "false": false_model})
    return _branched("cond", pred_fn, children, is_cond=True)


def switch(index_fn: Callable[..., Any], *branches: Model, **named: Model) -> Model:
    """Applies branch number ``index_fn(*inputs)`` (clamped into range), via ``lax.switch``.

    Branches are named like ``serial``'s children (``dense_0``, ``dense_1`` or keywords), and
    numbered in the order given.

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> model = fn.switch(lambda x, i: i, fn.function(lambda x, i: x), fn.function(lambda x, i: 10 * x))
      >>> params, state = model.init(jax.random.key(0), jnp.ones(2), 0)
      >>> model.apply(params, state, jnp.ones(2), 1)[0]
      Array([10., 10.], dtype=float32)
    """
    children = name_children(branches, named)
    if len(children) < 2:
        raise ValueError(f"switch needs at least two branches, got {len(children)}")
    return _branched("switch", index_fn, children, is_cond=False)
