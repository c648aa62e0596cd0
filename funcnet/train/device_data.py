"""In-memory training data kept on the devices: each step gathers its own batch there.

``fit`` over ``Batches`` of an ``ArrayDataset`` would otherwise slice every batch on the host and
hand it to the step, a noticeable part of a small model's step (``docs/design.md``). When the arrays are small
enough (``TrainerConfig.device_data_mib``), ``fit`` instead copies them to every device ONCE, and
then epochs' PLANS (``epoch_plan``, ``EpochPlans``): the example numbers of every batch,
``{"index": int32[S, B], "mask": [S, B]}`` for ``S`` steps of ``B`` examples, made as ``Batches``
makes its batches (seed, shuffle, padding), many epochs in one upload. The step picks its row of
the plan from its own step count (``state.step - offset``, ``batch_of_step``) and gathers the rows
on the device, so a batch is exactly the one the host would have sliced, a checkpoint's position
resumes the same way, and the host sends nothing per step: every step gets the same plan object.

An index batch sent every step would cost a host-to-device transfer per step instead.

Only single-process runs use it: with several processes each one holds its own rows of a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..core import Model
from .data import Batches, Position, in_memory
from .state import TrainState, check_divisible, replicated
from .step import LossFn, explain_other_mesh, train_step_fn

INDEX = "index"  # the key of the example numbers, in a plan and in the row a step takes from it
PLAN_STEPS = 2048  # an EpochPlans plan spans this many steps, in whole epochs (at least one) ...
PLAN_BYTES = 4 << 20  # ... and at most this many bytes per device (or one epoch)


def resident_arrays(train: Any, mesh: Mesh, max_mib: float) -> dict[str, jax.Array] | None:
    """``train``'s arrays replicated on every device of ``mesh``, or None when they stay on the host.

    They move to the devices when ``train`` is ``Batches`` of an ``ArrayDataset`` of plain numbers
    whose arrays take at most ``max_mib`` MiB together (one copy per device), in a single-process run.

    >>> from funcnet.train.data import ArrayDataset
    >>> from funcnet.train.state import data_mesh
    >>> train = Batches(ArrayDataset(x=np.zeros((8, 2), np.float32)), 4)
    >>> sorted(resident_arrays(train, data_mesh(), 1.0)), resident_arrays(train, data_mesh(), 0)
    (['x'], None)
    """
    if not in_memory(train) or jax.process_count() > 1:
        return None
    arrays = train.dataset.arrays
    if any(a.dtype.kind not in "biuf" for a in arrays.values()):  # objects, strings, complex: host only
        return None
    if sum(a.nbytes for a in arrays.values()) > max_mib * (1 << 20):
        return None
    return jax.device_put(dict(arrays), replicated(mesh))


def epoch_plan(train: Batches, epoch: int) -> dict[str, np.ndarray]:
    """The example numbers of ``train``'s batches in ``epoch``: ``{"index": int32[S, B], "mask": float32[S, B]}``.

    Row ``i`` is batch ``i`` of ``train.epoch(epoch)``: its examples, the padded last batch repeating
    its own examples with mask 0 (a ``"mask"`` array of the dataset is applied by ``gather_batch``).

    >>> from funcnet.train.data import ArrayDataset
    >>> train = Batches(ArrayDataset(x=np.arange(10, 15)), 2, seed=3)
    >>> plan = epoch_plan(train, 0)
    >>> [b["x"].tolist() for b in train.epoch(0)] == (plan["index"] + 10).tolist(), plan["mask"][-1].tolist()
    (True, [1.0, 0.0])
    """
    steps, size = train.steps_per_epoch, train.batch_size
    order = train.order(epoch).astype(np.int32)
    index = np.empty((steps, size), np.int32)
    mask = np.ones((steps, size), np.float32)
    full = min(steps, len(order) // size)
    index[:full] = order[: full * size].reshape(full, size)
    if full < steps:  # the last partial batch, padded as Batches pads it
        rest = order[full * size :]
        index[full] = np.resize(rest, size)
        mask[full, len(rest) :] = 0.0
    return {INDEX: index, "mask": mask}


class EpochPlans:
    """What ``fit`` hands its resident step, step by step from ``position``: plans of whole epochs.

    ``next()`` returns a plan on the devices, ``{"index", "mask", "offset"}``: the rows of
    ``epoch_plan`` for a run of consecutive epochs, and ``offset = state.step - row`` (the step trains
    on row ``state.step - offset``); it moves ``position`` on, as ``Batches.iterate`` does. ``step``
    is the step count of the state the first plan goes to. Every step gets the same object until the
    plan's epochs run out; then the next run of epochs is uploaded (each plan spans about
    ``PLAN_STEPS`` steps, and at most ``PLAN_BYTES`` bytes: an upload costs the host about as
    much as several steps of a small model, so one per epoch of 50 steps, as on fit.py's mlp, counts).

    >>> from funcnet.train.data import ArrayDataset
    >>> from funcnet.train.state import data_mesh
    >>> train = Batches(ArrayDataset(x=np.arange(24)), 8, shuffle=False)  # 3 steps an epoch
    >>> plans = EpochPlans(train, Position(0, 2), 7, data_mesh())
    >>> plan = next(plans)  # row 2 (the last of epoch 0) at step 7, then epoch 1's rows
    >>> plan["index"][2:4, :3].tolist(), int(plan["offset"]), plans.position
    ([[16, 17, 18], [0, 1, 2]], 5, Position(epoch=1, index=0))
    """

    def __init__(self, train: Batches, position: Position, step: int, mesh: Mesh):
        check_divisible(train.batch_size, mesh)
        self._train, self._mesh, self._step = train, mesh, step
        epoch, index = train.start(position)
        if index == train.steps_per_epoch:
            epoch, index = epoch + 1, 0
        self._position = Position(epoch, index)
        self._plan: dict[str, jax.Array] = {}
        self._plan_end = epoch  # the first epoch after the current plan's: the first next() uploads

    @property
    def position(self) -> Position:
        """The position of the next batch: save it, restart with ``EpochPlans(train, position, step, mesh)``."""
        return self._position

    def __iter__(self) -> EpochPlans:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        epoch, index = self._position
        if epoch == self._plan_end:
            self._plan = self._upload(epoch, offset=self._step - index)
        plan = self._plan
        self._step += 1
        index += 1
        if index == self._train.steps_per_epoch:
            epoch, index = epoch + 1, 0
        self._position = Position(epoch, index)
        return plan

    def _upload(self, epoch: int, offset: int) -> dict[str, jax.Array]:
        """The plan of epochs ``epoch`` to ``self._plan_end - 1`` on the devices, row 0 at step ``offset``."""
        train = self._train
        epoch_bytes = train.steps_per_epoch * train.batch_size * 8  # int32 index and float32 mask
        count = max(1, min(PLAN_STEPS // train.steps_per_epoch, PLAN_BYTES // epoch_bytes))
        self._plan_end = epoch + count
        plans = [epoch_plan(train, e) for e in range(epoch, self._plan_end)]
        plan = {k: np.concatenate([p[k] for p in plans]) for k in (INDEX, "mask")}
        plan["offset"] = np.int32(offset)
        rows = NamedSharding(self._mesh, PartitionSpec(None, "data"))
        return jax.device_put(plan, {INDEX: rows, "mask": rows, "offset": replicated(self._mesh)})

    def close(self) -> None:
        """Nothing to release (the same interface as ``funcnet.train.prefetch.Prefetcher``)."""


def batch_of_step(
    arrays: Mapping[str, jax.Array], plan: Mapping[str, jax.Array], step: jax.Array
) -> dict[str, jax.Array]:
    """Inside the step: the batch of row ``step - plan["offset"]`` of an ``EpochPlans`` plan (``gather_batch``)."""
    row = step - plan["offset"]
    indexed = {k: lax.dynamic_index_in_dim(plan[k], row, 0, keepdims=False) for k in (INDEX, "mask")}
    return gather_batch(arrays, indexed)


def gather_batch(arrays: Mapping[str, jax.Array], indexed: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The batch an index batch stands for: rows ``indexed["index"]`` of every array, and its mask.

    As ``Batches`` does on the host, a ``"mask"`` array of the dataset is multiplied into the batch's.
    Inside a jitted step whose index batch is sharded over the devices, each device gathers its own
    rows from its copy: no communication.

    >>> import jax.numpy as jnp
    >>> batch = gather_batch({"x": jnp.arange(5.0)}, {"index": jnp.array([4, 0]), "mask": jnp.array([1.0, 0.0])})
    >>> batch["x"].tolist(), batch["mask"].tolist()
    ([4.0, 0.0], [1.0, 0.0])
    """
    index = indexed[INDEX]
    batch = {name: jnp.take(array, index, axis=0, mode="clip") for name, array in arrays.items()}
    mask = indexed["mask"]
    batch["mask"] = mask * batch["mask"].astype(mask.dtype) if "mask" in batch else mask
    return batch


def make_resident_step(
    model: Model,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    arrays: Mapping[str, jax.Array],
    *,
    mesh: Mesh,
    **options: Any,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, Any]]:
    """``make_train_step``'s step over training arrays kept on the devices: ``step(state, plan)`` takes an
    ``EpochPlans`` plan and gathers its own batch (row ``state.step - offset``) inside the compiled step.

    ``arrays``: from ``resident_arrays``, replicated; they are arguments of the compiled step, not
    constants baked into it. ``options``: ``train_step_fn``'s (``inputs``, ``skip_nan_updates``, ...).
    """
    pure = train_step_fn(model, loss_fn, optimizer, **options)
    step = jax.jit(
        lambda state, plan, arrays: pure(state, batch_of_step(arrays, plan, state.step)),
        in_shardings=(replicated(mesh), None, replicated(mesh)),  # the plan comes placed (EpochPlans)
        out_shardings=replicated(mesh),
        donate_argnums=0,
    )

    def resident_step(state: TrainState, plan: Mapping[str, jax.Array]) -> tuple[TrainState, Any]:
        try:
            return step(state, plan, arrays)
        except ValueError as error:  # only on failure: nothing is checked per step
            explain_other_mesh(error, mesh)
            raise

    resident_step.jitted = step  # for inspection: .lower(), ._cache_size()
    return resident_step
