"""Records a run's training curves as a small JSON file, for the docs' plots (``docs/plots.py``).

    python experiments/record_curves.py RUN_DIR NAME --title TITLE --command "THE COMMAND THAT MADE THE RUN"

writes ``experiments/results/curves/NAME.json``: the training loss and the validation metrics (not their
counts) of the run's event files (``RUN_DIR/logs``), at most ``--points`` points each (consecutive points
averaged), with the command, the machine, the versions and the commit. The docs draw the recorded
curves, not the runs (which are not in git).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

from funcnet.train.writers import read_scalars

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "experiments" / "bench"))  # after everything else: it shadows nothing
from _common import commit, cores, cpu_model  # noqa: E402  (the benchmarks' own machine record)

FOLDER = ROOT / "experiments" / "results" / "curves"
KEPT = ("train/loss", "validation/")


def thin(points: list[tuple[int, float]], most: int) -> list[list[float]]:
    """At most ``most`` points: runs of consecutive points averaged (step and value), in step order.

    >>> thin([(1, 1.0), (2, 3.0), (3, 5.0), (4, 7.0)], 2)
    [[1.5, 2.0], [3.5, 6.0]]
    >>> thin([(5, 0.5)], 10)
    [[5, 0.5]]
    """
    points = sorted(dict(points).items())  # a resumed run's purged steps: the last value of a step wins
    if len(points) <= most:
        return [[s, v] for s, v in points]
    size = -(-len(points) // most)
    runs = [points[i : i + size] for i in range(0, len(points), size)]
    return [[sum(s for s, _ in run) / len(run), sum(v for _, v in run) / len(run)] for run in runs]


def _kept(tag: str) -> bool:
    """The training loss and the validation metrics, not the sums and counts they are computed from.

    >>> [_kept(t) for t in ("train/loss", "train/learning_rate", "validation/bpc", "validation/count",
    ...                     "validation/_node_correct")]
    [True, False, True, False, False]
    """
    name = tag.rsplit("/", 1)[-1]
    return tag.startswith(KEPT) and name != "count" and not name.startswith("_")


def record(run_dir: Path, name: str, title: str, command: str, points: int = 200, folder: Path = FOLDER) -> Path:
    scalars = read_scalars(run_dir / "logs")
    series = {tag: thin(values, points) for tag, values in sorted(scalars.items()) if _kept(tag)}
    if "train/loss" not in series:
        raise SystemExit(f"error: {run_dir}/logs holds no train/loss scalars: is {run_dir} a run directory?")
    import jax

    out = Path(folder) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "title": title,
        "command": command,
        "machine": f"{cpu_model()}, {cores()} cores",
        "versions": {"python": platform.python_version(), "jax": jax.__version__},
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "series": series,
    }
    out.write_text(json.dumps(record, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("name", help="the file's name in experiments/results/curves/")
    p.add_argument("--title", required=True)
    p.add_argument("--command", required=True, help="the command that made the run, as a reader would type it")
    p.add_argument("--points", type=int, default=200, help="the most points kept per curve")
    args = p.parse_args(argv)
    print(f"wrote {record(args.run_dir, args.name, args.title, args.command, args.points)}")


if __name__ == "__main__":
    main(sys.argv[1:])
