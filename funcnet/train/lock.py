"""One trainer per run directory: ``RUN_DIR/.lock`` names the process that trains it.

The lock is a file created exclusively (``O_CREAT | O_EXCL``) holding the holder's process id, host
and start time. A second trainer of the same directory is refused with a message naming the
holder. A lock left by a dead process on this host (``kill -9``, a crash) is stale: it is replaced,
with a one-line note; so is one whose process id now belongs to a process started later (a container
restarted with the same host name, where the trainer is process 1 again). A lock held from another
host cannot be checked from here; the message says which file to delete if that process is gone. In a
multi-process run, process 0 holds the lock for all of them.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import jax

LOCK_FILE = ".lock"


class RunLocked(RuntimeError):
    """Another live process is training this run directory.

    >>> str(RunLocked("runs/x is being trained by process 12 on host-a."))
    'runs/x is being trained by process 12 on host-a.'
    """


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``), or None where that is unknown.

    A process id is reused: in a container restarted with the same host name, the new trainer is often
    process 1 again, as the old one was. The start time tells the two apart.

    >>> _started(os.getpid()) is None or _started(os.getpid()) > 0
    True
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
    return int(fields[19]) if len(fields) > 19 else None  # field 22 of proc(5): starttime


class RunLock:
    """Holds ``RUN_DIR/.lock`` while the run is trained (a context manager).

    Args:
      run_dir: the run directory (created if missing).
      say: where the note about a stale lock goes (``print`` by default).

    Raises:
      RunLocked: on entry, when a live process holds the lock.

    Example:
      >>> import tempfile
      >>> run_dir = tempfile.mkdtemp()
      >>> with RunLock(run_dir):
      ...     try:
      ...         RunLock(run_dir).__enter__()
      ...     except RunLocked as e:
      ...         print(str(e).replace(run_dir, "RUN").split(" on ")[0])  # doctest: +ELLIPSIS
      RUN is being trained by process ...
    """

    def __init__(self, run_dir: str | os.PathLike, say=print):
        self.path = Path(run_dir) / LOCK_FILE
        self.say = say
        self.held = False

    def __enter__(self) -> RunLock:
        if jax.process_index() != 0:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock is removed, then taken; a racing trainer may take it first
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_clear()
                continue
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "started": _started(os.getpid())}  # fmt: skip
            with os.fdopen(fd, "w") as f:
                json.dump(holder, f)
            self.held = True
            return self
        raise RunLocked(f"{self.path.parent} is being trained by another process ({self.path} keeps reappearing).")

    def _refuse_or_clear(self) -> None:
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):  # being written this instant, or removed: look again
            time.sleep(0.05)
            holder = {}
        pid, host = holder.get("pid"), holder.get("host")
        if isinstance(pid, int) and host == socket.gethostname() and not _alive(pid):
            self.say(f"note: removing the stale lock of process {pid}, which is gone ({self.path})")
            self.path.unlink(missing_ok=True)
            return
        started, now = holder.get("started"), _started(pid) if isinstance(pid, int) else None
        if host == socket.gethostname() and None not in (started, now) and started != now:  # unknown: not stale
            self.say(f"note: removing the stale lock of process {pid}, which is gone: process {pid} now is another "
                     f"one, started later ({self.path})")  # fmt: skip
            self.path.unlink(missing_ok=True)
            return
        if pid is None:
            return
        raise RunLocked(
            f"{self.path.parent} is being trained by process {pid} on {host} since {holder.get('since')} "
            f"({self.path}). Fix: wait for it to finish, use another run directory, or, if that process is gone, "
            f"delete {self.path}."
        )

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
