"""The ``funcnet`` command: train from a config file, evaluate a run.

    funcnet train CONFIG -s RUN_DIR [-o key=value ...]   # train, or resume if RUN_DIR has checkpoints
    funcnet train CONFIG -s RUN_DIR --restart            # start over (the old checkpoints moved aside)
    funcnet train CONFIG -s RUN_DIR --cpu-devices [N]    # on N JAX CPU devices (alone: one per core)
    funcnet train CONFIG -s RUN_DIR --coordinator HOST:PORT --num-processes N --process-id I  # one of N processes
    funcnet evaluate RUN_DIR [--split validation|test|train] [--checkpoint best|latest|STEP] [--data key=value]
    funcnet predict RUN_DIR|ARTEFACT [INPUT|-] [--checkpoint best|latest|STEP]   # JSON lines in and out
    funcnet export RUN_DIR -o ARTEFACT [--checkpoint best|latest|STEP] [--platforms cpu,cuda]  # no code needed
    funcnet serve RUN_DIR|ARTEFACT [--host 127.0.0.1] [--port 8000] [--max-batch 64] [--max-wait-ms 0]  # HTTP

Every config error (unknown keys, wrong types, missing values, unknown component types) is
reported with its key path before anything is built or compiled. ``RUN_DIR`` receives
``config.json`` (the resolved config), ``checkpoints/``, ``logs/`` and ``results.json``.

Exit codes: 0 finished (early stopping included); 130 / 143 stopped by SIGINT / SIGTERM after saving
(every process of a multi-process run saves the same step); 1 failed (a NaN, a lost peer process);
2 a bad config or command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax

from ..datasets import cache
from ..deploy import ArtefactError, server
from ..deploy.export import PLATFORMS
from ..deploy.requests import RequestError, predict_lines
from ..train.checkpoint import CheckpointError, CheckpointSaveError
from ..train.data import BatchSplitError
from ..train.devices import add_cpu_devices_flag, use_cpu_devices_flag
from ..train.distributed import Processes, SetupError, join
from ..train.lock import RunLocked
from ..train.stopping import BAD_CONFIG, FAILED
from ..validation import ConfigError
from .deployment import export_run, served
from .run_config import apply_overrides, import_modules, load_config
from .runs import load_run
from .tasks import choose_devices as choose_task_devices
from .tasks import task_of, train_run


def resolve(config_path: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The config file with overrides applied, its ``imports`` imported and its task's checks passed: the
    resolved config that ``config.json`` holds."""
    config = apply_overrides(load_config(config_path), overrides)
    import_modules(config, search_dirs=[os.getcwd(), os.path.dirname(os.path.abspath(config_path))])
    return task_of(config).resolve(config)


def train(
    config_path: str,
    run_dir: str,
    overrides: Sequence[str] = (),
    processes: Processes | None = None,
    restart: bool = False,
    choose_devices: bool = False,
) -> int:
    """``funcnet train``: returns the process exit code (``funcnet.train.stopping.exit_code``).

    ``processes``: how to join a multi-process run (``--coordinator``, ``--num-processes``, ``--process-id``);
    with None, or all three None, the run is joined only where JAX detects a cluster launcher (``srun``,
    ``mpirun``, Cloud TPU). The config is validated first: a bad config exits before any process waits.
    ``restart``: start over from step 0, the previous checkpoints moved aside (``fit(restart=True)``).
    ``choose_devices``: no ``--cpu-devices`` was given: a task whose step gains from one CPU device per core
    gets them (``Task.one_device_per_core``).
    """
    resolved = resolve(config_path, overrides)
    if choose_devices:
        choose_task_devices(resolved)
    if join(*(processes or Processes()), peer_timeout=resolved["trainer"]["peer_timeout"]):
        print(f"process {jax.process_index()} of {jax.process_count()} joined the run: {jax.device_count()} devices")
    return train_run(resolved, run_dir, restart=restart)


def evaluate_run(
    run_dir: str, split: str = "validation", checkpoint: str = "best", data: Sequence[str] = ()
) -> dict[str, float]:
    """``funcnet evaluate``: metrics of a checkpoint of ``run_dir`` on a split.

    ``data`` overrides keys of the run's dataset section (``path=other.txt``), to evaluate the
    trained model on other data built by the same dataset factory.
    """
    run = load_run(run_dir, checkpoint=checkpoint)  # the model and parameters only: no optimizer
    task = task_of(run.config)
    config = apply_overrides(run.config, [f"{task.data_section}.{item}" for item in data])
    return {"checkpoint": run.step, "split": split, **task.evaluate(run, config, split)}


def predict_run(directory: str, source: str = "-", checkpoint: str = "best", batch_size: int = 64) -> int:
    """``funcnet predict``: one JSON line out per JSON line in (``funcnet.deploy.requests``), from a run directory
    or an artefact; 0, or 1 if any line failed."""
    handler = served(directory, checkpoint).handler
    failed = 0
    stream = sys.stdin if source == "-" else open(source, encoding="utf-8")
    try:
        for record in predict_lines(handler, stream, batch_size=batch_size):
            failed += "error" in record
            print(json.dumps(record), flush=True)
    finally:
        if stream is not sys.stdin:
            stream.close()
    if failed:
        print(f"{failed} line(s) could not be predicted; their records say why", file=sys.stderr)
    return 1 if failed else 0


def serve_directory(args: argparse.Namespace) -> int:
    """``funcnet serve``: until SIGTERM or Ctrl-C (``funcnet.deploy.server``)."""
    model = served(args.run_dir, args.checkpoint)
    try:
        app = server.make_app(model.handler, model.metadata, model.compilations, **server.app_options(args))
    except ImportError as missing:
        fix = "Fix: pip install 'funcnet[serve]'"
        raise ConfigError("", f"funcnet serve needs the serve extra ({missing}). {fix}") from None
    except (OSError, RequestError) as bad:
        raise ConfigError("--warmup", str(bad)) from None
    print(f"serving {args.run_dir} ({model.metadata['kind']}) at http://{args.host}:{args.port}: POST /predict, "
          "GET /health, /metadata, /docs", flush=True)  # fmt: skip
    server.serve(app, args.host, args.port)
    return 0


def data_command(action: str, names: Sequence[str]) -> int:
    """``funcnet data list``: each data set, where it comes from and whether it is fetched; ``funcnet data fetch
    NAME...``: download into the cache (``funcnet.datasets.cache``), checking every file's SHA-256."""
    if action == "list":
        for name, source in cache.SOURCES.items():
            state = "fetched" if cache.is_fetched(name) else "not fetched"
            print(f"{name:<16} {state:<12} {source.about}")
        print(f"cache: {cache.cache_folder()} (set FUNCNET_DATA to move it)")
        return 0
    unknown = [name for name in names if name not in cache.SOURCES]
    if not names or unknown:
        print(f"error: name data sets to fetch, of {', '.join(cache.SOURCES)}; got {list(unknown or names)}",
              file=sys.stderr)  # fmt: skip
        return BAD_CONFIG
    try:
        for name in names:
            cache.fetch(name)
    except (cache.DataFetchError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return FAILED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``funcnet`` console script."""
    parser = argparse.ArgumentParser(prog="funcnet", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p_train = commands.add_parser("train", help="train from a config file (resumes if RUN_DIR has checkpoints)")
    p_train.add_argument("config", help="a .toml or .json config file")
    p_train.add_argument("-s", "--serialization-dir", dest="run_dir", required=True, help="the run directory")
    p_train.add_argument("-o", "--override", action="append", default=[], help="key.path=value (repeatable)")
    p_train.add_argument(
        "--restart", action="store_true", help="start over from step 0 (the previous checkpoints are moved aside)"
    )
    add_cpu_devices_flag(p_train)
    group = p_train.add_argument_group(
        "several processes (one per host; srun, mpirun and Cloud TPU need none of these)"
    )
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, where the run's processes meet")
    group.add_argument("--num-processes", metavar="N", type=int, help="how many processes the run has")
    group.add_argument("--process-id", metavar="I", type=int, help="this process's index, 0 to N-1")
    p_eval = commands.add_parser("evaluate", help="evaluate a checkpoint of a run")
    p_eval.add_argument("run_dir")
    p_eval.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    p_eval.add_argument("--checkpoint", default="best", help="best, latest or a step number")
    p_eval.add_argument("--data", action="append", default=[], help="key=value for the run's data section (repeatable)")
    p_predict = commands.add_parser("predict", help="predict from a run or an artefact: JSON lines in and out")
    p_predict.add_argument("run_dir", metavar="RUN_DIR|ARTEFACT")
    p_predict.add_argument("input", nargs="?", default="-", help="a file of JSON lines; - (the default): stdin")
    p_predict.add_argument("--checkpoint", default="best", help="best, latest or a step number")
    p_predict.add_argument("--batch-size", type=int, default=64, help="requests predicted together (padded)")
    p_export = commands.add_parser("export", help="write a run as an artefact that runs without its code")
    p_export.add_argument("run_dir")
    p_export.add_argument("-o", "--output", required=True, metavar="ARTEFACT", help="a new directory")
    p_export.add_argument("--checkpoint", default="best", help="best, latest or a step number")
    p_export.add_argument("--platforms", default=",".join(PLATFORMS), help="comma-separated, of cpu, cuda, rocm, tpu")
    p_serve = commands.add_parser("serve", help="serve a run or an artefact over HTTP, batching requests")
    p_serve.add_argument("run_dir", metavar="RUN_DIR|ARTEFACT")
    p_serve.add_argument("--checkpoint", default="best", help="of a run directory: best, latest or a step number")
    server.add_options(p_serve)
    p_data = commands.add_parser("data", help="public data sets: where they come from, fetched into a cache")
    p_data.add_argument("action", choices=["fetch", "list"])
    p_data.add_argument("names", nargs="*", metavar="NAME", help=f"data sets to fetch, of {', '.join(cache.SOURCES)}")
    args = parser.parse_args(argv)
    if args.command == "data":
        return data_command(args.action, args.names)
    use_cpu_devices_flag(p_train, getattr(args, "cpu_devices", None))  # train only
    try:
        if args.command == "train":
            processes = Processes(args.coordinator, args.num_processes, args.process_id)
            return train(
                args.config, args.run_dir, args.override, processes, restart=args.restart,
                choose_devices=args.cpu_devices is None,
            )  # fmt: skip
        if args.command == "predict":
            return predict_run(args.run_dir, args.input, args.checkpoint, args.batch_size)
        if args.command == "serve":
            return serve_directory(args)
        if args.command == "export":
            platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
            path = export_run(args.run_dir, args.output, checkpoint=args.checkpoint, platforms=platforms)
            print(f"exported {args.run_dir} ({args.checkpoint} checkpoint) for {', '.join(platforms)} to {path}")
            return 0
        print(json.dumps(evaluate_run(args.run_dir, args.split, args.checkpoint, args.data), indent=2))
        return 0
    except (ConfigError, FileNotFoundError, FileExistsError, SetupError, RunLocked, CheckpointError,
            ArtefactError, BatchSplitError) as error:  # fmt: skip
        print(f"error: {error}", file=sys.stderr)
        return BAD_CONFIG
    except (CheckpointSaveError, OSError) as error:  # a full disk also fails results.json: one line, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
