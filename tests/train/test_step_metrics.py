"""Pending step metrics: at most two steps in flight, reads in one go, lazy per-step values."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from funcnet.train.step_metrics import PendingMetrics, StepMetrics, to_host


class FakeOutput:
    """Stands for a step's output array: records waits, and whether it was read."""

    def __init__(self, value: float, log: list):
        self.value, self.log, self.ready = value, log, False

    def is_ready(self) -> bool:
        return self.ready

    def block_until_ready(self):
        self.log.append(("wait", self.value))
        self.ready = True
        return self

    def __array__(self, dtype=None, copy=None):
        self.log.append(("read", self.value))
        return np.asarray(self.value, dtype)


def test_adding_steps_waits_down_to_half_the_bound_in_one_wait_and_reads_nothing():
    # (bound, steps waited for, steps reported finished) over steps 1..6
    for bound, waited, done in ((2, [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]), (4, [2, 4], [1, 2, 3, 4]), (5, [3], [1, 2, 3])):
        log = []
        pending = PendingMetrics(on_cpu=True, max_in_flight=bound)
        finished = []
        for step in range(1, 7):
            finished += [s for s, _ in pending.add(step, {"loss": FakeOutput(step, log)})]
            assert step - len(finished) < bound  # the next dispatch finds room
        # At the bound, one wait for the step that leaves half of it (at least one) in flight.
        assert log == [("wait", step) for step in waited], (bound, log)
        assert finished == done and len(pending) == 6


def test_steps_seen_finished_are_reported_without_waiting():
    log = []
    pending = PendingMetrics(on_cpu=True, max_in_flight=8)
    outputs = [FakeOutput(step, log) for step in range(1, 5)]
    assert [pending.add(step, {"loss": out}) for step, out in enumerate(outputs[:2], 1)] == [[], []]
    outputs[0].ready = outputs[1].ready = True  # the device got through steps 1 and 2
    finished = pending.add(3, {"loss": outputs[2]})
    assert [step for step, _ in finished] == [1, 2] and log == []
    assert finished[0][1]["loss"] == 1.0 and log == [("read", 1)]  # lazy: read on access


def test_take_reads_the_finished_steps_or_all_of_them_in_order():
    pending = PendingMetrics(on_cpu=False, max_in_flight=2)  # the jax.device_get path
    for step in range(1, 5):
        pending.add(step, {"loss": jnp.float32(step / 10), "count": jnp.float32(8.0)})
    first = pending.take(all_steps=False)
    assert [step for step, _ in first] == [1, 2, 3] or [step for step, _ in first] == [1, 2, 3, 4]
    assert first[0] == (1, {"loss": np.float32(0.1), "count": 8.0})
    rest = pending.take(all_steps=True)
    assert [step for step, _ in first + rest] == [1, 2, 3, 4] and len(pending) == 0
    assert pending.take(all_steps=True) == [] and pending.take(all_steps=False) == []


def test_step_metrics_read_the_device_on_first_access_only():
    log = []
    metrics = StepMetrics({"loss": FakeOutput(0.5, log), "count": FakeOutput(4.0, log)}, on_cpu=True)
    assert sorted(metrics) == ["count", "loss"] and len(metrics) == 2 and log == []  # names only: no read
    assert metrics["loss"] == 0.5 and metrics["count"] == 4.0 and dict(metrics) == {"loss": 0.5, "count": 4.0}
    assert sorted(log) == [("read", 0.5), ("read", 4.0)]  # both values, once


def test_to_host_gives_the_same_values_on_both_paths():
    trees = [{"loss": jnp.float32(0.25), "count": jnp.arange(3.0)}]
    cpu, general = to_host(trees, on_cpu=True), to_host(trees, on_cpu=False)
    for got in (cpu, general):
        np.testing.assert_array_equal(got[0]["count"], np.arange(3.0, dtype=np.float32), strict=True)
        assert float(got[0]["loss"]) == 0.25


def test_drain_waits_for_each_unfinished_step_in_order():
    log = []
    pending = PendingMetrics(on_cpu=True, max_in_flight=8)
    for step in range(1, 4):
        pending.add(step, {"loss": FakeOutput(step, log)})
    for step, _ in pending.drain():
        log.append(("seen", step))  # each step is handed out right after its own wait
    assert log == [("wait", 1), ("seen", 1), ("wait", 2), ("seen", 2), ("wait", 3), ("seen", 3)]
    assert [step for step, _ in pending.take(all_steps=False)] == [1, 2, 3]


def test_without_polling_the_finished_steps_depend_on_the_step_count_only():
    log = []
    pending = PendingMetrics(on_cpu=True, max_in_flight=3, poll=False)
    outputs = [FakeOutput(step, log) for step in range(1, 6)]
    for output in outputs:
        output.ready = True  # all done already: a polling loop would see them at once
    finished = [[done for done, _ in pending.add(step, {"loss": out})] for step, out in enumerate(outputs, 1)]
    assert finished == [[], [], [1, 2], [], [3, 4]]  # what every process of a multi-host run sees alike
