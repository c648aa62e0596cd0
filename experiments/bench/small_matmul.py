"""Why the one-device char-LSTM trails PyTorch on 2 cores: the small matmuls of a recurrent loop.

    python experiments/bench/small_matmul.py                 # ~30 s
    taskset -c 0 python experiments/bench/small_matmul.py    # the same on one core (PyTorch 1 thread)
    python experiments/bench/small_matmul.py --quick         # a few seconds, noisy

A ``lax.scan`` of 100 steps over a carry ``h [32, 256]``, the charlstm workload's recurrent shapes, each
step one of:
  one_gate    ``tanh(h @ W)``, ``W [256, 256]``: one per-gate product
  four_gates  ``h @ W_k`` for the four gates' ``[256, 256]`` blocks, joined, then ``i * f + g * o`` of their
              ``tanh``: funcnet's LSTM on CPU (``funcnet.layers.lstm_scan._recurrent_dot``)
  fused       the same step as ONE ``h @ W [256, 1024]`` product: the LSTM on other platforms
and, outside any loop, ``[1024, 1024] x [1024, 1024]`` (``large``: a product XLA does spread over the
cores) and PyTorch's ``torch.mm`` of ``[32, 256] x [256, 256]`` on 1 thread and on every core.

Figures: microseconds per loop step (or per product), medians of interleaved rounds. If ``four_gates``
is about 4x ``one_gate`` the four products of a step ran one after another; if ``one_gate`` is close to
``torch_mm_1thread`` and far from ``torch_mm_cores``, XLA ran each on one thread. Run it pinned to one
core (``taskset -c 0``) too: ``large`` then shows how much the second core gave it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

from _common import cores, emit, machine, median, table, tune_malloc  # beside this script

STEPS, BATCH, HIDDEN, LARGE = 100, 32, 256, 1024


def jax_systems():
    """name -> (run, units per call): ``run()`` dispatches one call and returns its output."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(BATCH, HIDDEN)).astype(np.float32))
    blocks = [jnp.asarray(rng.normal(size=(HIDDEN, HIDDEN)).astype(np.float32) * 0.05) for _ in range(4)]
    fused_w = jnp.concatenate(blocks, 1)
    large = jnp.asarray(rng.normal(size=(LARGE, LARGE)).astype(np.float32))

    def combine(z):
        a = jnp.tanh(z)
        return a[:, :HIDDEN] * a[:, HIDDEN : 2 * HIDDEN] + a[:, 2 * HIDDEN : 3 * HIDDEN] * a[:, 3 * HIDDEN :]

    steps = {
        "one_gate": (lambda c, w: jnp.tanh(c @ w[0]), blocks),
        "four_gates": (lambda c, w: combine(jnp.concatenate([c @ b for b in w], 1)), blocks),
        "fused": (lambda c, w: combine(c @ w), fused_w),
    }
    systems = {}
    for name, (step, weights) in steps.items():
        loop = jax.jit(lambda c, w, step=step: lax.scan(lambda c, _: (step(c, w), None), c, None, length=STEPS)[0])
        systems[name] = (lambda loop=loop, weights=weights: loop(h, weights), STEPS)
    product = jax.jit(lambda a, b: a @ b)
    systems["large"] = (lambda: product(large, large), 1)
    return systems


def torch_systems(threads: int):
    import torch

    a, b = torch.randn(BATCH, HIDDEN), torch.randn(HIDDEN, HIDDEN)

    def mm(n: int):
        def run():
            torch.set_num_threads(n)
            return a @ b

        return run

    systems = {"torch_mm_1thread": (mm(1), 1)}
    if threads > 1:
        systems[f"torch_mm_{threads}threads"] = (mm(threads), 1)
    return systems


def measure(systems, rounds: int, seconds: float) -> dict[str, list[float]]:
    """Microseconds per unit of each system, per round; systems interleaved, order rotated each round."""
    import jax

    calls = {}
    for name, (run, _) in systems.items():  # warm-up (compiles) and calibration: calls per segment
        jax.block_until_ready(run())
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / 4 or n < 3:
            jax.block_until_ready(run())
            n += 1
        calls[name] = max(3, round(n * seconds / (time.perf_counter() - start)))  # a segment of ~seconds
    names, results = list(systems), {name: [] for name in systems}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run, units = systems[name]
            for _ in range(3):  # untimed: the threads PyTorch left spinning settle first (see _common.py)
                out = run()
            jax.block_until_ready(out)
            start = time.perf_counter()
            for _ in range(calls[name]):
                out = run()
            jax.block_until_ready(out)
            results[name].append((time.perf_counter() - start) / (calls[name] * units) * 1e6)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; --quick: 2)")
    p.add_argument("--quick", action="store_true", help="2 short rounds: a check that it runs")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 7)
    has_torch = importlib.util.find_spec("torch") is not None
    args.systems = ["one_gate", "four_gates", "fused", "large"] + (["torch_mm"] if has_torch else [])
    malloc = tune_malloc("tuned")
    emit(figure="setup", workload="small_matmul", **machine(args, malloc))
    systems = jax_systems()
    if has_torch:
        systems |= torch_systems(cores())
    else:
        print("NOTE: torch is not installed (pip install -e '.[bench]'): no PyTorch reference", flush=True)
    results = measure(systems, args.rounds, 0.1 if args.quick else 0.5)
    rows = []
    for name, values in results.items():
        unit = "us per loop step" if systems[name][1] == STEPS else "us per product"
        emit(figure="latency", workload="small_matmul", system=name, unit=unit, value=round(median(values), 2),
             rounds=[round(v, 2) for v in values])  # fmt: skip
        rows.append([name, unit, median(values)])
    one = median(results["one_gate"])
    rows.append(["four_gates / one_gate", "ratio", median(results["four_gates"]) / one])
    table(f"small_matmul: medians of {args.rounds} rounds, {cores()} core(s)", ["system", "unit", "value"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
