"""cpu_devices: one JAX CPU device per core, set before the backend starts, and a clear error after."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import pytest

from funcnet.train import cpu_devices
from funcnet.train.devices import cores

# A fresh process: cpu_devices must run before JAX's backend starts. XLA_FLAGS forces 8 devices (as in
# this test session), so the result also shows that cpu_devices takes precedence over it.
SCRIPT = """
import sys
import jax
import numpy as np, optax
import funcnet as fn
from funcnet.train import cpu_devices, make_train_step
from funcnet.train.state import create_train_state, data_mesh
n = cpu_devices(int(sys.argv[1]) if len(sys.argv) > 1 else None)
model, opt = fn.dense(1), optax.sgd(0.1)
batch = {"x": np.ones((6, 2), np.float32), "y": np.zeros((6, 1), np.float32), "mask": np.ones(6, np.float32)}
state = create_train_state(model, opt, jax.random.key(0), batch["x"], mesh=data_mesh())
step = make_train_step(model, lambda out, b: ((out - b["y"]) ** 2).mean(-1), opt)
state, metrics = step(state, batch)
print(n, jax.device_count(), len(state.params["kernel"].sharding.device_set), int(state.step))
"""


def run(*args: str) -> list[int]:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return [int(v) for v in done.stdout.split()]


def test_a_fresh_process_gets_that_many_devices_and_the_step_spans_them():
    # n, devices JAX sees, devices the trained params live on, steps taken
    assert run("3") == [3, 3, 3, 1]
    n = cores()
    if 6 % n == 0:  # the default, one device per core, when the 6-example batch splits over them
        assert run() == [n, n, n, 1]


def test_after_the_backend_started_it_says_where_to_call_it():
    jax.devices()  # this process's backend is running (8 forced devices, tests/conftest.py)
    with pytest.raises(RuntimeError, match=r"cpu_devices\(2\).*already started.*8 now.*right after `import jax`"):
        cpu_devices(2)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_bad_count_is_a_value_error(bad):
    with pytest.raises(ValueError, match="expected a positive int"):
        cpu_devices(bad)


def test_the_main_job_takes_one_device_per_core_by_default_and_says_so():
    """In a fresh process without forced devices: as many CPU devices as cores that split the batch."""
    import os
    import subprocess
    import sys

    from funcnet.train.devices import cores, devices_for

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = "from funcnet.train.devices import default_cpu_devices as d; import jax; print(d([32]), jax.device_count())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = devices_for([32], cores())
    if expected > 1:
        assert out.stdout.splitlines()[-1] == f"{expected} {expected}"
        assert f"devices: {expected} CPU devices, one per core" in out.stdout
    else:  # one core: nothing to split over
        assert out.stdout.splitlines()[-1] == "None 1"
    forced = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert forced.stdout.splitlines()[-1] == "None 8"  # XLA_FLAGS chose the devices: they stay
