"""TrainState: the one thing that is stepped, checkpointed and restored."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..core import Model
from .data import BatchSplitError


class TrainState(NamedTuple):
    """Everything a training run needs to continue exactly where it stopped.

    Attributes:
      step: int32[] number of train steps taken so far.
      params: the model's params (nested dict).
      model_state: the model's state (batch statistics; ``{}`` for most models).
      opt_state: the optax optimizer state.
      key: uint32 raw data of the base PRNG key (``jax.random.key_data``; plain arrays checkpoint
        everywhere); step ``i`` uses ``fold_in(wrap_key_data(key), i)``, so randomness does not
        depend on where a run was interrupted.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    key: jax.Array


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices`` (all devices of all processes by default).

    >>> data_mesh().axis_names
    ('data',)
    """
    return Mesh(jax.devices() if devices is None else devices, ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of a value copied on every device of ``mesh``.

    >>> replicated(data_mesh()).spec
    P()
    """
    return NamedSharding(mesh, PartitionSpec())


def check_divisible(examples: int, mesh: Mesh) -> None:
    """Raises BatchSplitError (a ValueError) unless a batch of ``examples`` splits evenly over the devices of ``mesh``.

    >>> check_divisible(16, data_mesh(jax.devices()[:1]))
    """
    devices = mesh.size
    if examples % devices:
        raise BatchSplitError(
            f"a batch of {examples} examples cannot be split evenly over {devices} devices. Fix: make the batch size a "
            f"multiple of {devices}; funcnet.train.data.Batches pads partial batches with masked examples."
        )


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch split along its first axis over the mesh's ``"data"`` axis.

    >>> batch_sharded(data_mesh()).spec
    P('data',)
    """
    return NamedSharding(mesh, PartitionSpec("data"))


def create_train_state(
    model: Model,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    *example_inputs: Any,
    mesh: Mesh | None = None,
) -> TrainState:
    """Initializes params, model state and optimizer state, replicated over ``mesh``.

    Initialization runs under ``jax.jit`` with replicated outputs, so the state is made of
    global arrays that every process of a multi-host run holds identically.

    Args:
      model: the model to train.
      optimizer: an optax transformation.
      key: the run's base key (split into an init key and the steps' base key).
      *example_inputs: arrays or ShapeDtypeStructs of one batch of model inputs.
      mesh: devices to replicate over (all by default).

    Example:
      >>> import jax, jax.numpy as jnp, optax, funcnet as fn
      >>> state = create_train_state(fn.dense(2), optax.sgd(0.1), jax.random.key(0), jnp.ones((8, 3)))
      >>> int(state.step), state.params["kernel"].shape
      (0, (3, 2))
    """
    mesh = mesh or data_mesh()
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    init_key, run_key = jax.random.split(key)
    specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in example_inputs]

    def init():
        params, model_state = model.init(init_key, *specs)
        opt_state = optimizer.init(params)
        return TrainState(jnp.zeros((), jnp.int32), params, model_state, opt_state, jax.random.key_data(run_key))

    return jax.jit(init, out_shardings=replicated(mesh))()


def step_key(state: TrainState) -> jax.Array:
    """The PRNG key of the step about to run: ``fold_in(base_key, state.step)``.

    >>> import jax, jax.numpy as jnp, optax, funcnet as fn
    >>> state = create_train_state(fn.dense(2), optax.sgd(0.1), jax.random.key(0), jnp.ones((8, 3)))
    >>> step_key(state).shape
    ()
    """
    return jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)


def abstract_train_state(
    model: Model,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    *example_inputs: Any,
    mesh: Mesh | None = None,
) -> TrainState:
    """The ShapeDtypeStructs (with shardings) of ``create_train_state``'s result: what Orbax restores into.

    >>> import jax, jax.numpy as jnp, optax, funcnet as fn
    >>> abstract = abstract_train_state(fn.dense(2), optax.sgd(0.1), jax.random.key(0), jnp.ones((8, 3)))
    >>> abstract.params["kernel"].shape
    (3, 2)
    """
    mesh = mesh or data_mesh()
    shapes = jax.eval_shape(lambda: create_train_state(model, optimizer, key, *example_inputs, mesh=mesh))
    sharding = replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
