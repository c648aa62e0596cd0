"""Runs ``funcnet train`` in a subprocess for the resume tests, optionally killing itself.

    python -m tests.train.run_train CONFIG RUN_DIR [--kill-before-step N] [--kill-after-save N]

``--kill-before-step N`` sends SIGKILL to this process just before train step N runs (mid-epoch,
between checkpoints); ``--kill-after-save N`` sends it right after the asynchronous save of step
N has started, while Orbax is still writing. Both are done by wrapping library functions here,
in the test's own process: the library has no test hooks.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from funcnet.config import cli
from funcnet.train import loop
from funcnet.train.checkpoint import Checkpointer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("run_dir")
    parser.add_argument("--kill-before-step", type=int)
    parser.add_argument("--kill-after-save", type=int)
    args = parser.parse_args()

    if args.kill_before_step is not None:
        train_step = loop._train_step  # the step fit runs, on host batches or on device-kept arrays

        def killing_train_step(*a, **kw):
            step = train_step(*a, **kw)

            def run(state, batch):
                if int(state.step) + 1 == args.kill_before_step:
                    os.kill(os.getpid(), signal.SIGKILL)
                return step(state, batch)

            run.jitted = step.jitted
            return run

        loop._train_step = killing_train_step

    if args.kill_after_save is not None:
        save = Checkpointer.save

        def killing_save(self, step, *a, **kw):
            save(self, step, *a, **kw)
            if step == args.kill_after_save:
                os.kill(os.getpid(), signal.SIGKILL)

        Checkpointer.save = killing_save

    return cli.train(args.config, args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
