"""Stopping on a signal at one step that every process agrees on, and the exit codes that say why a run ended.

One process: SIGTERM and SIGINT set a flag the loop reads after each step; it saves that step and stops.
A second SIGINT (Ctrl-C twice) raises KeyboardInterrupt at once, without saving.

Several processes (``jax.distributed``): each process must save the SAME step, or the collectives of a
checkpoint wait forever for the processes that went on stepping. After ``jax.distributed.initialize``,
JAX catches SIGTERM itself (its preemption notice, also sent by Cloud TPU maintenance events), and its
preemption sync manager picks a step that every process reaches:
``multihost_utils.reached_preemption_sync_point(step)``, which every process calls at every step. A SIGINT
(Ctrl-C) is recorded in the coordination service's key-value store, so that every process reports it,
and handed to JAX's SIGTERM handler. A signal to ANY one process stops them all at one step.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils

_SIGNAL_KEY = "funcnet/stop_signal"  # "<SIGNAME> <process index>" of a SIGINT in a multi-process run

FINISHED, FAILED, BAD_CONFIG = 0, 1, 2  # and 128 + the signal's number after a signal's save (130, 143)


FAILED_REASONS = ("nan", "diverged")  # stop reasons of a failed run: nothing saved at the end, exit code 1


def exit_code(stop_reason: str, signum: int | None = None) -> int:
    """The exit code of a run that ended for ``stop_reason`` (a ``FitResult.stop_reason``), as shells report
    signals: 0 finished (early stopping and a callback's stop included), 128 + the signal's number after a
    signal's checkpoint (130 for SIGINT, 143 for SIGTERM: a scheduler may requeue), 1 for a NaN or a diverged loss.

    >>> exit_code("early_stopping"), exit_code("signal", 15), exit_code("nan"), exit_code("diverged")
    (0, 143, 1, 1)
    """
    if stop_reason == "signal":
        return 128 + int(signum or signal.SIGTERM)
    return FAILED if stop_reason in FAILED_REASONS else FINISHED


def coordination_client() -> Any:
    """The client of JAX's coordination service (its key-value store) in a multi-process run."""
    from jax._src import distributed  # JAX has no public handle to it

    return distributed.global_state.client


class StopSignals:
    """SIGTERM and SIGINT as a stop at one step, the same in every process (see the module docstring).

    Use it around the loop; call ``reached()`` after every step, in every process. After it returns
    True, ``signum`` is the signal and ``describe()`` says who received it.

    Example:
      >>> with StopSignals() as signals:
      ...     signals.reached()
      False
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.receiver: int | None = None  # the process that received it, where known
        self._several = jax.process_count() > 1
        self._old: dict[int, Any] = {}
        self._calls = 0

    def __enter__(self) -> StopSignals:
        if self._several and _preemption_sync_manager() is None:
            raise RuntimeError(
                "a multi-process run stops on signals through JAX's preemption service, which is off. "
                "Fix: leave jax_enable_preemption_service at its default (True) before jax.distributed.initialize."
            )
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT,) if self._several else (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if signum == signal.SIGINT and self.signum == signal.SIGINT:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        if not self._several:
            self.signum = signum
            return
        name = signal.Signals(signum).name
        coordination_client().key_value_set(_SIGNAL_KEY, f"{name} {jax.process_index()}", allow_overwrite=True)
        os.kill(os.getpid(), signal.SIGTERM)  # JAX's handler: the preemption notice every process syncs on

    def reached(self) -> bool:
        """Whether to save the step just taken and stop. With several processes, every process must call it once
        after every step, and nothing else may call JAX's ``reached_preemption_sync_point``."""
        if not self._several:
            return self.signum is not None
        # JAX's sync point counts calls from 1 in each process (a notice before the first call sets it to 1):
        # pass this session's call number, the same in every process, not the step a resumed run starts from.
        self._calls += 1
        if not multihost_utils.reached_preemption_sync_point(self._calls):
            return False
        try:
            name, receiver = coordination_client().key_value_try_get(_SIGNAL_KEY).split()
            self.signum, self.receiver = signal.Signals[name].value, int(receiver)
        except Exception:  # no SIGINT recorded: a SIGTERM (or a preemption notice) reached some process
            self.signum = signal.SIGTERM
        return True

    def describe(self) -> str:
        """E.g. ``"SIGINT received by process 1 of 2"``, or ``"SIGTERM received"``."""
        name = signal.Signals(self.signum or signal.SIGTERM).name
        if not self._several:
            return f"{name} received"
        by = "some process" if self.receiver is None else f"process {self.receiver}"
        return f"{name} received by {by} of {jax.process_count()}"

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _preemption_sync_manager() -> Any:
    from jax._src import distributed

    return distributed.global_state.preemption_sync_manager
