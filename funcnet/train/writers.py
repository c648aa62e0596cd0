"""Logs that are not printing: tensorboardX event files and a progress bar.

Event files go to ``RUN_DIR/logs`` (view with ``tensorboard --logdir RUN_DIR``). Tags:

- ``train/<metric>`` (running means over the last ``log_every`` steps), ``train/learning_rate``,
  ``train/steps_per_second``, ``train/examples_per_second``;
- ``validation/<metric>`` at each evaluation;
- histograms ``params/<path>`` and, with ``trainer.log_grad_norm``, ``train/grad_norm`` (the per-step
  gradient norms since the previous evaluation) at each evaluation;
- the resolved config as text (``config``).

Only process 0 writes, so a multi-host run has one set of logs.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tensorboardX import SummaryWriter
from tensorboardX.proto import event_pb2
from tqdm import tqdm

from ..core import param_path


def _say_writer_failures_in_one_line() -> None:
    """tensorboardX writes events from its own thread; when a write fails (a full disk) that thread dies with a
    traceback the run cannot catch. Say it in one line instead: the run's own error (its checkpoint fails on
    the same disk) is what matters. Other threads' exceptions reach the previous hook unchanged."""
    previous = threading.excepthook
    if getattr(previous, "says_writer_failures", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        frames = traceback.extract_tb(args.exc_traceback)
        if isinstance(args.exc_value, OSError) and any("tensorboardX" in f.filename for f in frames):
            _logs_stopped(args.exc_value)
            return
        previous(args)

    hook.says_writer_failures = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _logs_stopped(error: OSError) -> None:
    print(f"note: the TensorBoard logs stopped: {error}", file=sys.stderr)


class RunLogger:
    """Writes scalars, histograms and the config of one run.

    Args:
      run_dir: the run directory; events go to ``run_dir/logs``.
      resume_step: when resuming, events at steps >= this one from the interrupted run are
        purged, so curves do not double back.

    Example:
      >>> import tempfile
      >>> with RunLogger(tempfile.mkdtemp()) as log:
      ...     log.scalars("train", {"loss": 0.5}, step=1)
    """

    def __init__(self, run_dir: str | os.PathLike, resume_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self.logdir = os.path.join(os.fspath(run_dir), "logs")
        self.writer = SummaryWriter(logdir=self.logdir, purge_step=resume_step) if self.enabled else None
        _say_writer_failures_in_one_line()

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        """Writes ``prefix/<name>`` for each value."""
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", float(value), int(step))

    def histograms(self, prefix: str, tree: Any, step: int) -> None:
        """Writes one histogram per array leaf of ``tree`` as ``prefix/<path>``."""
        if self.writer is None:
            return
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            values = np.asarray(jax.device_get(leaf), dtype=np.float64).ravel()
            if values.size and np.isfinite(values).all():
                self.writer.add_histogram(f"{prefix}/{param_path(path)}" if path else prefix, values, int(step))

    def config(self, config: Mapping[str, Any]) -> None:
        """Writes the resolved config as text."""
        if self.writer is not None:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)

    def flush(self) -> None:
        """Pushes buffered events to disk (a failure, e.g. a full disk, is said in one line: logs are not the run)."""
        if self.writer is not None:
            try:
                self.writer.flush()
            except OSError as error:
                _logs_stopped(error)

    def close(self) -> None:
        """Flushes and closes the event file (a failure is said in one line, as ``flush``'s)."""
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as error:
                _logs_stopped(error)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Progress:
    """A progress bar with loss, steps/s, examples (or ``unit`` s) per second and ETA; silent unless process 0.

    Example:
      >>> bar = Progress(total=10, initial=0, enabled=False)
      >>> bar.update(2, {"loss": 0.5}, examples=64)
      >>> bar.close()
    """

    def __init__(self, total: int | None, initial: int, enabled: bool = True, unit: str = "ex"):
        self.enabled = enabled and jax.process_index() == 0
        self.unit = unit
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True) if self.enabled else None
        self._start, self._examples = time.perf_counter(), 0

    def update(self, steps: int, metrics: Mapping[str, float], examples: int) -> None:
        """Advances by ``steps`` and shows the latest metrics and the example rate."""
        self._examples += examples
        if self.bar is None:
            return
        rate = self._examples / max(time.perf_counter() - self._start, 1e-9)
        shown = {k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "accuracy")}
        self.bar.set_postfix(shown | {f"{self.unit}/s": f"{rate:,.0f}"}, refresh=False)
        self.bar.update(steps)

    def write(self, message: str) -> None:
        """Prints a line without breaking the bar."""
        if self.bar is not None:
            self.bar.write(message)
        elif jax.process_index() == 0:
            print(message, flush=True)

    def close(self) -> None:
        """Closes the bar."""
        if self.bar is not None:
            self.bar.close()


def read_events(logdir: str | os.PathLike) -> list[event_pb2.Event]:
    """Every event in ``logdir``'s event files, in file order (no tensorboard needed).

    Event files are TFRecords: a little-endian u64 length, a u32 checksum, the serialized
    ``Event``, another u32 checksum.

    >>> import tempfile
    >>> directory = tempfile.mkdtemp()
    >>> with RunLogger(directory) as log:
    ...     log.scalars("train", {"loss": 0.5}, step=3)
    >>> read_scalars(os.path.join(directory, "logs"))["train/loss"]
    [(3, 0.5)]
    """
    events = []
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            events.append(event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length]))
            offset += 12 + length + 4
    return events


def read_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value), ...]`` for every scalar in ``logdir``'s event files.

    >>> import tempfile
    >>> read_scalars(tempfile.mkdtemp())  # no event files yet
    {}
    """
    scalars: dict[str, list[tuple[int, float]]] = {}
    for event in read_events(logdir):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return scalars
