"""In-memory training data kept on the devices: each step gathers its own batch there.

``fit`` over ``Batches`` of an ``ArrayDataset`` would otherwise slice every batch on the host and
hand it to the step: on a small model that costs as much as a tenth of the step (the mlp of
``experiments/bench/fit.py``: ~50 us of a ~420 us step on 2 CPU cores). When the arrays are small
enough (``TrainerConfig.device_data_mib``), ``fit`` instead copies them to every device ONCE and
feeds the step INDEX batches, ``{"index": int32[B], "mask": [B]}``, made by ``index_batches``: the
same ``Batches`` (seed, shuffle, padding, positions) over the example numbers. The step gathers the
rows on the device (``gather_batch``), so a batch is exactly the one the host would have sliced,
a checkpoint's position resumes the same way, and the host sends 8 bytes per example per step.

Only single-process runs use it: with several processes each one holds its own rows of a batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from .data import ArrayDataset, Batches, in_memory
from .state import replicated

INDEX = "index"  # the key of the example numbers in an index batch


def resident_arrays(train: Any, mesh: Mesh, max_mib: float) -> dict[str, jax.Array] | None:
    """``train``'s arrays replicated on every device of ``mesh``, or None when they stay on the host.

    They move to the devices when ``train`` is ``Batches`` of an ``ArrayDataset`` of plain numbers
    whose arrays take at most ``max_mib`` MiB together (one copy per device), in a single-process run.

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


def index_batches(train: Batches) -> Batches:
    """``train``'s batching over the example numbers: batch for batch, ``{"index", "mask"}`` of ``train``'s.

    >>> train = Batches(ArrayDataset(x=np.arange(10, 15)), 2, seed=3)
    >>> [b["x"].tolist() for b in train.epoch(0)] == [(b["index"] + 10).tolist() for b in index_batches(train).epoch(0)]
    True
    """
    numbers = ArrayDataset(**{INDEX: np.arange(train.num_examples, dtype=np.int32)})
    return Batches(
        numbers,
        train.batch_size,
        shuffle=train.shuffle,
        seed=train.seed,
        drop_remainder=train.drop_remainder,
        multiple_of=train.multiple_of,
    )


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
