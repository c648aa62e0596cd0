"""Runs every benchmark (mlp, charlstm, fit, input, treelstm), one process each, and writes one markdown table.

    python experiments/bench/run_all.py --out experiments/results/bench.md            # 8-9 min on 2 cores
    python experiments/bench/run_all.py --quick --out /tmp/bench.md                   # under 2 min, noisy
    python experiments/bench/run_all.py --only mlp,charlstm --device gpu --out /tmp/gpu.md

Each script runs as ``python experiments/bench/<name>.py [--quick] [--device ...]``; its output streams
through (prefixed with its name) and its JSON lines are collected. The markdown file holds the machine,
the versions, the exact commands, one table per workload and the targets; the raw JSON lines are written
beside it (``<out>.jsonl``). treelstm.py has no ``--device`` option: with ``--device gpu`` it gets
``JAX_PLATFORMS=cuda`` and its PyTorch systems stay on the CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import subset  # beside this script

HERE = Path(__file__).resolve().parent
SCRIPTS = ("mlp", "charlstm", "fit", "input", "treelstm")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="markdown file to write, e.g. experiments/results/bench.md")
    p.add_argument("--quick", action="store_true", help="pass --quick to every script")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--only", default=",".join(SCRIPTS), help=f"comma-separated subset of {','.join(SCRIPTS)}")
    p.add_argument("--torch-threads", type=int, default=None, help="passed to mlp.py and charlstm.py")
    args = p.parse_args(argv)
    args.only = subset(p, "--only", args.only, SCRIPTS)
    return args


def command(name: str, args) -> tuple[list[str], dict[str, str]]:
    argv = [sys.executable, str(HERE / f"{name}.py")] + (["--quick"] if args.quick else [])
    env = dict(os.environ)
    if name == "treelstm":
        if args.device == "gpu":
            env["JAX_PLATFORMS"] = "cuda"
    else:
        argv += ["--device", args.device]
        if args.torch_threads and name in ("mlp", "charlstm"):
            argv += ["--torch-threads", str(args.torch_threads)]
    return argv, env


def run(name: str, args) -> dict:
    """Runs one script, streaming its output; returns its records, command, wall time and exit status."""
    argv, env = command(name, args)
    shown = " ".join(["python", str(Path(argv[1]).relative_to(HERE.parents[1])), *argv[2:]])
    print(f"=== {shown}", flush=True)
    records = []
    start = time.perf_counter()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=HERE.parents[1]) as process:
        for line in process.stdout:
            print(f"[{name}] {line}", end="", flush=True)
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return {
        "name": name,
        "command": shown,
        "seconds": time.perf_counter() - start,
        "rc": process.returncode,
        "records": records,
    }


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def _table(header, rows) -> list[str]:
    """A markdown table, then an empty line."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows), ""]


def _by(records, figure):
    return [r for r in records if r.get("figure") == figure]


def sections(result) -> list[str]:
    """The markdown tables of one script's records."""
    records, out = result["records"], []
    workloads = list(dict.fromkeys(r["workload"] for r in records if r.get("figure") in ("throughput", "epoch")))
    for workload in workloads:
        mine = [r for r in records if r.get("workload") == workload]
        heading = [] if workload == result["name"] else [f"### {workload}", ""]
        if _by(mine, "throughput"):
            first = {r["system"]: r for r in _by(mine, "first_step")}
            loss = {r["system"]: r for r in _by(mine, "loss")}
            ckpt = {r["system"]: r for r in _by(mine, "checkpoint_cost")}
            rows = []
            for r in _by(mine, "throughput"):
                s = r["system"]
                f, lo = first.get(s, {}), loss.get(s, {})
                rows.append(
                    [
                        s,
                        r["value"],
                        r["ratio"],
                        f.get("seconds"),
                        f.get("ratio"),
                        lo.get("initial"),
                        ckpt.get(s, {}).get("ms_per_checkpoint"),
                        r["compiles_in_timed"],
                    ]
                )
            unit, ref = _by(mine, "throughput")[0]["unit"], _by(mine, "throughput")[0]["ratio_to"]
            header = [
                "system",
                unit,
                f"vs {ref}",
                "first step s",
                f"vs {ref}",
                "initial loss",
                "ms/checkpoint",
                "compiles in timed",
            ]
            keep = [i for i in range(len(header)) if i < 3 or any(row[i] is not None for row in rows)]
            out += heading
            out += _table([header[i] for i in keep], [[row[i] for i in keep] for row in rows])
        else:
            rows = [
                [
                    r["system"],
                    r["epoch_seconds"],
                    r.get("vs_max_input_compute"),
                    r.get("vs_sum_input_compute"),
                    r.get("vs_max_input_compute_one_core_fewer"),
                    r["compiles_in_timed"],
                ]
                for r in _by(mine, "epoch")
            ]
            header = ["system", "epoch s", "/ max(input, compute)", "/ (input + compute)"]
            header += ["/ max(input, compute on a core fewer)", "compiles in timed"]
            keep = [i for i in range(len(header)) if i != 4 or any(row[i] is not None for row in rows)]
            source = next((r for r in _by(mine, "input_source")), {})
            reps = f" (the batch's text parsed {source['parse_reps']} times)" if source.get("parse_reps") else ""
            out += heading
            out += [
                f"Compute {source.get('compute_ms_per_step')} ms per step; input {source.get('input_ms_target')} ms"
                f" per batch{reps}.",
                "",
            ]
            out += _table([header[i] for i in keep], [[row[i] for i in keep] for row in rows])
    trees = [r for r in records if "trees_per_second" in r]
    if trees:
        out += _table(
            ["system", "trees/s", "vs torch_level", "compiles in timed"],
            [
                [r["system"], r["trees_per_second"], r.get("ratio_to_torch_level"), r.get("compiles_in_timed")]
                for r in trees
            ],
        )
    return out


def markdown(results, started: str) -> str:
    setup = next((r for res in results for r in res["records"] if r.get("figure") == "setup" and "cpu" in r), {})
    lines = ["# funcnet side-by-side benchmarks", ""]
    lines += [f"Written by `python experiments/bench/run_all.py {' '.join(sys.argv[1:])}` on {started}.", ""]
    lines += [
        f"- Machine: {setup.get('cpu')}, {setup.get('cores')} cores; JAX device: {setup.get('device')}; load "
        f"average at the first script's start: {setup.get('load_average')}",
        f"- Versions: python {setup.get('python')}, "
        + ", ".join(f"{k} {v}" for k, v in setup.get("versions", {}).items())
        + f"; funcnet {setup.get('funcnet_commit')}",
        f"- malloc: {setup.get('malloc')}; PyTorch threads: {setup.get('torch_threads', '-')}",
        "- Method: all systems of a script in one process, warmed up, interleaved round by round with the "
        "order rotated; medians of per-round figures and ratios (see experiments/bench/README.md).",
        "",
    ]
    lines += ["| script | command | seconds | exit |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | `{r['command']}` | {r['seconds']:.0f} | {r['rc']} |" for r in results] + [""]
    for result in results:
        lines += [f"## {result['name']}", "", *sections(result)]
    targets = [r for res in results for r in res["records"] if r.get("figure") == "target"]
    if targets:
        lines += ["## Targets", ""]
        lines += _table(
            ["workload", "target", "value", "threshold", "met"],
            [[t["workload"], t["name"], t["value"], t["threshold"], t["met"]] for t in targets],
        )
    notes = [f"{r['system']}: skipped ({r['reason']})" for res in results for r in _by(res["records"], "skipped")]
    notes += [
        f"{r['workload']}/{r['system']}: initial loss {r['initial']:.6f} does not match"
        for res in results
        for r in _by(res["records"], "loss")
        if not r.get("matches")
    ]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    results = [run(name, args) for name in args.only]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = args.out.with_name(args.out.name + ".jsonl")  # first: the raw figures survive a markdown error
    jsonl.write_text("".join(json.dumps({"script": r["name"], **rec}) + "\n" for r in results for rec in r["records"]))
    args.out.write_text(markdown(results, started))
    total = sum(r["seconds"] for r in results)
    print(f"wrote {args.out} and {jsonl} ({total:.0f} s in all)", flush=True)
    return max(r["rc"] for r in results)


if __name__ == "__main__":
    sys.exit(main())
