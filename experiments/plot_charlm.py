"""Plots the loss curves of char-LM runs: training loss and validation bits per character.

    pip install -e '.[docs]'
    python experiments/plot_charlm.py OUT.png RUN_DIR [RUN_DIR ...]

Reads the runs' event files (``RUN_DIR/logs``) with ``funcnet.train.writers.read_scalars``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from funcnet.train.writers import read_scalars


def main(out: str, run_dirs: list[str]) -> None:
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=120)
    for run_dir in run_dirs:
        scalars = read_scalars(Path(run_dir) / "logs")
        name = Path(run_dir).name
        train = scalars["train/loss"]
        axis.plot([s for s, _ in train], [v / math.log(2) for _, v in train], alpha=0.6, label=f"{name}: train")
        valid = scalars["validation/bpc"]
        axis.plot([s for s, _ in valid], [v for _, v in valid], marker="o", label=f"{name}: validation")
    axis.set_xlabel("step")
    axis.set_ylabel("bits per character")
    axis.set_title("Character LSTM on tiny-shakespeare")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
