"""CPU cores as data-parallel devices: ``cpu_devices`` makes JAX's CPU backend expose one device per core.

JAX's CPU backend is ONE device by default, and XLA runs the small kernels of a recurrent step one
after another on it. With one device per core, ``make_train_step`` and ``fit`` (whose mesh is every
device) split each batch across the cores and run the shards side by side, then average the
gradients: the same step, to float rounding. Not every step gains (a step that is a few large
matmuls already keeps both cores busy, and a tiny one is mostly fixed costs): measure yours with and
without it (``docs/design.md`` has the character LSTM's figures).

``fit`` keeps at most 2 steps in flight on such a mesh: with more queued, XLA's CPU collectives
have stalled (``funcnet.train.batch_feed.max_in_flight``). A loop of your own should do the same.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import jax


def cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_devices(n: int | None = None) -> int:
    """Makes JAX's CPU backend expose ``n`` devices (default: one per core); returns ``n``.

    Call it right after ``import jax``, before any JAX computation, array or device query: the
    backend reads the setting once, when it starts. It sets ``jax_num_cpu_devices``, which takes
    precedence over ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``. The global batch
    must then be a multiple of ``n`` (``make_train_step`` says so if not).

    Args:
      n: the number of CPU devices, >= 1; None: ``cores()``.

    Raises:
      ValueError: ``n`` is not a positive int.
      RuntimeError: JAX's backends have already started; the message says where to call it.

    Example (in a fresh process)::

        import jax
        from funcnet.train import cpu_devices, fit
        cpu_devices()  # before anything else touches JAX
        ...            # fit / make_train_step now split every batch over the cores
    """
    n = cores() if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"cpu_devices: expected a positive int (or None for one per core), got {n!r}")
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as error:  # JAX's own message names its config key, not this call
        raise RuntimeError(
            f"cpu_devices({n}): JAX's backends have already started, so the number of CPU devices is fixed "
            f"({jax.local_device_count('cpu')} now). Fix: call cpu_devices() right after `import jax`, before any "
            "array, computation or jax.devices() call."
        ) from error
    return n


def devices_for(batch_sizes: Sequence[int], cores: int) -> int:
    """The most devices, at most ``cores``, that split every batch size evenly.

    >>> devices_for([32], 2), devices_for([32], 3), devices_for([30, 12], 8)
    (2, 2, 6)
    """
    return max(d for d in range(1, cores + 1) if all(size % d == 0 for size in batch_sizes))


def default_cpu_devices(batch_sizes: Sequence[int]) -> int | None:
    """One CPU device per core, for a job whose step gains from it, unless the devices are already chosen.

    Does nothing (returns None) when ``XLA_FLAGS`` forces a device count, when JAX's backends have
    started, or on a single core. Otherwise makes as many CPU devices as the largest divisor of every
    batch size that is at most ``cores()`` (every batch must split evenly), and returns that number.
    On a machine with an accelerator the CPU devices go unused: the mesh takes the accelerator's.
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "") or cores() < 2:
        return None
    n = devices_for(batch_sizes, cores())
    try:
        chosen = cpu_devices(n) if n > 1 else None
    except RuntimeError:  # the backend started already: its devices stay
        return None
    if chosen and jax.default_backend() == "cpu":
        print(f"devices: {chosen} CPU devices, one per core, each batch split across them (--cpu-devices 1: one)")
    return chosen


def add_cpu_devices_flag(parser: argparse.ArgumentParser) -> None:
    """Adds ``--cpu-devices [N]`` to a command: N JAX CPU devices, the flag alone one per core."""
    parser.add_argument(
        "--cpu-devices", metavar="N", nargs="?", const="cores",
        help="run on N JAX CPU devices (alone: one per core), each batch split across them (funcnet.train.cpu_devices)",
    )  # fmt: skip


def use_cpu_devices_flag(parser: argparse.ArgumentParser, value: str | None) -> None:
    """Applies ``--cpu-devices``'s value (None: not given) with ``cpu_devices``, before anything starts JAX's
    backend; a bad value is ``parser.error`` (exit 2) naming the flag."""
    if value is None:
        return
    try:
        if value != "cores" and not value.isdigit():
            raise ValueError(f"expected a positive int, or nothing for one device per core, got {value!r}")
        cpu_devices(None if value == "cores" else int(value))
    except ValueError as error:
        parser.error(f"--cpu-devices: {error}")
