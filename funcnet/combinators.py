"""Combinators: models built from models.

Children are named by keyword (``serial(embed=..., head=...)``) or by type and position
(``dense_0``, ``dense_1``); params and state are dicts keyed by those names, leaving out children
that have none. Each child gets ``fold_in(key, hash(name))`` as its key and the ``train`` flag.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .children import (
    apply_child,
    check_children,
    child_output_spec,
    forwarding,
    init_child,
    init_children,
    keywords_for,
    name_children,
    put,
)
from .core import Model, output_spec
from .errors import ShapeError, describe


def serial(*models: Any, **named: Any) -> Model:
    """Applies models one after another: the output of each is the input of the next.

    The first child receives all inputs; every later child receives the previous output as its
    one argument (a tuple stays one tuple: use ``parallel`` to split it). Keyword inputs
    (``lengths``, ``mask``, ...) go to every child that takes them. Plain callables
    (``jax.nn.relu``) are wrapped with ``function``.

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> mlp = fn.serial(hidden=fn.dense(100), act=jax.nn.relu, out=fn.dense(10))
      >>> params, state = mlp.init(jax.random.key(0), jnp.ones((64, 1000)))
      >>> sorted(params)
      ['hidden', 'out']
      >>> mlp.apply(params, state, jnp.ones((64, 1000)))[0].shape
      (64, 10)
    """
    children = name_children(models, named)

    def init(key, *inputs, **keywords):
        params, state = {}, {}
        for i, (name, model) in enumerate(children.items()):
            p, s = init_child(name, model, key, *inputs, **keywords)
            put(params, name, p)
            put(state, name, s)
            if i + 1 < len(children):
                inputs = (child_output_spec(name, model, p, s, *inputs, **keywords),)
        return params, state

    def apply(params, state, *inputs, key=None, train=False, **keywords):
        check_children("serial", params, list(children))
        check_children("serial", state, list(children), "state")
        new_state = {}
        for name, model in children.items():
            out, s = apply_child(name, model, params, state, *inputs, key=key, train=train, **keywords)
            put(new_state, name, s)
            inputs = (out,)
        return inputs[0], new_state

    return forwarding(Model(init, apply, "serial"), children.values())


def _split_inputs(layer: str, inputs: tuple[Any, ...], n: int) -> tuple[Any, ...]:
    if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)):
        inputs = tuple(inputs[0])
    if len(inputs) != n:
        raise ShapeError(layer, f"expected {n} inputs (one per child), got {len(inputs)}.")
    return inputs


def parallel(*models: Any, **named: Any) -> Model:
    """Applies the i-th child to the i-th input; returns a tuple of outputs.

    Inputs may be given as separate arguments or as one tuple (the output of ``fanout``). Keyword
    inputs go to every child that takes them.

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> model = fn.parallel(fn.dense(2), fn.dense(3))
      >>> xs = (jnp.ones((1, 4)), jnp.ones((1, 5)))
      >>> params, state = model.init(jax.random.key(0), *xs)
      >>> [y.shape for y in model.apply(params, state, *xs)[0]]
      [(1, 2), (1, 3)]
    """
    children = name_children(models, named)

    def init(key, *inputs, **keywords):
        inputs = _split_inputs("parallel", inputs, len(children))
        params, state = {}, {}
        for (name, model), x in zip(children.items(), inputs, strict=True):
            p, s = init_child(name, model, key, x, **keywords)
            put(params, name, p)
            put(state, name, s)
        return params, state

    def apply(params, state, *inputs, key=None, train=False, **keywords):
        inputs = _split_inputs("parallel", inputs, len(children))
        check_children("parallel", params, list(children))
        check_children("parallel", state, list(children), "state")
        outputs, new_state = [], {}
        for (name, model), x in zip(children.items(), inputs, strict=True):
            out, s = apply_child(name, model, params, state, x, key=key, train=train, **keywords)
            outputs.append(out)
            put(new_state, name, s)
        return tuple(outputs), new_state

    return forwarding(Model(init, apply, "parallel"), children.values())


def fanout(*models: Any, **named: Any) -> Model:
    """Applies every child to the same inputs (and keyword inputs); returns a tuple of outputs.

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> model = fn.fanout(mean=fn.dense(2), log_std=fn.dense(2))
      >>> params, state = model.init(jax.random.key(0), jnp.ones((1, 4)))
      >>> [y.shape for y in model.apply(params, state, jnp.ones((1, 4)))[0]]
      [(1, 2), (1, 2)]
    """
    children = name_children(models, named)

    def init(key, *inputs, **keywords):
        return init_children(children, key, *inputs, **keywords)

    def apply(params, state, *inputs, key=None, train=False, **keywords):
        check_children("fanout", params, list(children))
        check_children("fanout", state, list(children), "state")
        outputs, new_state = [], {}
        for name, model in children.items():
            out, s = apply_child(name, model, params, state, *inputs, key=key, train=train, **keywords)
            outputs.append(out)
            put(new_state, name, s)
        return tuple(outputs), new_state

    return forwarding(Model(init, apply, "fanout"), children.values())


def _one_input(layer: str, inputs: tuple[Any, ...]) -> Any:
    if len(inputs) != 1:
        got = ", ".join(describe(x) if x is not None else "None" for x in inputs)
        raise ShapeError(
            layer,
            f"takes one input x, got {len(inputs)}: ({got}). Fix: pass the others as keyword inputs, e.g. "
            "apply(params, state, x, mask=mask) or lengths=lengths, which reach the layers that take them.",
        )
    return inputs[0]


def residual(*models: Any, **named: Any) -> Model:
    """``x + serial(*models)(x)``: a skip connection around one or more models.

    Keyword inputs go to the wrapped models that take them: a pre-norm attention block over padded
    sequences is ``residual(layer_norm(), multi_head_attention(4))`` applied with ``lengths=``.

    Raises:
      ShapeError: at init, if the wrapped models change the shape of their input.

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> block = fn.residual(fn.dense(4), jax.nn.relu)
      >>> params, state = block.init(jax.random.key(0), jnp.ones((2, 4)))
      >>> block.apply(params, state, jnp.ones((2, 4)))[0].shape
      (2, 4)
    """
    body = serial(*models, **named)

    def init(key, *inputs, **keywords):
        x = _one_input("residual", inputs)
        params, state = body.init(key, x, **keywords)
        out = output_spec(body, params, state, x, **keywords)
        if getattr(out, "shape", None) != tuple(x.shape):
            raise ShapeError(
                "residual",
                f"the wrapped model must keep its input's shape: input {describe(x)}, output "
                f"{describe(out)}. Fix: make the last layer output {x.shape[-1]} features.",
            )
        return params, state

    def apply(params, state, *inputs, key=None, train=False, **keywords):
        x = _one_input("residual", inputs)
        y, state = body.apply(params, state, x, key=key, train=train, **keywords)
        return x + y, state

    return forwarding(Model(init, apply, "residual"), [body])


def stack(model: Model, n: int) -> Model:
    """``n`` copies of ``model`` with separate params, applied in turn under ``lax.scan``.

    Params and state are the model's own, with a leading axis of size ``n`` (layer ``i`` is
    ``tree.map(lambda a: a[i], params)``). Layer ``i`` gets ``fold_in(key, i)`` as its key. One
    compiled body serves every layer, so a 48-layer stack compiles as fast as one layer.

    Raises:
      ShapeError: at init, if the model's output shape differs from its input shape.

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> deep = fn.stack(fn.residual(fn.dense(8), fn.relu()), 4)
      >>> params, state = deep.init(jax.random.key(0), jnp.ones((2, 8)))
      >>> params["dense_0"]["kernel"].shape
      (4, 8, 8)
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"stack needs n >= 1 layers, got {n!r}")

    def layer_keys(key):
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))

    def init(key, *inputs, **keywords):
        x = _one_input("stack", inputs)
        params, state = jax.vmap(lambda k: model.init(k, x, **keywords_for(model.init, keywords)))(layer_keys(key))
        one = jax.tree.map(lambda a: a[0], (params, state))
        out = output_spec(model, *one, x, **keywords_for(model.apply, keywords))
        if getattr(out, "shape", None) != tuple(x.shape) or out.dtype != x.dtype:
            raise ShapeError(
                "stack",
                f"a stacked model must map its input to an output of the same shape and dtype: "
                f"input {describe(x)}, output {describe(out)}.",
            )
        return params, state

    def apply(params, state, *inputs, key=None, train=False, **keywords):
        x = _one_input("stack", inputs)
        taken = keywords_for(model.apply, keywords)

        def body(h, layer):
            p, s, k = layer
            h, s = model.apply(p, s, h, key=k, train=train, **taken)
            return h, s

        keys = None if key is None else layer_keys(key)
        return lax.scan(body, x, (params, state, keys))

    return forwarding(Model(init, apply, "stack"), [model])
