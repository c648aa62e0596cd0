"""Test set-up: 8 host CPU devices, forced before jax is imported, so multi-device code is tested.

One persistent compilation cache for the session, shared by the worker processes and by the processes
the tests start (they inherit the environment): many tests compile the same programs (a model trained,
resumed and sampled in three processes; the same layer in several checks). It starts empty in every
session and is removed at its end; a cache hit runs the same XLA executable a compilation would give.
"""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the first process of the session (the xdist controller)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE = tempfile.mkdtemp(prefix="funcnet-tests-xla-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
else:
    _CACHE = None

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

pytest_plugins = ("tests.trained_runs",)  # iris_run, charlm_run, tree_run: trained once per session


def pytest_report_header(config):
    return f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}"


def pytest_unconfigure(config):
    if _CACHE is not None:
        shutil.rmtree(_CACHE, ignore_errors=True)
