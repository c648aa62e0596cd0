"""Data: datasets, seeded batching with a restorable position, background prefetch onto devices.

A batch is a dict of NumPy arrays sharing a leading (example) axis, always with ``"mask"``:
float32 ``[B]``, 1.0 for a real example and 0.0 for padding; losses and metrics weight by it.

* Map-style datasets (``len`` and ``dataset[indices] -> batch``), e.g. ``ArrayDataset``, are
  batched by ``Batches``: epoch ``e`` visits the examples in the order
  ``np.random.default_rng([seed, e]).permutation(n)``, so the order depends on the seed and the
  epoch only, never on where a run was interrupted.
* Iterable datasets are functions ``make_epoch(epoch) -> iterable of batches`` (batched by the
  user), wrapped by ``GeneratorBatches``.
* Both give ``iterate(position)``: batches across epochs forever, with ``.position`` (the next
  batch to come) to save in a checkpoint and restart from.
* ``prefetch`` pulls batches in a background thread and applies ``transform`` there (e.g.
  ``shard_batch``), so host-to-device copies overlap the running step; its ``.position`` is the
  consumer's, not the thread's.

``batch_size`` is always the GLOBAL batch (all devices of all processes). With several processes,
each runs the same ``Batches`` with the same seed and keeps its rows with ``host_slice``.

>>> import numpy as np
>>> data = ArrayDataset(x=np.arange(10.0)[:, None], y=np.arange(10))
>>> it = Batches(data, batch_size=4, seed=0).iterate()
>>> [next(it)["mask"].tolist() for _ in range(3)], it.position
([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]], Position(epoch=1, index=0))
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np

Batch = dict[str, Any]


class BatchSplitError(ValueError):
    """A batch size that does not split evenly over the data-parallel devices (a setting to change, not a bug).

    >>> isinstance(BatchSplitError("batch_size: expected a multiple of 8, got 12"), ValueError)
    True
    """


class Position(NamedTuple):
    """Where an iteration stands: the next batch to be produced is batch ``index`` of ``epoch``.

    JSON-able: save ``position._asdict()``, restore with ``Position(**d)``.

    >>> Position(**Position(epoch=2, index=5)._asdict())
    Position(epoch=2, index=5)
    """

    epoch: int = 0
    index: int = 0


@runtime_checkable
class Dataset(Protocol):
    """A map-style dataset: ``len`` examples, and ``dataset[indices]`` -> a batch of those examples.

    ``indices`` is an int array ``[B]``; the result is a dict of arrays with leading axis ``B``
    (``"mask"`` optional). Any class with these two methods is a Dataset.

    >>> import numpy as np
    >>> isinstance(ArrayDataset(x=np.zeros(3)), Dataset)
    True
    """

    def __len__(self) -> int: ...

    def __getitem__(self, indices: np.ndarray) -> Batch: ...


class IterableDataset(Protocol):
    """An iterable dataset: ``make_epoch(epoch)`` -> that epoch's batches, already batched.

    It must be deterministic in ``epoch`` (resuming replays it); shuffling and batch size are its own.

    >>> import numpy as np
    >>> def make_epoch(epoch: int):
    ...     for i in range(3):
    ...         yield {"x": np.full((2, 1), 10.0 * epoch + i)}
    >>> next(GeneratorBatches(make_epoch).epoch(1))["x"].ravel().tolist()
    [10.0, 10.0]
    """

    def __call__(self, epoch: int) -> Iterable[Batch]: ...


def _check_int(name: str, value: Any, minimum: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return number


def _leading(batch: Any, expected: int | None, where: str) -> int:
    """Checks ``batch`` is a non-empty dict of arrays with one common leading axis; returns it."""
    if not isinstance(batch, Mapping) or not batch:
        raise ValueError(f"{where}: expected a non-empty dict of arrays, got {type(batch).__name__}")
    sizes = {name: (shape[0] if (shape := np.shape(value)) else None) for name, value in batch.items()}
    if expected is not None and any(size != expected for size in sizes.values()):
        raise ValueError(
            f"{where}: expected every array to have leading axis {expected} (one row per index), got {sizes}"
        )
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(f"{where}: expected arrays sharing their leading (example) axis, got leading sizes {sizes}")
    return next(iter(sizes.values()))


class ArrayDataset:
    """In-memory arrays as a map-style dataset; example ``i`` is row ``i`` of every array.

    Large batches come in 64-byte-aligned buffers, which a jitted step on CPU uses without a copy.

    Args:
      **arrays: name -> array ``[n, ...]``; all must share ``n``.

    Raises:
      ValueError: no arrays, a scalar, or first axes of different lengths.

    >>> import numpy as np
    >>> data = ArrayDataset(x=np.arange(6.0).reshape(3, 2), y=np.array([0, 1, 0]))
    >>> len(data), data[np.array([2, 0])]["y"].tolist()
    (3, [0, 0])
    """

    def __init__(self, **arrays: Any):
        if not arrays:
            raise ValueError("ArrayDataset: expected at least one array, e.g. ArrayDataset(x=inputs, y=targets)")
        self.arrays = {name: np.asarray(value) for name, value in arrays.items()}
        lengths = {name: (a.shape[0] if a.ndim else "scalar") for name, a in self.arrays.items()}
        if len(set(lengths.values())) != 1 or "scalar" in lengths.values():
            shown = ", ".join(f"{name}: {n}" for name, n in lengths.items())
            raise ValueError(
                f"ArrayDataset: arrays must share their first (example) axis, got lengths {shown}. "
                "Fix: give one row per example in every array."
            )
        self._length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, indices: np.ndarray) -> Batch:
        indices = np.asarray(indices)
        if indices.ndim != 1 or indices.dtype.kind not in "iu":  # slices of other kinds: NumPy's own indexing
            return {name: a[indices] for name, a in self.arrays.items()}
        if indices.size and (indices.min() < -self._length or indices.max() >= self._length):
            bad = indices[(indices < -self._length) | (indices >= self._length)][0]
            raise IndexError(f"index {bad} is out of bounds for an ArrayDataset of {self._length} examples")
        return {name: _gather(a, indices) for name, a in self.arrays.items()}


_ALIGN = 64  # bytes: XLA's CPU client uses a NumPy buffer aligned like this in place, without a copy
_ALIGN_FROM = 1 << 14  # bytes: below this, a copy costs less than the aligned allocation


def _gather(array: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``array[indices]`` (in-range indices), written into a 64-byte-aligned buffer when it is large.

    On CPU a jitted step takes an aligned NumPy input as it is (``jax.Array`` over the same memory),
    without the copy a misaligned one needs (``docs/design.md``). Batches are fresh buffers, never
    written again, so sharing them is safe.
    """
    shape = (len(indices), *array.shape[1:])
    size = math.prod(shape) * array.itemsize
    if size < _ALIGN_FROM or array.dtype.kind not in "biufc":  # small, or not plain numbers (objects, records)
        return array[indices]
    raw = np.empty(size + _ALIGN, np.uint8)
    start = -raw.__array_interface__["data"][0] % _ALIGN
    out = raw[start : start + size].view(array.dtype).reshape(shape)
    return np.take(array, indices, axis=0, out=out, mode="wrap")  # "wrap": negative indices, checked above


class BatchIterator:
    """Batches across epochs (0, 1, 2, ... forever) with ``.position``, the next batch to come.

    Made by ``Batches.iterate`` and ``GeneratorBatches.iterate``. It reads one batch ahead, so that
    after the last batch of epoch ``e`` the position is already ``(e + 1, 0)``.

    >>> import numpy as np
    >>> it = Batches(ArrayDataset(x=np.arange(4)), 2, shuffle=False).iterate(Position(0, 1))
    >>> next(it)["x"].tolist(), it.position
    ([2, 3], Position(epoch=1, index=0))
    """

    def __init__(self, epoch_fn: Callable[[int, int], Iterator[Batch]], position: Position):
        self._walk = self._batches(epoch_fn, position)
        self._ahead: tuple[Position, Batch] | None = None
        self._position = position

    @staticmethod
    def _batches(epoch_fn, position):
        epoch, start = position
        while True:
            produced = False
            for index, batch in enumerate(epoch_fn(epoch, start), start):
                produced = True
                yield Position(epoch, index), batch
            if not produced and start == 0:
                raise ValueError(f"epoch {epoch} produced no batches; an epoch needs at least one")
            epoch, start = epoch + 1, 0

    @property
    def position(self) -> Position:
        """The position of the next batch ``next`` returns: save it, restart with ``iterate(position)``."""
        return self._position

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Batch:
        if self._ahead is None:
            self._ahead = next(self._walk)
        batch = self._ahead[1]
        self._ahead = next(self._walk)
        self._position = self._ahead[0]
        return batch

    def close(self) -> None:
        """Closes the underlying epoch generators."""
        self._walk.close()


def _start(position: Position | Mapping | None) -> Position:
    if position is None:
        return Position()
    epoch, index = Position(**position) if isinstance(position, Mapping) else Position(*position)
    return Position(_check_int("position.epoch", epoch, 0), _check_int("position.index", index, 0))


class Batches:
    """Batches of a map-style dataset, shuffled per epoch from ``(seed, epoch)``.

    Epoch ``e`` takes the examples in the order ``order(e)``, in consecutive slices of
    ``batch_size``. The last partial slice is dropped (``drop_remainder=True``) or PADDED to the
    full ``batch_size`` by repeating that slice's own examples with mask 0, so every batch has one
    shape (one compilation) and every example counts exactly once per epoch.

    Args:
      dataset: a map-style ``Dataset`` (``len`` and ``dataset[indices]``).
      batch_size: the GLOBAL batch size (all devices, all processes).
      shuffle: permute the examples each epoch (on by default); ``False`` keeps dataset order.
      seed: int >= 0; with the epoch it fixes the order.
      drop_remainder: drop the last partial batch instead of padding it.
      multiple_of: ``batch_size`` must be a multiple of this (the data-parallel device count).

    Raises:
      ValueError: a bad argument, an empty dataset, or no batch at all with ``drop_remainder``.

    >>> import numpy as np
    >>> batches = Batches(ArrayDataset(x=np.arange(5)), batch_size=2, shuffle=False)
    >>> [b["x"].tolist() for b in batches.epoch(0)], batches.steps_per_epoch
    ([[0, 1], [2, 3], [4, 4]], 3)
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_remainder: bool = False,
        multiple_of: int = 1,
    ):
        self.dataset = dataset
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.multiple_of = _check_int("multiple_of", multiple_of, 1)
        self.seed = _check_int("seed", seed, 0)
        self.shuffle = bool(shuffle)
        self.drop_remainder = bool(drop_remainder)
        if self.batch_size % self.multiple_of:
            n = self.multiple_of
            lower, upper = max(n, self.batch_size // n * n), (self.batch_size // n + 1) * n
            raise BatchSplitError(
                f"batch_size: expected a multiple of {n} (the number of data-parallel devices), got "
                f"{self.batch_size}. Fix: pick a multiple of {n}, e.g. {lower} or {upper}."
            )
        self.num_examples = len(dataset)
        if self.num_examples < 1:
            raise ValueError("Batches: the dataset is empty (len 0); expected at least one example")
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"Batches: the dataset has {self.num_examples} examples, fewer than batch_size "
                f"{self.batch_size}, so drop_remainder=True leaves no batch. Fix: lower batch_size or "
                "set drop_remainder=False."
            )

    @property
    def steps_per_epoch(self) -> int:
        """Number of batches in one epoch."""
        full, rest = divmod(self.num_examples, self.batch_size)
        return full + (rest > 0 and not self.drop_remainder)

    def order(self, epoch: int) -> np.ndarray:
        """The example indices of ``epoch``, in the order they are batched (a permutation of ``n``).

        >>> import numpy as np
        >>> sorted(Batches(ArrayDataset(x=np.zeros(4)), 2, seed=3).order(7).tolist())
        [0, 1, 2, 3]
        """
        epoch = _check_int("epoch", epoch, 0)
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch``, from batch index ``start`` on.

        >>> import numpy as np
        >>> batches = Batches(ArrayDataset(x=np.arange(6)), 2, shuffle=False)
        >>> [b["x"].tolist() for b in batches.epoch(0, start=2)]
        [[4, 5]]
        """
        order = self.order(epoch)
        start = _check_int("start", start, 0)
        if start > self.steps_per_epoch:
            raise ValueError(f"start: expected at most {self.steps_per_epoch} (batches per epoch), got {start}")
        return (
            self._batch(order[i * self.batch_size : (i + 1) * self.batch_size])
            for i in range(start, self.steps_per_epoch)
        )

    def _batch(self, indices: np.ndarray) -> Batch:
        real = len(indices)
        if real == self.batch_size:
            mask = np.ones(real, np.float32)
        else:
            mask = (np.arange(self.batch_size) < real).astype(np.float32)
            indices = np.resize(indices, self.batch_size)  # padding repeats this batch's own examples
        if type(self.dataset) is ArrayDataset:  # its rows are known to fit, and the indices are in range
            batch = {name: _gather(array, indices) for name, array in self.dataset.arrays.items()}
        else:
            batch = dict(self.dataset[indices])
            _leading(batch, self.batch_size, "dataset[indices]")
        batch["mask"] = mask * np.asarray(batch["mask"], np.float32) if "mask" in batch else mask
        return batch

    def iterate(self, position: Position | Mapping | None = None) -> BatchIterator:
        """Batches from ``position`` (default: the start) on, across epochs forever.

        Restarting from a saved ``.position`` gives exactly the batches the uninterrupted iteration
        would have given next.

        >>> import numpy as np
        >>> batches = Batches(ArrayDataset(x=np.arange(6)), 2, seed=1)
        >>> it = batches.iterate()
        >>> _ = next(it); saved = it.position._asdict()
        >>> bool((next(it)["x"] == next(batches.iterate(saved))["x"]).all())
        True
        """
        return BatchIterator(self.epoch, self.start(position))

    def start(self, position: Position | Mapping | None = None) -> Position:
        """``position`` checked against this batching (its index at most ``steps_per_epoch``).

        >>> import numpy as np
        >>> Batches(ArrayDataset(x=np.arange(6)), 2).start({"epoch": 1, "index": 3})
        Position(epoch=1, index=3)
        """
        start = _start(position)
        if start.index > self.steps_per_epoch:
            raise ValueError(
                f"position.index: expected at most {self.steps_per_epoch} (batches per epoch), got {start.index}. "
                "Was the checkpoint written with another dataset or batch_size?"
            )
        return start


class GeneratorBatches:
    """Batches of an iterable dataset, with the same ``iterate(position)`` API as ``Batches``.

    Each batch is checked (a dict of arrays sharing a leading axis that is a multiple of
    ``multiple_of``); ``"mask"`` is added as ones if missing. Restoring a position ``(epoch, index)``
    calls ``make_epoch(epoch)`` and skips its first ``index`` batches: that replay costs as much as
    producing them.

    Args:
      make_epoch: an ``IterableDataset``, ``epoch -> iterable of batches``, deterministic in epoch.
      multiple_of: every batch's size must be a multiple of this (the data-parallel device count).
      steps_per_epoch: the number of batches in an epoch, if known (for progress bars and step
        budgets); None: unknown, and ``fit`` counts epochs by the iterator's position instead.

    >>> import numpy as np
    >>> batches = GeneratorBatches(lambda epoch: ({"x": np.arange(2) + i} for i in range(2)))
    >>> it = batches.iterate(Position(epoch=0, index=1))
    >>> next(it), it.position
    ({'x': array([1, 2]), 'mask': array([1., 1.], dtype=float32)}, Position(epoch=1, index=0))
    """

    def __init__(self, make_epoch: IterableDataset, *, multiple_of: int = 1, steps_per_epoch: int | None = None):
        if not callable(make_epoch):
            raise ValueError(f"GeneratorBatches: expected a function epoch -> batches, got {type(make_epoch).__name__}")
        self.make_epoch = make_epoch
        self.multiple_of = _check_int("multiple_of", multiple_of, 1)
        self.steps_per_epoch = None if steps_per_epoch is None else _check_int("steps_per_epoch", steps_per_epoch, 1)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` from batch index ``start`` on (the first ``start`` are skipped)."""
        return self._epoch(_check_int("epoch", epoch, 0), _check_int("start", start, 0))

    def _epoch(self, epoch: int, start: int) -> Iterator[Batch]:
        count = 0
        for count, batch in enumerate(self.make_epoch(epoch), 1):
            if count > start:
                yield self._check(batch, f"make_epoch({epoch}) batch {count - 1}")
        if count < start:
            raise ValueError(
                f"cannot resume at batch {start} of epoch {epoch}: make_epoch({epoch}) gave only {count} "
                "batches. Fix: make make_epoch deterministic in its epoch (the same batches on every call)."
            )
        if self.steps_per_epoch is not None and count != self.steps_per_epoch:
            raise ValueError(
                f"make_epoch({epoch}) gave {count} batches, but GeneratorBatches was told steps_per_epoch="
                f"{self.steps_per_epoch}. Fix: pass the right count, or steps_per_epoch=None if it varies."
            )

    def _check(self, batch: Any, where: str) -> Batch:
        size = _leading(batch, None, where)
        if size % self.multiple_of:
            raise ValueError(
                f"{where}: expected a batch size that is a multiple of {self.multiple_of} (the number of "
                f"data-parallel devices), got {size}. Fix: batch in multiples of {self.multiple_of}, padding "
                "with mask 0."
            )
        batch = {name: value if hasattr(value, "shape") else np.asarray(value) for name, value in batch.items()}
        batch.setdefault("mask", np.ones(size, np.float32))
        return batch

    def iterate(self, position: Position | Mapping | None = None) -> BatchIterator:
        """Batches from ``position`` (default: the start) on, across epochs forever.

        >>> import numpy as np
        >>> it = GeneratorBatches(lambda epoch: [{"x": np.array([epoch])}]).iterate()
        >>> [int(next(it)["x"][0]) for _ in range(3)], it.position
        ([0, 1, 2], Position(epoch=3, index=0))
        """
        return BatchIterator(self.epoch, _start(position))


def in_memory(train: Any) -> bool:
    """Whether ``train`` is ``Batches`` of an ``ArrayDataset`` (plain in-memory arrays, not a subclass).

    >>> in_memory(Batches(ArrayDataset(x=np.zeros(4)), 2)), in_memory(GeneratorBatches(lambda e: iter([])))
    (True, False)
    """
    return isinstance(train, Batches) and type(train.dataset) is ArrayDataset


def make_batches(
    data: Any,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    drop_remainder: bool = False,
    multiple_of: int = 1,
) -> Batches | GeneratorBatches:
    """Batches for any kind of data: a ``Dataset``, a dict of arrays, or an ``IterableDataset``.

    ``Batches``/``GeneratorBatches`` pass through unchanged. For an iterable dataset only
    ``multiple_of`` applies: its batching and shuffling are its own.

    >>> import numpy as np
    >>> make_batches({"x": np.zeros((10, 2))}, 4).steps_per_epoch
    3
    """
    if isinstance(data, (Batches, GeneratorBatches)):
        return data
    if isinstance(data, Mapping):
        data = ArrayDataset(**data)
    if isinstance(data, Dataset):
        return Batches(
            data, batch_size, shuffle=shuffle, seed=seed, drop_remainder=drop_remainder, multiple_of=multiple_of
        )
    if callable(data):
        return GeneratorBatches(data, multiple_of=multiple_of)
    raise ValueError(
        "make_batches: expected a Dataset (len and [indices]), a dict of arrays or a function epoch -> batches, "
        f"got {type(data).__name__}"
    )


def host_slice(batch: Batch, process_index: int | None = None, process_count: int | None = None) -> Batch:
    """This process's contiguous rows of a global batch: rows ``[i * B / P, (i + 1) * B / P)``.

    Every process runs the same ``Batches`` (same seed) and keeps its part; with a mesh over
    ``jax.devices()`` (ordered by process), these rows are the ones on this process's devices.

    >>> import numpy as np
    >>> host_slice({"x": np.arange(8)}, process_index=1, process_count=4)["x"].tolist()
    [2, 3]
    """
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    size = _leading(batch, None, "host_slice")
    if size % count or not 0 <= index < count:
        raise ValueError(
            f"host_slice: expected a batch size divisible by the process count {count} and 0 <= process_index < "
            f"{count}, got batch size {size} and process_index {index}. Fix: use a global batch_size that is a "
            f"multiple of {count}."
        )
    rows = slice(index * size // count, (index + 1) * size // count)
    return {name: value[rows] for name, value in batch.items()}


def shard_batch(batch: Batch, sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Puts this process's part of a batch on the devices as global ``jax.Array`` s.

    One process: ``jax.device_put(batch, sharding)``. Several: ``batch`` is this process's slice
    (``host_slice``) and the global arrays are assembled with
    ``jax.make_array_from_process_local_data``.

    >>> import jax, numpy as np
    >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    >>> sharding = NamedSharding(Mesh(jax.devices(), ("data",)), P("data"))
    >>> shard_batch({"x": np.zeros((8, 3))}, sharding)["x"].shape
    (8, 3)
    """
    if jax.process_count() == 1:
        return jax.device_put(dict(batch), sharding)
    return {name: jax.make_array_from_process_local_data(sharding, value) for name, value in batch.items()}
