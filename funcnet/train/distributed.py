"""Runs over several processes (hosts): joining one, and ending cleanly when a peer process is lost.

``join`` calls ``jax.distributed.initialize`` with explicit settings or, where the environment
provides them, JAX's own detection (SLURM under ``srun``, Open MPI under ``mpirun``, Cloud TPU pods).
Every process then runs the same program on its own slice of each global batch.

A lost peer (killed, hung, or cut off) would otherwise leave the others blocked in a collective or a
checkpoint barrier. ``PeerWatch`` bounds that: each process writes a heartbeat into the coordination
service's key-value store every second from a background thread, and a process that has not heard
from a peer for ``timeout`` seconds, or whose collective with its peers fails, prints ONE line naming
the peer and the last complete checkpoint, and exits with code 1. ``join`` sets JAX's own heartbeat
timeout above ``timeout``, so this line comes before JAX's own termination. One case it cannot cover:
if process 0, which hosts the coordination service, dies, JAX ends the others at once with its own
message (exit code 134); the last complete checkpoint is still the newest numbered folder.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from typing import NamedTuple

import jax

from .stopping import FAILED, coordination_client

_HEARTBEAT_SECONDS = 1.0
_JAX_HEARTBEAT_MARGIN = 30  # JAX's own heartbeat timeout is this much longer than PeerWatch's
_watches = itertools.count()  # the same sequence in every process: each watch gets its own keys


class Processes(NamedTuple):
    """How this process joins a multi-process run; None: JAX's detection fills it in (or no run is joined)."""

    coordinator: str | None = None  # "HOST:PORT" of process 0
    num_processes: int | None = None
    process_id: int | None = None


class SetupError(ValueError):
    """The settings of a multi-process run are incomplete or contradict each other."""


def detected_cluster() -> str | None:
    """The cluster environment JAX's ``jax.distributed.initialize()`` would detect by itself, or None.

    >>> detected_cluster() is None or isinstance(detected_cluster(), str)
    True
    """
    from jax._src import clusters  # JAX's own detection; it has no public query

    for env in clusters.ClusterEnv._cluster_types:
        if not env.opt_in_only_method and env.is_env_present():
            return env.__name__
    return None


def join(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    peer_timeout: int = 60,
) -> bool:
    """Joins a multi-process run if the arguments or the environment describe one; returns whether it did.

    Call it before anything else uses JAX (arrays, devices). With no arguments it joins only where JAX
    detects a cluster (``detected_cluster``); arguments left None are then filled in by that detection.

    Args:
      coordinator: ``HOST:PORT`` of process 0, where the coordination service runs.
      num_processes: how many processes the run has.
      process_id: this process's index, 0 to ``num_processes - 1``.
      peer_timeout: seconds without a heartbeat after which a peer counts as lost (``PeerWatch``); JAX's own
        heartbeat timeout is set a little above it.

    Raises:
      SetupError: incomplete settings with no cluster to fill them in; the message says which flags to give.
    """
    if jax.distributed.is_initialized():  # joined already (e.g. by the caller's own jax.distributed.initialize)
        return True
    explicit, cluster = (coordinator, num_processes, process_id), detected_cluster()
    if all(value is None for value in explicit) and cluster is None:
        return False
    if None in explicit and cluster is None:
        raise SetupError(
            "joining a multi-process run needs --coordinator HOST:PORT, --num-processes N and --process-id I "
            "(or a launcher JAX detects: srun, mpirun, a Cloud TPU pod); got "
            f"coordinator={coordinator}, num_processes={num_processes}, process_id={process_id}"
        )
    if num_processes is not None and num_processes < 1:
        raise SetupError(f"--num-processes: expected an int >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise SetupError(
            f"--process-id: expected 0 to {num_processes - 1} (--num-processes {num_processes}), got {process_id}"
        )
    if coordinator is not None and not coordinator.rpartition(":")[2].isdigit():
        raise SetupError(f"--coordinator: expected HOST:PORT (e.g. 10.0.0.1:1234), got {coordinator!r}")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=peer_timeout + _JAX_HEARTBEAT_MARGIN,
    )
    return True


def last_checkpoint(directory: str | os.PathLike) -> str:
    """The newest complete checkpoint in ``directory`` (Orbax renames a step's folder to its number when the
    save is complete), as words for a message.

    >>> import tempfile
    >>> last_checkpoint(tempfile.mkdtemp())
    'none yet'
    """
    try:
        steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
    except OSError:
        steps = []
    return f"step {max(steps)} ({os.path.join(os.fspath(directory), str(max(steps)))})" if steps else "none yet"


class PeerWatch:
    """Ends this process with one line when a peer process stops answering (see the module docstring).

    A no-op in a single-process run. ``lost(reason)`` ends the process the same way from the loop, when a
    collective with the peers fails.

    Example:
      >>> with PeerWatch(timeout=60, checkpoints="/tmp/nowhere"):
      ...     pass
    """

    def __init__(self, timeout: int, checkpoints: str | os.PathLike):
        self.timeout, self.checkpoints = timeout, checkpoints
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prefix = f"funcnet/heartbeat/{next(_watches)}/"

    def __enter__(self) -> PeerWatch:
        if jax.process_count() > 1:
            self._thread = threading.Thread(target=self._watch, name="funcnet-peer-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, error_type: object, *exc: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        if error_type is None:  # a clean end: the peers stop watching this one
            coordination_client().key_value_set(self._prefix + str(jax.process_index()), "done", allow_overwrite=True)

    def on_failed_collective(self, error_type: type[BaseException] | None, error: BaseException | None, _) -> None:
        """An exit callback (``contextlib.ExitStack.push``): in a run of several processes a JAX runtime error
        means a peer died mid-collective; say so in one line and end (``lost``), before anything waits for it."""
        if error_type is not None and issubclass(error_type, jax.errors.JaxRuntimeError) and jax.process_count() > 1:
            self.lost(f"a collective with the other processes failed ({str(error).splitlines()[0]})")

    def lost(self, reason: str) -> None:
        """Prints ``error: <reason>. Last complete checkpoint: ...`` and ends the process with code 1, at once:
        exiting normally would wait in JAX's shutdown barrier for the lost peer."""
        print(
            f"error: {reason}. Last complete checkpoint: {last_checkpoint(self.checkpoints)}. "
            "Start every process again with the same command to resume from it.",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(FAILED)

    def _watch(self) -> None:
        me, count = jax.process_index(), jax.process_count()
        client, beat = coordination_client(), 0
        heard = {peer: (None, time.monotonic()) for peer in range(count) if peer != me}  # last value, when it changed
        while not self._stop.wait(_HEARTBEAT_SECONDS):
            beat, now, failure = beat + 1, time.monotonic(), ""
            try:
                client.key_value_set(self._prefix + str(me), str(beat), allow_overwrite=True)
                values = dict(client.key_value_dir_get(self._prefix))
            except Exception as error:  # the coordination service on process 0 is unreachable
                values, failure = {}, f"; the coordination service on process 0 is unreachable: {error}"
            for peer, (value, when) in heard.items():
                new = values.get(self._prefix + str(peer))
                if new == "done" or (new is not None and new != value):  # "done": it left fit normally
                    heard[peer] = (new, now)
                elif now - when > self.timeout:
                    self.lost(
                        f"process {peer} of {count} has not been heard from for {now - when:.0f} s "
                        f"(it died, hangs, or cannot be reached){failure}"
                    )
