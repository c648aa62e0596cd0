"""funcnet serve over real HTTP on loopback: answers, 4xx for bad input without harm, real batching, SIGTERM drains."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

import funcnet.deploy as deploy

pytest.importorskip("fastapi", reason="funcnet serve needs the serve extra: pip install -e '.[serve]'")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Serving an artefact with the runtime alone: importing any of these raises in the server's process.
RUNTIME_ONLY = """
import importlib.abc, runpy, sys
BLOCKED = ("funcnet.layers", "funcnet.train", "funcnet.experiments", "funcnet.config", "optax", "orbax")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.startswith(BLOCKED):
            raise ImportError(name + " may not be imported to serve an artefact")
sys.meta_path.insert(0, Block())
runpy.run_module("funcnet.deploy", run_name="__main__")
"""


def _start(directory, *options, runtime_only=False):
    port = _free_port()
    if runtime_only:
        command = [sys.executable, "-c", RUNTIME_ONLY, str(directory), "--port", str(port), *options]
    else:
        command = [sys.executable, "-m", "funcnet.config.cli", "serve", str(directory), "--port", str(port), *options]
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    process.log = log  # closed by _stop
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise AssertionError(f"the server exited {process.returncode}: {log.read()[-2000:]!r}")
        try:
            if _get(url + "/health") == {"status": "ok"}:
                return process, url
        except OSError:
            time.sleep(0.2)
    _stop(process, signal.SIGKILL)
    raise AssertionError("the server did not answer /health within 120 s")


def _stop(process, signum=signal.SIGTERM) -> int:
    """Sends ``signum`` (0: none, it was sent) and waits for the exit code."""
    if signum:
        process.send_signal(signum)
    try:
        return process.wait(timeout=60)
    finally:
        process.log.close()


def _get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(url, body: bytes | str | dict):
    data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    request = urllib.request.Request(url + "/predict", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def iris_server(iris_artefact):
    process, url = _start(iris_artefact, "--max-wait-ms", "20")
    yield url
    _stop(process)


def test_answers_equal_the_runtimes_and_metadata_and_schema_are_served(iris_server, iris_artefact):
    instances = [[5.0, 3.4, 1.5], {"x": [6.5, 3.0, 5.5]}]
    status, body = _post(iris_server, {"instances": instances})
    assert status == 200 and body["predictions"] == deploy.load(iris_artefact).predict(instances)
    metadata = _get(iris_server + "/metadata")
    assert metadata["kind"] == "supervised" and metadata["batching"]["max_batch"] == 64
    assert metadata["programs"]["forward"]["inputs"][0]["shape"] == ["batch", 3]
    schema = _get(iris_server + "/openapi.json")["paths"]["/predict"]["post"]["requestBody"]["content"]
    example = schema["application/json"]["example"]  # the training means: a request the model takes
    expected = deploy.load(iris_artefact).predict(example["instances"])
    assert _post(iris_server, example) == (200, {"predictions": expected})
    with pytest.raises(urllib.error.HTTPError, match="405"):  # FastAPI's route still answers other methods
        _get(iris_server + "/predict")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"instances": [[1.0, 2.0]]}, 422, "instances[0]: x: expected shape [3], got [2]"),
        ({"instances": [{"y": [1, 2, 3]}]}, 422, "instances[0]: y: not an input of the model"),
        ({"instances": [[1.0, 2.0, 3.0], ["a", 1, 2]]}, 422, "instances[1]: x: expected numbers of dtype float32"),
        ({"inputs": [[1.0, 2.0, 3.0]]}, 422, "instances: expected"),
        ("{oops", 400, "not JSON"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field_and_the_next_request_succeeds(iris_server, body, status, message):
    got, answer = _post(iris_server, body)
    assert got == status and message in answer["detail"], answer
    assert _post(iris_server, {"instances": [[5.0, 3.4, 1.5]]})[0] == 200


def test_a_body_over_the_size_limit_is_refused_before_it_is_read(iris_server):
    # Only the headers are sent: the server answers from Content-Length alone, without reading 2 MB.
    connection = http.client.HTTPConnection(urllib.parse.urlsplit(iris_server).netloc, timeout=30)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(2 << 20))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "the limit is 1048576" in json.loads(response.read())["detail"]
    connection.close()
    assert _post(iris_server, {"instances": [[5.0, 3.4, 1.5]]})[0] == 200


def test_a_body_without_its_length_stops_being_read_at_the_limit(iris_server):
    connection = http.client.HTTPConnection(urllib.parse.urlsplit(iris_server).netloc, timeout=30)
    chunks = (b" " * (64 << 10) for _ in range(32))  # 2 MB, chunked: no Content-Length to refuse it by
    connection.request("POST", "/predict", chunks, {"Content-Type": "application/json"}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "the limit is 1048576" in json.loads(response.read())["detail"]
    connection.close()
    assert _post(iris_server, {"instances": [[5.0, 3.4, 1.5]]})[0] == 200


def test_concurrent_requests_are_batched_into_fewer_compiled_calls(iris_server):
    before = _get(iris_server + "/metadata")["batches"]["calls"]
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda i: _post(iris_server, {"instances": [[5.0, 3.0, float(i) / 8]]}), range(32)))
    assert all(status == 200 for status, _ in answers)
    calls = _get(iris_server + "/metadata")["batches"]["calls"] - before
    assert 1 <= calls < 32, calls
    assert _get(iris_server + "/metadata")["compilations"]["forward"] <= 7  # padded to powers of two up to 64


def test_sigterm_answers_the_requests_in_flight_then_exits(iris_artefact):
    process, url = _start(iris_artefact, "--max-wait-ms", "1500")  # requests wait 1.5 s for their batch
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_post, url, {"instances": [[5.0, 3.4, 1.5]]}) for _ in range(6)]
        time.sleep(0.5)  # in flight: queued, their batch not run yet
        process.send_signal(signal.SIGTERM)
        answers = [future.result(timeout=60) for future in futures]
    assert [status for status, _ in answers] == [200] * 6
    assert _stop(process, 0) in (0, -signal.SIGTERM)  # uvicorn ends by the signal it drained for


def test_an_artefact_is_served_with_no_model_code_importable_and_warms_up(tree_artefact, tmp_path):
    sentences = [{"sentence": " ".join(["a", "good", "film"][: n % 3 + 1] * (n // 3 + 1))} for n in range(6)]
    warmup = tmp_path / "warmup.jsonl"
    warmup.write_text("".join(json.dumps(s) + "\n" for s in sentences))
    process, url = _start(tree_artefact, "--max-batch", "8", "--warmup", str(warmup), runtime_only=True)
    try:
        status, body = _post(url, {"instances": [{"sentence": "a good film"}, "(3 (2 a) (3 good))"]})
        assert status == 200 and body["predictions"] == deploy.load(tree_artefact).predict(
            [{"sentence": "a good film"}, "(3 (2 a) (3 good))"]
        )
        metadata = _get(url + "/metadata")
        assert metadata["kind"] == "tree_sentiment" and metadata["warmup"]["compilations"] >= 4
        schema = _get(url + "/openapi.json")["paths"]["/predict"]["post"]["requestBody"]["content"]
        assert _post(url, schema["application/json"]["example"])[0] == 200
        # any mix of the warm-up's sentences, at any batch size, runs a program the warm-up compiled
        compiled = metadata["compilations"]["forward"]
        for count in (1, 3, 5, 8):
            status, _ = _post(url, {"instances": [sentences[(count * i) % 6] for i in range(count)]})
            assert status == 200
        assert _get(url + "/metadata")["compilations"]["forward"] == compiled
    finally:
        _stop(process)


def test_a_bad_warmup_file_is_refused_with_its_line(iris_artefact, tmp_path):
    warmup = tmp_path / "warmup.jsonl"
    warmup.write_text("[5.0, 3.4, 1.5]\n\n[1.0, 2.0]\n")
    command = [sys.executable, "-m", "funcnet.deploy", str(iris_artefact), "--warmup", str(warmup)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: warm-up request 2: x: expected shape [3], got [2]"
    ], done.stderr
    warmup.write_text("{oops\n")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"{warmup}:1: not JSON" in done.stderr, done.stderr
