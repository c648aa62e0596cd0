"""The files of a run directory that are not checkpoints or logs, written so that a crash never leaves half a file.

- ``write_json``: a JSON file written to a temporary name and renamed over the target (process 0 only).
- ``RUN_DIR/run.json``: what the run has done, for the next process that opens it. Today it records
  ``checkpointed``, the newest checkpoint known complete, so that a run whose checkpoints vanished is an
  error and not a silent fresh start.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax

RUN_RECORD = "run.json"
PREPROCESSING = "preprocessing.json"  # how raw inputs become model inputs, as data (funcnet.train.run)


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Writes JSON atomically (a temporary file renamed over the target): never a half-written file.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.json")
    >>> write_json(path, {"a": 1})
    >>> with open(path) as f:
    ...     print(f.read().strip())
    {
      "a": 1
    }
    """
    if jax.process_index() != 0:
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        _write_atomically(path, directory, value)
    except OSError as error:  # name the file: a full disk's own message does not
        raise OSError(error.errno, f"writing {path}: {error.strerror or error}") from None


def _write_atomically(path: str | os.PathLike, directory: str, value: Any) -> None:
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as f:
        try:
            json.dump(value, f, indent=2, default=float)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        except BaseException:  # a full disk: the target keeps its old content, and no temporary file is left
            f.close()
            os.unlink(f.name)
            raise
    os.replace(f.name, path)


def read_preprocessing(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``RUN_DIR/preprocessing.json`` (how raw inputs become model inputs), ``{}`` for a run without one."""
    path = Path(run_dir) / PREPROCESSING
    return json.loads(path.read_text()) if path.exists() else {}


def read_record(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``RUN_DIR/run.json`` as a dict (empty when absent or unreadable).

    >>> import tempfile
    >>> run_dir = tempfile.mkdtemp()
    >>> update_record(run_dir, checkpointed=12)
    True
    >>> read_record(run_dir)
    {'checkpointed': 12}
    """
    try:
        record = json.loads((Path(run_dir) / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def update_record(run_dir: str | os.PathLike, **values: Any) -> bool:
    """Sets ``values`` in ``RUN_DIR/run.json``, keeping its other entries; False if it could not be written.

    A record that cannot be written (a full disk) keeps its previous content: the checkpoint it would
    describe fails too, and that failure is what the run reports.
    """
    record = read_record(run_dir)
    if all(record.get(k) == v for k, v in values.items()):
        return True
    try:
        write_json(Path(run_dir) / RUN_RECORD, {**record, **values})
    except OSError:
        return False
    return True
