"""Step metrics kept on the devices until the loop needs them, with a bound on the steps in flight.

Reading a step's metrics back costs more than the step itself on a small model (a device-to-host
transfer per scalar, and a wait), so ``fit`` keeps each step's metrics on the devices and reads
many steps at once: at log steps, before evaluations and checkpoints, and at the end. Waiting for a
step to FINISH is cheap (no transfer), and bounds the steps in flight (``funcnet.train.batch_feed`` says
how many ``fit`` allows; ``docs/design.md`` says why).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np


def to_host(trees: Sequence[Any], on_cpu: bool) -> list[Any]:
    """The trees of ``jax.Array`` s as trees of NumPy values, in one read.

    On CPU the arrays already live in host memory: ``np.asarray`` reads each in well under a
    microsecond, where ``jax.device_get`` costs several (it first schedules a copy per array).

    >>> import jax.numpy as jnp
    >>> to_host([{"loss": jnp.float32(0.5)}], on_cpu=True)
    [{'loss': array(0.5, dtype=float32)}]
    """
    leaves, treedef = jax.tree.flatten(list(trees))
    values = [np.asarray(leaf) for leaf in leaves] if on_cpu else jax.device_get(leaves)
    return jax.tree.unflatten(treedef, values)


class StepMetrics(Mapping):
    """One step's metrics as plain floats, read from the devices on first access (then kept).

    A callback that does not look at them costs nothing; one that does pays one small transfer.

    >>> import jax.numpy as jnp
    >>> metrics = StepMetrics({"loss": jnp.float32(0.25)}, on_cpu=True)
    >>> metrics["loss"], list(metrics)
    (0.25, ['loss'])
    """

    def __init__(self, device: Mapping[str, jax.Array], on_cpu: bool):
        self._device, self._on_cpu = device, on_cpu
        self._host: dict[str, float] | None = None

    def _values(self) -> dict[str, float]:
        if self._host is None:
            self._host = {name: float(v) for name, v in to_host([self._device], self._on_cpu)[0].items()}
        return self._host

    def __getitem__(self, name: str) -> float:
        return self._values()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._device)

    def __len__(self) -> int:
        return len(self._device)

    def __repr__(self) -> str:
        return f"StepMetrics({self._values()})"


class PendingMetrics:
    """The metrics of dispatched steps that the host has not read yet, oldest first.

    ``add`` records a dispatched step and bounds the steps in flight: when ``max_in_flight`` are
    unfinished, it waits (without a transfer) until half of them are left (at least one), and reports
    the steps now known to have finished: those it waited for and, with ``poll``, any others already done.
    Without ``poll`` that set depends on the step count only, as several processes need (they must
    all stop at the same step). ``take`` reads the finished steps, or all of them, in one transfer.

    >>> import jax.numpy as jnp
    >>> pending = PendingMetrics(on_cpu=True)
    >>> [step for step, _ in pending.add(1, {"loss": jnp.float32(0.5)})]  # a tiny step: done already
    [1]
    >>> _ = pending.add(2, {"loss": jnp.float32(0.25)})
    >>> pending.take(all_steps=False), len(pending)
    ([(1, {'loss': 0.5}), (2, {'loss': 0.25})], 0)
    """

    def __init__(self, on_cpu: bool, max_in_flight: int = 2, poll: bool = True):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight: expected an int >= 1, got {max_in_flight}")
        self.on_cpu, self.max_in_flight, self.poll = on_cpu, max_in_flight, poll
        self._steps: list[tuple[int, Mapping[str, jax.Array]]] = []
        self._finished = 0  # the oldest this many steps are known to have finished

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, step: int, metrics: Mapping[str, jax.Array]) -> list[tuple[int, StepMetrics]]:
        """Records dispatched step ``step``; returns the steps newly known to have finished, oldest first."""
        steps, known = self._steps, self._finished
        steps.append((step, metrics))
        if len(steps) - self._finished >= self.max_in_flight:  # the next dispatch must find room
            # Waits down to half the bound in ONE wait: steps finish in order (each takes the state
            # the one before made), so the newest of them finishing means all did. One wake-up per
            # max_in_flight / 2 steps instead of one per step (docs/design.md).
            done = len(steps) - max(1, self.max_in_flight // 2)
            _wait(steps[done - 1][1])
            self._finished = done
        while self.poll and self._finished < len(steps) and _ready(steps[self._finished][1]):
            self._finished += 1
        return [(s, StepMetrics(m, self.on_cpu)) for s, m in steps[known : self._finished]]

    def drain(self) -> Iterator[tuple[int, StepMetrics]]:
        """Waits for the unfinished steps one by one, oldest first, yielding each as it finishes."""
        while self._finished < len(self._steps):
            step, metrics = self._steps[self._finished]
            _wait(metrics)
            self._finished += 1
            yield step, StepMetrics(metrics, self.on_cpu)

    def take(self, all_steps: bool) -> list[tuple[int, dict[str, float]]]:
        """Reads and forgets the finished steps (every step, waiting for them, if ``all_steps``)."""
        count = len(self._steps) if all_steps else self._finished
        if count == 0:
            return []
        taken, self._steps = self._steps[:count], self._steps[count:]
        self._finished = max(0, self._finished - count)
        host = to_host([metrics for _, metrics in taken], self.on_cpu)
        steps = [step for step, _ in taken]
        return [(step, {k: float(v) for k, v in values.items()}) for step, values in zip(steps, host, strict=True)]


def _ready(metrics: Mapping[str, jax.Array]) -> bool:
    return next(iter(metrics.values())).is_ready()


def _wait(metrics: Mapping[str, jax.Array]) -> None:
    """Blocks until the step that produced ``metrics`` has finished: its outputs are all ready together."""
    first = next(iter(metrics.values()))
    if not first.is_ready():  # ready already: skip the call, which would release the GIL for nothing
        first.block_until_ready()
