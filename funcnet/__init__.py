"""funcnet: a functional deep-learning library on JAX.

A model is a pair of pure functions over pytrees::

    params, state = model.init(key, *example_inputs)      # shapes inferred from the inputs
    outputs, state = model.apply(params, state, *inputs, key=None, train=False)

Nothing is hidden: ``params`` and ``state`` are nested dicts with readable names, so
``jax.grad``, ``jax.jit`` and ``jax.vmap`` compose with ``apply`` directly.

A tour
------

Build a model from layer factories and combinators::

    >>> import jax, jax.numpy as jnp, optax, funcnet as fn
    >>> model = fn.serial(hidden=fn.dense(100), act=fn.relu(), out=fn.dense(10))
    >>> x = jnp.ones((64, 1000))
    >>> params, state = model.init(jax.random.key(0), x)
    >>> jax.tree.map(jnp.shape, params)["hidden"]
    {'bias': (100,), 'kernel': (1000, 100)}

Train it with optax in a plain jitted step::

    >>> optimizer = optax.adam(1e-3)
    >>> opt_state = optimizer.init(params)
    >>> @jax.jit
    ... def step(params, opt_state, x, y):
    ...     def loss(p):
    ...         return fn.losses.mse(model.apply(p, state, x)[0], y)
    ...     value, grads = jax.value_and_grad(loss)(params)
    ...     updates, opt_state = optimizer.update(grads, opt_state)
    ...     return optax.apply_updates(params, updates), opt_state, value
    >>> params, opt_state, loss = step(params, opt_state, x, jnp.zeros((64, 10)))

Per-example gradients (differential privacy, influence functions) are one ``vmap`` away,
because a model is only functions::

    >>> def example_loss(p, xi, yi):
    ...     return fn.losses.mse(model.apply(p, state, xi[None])[0], yi[None])
    >>> per_example = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, x, jnp.zeros((64, 10)))
    >>> per_example["out"]["kernel"].shape
    (64, 100, 10)

Mistakes are reported at trace time with the layer's path::

    >>> try:
    ...     model.apply(params, state, jnp.ones((64, 999)))
    ... except fn.ShapeError as e:
    ...     print(str(e)[:49])
    at hidden: expected last axis 1000, got (64, 999)

What is where
-------------

- The contract and utilities: ``Model``, ``function``, ``output_spec``, ``param_count``, ``summary``.
  Keyword inputs (``lengths``, ``mask``) reach every child whose ``apply`` names them.
- Combinators: ``serial``, ``parallel``, ``fanout``, ``residual``, ``stack``, ``cond``, ``switch``; they
  take plain callables (``jax.nn.relu``) as children. Your own: ``init_child``, ``apply_child``,
  ``forwarding`` (``funcnet.children``).
- Recurrence (``lax.scan``): cells ``lstm_cell``, ``gru_cell``, ``simple_rnn_cell``; ``rnn`` (lengths,
  reverse), ``bidirectional``, ``stacked_rnn``.
- Trees (compiled once, batched): ``funcnet.parse_trees`` parses PTB trees, ``funcnet.tree_schedule`` list-schedules
  batches into fixed-width steps; ``tree(cell)`` runs ``binary_tree_lstm_cell``, ``child_sum_tree_lstm_cell`` or
  ``tree_rnn_cell`` bottom-up under ``lax.scan``; ``node_scan`` is the node-by-node oracle.
- Layers (``funcnet.layers``): ``dense``, ``conv``/``conv1d``/``conv2d``, ``max_pool``/``avg_pool``,
  ``embed`` (``deferred=True``: ``Embedded`` rows an LSTM folds into its input projection),
  ``layer_norm``/``rms_norm``/``batch_norm``, ``dropout``, ``multi_head_attention``,
  ``flatten``/``reshape`` and activations (``relu``, ``gelu``, ``tanh``, ...).
- ``funcnet.initializers``; ``funcnet.losses`` and ``funcnet.metrics`` with ``reduction=`` (``"per_example"`` for
  the engine: ``losses.per_example(losses.mse)``).
- Errors: ``ShapeError``, ``DTypeError``, ``ParamsError``, ``KeyMissingError``, ``ContractError`` (all ``LayerError``).
- Training: ``funcnet.train`` (``fit``, pure data-parallel steps, checkpoints, configs; the ``funcnet`` command).
- Examples: ``python -m funcnet.experiments.rnn`` (character LSTM language model, the main job),
  ``python -m funcnet.experiments.mlp``, ``python -m funcnet.experiments.regression``.
"""

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562), so that importing one part of funcnet (the deployment runtime,
# funcnet.deploy) does not import the layers, the trainer or optax. Each name maps to the module holding it;
# a name mapped to itself is a submodule.
_LAZY: dict[str, str] = {
    "apply_child": "children",
    "children": "children",
    "forwarding": "children",
    "init_child": "children",
    "name_children": "children",
    "fanout": "combinators",
    "parallel": "combinators",
    "residual": "combinators",
    "serial": "combinators",
    "stack": "combinators",
    "core": "core",
    "function": "core",
    "Model": "core",
    "output_spec": "core",
    "param_count": "core",
    "summary": "core",
    "ContractError": "errors",
    "DataError": "errors",
    "DTypeError": "errors",
    "KeyMissingError": "errors",
    "LayerError": "errors",
    "ParamsError": "errors",
    "ShapeError": "errors",
    "initializers": "initializers",
    "avg_pool": "layers",
    "batch_norm": "layers",
    "bidirectional": "layers",
    "binary_tree_lstm_cell": "layers",
    "causal_mask": "layers",
    "Cell": "layers",
    "child_sum_tree_lstm_cell": "layers",
    "combine_masks": "layers",
    "cond": "layers",
    "conv": "layers",
    "conv1d": "layers",
    "conv2d": "layers",
    "dense": "layers",
    "dropout": "layers",
    "elu": "layers",
    "embed": "layers",
    "Embedded": "layers",
    "flatten": "layers",
    "gelu": "layers",
    "global_avg_pool": "layers",
    "gru_cell": "layers",
    "layer_norm": "layers",
    "leaky_relu": "layers",
    "log_softmax": "layers",
    "lstm_cell": "layers",
    "LSTMCarry": "layers",
    "max_pool": "layers",
    "multi_head_attention": "layers",
    "node_scan": "layers",
    "padding_mask": "layers",
    "relu": "layers",
    "reshape": "layers",
    "reverse_sequences": "layers",
    "rms_norm": "layers",
    "rnn": "layers",
    "sigmoid": "layers",
    "silu": "layers",
    "simple_rnn_cell": "layers",
    "softmax": "layers",
    "softplus": "layers",
    "stacked_rnn": "layers",
    "switch": "layers",
    "tanh": "layers",
    "tree": "layers",
    "tree_rnn_cell": "layers",
    "TreeCarry": "layers",
    "TreeCell": "layers",
    "losses": "losses",
    "metrics": "metrics",
}

if TYPE_CHECKING:  # what type checkers and editors see; at run time the names come from __getattr__
    from . import children as children
    from . import core as core
    from . import initializers as initializers
    from . import losses as losses
    from . import metrics as metrics
    from .children import apply_child as apply_child
    from .children import forwarding as forwarding
    from .children import init_child as init_child
    from .children import name_children as name_children
    from .combinators import fanout as fanout
    from .combinators import parallel as parallel
    from .combinators import residual as residual
    from .combinators import serial as serial
    from .combinators import stack as stack
    from .core import Model as Model
    from .core import function as function
    from .core import output_spec as output_spec
    from .core import param_count as param_count
    from .core import summary as summary
    from .errors import ContractError as ContractError
    from .errors import DataError as DataError
    from .errors import DTypeError as DTypeError
    from .errors import KeyMissingError as KeyMissingError
    from .errors import LayerError as LayerError
    from .errors import ParamsError as ParamsError
    from .errors import ShapeError as ShapeError
    from .layers import Cell as Cell
    from .layers import Embedded as Embedded
    from .layers import LSTMCarry as LSTMCarry
    from .layers import TreeCarry as TreeCarry
    from .layers import TreeCell as TreeCell
    from .layers import avg_pool as avg_pool
    from .layers import batch_norm as batch_norm
    from .layers import bidirectional as bidirectional
    from .layers import binary_tree_lstm_cell as binary_tree_lstm_cell
    from .layers import causal_mask as causal_mask
    from .layers import child_sum_tree_lstm_cell as child_sum_tree_lstm_cell
    from .layers import combine_masks as combine_masks
    from .layers import cond as cond
    from .layers import conv as conv
    from .layers import conv1d as conv1d
    from .layers import conv2d as conv2d
    from .layers import dense as dense
    from .layers import dropout as dropout
    from .layers import elu as elu
    from .layers import embed as embed
    from .layers import flatten as flatten
    from .layers import gelu as gelu
    from .layers import global_avg_pool as global_avg_pool
    from .layers import gru_cell as gru_cell
    from .layers import layer_norm as layer_norm
    from .layers import leaky_relu as leaky_relu
    from .layers import log_softmax as log_softmax
    from .layers import lstm_cell as lstm_cell
    from .layers import max_pool as max_pool
    from .layers import multi_head_attention as multi_head_attention
    from .layers import node_scan as node_scan
    from .layers import padding_mask as padding_mask
    from .layers import relu as relu
    from .layers import reshape as reshape
    from .layers import reverse_sequences as reverse_sequences
    from .layers import rms_norm as rms_norm
    from .layers import rnn as rnn
    from .layers import sigmoid as sigmoid
    from .layers import silu as silu
    from .layers import simple_rnn_cell as simple_rnn_cell
    from .layers import softmax as softmax
    from .layers import softplus as softplus
    from .layers import stacked_rnn as stacked_rnn
    from .layers import switch as switch
    from .layers import tanh as tanh
    from .layers import tree as tree
    from .layers import tree_rnn_cell as tree_rnn_cell


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:  # any other submodule (fn.layers, fn.train) is imported on first use too
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'funcnet' has no attribute {name!r}")
        module = name
    loaded = importlib.import_module(f".{module}", __name__)
    value = loaded if module == name else getattr(loaded, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:  # the public names (and dunders), as before the names became lazy
    return sorted({name for name in globals() if name.startswith("__")} | set(_LAZY))


__version__ = "0.1.0"

__all__ = sorted(_LAZY, key=str.lower)
