"""Prefetch: same batches in order, the consumer's position, errors, shutdown, overlap."""

from __future__ import annotations

import gc
import threading
import time

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from funcnet.train.data import Batches, Position, shard_batch
from funcnet.train.prefetch import prefetch
from tests.train.test_data import assert_batches_equal, ids_dataset, take


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the prefetch thread"
        time.sleep(0.005)


def test_prefetch_yields_the_same_batches_and_the_consumer_position():
    batches = Batches(ids_dataset(10), 4, seed=3)
    expected_iterator = batches.iterate()
    expected = [(next(expected_iterator), expected_iterator.position) for _ in range(7)]
    with prefetch(batches.iterate(), size=3) as it:
        got = [(next(it), it.position) for _ in range(7)]
    assert [p for _, p in got] == [p for _, p in expected]
    assert_batches_equal([b for b, _ in got], [b for b, _ in expected])


def test_prefetching_ahead_does_not_move_the_saved_position():
    batches = Batches(ids_dataset(10), 2, seed=3)
    source = batches.iterate()
    with prefetch(source, size=3) as it:
        assert it.position == Position(0, 0)
        first = next(it)
        # The thread made 3 batches ahead of the consumer: 1 taken, 2 ready (it refills once 2 are taken).
        wait_until(lambda: source.position >= Position(0, 3))
        assert it.position == Position(0, 1)
        saved = it.position._asdict()
        second = next(it)
    assert_batches_equal([first, second], take(batches.iterate(), 2))
    assert_batches_equal([second], [next(batches.iterate(saved))])


def test_prefetch_reraises_the_producer_error_with_its_traceback():
    def failing_source():
        yield {"x": np.zeros(1)}
        raise KeyError("corrupt record 17")

    it = prefetch(failing_source())
    next(it)
    with pytest.raises(KeyError, match="corrupt record 17") as info:
        next(it)
    assert any(entry.name == "failing_source" for entry in info.traceback), "the thread's frames are kept"
    with pytest.raises(StopIteration):
        next(it)


def test_prefetch_ends_when_the_source_ends():
    assert [b["x"].tolist() for b in prefetch(iter([{"x": np.zeros(1)}, {"x": np.ones(1)}]))] == [[0.0], [1.0]]


def test_close_returns_promptly_even_when_the_source_blocks_forever():
    release = threading.Event()

    def blocking_source():
        yield {"x": np.zeros(1)}
        release.wait(timeout=30)  # "forever", bounded so that the thread does end after the test
        yield {"x": np.ones(1)}

    it = prefetch(blocking_source())
    try:
        next(it)
        started = time.monotonic()
        it.close(timeout=0.2)
        assert time.monotonic() - started < 2.0  # 0.2 s join timeout, generous margin for a loaded machine
        with pytest.raises(StopIteration):
            next(it)
    finally:
        release.set()
        it._thread.join(5)
    assert not it._thread.is_alive()


@pytest.mark.parametrize("how", ["close", "with", "del"])
def test_the_thread_stops_when_the_prefetcher_is_closed_or_dropped(how):
    def endless():
        while True:
            yield {"x": np.zeros(1)}

    it = prefetch(endless(), size=2)
    thread = it._thread
    next(it)
    wait_until(lambda: len(it._channel.items) == 2)  # the producer now waits for room
    if how == "close":
        it.close()
    elif how == "with":
        with it:
            pass
    else:
        del it
        gc.collect()
    thread.join(5)
    assert not thread.is_alive()


def test_prefetch_transform_puts_batches_on_eight_devices():
    assert jax.device_count() == 8, "tests/conftest.py forces 8 host devices"
    sharding = NamedSharding(Mesh(jax.devices(), ("data",)), P("data"))
    batches = Batches(ids_dataset(20), 8, seed=1)
    with prefetch(batches.iterate(), transform=lambda b: shard_batch(b, sharding)) as it:
        got = take(it, 3)
    for on_device, on_host in zip(got, take(batches.iterate(), 3), strict=True):
        for name, array in on_device.items():
            assert isinstance(array, jax.Array)
            assert array.sharding == sharding
            assert len(array.addressable_shards) == 8
            assert {shard.data.shape[0] for shard in array.addressable_shards} == {1}
            np.testing.assert_array_equal(np.asarray(array), on_host[name], strict=True)


def test_the_next_batch_is_produced_while_the_consumer_holds_the_current_one():
    # Overlap shown by events, not by timing (speed belongs to experiments/bench): while the
    # consumer still holds batch 0 and has not asked for more, the thread fetches batch 1 and 2.
    requested = [threading.Event() for _ in range(4)]

    def source():
        for i in range(4):
            requested[i].set()
            yield {"x": np.full(1, i)}

    with prefetch(source(), size=2) as batches:
        assert int(next(batches)["x"][0]) == 0
        assert requested[1].wait(timeout=10) and requested[2].wait(timeout=10)  # timeouts only guard hangs
        assert [int(b["x"][0]) for b in batches] == [1, 2, 3]


def test_size_0_pulls_each_batch_in_the_callers_thread():
    batches = Batches(ids_dataset(10), 4, seed=3)
    expected_iterator = batches.iterate()
    expected = [(next(expected_iterator), expected_iterator.position) for _ in range(5)]
    threads = threading.active_count()
    made_in = []

    def transform(batch):
        made_in.append(threading.current_thread())
        return batch

    source = batches.iterate()
    with prefetch(source, size=0, transform=transform) as it:
        assert threading.active_count() == threads and it.position == Position(0, 0)
        got = [(next(it), it.position) for _ in range(5)]
        assert source.position == it.position  # nothing is read ahead
    assert made_in == [threading.main_thread()] * 5
    assert [p for _, p in got] == [p for _, p in expected]
    assert_batches_equal([b for b, _ in got], [b for b, _ in expected])
    with pytest.raises(StopIteration):
        next(it)
    assert [b["x"].tolist() for b in prefetch(iter([{"x": np.zeros(1)}]), size=0)] == [[0.0]]


def test_the_thread_refills_once_half_of_the_ready_batches_are_taken():
    batches = Batches(ids_dataset(40), 2, seed=0)
    source = batches.iterate()
    with prefetch(source, size=4) as it:
        wait_until(lambda: len(it._channel.items) == 4)
        taken = [next(it), next(it)]  # 2 of 4 taken: the thread wakes and makes 2 more
        wait_until(lambda: len(it._channel.items) == 4)
        taken += [next(it) for _ in range(6)]
    assert_batches_equal(taken, take(batches.iterate(), 8))


def test_prefetch_size_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match=r"prefetch size must be an int >= 0 \(0: no background thread\), got -1"):
        prefetch(iter([]), size=-1)
