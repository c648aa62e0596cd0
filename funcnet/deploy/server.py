"""``funcnet serve``: an HTTP JSON service over a request handler, batching concurrent requests.

Endpoints (FastAPI on uvicorn, the ``serve`` extra):

- ``POST /predict`` with ``{"instances": [...]}`` (one or many requests, each what ``funcnet predict`` reads on a
  line) gives ``{"predictions": [...]}`` (each what it writes). A bad instance gets 422 naming it and its
  field (``instances[1]: x: expected shape [3], got [2]``); a body that is not JSON 400; one over the size
  limit 413. The server carries on either way.
- ``GET /health``; ``GET /metadata``: the model's kind and signature, the batching options, and the
  compilations and batched calls so far; ``GET /openapi.json`` and ``/docs``.

Dynamic batching, as TF Serving's and Triton's: instances from concurrent requests wait in one queue; a
worker takes up to ``max_batch`` of them, waiting at most ``max_wait`` after the first, and predicts them
in ONE call of the handler, whose batches are padded to powers of two (``funcnet.deploy.requests``), so the
compilations stay few. ``max_batch=1`` turns batching off. The compiled calls run in one worker thread, off
the event loop, so a slow batch never stalls the requests arriving meanwhile. SIGTERM (and Ctrl-C) stop
accepting connections, answer the requests in flight, then exit.

Warm-up, as TF Serving's ``assets.extra/tf_serving_warmup_requests`` and Triton's ``model_warmup``: with
``warmup`` requests (``--warmup FILE``, JSON lines as ``funcnet predict`` reads), the server predicts batches of
every padded size made of them before it accepts a connection, so the programs those requests need are
compiled at start, not during the first minutes of traffic (a compilation stalls its batch for a fraction of
a second). ``/metadata`` reports what the warm-up compiled and how long it took.
"""

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .requests import Handler, RequestError, batch_sizes, decode

MAX_BATCH = 64
MAX_WAIT_MS = 0.0  # a batch is what queued while the last one ran
MAX_REQUEST_KB = 1024
MAX_INSTANCES = 1024  # instances in one request


class Batcher:
    """One queue of prepared instances and the task that predicts them in batches (see the module docstring)."""

    def __init__(self, handler: Handler, max_batch: int, max_wait: float):
        if max_batch < 1 or max_wait < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait >= 0, got {max_batch}, {max_wait}")
        self.handler, self.max_batch, self.max_wait = handler, max_batch, max_wait
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future]] = asyncio.Queue()
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="funcnet-predict")
        self.calls = self.instances = 0  # batched calls of the handler, and the instances they held

    async def submit(self, prepared: list[Any]) -> list[dict[str, Any]]:
        """The outputs of prepared instances, in order, once the batches holding them have run."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in prepared]
        for item, future in zip(prepared, futures, strict=True):
            self.queue.put_nowait((item, future))
        return list(await asyncio.gather(*futures))

    async def run(self) -> None:
        """Forever: take a batch from the queue, predict it in the worker thread, answer its instances."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            items = [item for item, _ in batch]
            try:
                results = await loop.run_in_executor(self.worker, self.handler.predict, items, self.max_batch)
            except Exception as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.calls, self.instances = self.calls + 1, self.instances + len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


def warmup_batches(requests: list[Any], max_batch: int) -> list[list[Any]]:
    """The batches a warm-up predicts: at every padded size, each request repeated to fill it, and the requests
    taken in turn from each offset (sizes between the extremes, for models whose shapes follow the content).

    >>> warmup_batches(["a", "bb"], 2)
    [['a'], ['bb'], ['a', 'a'], ['bb', 'bb'], ['a', 'bb'], ['bb', 'a']]
    """
    batches = []
    for size in batch_sizes(max_batch):
        batches += [[request] * size for request in requests]
        if size > 1:
            batches += [[requests[(k + i) % len(requests)] for i in range(size)] for k in range(len(requests))]
    return batches


def prepared_warmup(handler: Handler, requests: list[Any]) -> list[Any]:
    """The warm-up requests prepared; RequestError naming the first the handler refuses (1-based)."""
    prepared = []
    for number, request in enumerate(requests, 1):
        try:
            prepared.append(handler.prepare(request))
        except RequestError as bad:
            raise RequestError(f"warm-up request {number}: {bad}") from None
    return prepared


def warm_up(handler: Handler, prepared: list[Any], max_batch: int, compilations: Callable[[], dict[str, int]]):
    """Predicts the ``warmup_batches`` of prepared requests; what it compiled and how long it took."""
    began, before = time.perf_counter(), sum(compilations().values())
    for batch in warmup_batches(prepared, max_batch):
        handler.predict(batch, max_batch)
    return {
        "requests": len(prepared),
        "compilations": sum(compilations().values()) - before,
        "seconds": round(time.perf_counter() - began, 2),
    }


def read_warmup(path: str) -> list[Any]:
    """The requests of a warm-up file (JSON lines; blank lines skipped); OSError or RequestError naming the line."""
    with open(path, encoding="utf-8") as lines:
        requests = [(number, decode(line)) for number, line in enumerate(lines, 1) if line.strip()]
    for number, request in requests:
        if isinstance(request, RequestError):
            raise RequestError(f"{path}:{number}: {request}")
    if not requests:
        raise RequestError(f"{path}: no warm-up requests in it")
    return [request for _, request in requests]


class Front:
    """The ASGI layer before FastAPI: 413 for a body whose Content-Length is over ``limit`` (before it is read),
    and ``POST /predict`` answered by ``answer(body) -> (status, JSON bytes)`` directly. FastAPI's route for it
    does the same and gives the OpenAPI schema and ``/docs``; going through FastAPI's middleware, routing and
    exception layers would cost more host time per request than a small model's whole batch does."""

    def __init__(self, app, limit: int, answer: Callable[[bytes], Any]):
        self.app, self.limit, self.answer = app, limit, answer

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            detail = f"request body of {length.decode(errors='replace')} bytes: the limit is {self.limit}"
            return await _send(send, 413, _detail(f"{detail} (--max-request-kb)"))
        if scope["path"] != "/predict" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more and len(body) <= self.limit:  # a body sent without its length stops being read at the limit
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body, more = body + message.get("body", b""), message.get("more_body", False)
        await _send(send, *await self.answer(body))


def _detail(message: str) -> bytes:
    return json.dumps({"detail": message}).encode()


async def _send(send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def make_app(
    handler: Handler,
    metadata: dict[str, Any],
    compilations: Callable[[], dict[str, int]],
    *,
    max_batch: int = MAX_BATCH,
    max_wait_ms: float = MAX_WAIT_MS,
    max_request_kb: int = MAX_REQUEST_KB,
    warmup: list[Any] | None = None,
):
    """The FastAPI application serving ``handler``; ``metadata`` (the model's kind and signature) and
    ``compilations()`` (programs compiled so far) are reported by ``GET /metadata``. With ``warmup`` requests,
    the application predicts them in batches of every padded size when it starts (``warm_up``).

    Raises:
      ImportError: FastAPI is not installed (the ``serve`` extra).
      RequestError: a warm-up request the handler refuses.
    """
    prepared = prepared_warmup(handler, warmup or [])
    # Imported here, so that the options below need no serve extra; and without ``from __future__ import
    # annotations`` in this module, so that FastAPI reads ``request: Request`` as the class, not a name.
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    state: dict[str, Any] = {}
    limit = max_request_kb * 1024

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher = state["batcher"] = Batcher(handler, max_batch, max_wait_ms / 1000)
        if prepared:
            work = (handler, prepared, max_batch, compilations)
            state["warmup"] = await asyncio.get_running_loop().run_in_executor(batcher.worker, warm_up, *work)
        task = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            task.cancel()
            batcher.worker.shutdown(wait=True)

    version = metadata.get("versions", {}).get("funcnet", "")
    app = FastAPI(title="funcnet model server", version=version, lifespan=lifespan)

    async def answer(body: bytes) -> tuple[int, bytes]:
        """The status and JSON body answering a ``POST /predict`` body."""
        if len(body) > limit:
            return 413, _detail(f"request body of {len(body)} bytes: the limit is {limit} (--max-request-kb)")
        try:
            decoded = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as bad:
            return 400, _detail(f"not JSON: {bad}")
        if not isinstance(decoded, dict) or not isinstance(decoded.get("instances"), list):
            return 422, _detail('instances: expected {"instances": [...]}, a list of requests')
        instances = decoded["instances"]
        if not instances or len(instances) > MAX_INSTANCES:
            return 422, _detail(f"instances: expected 1 to {MAX_INSTANCES} requests, got {len(instances)}")
        prepared = []
        for index, instance in enumerate(instances):
            try:
                prepared.append(handler.prepare(instance))
            except RequestError as bad:
                return 422, _detail(f"instances[{index}]: {bad}")
        try:
            return 200, json.dumps({"predictions": await state["batcher"].submit(prepared)}).encode()
        except Exception as failed:
            return 500, _detail(f"prediction failed: {type(failed).__name__}: {failed}")

    app.add_middleware(Front, limit=limit, answer=answer)
    body_schema = {"type": "object", "required": ["instances"], "properties": {"instances": {"type": "array"}}}

    @app.post("/predict", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": body_schema, "example": {"instances": [handler.example()]}}}}})  # fmt: skip
    async def predict(request: Request):
        """Predicts ``{"instances": [...]}``; answers ``{"predictions": [...]}`` in the same order."""
        status, body = await answer(await request.body())
        return Response(body, status_code=status, media_type="application/json")

    @app.get("/health")
    async def health():
        """``{"status": "ok"}`` while the server answers."""
        return {"status": "ok"}

    @app.get("/metadata")
    async def describe():
        """The model (kind, signature), the batching options, and the compilations and batched calls so far."""
        batcher = state["batcher"]
        return {
            **metadata,
            "batching": {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_request_kb": max_request_kb},
            "compilations": compilations(),
            "batches": {"calls": batcher.calls, "instances": batcher.instances},
            "warmup": state.get("warmup"),
        }

    return app


def add_options(parser: argparse.ArgumentParser) -> None:
    """The server's options (``funcnet serve``, ``python -m funcnet.deploy``); ``app_options`` reads them."""
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH, help="instances per compiled call (1: no batching)")
    parser.add_argument("--max-wait-ms", type=float, default=MAX_WAIT_MS, help="how long a batch waits to fill")
    parser.add_argument("--max-request-kb", type=int, default=MAX_REQUEST_KB, help="the largest request body")
    parser.add_argument("--warmup", metavar="FILE", help="requests (JSON lines) to compile the programs for at start")


def app_options(args: argparse.Namespace) -> dict[str, Any]:
    """``make_app``'s keyword options from the parsed ``add_options`` (reading the warm-up file).

    Raises:
      OSError, RequestError: the warm-up file cannot be read, or a line of it is not JSON.
    """
    warmup = read_warmup(args.warmup) if args.warmup else None
    return {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "max_request_kb": args.max_request_kb,
            "warmup": warmup}  # fmt: skip


def serve(app, host: str, port: int) -> None:
    """Runs ``app`` until SIGTERM or Ctrl-C, which answer the requests in flight first (uvicorn's graceful exit)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
