"""One process of a multi-host run on 127.0.0.1, for tests/train/test_multihost.py.

    python -m tests.train.run_multihost CONFIG RUN_DIR PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS

With NUM_PROCESSES == 1 it is a plain single-process run (no jax.distributed). After training,
every process restores the latest checkpoint and writes its params to RUN_DIR/restored_<id>.npz.
"""

from __future__ import annotations

import os
import sys

config, run_dir, process_id, num_processes, port, devices = sys.argv[1:7]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

if int(num_processes) > 1:
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=int(num_processes), process_id=int(process_id)
    )

from funcnet.train import cli  # noqa: E402
from funcnet.train.config import validate_config  # noqa: E402
from funcnet.train.optim import param_path  # noqa: E402


def main() -> int:
    code = cli.train(config, run_dir)
    run = cli.Run(validate_config(cli.load_config(config)))
    _, state = run.restore(run_dir, "latest")
    leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    arrays = {param_path(path): np.asarray(leaf.addressable_data(0)) for path, leaf in leaves}
    np.savez(os.path.join(run_dir, f"restored_{process_id}.npz"), **arrays)
    print(f"process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices: done", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
