"""Requests in, records out: JSON lines, bad lines as error records, batches padded to a few sizes.

What ``funcnet predict`` (a run directory or an artefact) and ``funcnet serve`` share. A handler
(``funcnet.deploy.handlers``) turns one decoded request into model inputs (``prepare``, raising
``RequestError`` that names the field) and a list of prepared requests into one output dict each
(``predict``). Batches are padded to the sizes of ``batch_sizes``, so many requests compile a few
programs, not one per request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np


class RequestError(ValueError):
    """A request that cannot be predicted: the message names the field and what was expected."""


class Handler(Protocol):
    """How one kind of model (a task) reads its requests and writes its outputs."""

    def prepare(self, request: Any) -> Any:
        """One decoded request checked and made ready for ``predict``; RequestError naming the field if wrong."""

    def predict(self, prepared: list[Any], batch_size: int) -> list[dict[str, Any]]:
        """One JSON-ready dict per prepared request, computed in batches of at most ``batch_size``."""

    def example(self) -> Any:
        """A request the handler takes (the OpenAPI schema's example)."""


def batch_sizes(largest: int) -> list[int]:
    """The padded batch sizes: powers of two up to ``largest``.

    >>> batch_sizes(64)
    [1, 2, 4, 8, 16, 32, 64]
    """
    sizes = [1]
    while sizes[-1] < largest:
        sizes.append(min(sizes[-1] * 2, largest))
    return sizes


def padded_size(count: int, largest: int) -> int:
    """The batch size ``count`` requests are padded to: the next of ``batch_sizes(largest)``.

    >>> padded_size(3, 64), padded_size(64, 64)
    (4, 64)
    """
    return next(s for s in batch_sizes(largest) if s >= count)


def padded(rows: Sequence[np.ndarray], largest: int) -> tuple[np.ndarray, int]:
    """``rows`` stacked and padded with zeros to the next of ``batch_sizes(largest)``; and how many are real.

    >>> batch, real = padded([np.ones(2), np.ones(2), np.ones(2)], 64)
    >>> batch.shape, real
    ((4, 2), 3)
    """
    size = padded_size(len(rows), largest)
    stacked = np.stack(rows)
    pad = np.zeros((size - len(rows), *stacked.shape[1:]), stacked.dtype)
    return np.concatenate([stacked, pad]), len(rows)


def decode(line: str) -> Any:
    """A JSON line decoded, or a RequestError saying where it is not JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        return RequestError(f"not JSON: {error.msg} at column {error.colno}")


def predict_lines(handler: Handler, lines: Iterable[str], *, batch_size: int = 64) -> Iterator[dict[str, Any]]:
    """``{"line": N, **outputs}`` or ``{"line": N, "error": ...}`` per non-blank input line, in order; a bad line
    does not stop the others."""
    pending: list[tuple[int, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        pending.append((number, decode(line)))
        if len(pending) == batch_size:
            yield from _numbered(handler, pending, batch_size)
            pending = []
    if pending:
        yield from _numbered(handler, pending, batch_size)


def predict_requests(handler: Handler, requests: Sequence[Any], batch_size: int) -> list[dict[str, Any]]:
    """The outputs of decoded requests, in order: the handler's, or ``{"error": ...}`` for a bad one."""
    outputs: dict[int, dict[str, Any]] = {}
    good = []
    for index, request in enumerate(requests):
        try:
            if isinstance(request, RequestError):
                raise request
            good.append((index, handler.prepare(request)))
        except RequestError as error:
            outputs[index] = {"error": str(error)}
    if good:
        for (index, _), result in zip(good, handler.predict([r for _, r in good], batch_size), strict=True):
            outputs[index] = result
    return [outputs[index] for index in range(len(requests))]


def _numbered(handler: Handler, pending: list[tuple[int, Any]], batch_size: int) -> Iterator[dict[str, Any]]:
    results = predict_requests(handler, [request for _, request in pending], batch_size)
    for (number, _), result in zip(pending, results, strict=True):
        yield {"line": number, **result}
