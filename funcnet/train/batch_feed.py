"""How ``fit`` feeds the step: a prefetch thread or not, NumPy or device arrays, how many steps ahead.

- One CPU process: NumPy batches go to the jitted step as they are (no ``jax.device_put``).
- In-memory arrays are sliced in the loop's thread; other sources (files, parsing) get a
  background thread keeping ``PREFETCH`` batches ready.
- At most ``MAX_IN_FLIGHT`` steps run ahead of the host's reads without a prefetch thread, 2 with
  one or on a CPU mesh of several devices.

Why, with the measurements: ``docs/design.md``, "How the engine feeds a step".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh

from .data import Batch, host_slice, in_memory, shard_batch
from .state import batch_sharded

PREFETCH = 2  # batches a background thread keeps ready for sources that are not in-memory arrays
MAX_IN_FLIGHT = 8  # steps dispatched ahead of the host's reads (two on multi-device CPU meshes)


def on_cpu(mesh: Mesh) -> bool:
    """Whether every device of ``mesh`` is a CPU device.

    >>> from funcnet.train.state import data_mesh
    >>> on_cpu(data_mesh())
    True
    """
    return all(device.platform == "cpu" for device in mesh.devices.flat)


def prefetch_size(trainer: Any, train: Any) -> int:
    """``trainer.prefetch``; if None, 0 for ``Batches`` of an ``ArrayDataset`` and ``PREFETCH`` otherwise.

    >>> import numpy as np
    >>> from funcnet.train import TrainerConfig
    >>> from funcnet.train.data import ArrayDataset, Batches
    >>> arrays = Batches(ArrayDataset(x=np.zeros((8, 2))), 4)
    >>> prefetch_size(TrainerConfig(epochs=1), arrays), prefetch_size(TrainerConfig(epochs=1, prefetch=3), arrays)
    (0, 3)
    """
    if trainer.prefetch is not None:
        return trainer.prefetch
    return 0 if in_memory(train) else PREFETCH


def max_in_flight(mesh: Mesh, prefetching: bool) -> int:
    """Steps ``fit`` lets run ahead of its reads: ``MAX_IN_FLIGHT`` when batches are made in the loop's
    thread (the queued steps absorb a slow host moment), else 2: the batches a prefetch thread keeps
    ready do that, and on a CPU mesh of several local devices collectives have stalled with more queued.

    >>> import jax
    >>> from funcnet.train.state import data_mesh
    >>> one, two = data_mesh(jax.devices()[:1]), data_mesh(jax.devices()[:2])
    >>> max_in_flight(one, prefetching=False), max_in_flight(one, prefetching=True), max_in_flight(two, False)
    (8, 2, 2)
    """
    if prefetching or (on_cpu(mesh) and len(mesh.local_devices) > 1):
        return 2
    return MAX_IN_FLIGHT


def batch_transfer(mesh: Mesh) -> Callable[[Batch], Any] | None:
    """What turns a host batch into the step's input; None: the NumPy arrays go to the jitted step as they are.

    One process on CPU: None (the step's C++ transfer is a copy at most). Elsewhere: ``shard_batch`` of
    this process's rows, run in the prefetch thread when there is one, so the copy overlaps the step.

    >>> from funcnet.train.state import data_mesh
    >>> batch_transfer(data_mesh()) is None
    True
    """
    if on_cpu(mesh) and jax.process_count() == 1:
        return None
    sharding = batch_sharded(mesh)
    return lambda batch: shard_batch(host_slice(batch), sharding)
