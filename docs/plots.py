"""The docs' plots, drawn at build time from what is recorded in ``experiments/results/`` (never from runs).

    python docs/plots.py            # what conf.py does: writes docs/_static/plots/*.png and docs/plots.md

- Training curves: one figure per ``experiments/results/curves/*.json`` (``experiments/record_curves.py``
  writes them from a run): the training loss, and each validation metric, against steps.
- Benchmark ratios: one figure per ``experiments/results/*.md.jsonl`` (the benchmark scripts' records):
  each system's throughput as a multiple of the script's reference system, in the same process.

The page ``plots.md`` lists them with the command, machine and commit each came from. Both are generated
(not in git), so a recorded result re-run is re-drawn by the next build.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "experiments" / "results"
OUT = HERE / "_static" / "plots"
PAGE = HERE / "plots.md"
PEERS = ("jax", "flax", "haiku", "equinox", "torch", "bare")  # references and other libraries: grey bars
QUICK = "bench_quick"  # `run_all.py --quick`: a noisy check that the scripts run, not figures to draw
LABELS = {"bpc": "bits per character", "loss": "loss", "accuracy": "accuracy"}


def curves_figure(record: dict, out: Path) -> None:
    """Left: the training loss (and the validation loss); right: the other validation metrics."""
    series = record["series"]
    losses = {tag: points for tag, points in series.items() if tag.endswith("/loss")}
    metrics = {tag: points for tag, points in series.items() if tag not in losses}
    panels = [losses] + ([metrics] if metrics else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), dpi=110, squeeze=False)
    for axis, panel in zip(axes[0], panels, strict=True):
        for tag, points in panel.items():
            style = {"marker": "o", "markersize": 3} if tag.startswith("validation/") else {"alpha": 0.8}
            axis.plot([s for s, _ in points], [v for _, v in points], label=tag, **style)
        name = next(iter(panel)).split("/", 1)[1]
        axis.set_xlabel("step")
        metric = LABELS.get(name, name.replace("_", " ")) if len(panel) == 1 else "metric"
        axis.set_ylabel("loss" if panel is losses else metric)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(record["title"], fontsize=10)
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)


def ratio_rows(records: list[dict]) -> dict[str, list[tuple[str, float, str]]]:
    """``workload -> [(system, ratio, reference), ...]`` from the throughput records of a benchmark file.

    >>> ratio_rows([{"figure": "throughput", "workload": "mlp", "system": "a", "ratio": 1.2, "ratio_to": "b"},
    ...             {"figure": "loss", "workload": "mlp", "system": "a"},
    ...             {"script": "treelstm", "system": "c", "ratio_to_torch_level": 2.5}])
    {'mlp': [('a', 1.2, 'b')], 'treelstm': [('c', 2.5, 'torch_level')]}
    """
    rows: dict[str, list[tuple[str, float, str]]] = {}
    for r in records:
        if r.get("figure") == "throughput" and r.get("ratio") is not None:
            rows.setdefault(r["workload"], []).append((r["system"], float(r["ratio"]), r["ratio_to"]))
        for key, value in r.items():  # the Tree-LSTM script's records name their reference in the key
            if key.startswith("ratio_to_") and value is not None and "system" in r:
                rows.setdefault(r.get("workload", r.get("script", "")), []).append(
                    (r["system"], float(value), key.removeprefix("ratio_to_"))
                )
    return rows


def ratios_figure(rows: dict[str, list[tuple[str, float, str]]], title: str, out: Path) -> None:
    figure, axes = plt.subplots(len(rows), 1, figsize=(7, 0.9 + 0.32 * sum(map(len, rows.values())) + 0.5 * len(rows)),
                                dpi=110, squeeze=False)  # fmt: skip
    for axis, (workload, bars) in zip(axes[:, 0], rows.items(), strict=True):
        names = [system for system, _, _ in bars]
        values = [ratio for _, ratio, _ in bars]
        colours = ["tab:gray" if n.startswith(PEERS) else "tab:blue" for n in names]
        axis.barh(names, values, color=colours)
        axis.axvline(1.0, color="black", linewidth=0.8)
        axis.invert_yaxis()
        axis.set_title(f"{workload}: throughput / {bars[0][2]}'s", fontsize=9)
        axis.tick_params(labelsize=8)
        for y, value in enumerate(values):
            axis.text(value, y, f" {value:.2f}x", va="center", fontsize=7)
        axis.set_xlim(0, max(values) * 1.18)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    figure.savefig(out)
    plt.close(figure)


def _setup(records: list[dict]) -> str:
    first = next((r for r in records if r.get("figure") == "setup"), {})
    cores = first.get("cores", "?")
    cpu = f"{first.get('cpu', '?')}, {cores} core{'' if cores == 1 else 's'}" if first else "see the table"
    return f"{cpu}; funcnet {first.get('funcnet_commit', '?')}" if first else cpu


def write() -> None:
    """Draws every plot into ``_static/plots/`` and writes ``plots.md``."""
    OUT.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Training curves and benchmark ratios",
        "",
        "Drawn by `docs/plots.py` when the site is built, from the results recorded in `experiments/results/`",
        "(each with the command and machine that gave it). Tables with every figure are on the",
        "[benchmarks](benchmarks.md) page.",
        "",
        "## Training curves",
        "",
    ]
    for path in sorted((RESULTS / "curves").glob("*.json")):
        record = json.loads(path.read_text())
        curves_figure(record, OUT / f"curves-{path.stem}.png")
        lines += [
            f"### {record['title']}",
            "",
            f"![{record['title']}](_static/plots/curves-{path.stem}.png)",
            "",
            f"`{record['command']}`: {record['machine']}, funcnet {record['commit']}, {record['date']}"
            f" (`experiments/results/curves/{path.name}`).",
            "",
        ]
    lines += ["## Benchmark ratios", ""]
    for path in sorted(RESULTS.glob("*.md.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = ratio_rows(records)
        if not rows or path.name.startswith(QUICK):
            continue
        name = path.name.removesuffix(".md.jsonl")
        ratios_figure(rows, f"experiments/results/{name}.md", OUT / f"ratios-{name}.png")
        lines += [
            f"### `{name}.md`",
            "",
            f"![{name}](_static/plots/ratios-{name}.png)",
            "",
            f"Each bar is a system's median throughput over its script's reference system, measured in one process"
            f" ({_setup(records)}; `experiments/results/{name}.md` has the commands).",
            "",
        ]
    PAGE.write_text("\n".join(lines))


if __name__ == "__main__":
    write()
    print(f"wrote {PAGE} and {OUT}")
