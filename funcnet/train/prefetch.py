"""Background prefetch: the next batches are prepared (and put on the devices) while a step runs.

The position to checkpoint is the CONSUMER's: ``Prefetcher.position`` moves only when ``next``
hands a batch out, however far ahead the thread has read.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .data import Batch, Position

_ITEM, _END, _ERROR = range(3)


def _produce(source: Iterator, transform: Callable | None, out: queue.Queue, stop: threading.Event) -> None:
    """The prefetch thread; holds no reference to the Prefetcher, so dropping it stops the thread."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    try:
        while not stop.is_set():
            try:
                batch = next(source)
            except StopIteration:
                put((_END, None, None))
                return
            position = getattr(source, "position", None)  # read in this thread, right after next
            if not put((_ITEM, transform(batch) if transform else batch, position)):
                return
    except BaseException as error:  # handed to the consumer, which re-raises it
        put((_ERROR, error, None))
    finally:
        if hasattr(source, "close"):
            source.close()


class Prefetcher:
    """Batches from a background thread, kept up to ``size`` ahead; made by ``prefetch``.

    ``.position`` is the position of the CONSUMER: the position the source had right after
    producing the batch ``next`` returned last (its initial position before any). Batches the thread
    has fetched ahead do not move it, so it is the one to checkpoint.
    """

    def __init__(self, iterator: Iterable[Batch], size: int = 2, transform: Callable[[Batch], Any] | None = None):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"prefetch size must be an int >= 1, got {size!r}")
        source = iter(iterator)
        self.position: Position | None = getattr(source, "position", None)
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=_produce, args=(source, transform, self._queue, self._stop), name="funcnet-prefetch", daemon=True
        )
        self._thread.start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        kind, value, position = self._queue.get()
        if kind == _ITEM:
            self.position = position
            return value
        self.close()
        if kind == _ERROR:
            if hasattr(value, "add_note"):  # Python >= 3.11
                value.add_note("(raised in funcnet's prefetch thread, while producing the next batch)")
            raise value
        raise StopIteration

    def close(self, timeout: float = 1.0) -> None:
        """Stops the thread and waits up to ``timeout`` s for it. A source blocked inside ``next``
        cannot be interrupted: the (daemon) thread is then left to end when that call returns."""
        self._done = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)  # absent if __init__ failed
        if stop is not None:
            stop.set()


def prefetch(iterator: Iterable[Batch], size: int = 2, transform: Callable[[Batch], Any] | None = None) -> Prefetcher:
    """Pulls batches from ``iterator`` in a background thread, applying ``transform`` there.

    Up to ``size`` transformed batches wait ready, in order. With ``transform`` putting batches on
    devices (``lambda b: shard_batch(b, sharding)``), the copies overlap the running step. An
    exception in the thread is re-raised by ``next`` (same type, its traceback from the thread).
    Stop with ``close()``, a ``with`` block, or by dropping the prefetcher.

    Checkpoint ``prefetcher.position`` (the consumer's), never ``iterator.position`` (ahead).

    >>> import numpy as np
    >>> from funcnet.train.data import ArrayDataset, Batches
    >>> batches = Batches(ArrayDataset(x=np.arange(6)), 2, shuffle=False)
    >>> with prefetch(batches.iterate(), size=2) as it:
    ...     first = next(it)
    ...     position = it.position
    >>> first["x"].tolist(), position
    ([0, 1], Position(epoch=0, index=1))
    """
    return Prefetcher(iterator, size, transform)
