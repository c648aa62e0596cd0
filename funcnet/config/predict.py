"""``funcnet predict``: JSON lines in, JSON lines out, from a trained run and its task.

Each input line is one request (a JSON object, or for the supervised task also a bare list of features);
each output line is ``{"line": N, ...}`` with the task's outputs, or ``{"line": N, "error": "..."}`` for a
line that cannot be predicted: the other lines still run. Requests are predicted in batches padded to a
few sizes (``batch_sizes``), so a file compiles once per shape bucket, not once per line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..train.run import LoadedRun


class RequestError(ValueError):
    """A request a task cannot predict: the message names the field and what was expected."""


def batch_sizes(largest: int) -> list[int]:
    """The padded batch sizes: powers of two up to ``largest``.

    >>> batch_sizes(64)
    [1, 2, 4, 8, 16, 32, 64]
    """
    sizes = [1]
    while sizes[-1] < largest:
        sizes.append(min(sizes[-1] * 2, largest))
    return sizes


def padded(rows: Sequence[np.ndarray], largest: int) -> tuple[np.ndarray, int]:
    """``rows`` stacked and padded with zeros to the next of ``batch_sizes(largest)``; and how many are real."""
    size = next(s for s in batch_sizes(largest) if s >= len(rows))
    stacked = np.stack(rows)
    pad = np.zeros((size - len(rows), *stacked.shape[1:]), stacked.dtype)
    return np.concatenate([stacked, pad]), len(rows)


def predict_lines(run: LoadedRun, task: Any, lines: Iterable[str], *, batch_size: int = 64) -> Iterator[dict[str, Any]]:
    """One output record per non-blank input line, in order (see the module docstring)."""
    pending: list[tuple[int, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            pending.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            pending.append((number, RequestError(f"not JSON: {error.msg} at column {error.colno}")))
        if len(pending) == batch_size:
            yield from _predict(run, task, pending, batch_size)
            pending = []
    if pending:
        yield from _predict(run, task, pending, batch_size)


def _predict(run: LoadedRun, task: Any, pending: list[tuple[int, Any]], batch_size: int) -> Iterator[dict[str, Any]]:
    outputs: dict[int, dict[str, Any]] = {}
    good = []
    for number, request in pending:
        if isinstance(request, RequestError):
            outputs[number] = {"error": str(request)}
        else:
            try:
                good.append((number, task.prepare_request(run, request)))
            except RequestError as error:
                outputs[number] = {"error": str(error)}
    if good:
        for (number, _), result in zip(good, task.predict(run, [r for _, r in good], batch_size), strict=True):
            outputs[number] = result
    for number, _ in pending:
        yield {"line": number, **outputs[number]}
