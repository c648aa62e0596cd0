"""Load test of ``funcnet serve`` on loopback: requests/s and latency, with dynamic batching on and off.

    python experiments/bench/serve.py                      # iris and sentiment, 1/4/16/64 clients, ~5 min
    python experiments/bench/serve.py --seconds 2 --models iris
    python experiments/bench/serve.py --models sentiment-sst          # the Tree-LSTM at Tai et al.'s SST sizes
    python experiments/bench/serve.py --seconds 2 --models iris --max-wait-ms 5   # batches wait to fill

Models: the iris MLP (``experiments/configs/iris.toml``) and the Tree-LSTM sentiment model of
``funcnet.experiments.treelstm`` (its default sizes; ``sentiment-sst``: embed 300, hidden 150), each trained for
a few seconds here and exported (``funcnet export``), then served by ``funcnet serve`` in its own process, which
first compiles the programs its warm-up requests need (``--warmup``, the requests the clients send):

  batching on   --max-batch 64 --max-wait-ms 0   (the instances queued while a batch runs form the next;
                                                  ``--max-wait-ms`` here sets another wait)
  batching off  --max-batch 1                    (one compiled call per request)

Each client is a thread with its own keep-alive connection sending one instance per request (encoded once,
over a raw socket: a few microseconds of client Python per request), the next as soon as the answer arrives,
for ``--seconds`` per level. Figures: requests/s, p50 and p99 latency (ms), the batched calls and the programs
compiled during the level. Targets (issue 20): with batching, at 16 clients, at least 3x the requests/s of
batching off, and p99 under 4x the single-client p50. The clients share the machine with the server (2 cores
here): requests/s is what one loopback client process drives, not the server alone.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = (1, 4, 16, 64)
MODES = {"on": ["--max-batch", "64"], "off": ["--max-batch", "1"]}  # and --max-wait-ms (main's option, 0 off)


def train_and_export(model: str, folder: Path) -> tuple[Path, list]:
    """The artefact of a model trained here, and the requests to send it."""
    run, artefact = folder / f"{model}-run", folder / f"{model}-artefact"
    if model == "iris":
        command = ["-m", "funcnet.config.cli", "train", str(ROOT / "experiments/configs/iris.toml"), "-s", str(run),
                   "-o", "trainer.progress=false"]  # fmt: skip
        requests = [[4.5 + i / 10, 3.0, 1.5 + i / 20] for i in range(20)]
    else:
        # the experiment's default model (embed 64, hidden 64, width 24), or with Tai et al.'s SST sizes
        # (sentiment-sst: embed 300, hidden 150), trained for one short epoch
        sizes = ["-o", "model.embed=300", "-o", "model.hidden=150"] if model == "sentiment-sst" else []
        command = ["-m", "funcnet.experiments.treelstm", "--run-dir", str(run), "-o", "trainer.progress=false",
                   "-o", "trainer.epochs=1", "-o", "data.train_size=400", *sizes]  # fmt: skip
        words = ["a", "good", "film", "not", "very", "bad", "plot", "fine"]
        requests = [{"sentence": " ".join(words[(i + j) % len(words)] for j in range(3 + i % 5))} for i in range(20)]
    subprocess.run([sys.executable, *command], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "funcnet.config.cli", "export", str(run), "-o", str(artefact),
                    "--platforms", "cpu"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)  # fmt: skip
    return artefact, requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RawClient:
    """A keep-alive HTTP/1.1 client over a socket, sending requests encoded once: a few microseconds of Python
    per request, so that the clients take little of the cores they share with the server."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    @staticmethod
    def encode(body: bytes) -> bytes:
        head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        return head.encode() + b"\r\n\r\n" + body

    def post(self, request: bytes) -> None:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"answered {head[:40]!r}")
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        while len(self.buffer) < length:
            self.buffer += self._recv()
        self.buffer = self.buffer[length:]

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("the server closed the connection")
        return data


def start(artefact: Path, options: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "funcnet.config.cli", "serve", str(artefact), "--port", str(port), *options]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start")


def metadata(port: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/metadata")
    return json.loads(connection.getresponse().read())


def level(port: int, requests: list, clients: int, seconds: float) -> dict:
    """``clients`` threads sending one instance per request for ``seconds``: requests/s, p50/p99 ms, and the
    batched calls and compilations the server made meanwhile (a compilation inside the window shows in p99)."""
    before = metadata(port)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds
    bodies = [RawClient.encode(json.dumps({"instances": [r]}).encode()) for r in requests]

    def client(index: int) -> None:
        connection = RawClient(port)
        i = index
        while time.monotonic() < stop:
            start = time.perf_counter()
            connection.post(bodies[i % len(bodies)])
            latencies[index].append(time.perf_counter() - start)
            i += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    every = sorted(x for per in latencies for x in per)
    after = metadata(port)
    return {
        "batched_calls": after["batches"]["calls"] - before["batches"]["calls"],
        "compiled_meanwhile": sum(after["compilations"].values()) - sum(before["compilations"].values()),
        "requests_per_s": round(len(every) / elapsed, 1),
        "p50_ms": round(1e3 * statistics.median(every), 2),
        "p99_ms": round(1e3 * every[min(len(every) - 1, int(0.99 * len(every)))], 2),
        "requests": len(every),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="iris,sentiment", help="of iris, sentiment, sentiment-sst")
    parser.add_argument("--seconds", type=float, default=5.0, help="per level (clients x batching)")
    parser.add_argument("--max-wait-ms", default="0", help="how long a batch waits to fill, with batching on")
    args = parser.parse_args(argv)
    print(json.dumps({"figure": "setup", "cpu_count": __import__("os").cpu_count(), "seconds": args.seconds}))
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models.split(","):
            artefact, requests = train_and_export(model, Path(folder))
            warmup = Path(folder) / f"{model}-warmup.jsonl"  # the server compiles what these requests need
            warmup.write_text("".join(json.dumps(r) + "\n" for r in requests))
            rows = {}
            for mode, batch in MODES.items():
                options = [*batch, "--max-wait-ms", args.max_wait_ms if mode == "on" else "0", "--warmup", str(warmup)]
                process, port = start(artefact, options)
                try:
                    print(json.dumps({"figure": "warmup", "model": model, "batching": mode,
                                      **metadata(port)["warmup"]}), flush=True)  # fmt: skip
                    for clients in CLIENTS:
                        rows[mode, clients] = figures = level(port, requests, clients, args.seconds)
                        print(json.dumps({"figure": "serve", "model": model, "batching": mode, "clients": clients,
                                          **figures}), flush=True)  # fmt: skip
                finally:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=60)
            print(f"\n{model}: requests/s, p50 / p99 ms")
            print(f"{'clients':>8} {'batching on':>28} {'batching off':>28}")
            for clients in CLIENTS:
                on, off = rows["on", clients], rows["off", clients]
                print(f"{clients:>8} {on['requests_per_s']:>10} {on['p50_ms']:>8} / {on['p99_ms']:<7} "
                      f"{off['requests_per_s']:>10} {off['p50_ms']:>8} / {off['p99_ms']:<7}")  # fmt: skip
            ratio = rows["on", 16]["requests_per_s"] / rows["off", 16]["requests_per_s"]
            tail = rows["on", 16]["p99_ms"] / rows["on", 1]["p50_ms"]
            target = {"on_over_off_at_16": round(ratio, 2), "met_3x": ratio >= 3,
                      "p99_at_16_over_p50_at_1": round(tail, 2), "met_4x": tail < 4}  # fmt: skip
            print(json.dumps({"figure": "target", "model": model, **target}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
