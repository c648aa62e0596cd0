"""Shared by the side-by-side benchmarks (mlp.py, charlstm.py, fit.py, input.py): one method for all.

Method (it held up in ``treelstm.py``): every system runs in ONE process; each is built and warmed up
(all compilations done) before timing; then each round runs every system for the same number of steps,
in an order rotated by one each round; a JAX segment that follows a PyTorch one starts with ~50 ms of
untimed steps (PyTorch's OpenMP threads keep spinning after their work); every timed segment is checked
for compilations (the jitted step's ``_cache_size()`` and a process-wide count of XLA compilations).
A figure is the median over rounds; a ratio is the median over rounds of the per-round ratio.

glibc's malloc settings move every system's speed by 1.3-1.5x on these machines, so ``start`` sets them
once, at start-up, for the whole process (every system alike), and the setup line says which.

Nothing heavy is imported here: ``start`` must run (malloc, JAX platform) before jax or torch load.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[2]
# system -> the module it needs
PEERS = {"flax": "flax", "haiku": "haiku", "equinox": "equinox", "torch": "torch", "torch_bf16": "torch"}
INSTALL_HINT = "pip install -e '.[bench]'"
SETTLE_SECONDS = 0.05


# ---------------------------------------------------------------- start-up


def tune_malloc(mode: str) -> str:
    """Applies the glibc malloc setting to this process (so to every system alike); returns what it did."""
    if mode == "tuned":  # no mmap for large blocks, no trimming: freed pages are reused, not faulted in again
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        if not (libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**30)):
            raise RuntimeError("mallopt failed")
        return "mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB) at start-up, for all systems"
    env = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    return f"glibc defaults for all systems (environment: {env or 'none'})"


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parser(
    description: str, systems: Sequence[str], rounds: int, quick_skips: Sequence[str] = ()
) -> argparse.ArgumentParser:
    """The options every script shares; scripts add their own. ``quick_skips``: systems that ``--quick``
    leaves out unless ``--systems`` names them (diagnostics with no target, to keep the check short)."""
    p = argparse.ArgumentParser(description=description)
    skips = f"; --quick leaves out {','.join(quick_skips)}" if quick_skips else ""
    p.add_argument(
        "--systems", default=None, help=f"comma-separated subset of {','.join(systems)} (default: all{skips})"
    )
    p.set_defaults(quick_skips=tuple(quick_skips))
    p.add_argument("--rounds", type=int, default=None, help=f"timed rounds (default {rounds}; --quick: fewer)")
    p.add_argument("--steps", type=int, default=None, help="steps per system per round (default: calibrated)")
    p.add_argument("--quick", action="store_true", help="fewer and shorter rounds: a noisy check in well under 2 min")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="JAX platform and torch device")
    p.add_argument("--malloc", choices=("tuned", "default"), default="tuned")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=None, help="PyTorch intra-op threads (default: cores)")
    return p


def subset(p: argparse.ArgumentParser, flag: str, text: str, allowed: Sequence[str]) -> list[str]:
    """The comma-separated names in ``text``; a parser error unless they are a non-empty subset of ``allowed``."""
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(allowed))
    if unknown or not chosen:
        p.error(f"{flag}: unknown {unknown}; choose from {','.join(allowed)}")
    return chosen


def default_systems(text: str | None, systems: Sequence[str], quick: bool, quick_skips: Sequence[str]) -> str:
    """``--systems``' value: ``text`` if given, else every system but, with ``--quick``, ``quick_skips``."""
    return text if text is not None else ",".join(s for s in systems if not (quick and s in quick_skips))


def parse(p: argparse.ArgumentParser, argv, systems: Sequence[str]) -> argparse.Namespace:
    """Parses and checks ``--systems``; drops optional peers that are not installed (said on stdout)."""
    args = p.parse_args(argv)
    chosen = subset(p, "--systems", default_systems(args.systems, systems, args.quick, args.quick_skips), systems)
    args.skipped = {}
    for name in list(chosen):
        module = PEERS.get(name)
        if module and importlib.util.find_spec(module) is None:
            args.skipped[name] = f"{module} is not installed ({INSTALL_HINT})"
            chosen.remove(name)
    if not chosen:
        p.error(f"--systems: nothing left to run ({'; '.join(args.skipped.values())})")
    args.systems = chosen
    for name in ("rounds", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name}: expected a positive int, got {value}")
    return args


def start(args: argparse.Namespace) -> str:
    """Before jax or torch is imported: malloc setting and JAX platform. Returns the malloc description."""
    malloc = tune_malloc(args.malloc)
    os.environ["JAX_PLATFORMS"] = "cuda" if args.device == "gpu" else "cpu"
    for name, reason in args.skipped.items():
        print(f"NOTE: skipping {name}: {reason}", flush=True)
        emit(figure="skipped", system=name, reason=reason)
    load = os.getloadavg()[0]
    if load > 0.5:
        print(
            f"NOTE: load average {load:.1f} on {cores()} cores before the start: other processes share the CPU; "
            "every figure moves, PyTorch's spinning OpenMP threads most (compare with --torch-threads 1)",
            flush=True,
        )
    return malloc


def torch_device(args: argparse.Namespace):
    """The torch device for ``--device``, with ``--torch-threads`` intra-op threads (default: cores)."""
    import torch

    torch.set_num_threads(args.torch_threads or cores())
    device = args.device
    if device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("--device gpu: torch sees no CUDA device; install a CUDA build of torch or drop torch")
    return torch.device("cuda" if device == "gpu" else "cpu")


# ---------------------------------------------------------------- records


def emit(**record: Any) -> None:
    """One JSON line per figure."""
    print(json.dumps(record), flush=True)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*argv: str) -> str:
    try:
        out = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    """The checkout's short commit, with ``+uncommitted`` when tracked files differ from it."""
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return _git("rev-parse", "--short", "HEAD") + ("+uncommitted" if dirty else "")


def machine(args: argparse.Namespace, malloc: str) -> dict[str, Any]:
    """Machine, versions, device and the exact command: the ``setup`` record."""
    import jax

    packages = ("jax", "jaxlib", "optax", "numpy", "flax", "dm-haiku", "equinox", "torch", "orbax-checkpoint")
    devices = jax.devices()
    info = {
        "command": " ".join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "cpu": cpu_model(),
        "cores": cores(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": {p: v for p in packages if (v := _version(p))},
        "funcnet_commit": commit(),
        "device": f"{len(devices)} x {devices[0].platform} ({devices[0].device_kind})",
        "malloc": malloc,
        "rounds": args.rounds,
        "systems": args.systems,
    }
    if any(s.startswith("torch") for s in args.systems):
        import torch

        info["torch_threads"] = torch.get_num_threads()
    return info


# ---------------------------------------------------------------- compilations


class _Compiles:
    """A process-wide count of XLA backend compilations (any jit, any thread)."""

    def __init__(self):
        self.count = 0
        self.registered = False

    def register(self) -> None:
        if self.registered:
            return
        import jax.monitoring

        def listen(event: str, duration: float, **kwargs) -> None:
            del duration, kwargs
            if event == "/jax/core/compile/backend_compile_duration":
                self.count += 1

        jax.monitoring.register_event_duration_secs_listener(listen)
        self.registered = True


COMPILES = _Compiles()


def warm_jax() -> None:
    """Traces, compiles and runs a small scanned Adam step, so that no system pays JAX's and optax's one-time
    costs (first trace of grad, scan and the optimizer) in its timed first step."""
    import jax
    import jax.numpy as jnp
    import optax

    COMPILES.register()
    optimizer = optax.adam(1e-3)

    def loss(params, xs):
        h = jax.lax.scan(lambda h, x: (jnp.tanh(x @ params["w"] + h), None), jnp.zeros((2, 8)), xs)[0]
        return optax.softmax_cross_entropy_with_integer_labels(h, jnp.zeros(2, jnp.int32)).mean()

    @jax.jit
    def step(params, opt_state, xs):
        value, grads = jax.value_and_grad(loss)(params, xs)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    params = {"w": jnp.ones((8, 8))}
    jax.block_until_ready(step(params, optimizer.init(params), jnp.ones((3, 2, 8))))


# ---------------------------------------------------------------- systems


class Segment(NamedTuple):
    """What a self-timed system reports for one segment."""

    seconds: float
    compiles: int  # XLA compilations inside its timed window


class System(NamedTuple):
    """One system under test.

    ``run(n)`` trains ``n`` steps and waits for the result; it returns None (the caller times it) or a
    ``Segment`` when the system times a window of its own (``fit``). ``kind`` is ``"jax"``, ``"torch"``
    or ``"host"``.
    """

    name: str
    kind: str
    run: Callable[[int], Segment | None]
    loss: Callable[[], float] = lambda: float("nan")  # the loss of the last step (before its update)
    cache_size: Callable[[], int] | None = None  # the jitted step's compiled-program count
    settle: bool = True  # run ~50 ms of untimed steps when following a PyTorch segment


def _settle(system: System, seconds: float = SETTLE_SECONDS) -> None:
    start = time.perf_counter()
    while True:
        system.run(1)
        if time.perf_counter() - start >= seconds:
            return


def _segment(system: System, steps: int) -> Segment:
    cache = system.cache_size() if system.cache_size else 0
    compiles = COMPILES.count
    start = time.perf_counter()
    out = system.run(steps)
    seconds = time.perf_counter() - start
    if out is not None:
        return out
    extra = (system.cache_size() - cache) if system.cache_size else 0
    return Segment(seconds, max(extra, COMPILES.count - compiles))


def measure(systems: Sequence[System], rounds: int, steps: int, unit: str = "steps/s") -> dict[str, list[Segment]]:
    """Interleaved rounds, order rotated by one each round; ``steps`` per system per segment."""
    systems = list(systems)
    results: dict[str, list[Segment]] = {s.name: [] for s in systems}
    for r in range(rounds):
        previous = "jax"
        for system in systems[r % len(systems) :] + systems[: r % len(systems)]:
            if system.kind == "jax" and system.settle and previous == "torch":
                _settle(system)
            segment = _segment(system, steps)
            if segment.compiles:
                print(f"WARNING: {system.name} compiled {segment.compiles}x inside a timed segment (round {r + 1})")
            results[system.name].append(segment)
            previous = system.kind
        shown = ", ".join(f"{n} {steps / v[-1].seconds:,.1f}" for n, v in results.items())
        print(f"round {r + 1}/{rounds} ({steps} steps each): {unit} {shown}", flush=True)
    return results


# ---------------------------------------------------------------- figures


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of the per-round ratios."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def throughput(
    workload: str,
    results: dict[str, list[Segment]],
    steps: int,
    *,
    reference: str,
    per_step: float = 1.0,
    unit: str = "steps/s",
) -> dict[str, dict]:
    """Emits one ``throughput`` record per system; returns them by name."""
    rows = {}
    ref = results.get(reference)
    for name, segments in results.items():
        rates = [per_step * steps / s.seconds for s in segments]
        row = {
            "figure": "throughput",
            "workload": workload,
            "system": name,
            "unit": unit,
            "value": round(median(rates), 2),
            "ratio_to": reference if ref else None,
            "ratio": round(ratio([ref_s.seconds for ref_s in ref], [s.seconds for s in segments]), 3) if ref else None,
            "steps_per_round": steps,
            "rounds": [round(x, 2) for x in rates],
            "compiles_in_timed": sum(s.compiles for s in segments),
        }
        emit(**row)
        rows[name] = row
    return rows


def target(workload: str, name: str, value: float | None, threshold: float, higher_is_better: bool = True) -> None:
    """Emits a ``target`` record: whether ``value`` meets ``threshold``."""
    met = None if value is None else (value >= threshold if higher_is_better else value <= threshold)
    op = ">=" if higher_is_better else "<="
    emit(figure="target", workload=workload, name=name, value=value, threshold=f"{op} {threshold}", met=met)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Prints a plain-text table."""
    cells = [[str(c) for c in header]] + [[_show(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


@contextlib.contextmanager
def quiet():
    """Sends stdout and stderr (progress bars, log lines) to /dev/null; they are still written."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        yield
