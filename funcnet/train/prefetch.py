"""Prefetch: the next batches are prepared (and put on the devices) while a step runs.

``prefetch(iterator, size)`` pulls batches in a background thread and keeps up to ``size`` of them
ready; ``size=0`` pulls each batch in the caller's thread when it is asked for (no thread).

The thread and the consumer wake each other as rarely as they can: the consumer takes a ready batch
without any lock; the thread, once ``size`` batches are ready, sleeps until half of them are taken
and then makes the missing ones in one go; a consumer that finds nothing ready sleeps until the next
batch is there. On a fast source (in-memory arrays) the two threads then seldom contend for the GIL;
on a slow one (I/O, parsing) the thread keeps working while the step runs.

The position to checkpoint is the CONSUMER's: ``Prefetcher.position`` moves only when ``next``
hands a batch out, however far ahead the thread has read.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .data import Batch, Position

_ITEM, _END, _ERROR = range(3)
_POLL_SECONDS = 0.1  # a sleeping thread re-checks for a stop this often (``__del__`` cannot notify it)


class _Channel:
    """The ready batches and the handshake between the thread (producer) and the consumer."""

    def __init__(self, size: int):
        self.items: collections.deque = collections.deque()  # (kind, value, position), oldest first
        self.size, self.low = size, size // 2  # the producer sleeps at `size` ready and wakes at `low`
        self.lock = threading.Condition(threading.Lock())
        self.producer_waiting = self.consumer_waiting = self.stopped = False

    def wait_for_room(self) -> bool:
        """Producer: returns once another batch may be made (True), or once stopped (False)."""
        if len(self.items) < self.size:  # only the consumer removes items: a short read stays true
            return not self.stopped
        with self.lock:
            while len(self.items) > self.low and not self.stopped:
                self.producer_waiting = True
                self.lock.wait(_POLL_SECONDS)
            self.producer_waiting = False
            return not self.stopped

    def put(self, item: tuple) -> None:
        """Producer: hands one item over, waking the consumer only if it waits for one."""
        with self.lock:
            self.items.append(item)
            if self.consumer_waiting:
                self.lock.notify_all()

    def get(self) -> tuple:
        """Consumer: the oldest item, waiting for one if none is ready."""
        items = self.items
        if items:
            item = items.popleft()  # deque operations are atomic: no lock on the fast path
        else:
            with self.lock:
                while not items:
                    if self.producer_waiting:  # a stale sleep (it checked before our last take): wake it
                        self.lock.notify_all()
                    self.consumer_waiting = True
                    self.lock.wait()
                self.consumer_waiting = False
                item = items.popleft()
        if self.producer_waiting and len(items) <= self.low:
            with self.lock:
                self.lock.notify_all()
        return item

    def stop(self, notify: bool = True) -> None:
        self.stopped = True
        if notify:
            with self.lock:
                self.lock.notify_all()


def _produce(source: Iterator, transform: Callable | None, channel: _Channel) -> None:
    """The prefetch thread; holds no reference to the Prefetcher, so dropping it stops the thread."""
    try:
        while channel.wait_for_room():
            try:
                batch = next(source)
            except StopIteration:
                channel.put((_END, None, None))
                return
            position = getattr(source, "position", None)  # read in this thread, right after next
            channel.put((_ITEM, transform(batch) if transform else batch, position))
    except BaseException as error:  # handed to the consumer, which re-raises it
        channel.put((_ERROR, error, None))
    finally:
        if hasattr(source, "close"):
            source.close()


class Prefetcher:
    """Batches from a background thread, up to ``size`` ready ahead (``size=0``: no thread); made by ``prefetch``.

    ``.position`` is the position of the CONSUMER: the position the source had right after
    producing the batch ``next`` returned last (its initial position before any). Batches the thread
    has fetched ahead do not move it, so it is the one to checkpoint.
    """

    def __init__(self, iterator: Iterable[Batch], size: int = 2, transform: Callable[[Batch], Any] | None = None):
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"prefetch size must be an int >= 0 (0: no background thread), got {size!r}")
        source = iter(iterator)
        self.position: Position | None = getattr(source, "position", None)
        self.size = size
        self._done = False
        self._source, self._transform = (source, transform) if size == 0 else (None, None)
        self._channel = self._thread = None
        if size:
            self._channel = _Channel(size)
            self._thread = threading.Thread(
                target=_produce, args=(source, transform, self._channel), name="funcnet-prefetch", daemon=True
            )
            self._thread.start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        if self._channel is None:
            return self._next_inline()
        kind, value, position = self._channel.get()
        if kind == _ITEM:
            self.position = position
            return value
        self.close()
        if kind == _ERROR:
            if hasattr(value, "add_note"):  # Python >= 3.11
                value.add_note("(raised in funcnet's prefetch thread, while producing the next batch)")
            raise value
        raise StopIteration

    def _next_inline(self) -> Any:
        try:
            batch = next(self._source)
        except StopIteration:
            self.close()
            raise
        self.position = getattr(self._source, "position", None)
        return self._transform(batch) if self._transform else batch

    def close(self, timeout: float = 1.0) -> None:
        """Stops the thread and waits up to ``timeout`` s for it. A source blocked inside ``next``
        cannot be interrupted: the (daemon) thread is then left to end when that call returns."""
        self._done = True
        if self._channel is None:
            if self._source is not None and hasattr(self._source, "close"):
                self._source.close()
            return
        self._channel.stop()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        channel = getattr(self, "_channel", None)  # absent if __init__ failed
        if channel is not None:
            channel.stop(notify=False)  # no lock here: the thread sees the flag within _POLL_SECONDS


def prefetch(iterator: Iterable[Batch], size: int = 2, transform: Callable[[Batch], Any] | None = None) -> Prefetcher:
    """Pulls batches from ``iterator`` in a background thread, applying ``transform`` there.

    Up to ``size`` transformed batches wait ready, in order; with ``size=0`` there is no thread and
    each batch is pulled (and transformed) when ``next`` asks for it. With ``transform`` putting
    batches on devices (``lambda b: shard_batch(b, sharding)``), the copies overlap the running step.
    An exception in the thread is re-raised by ``next`` (same type, its traceback from the thread).
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
