"""Tree-LSTM sentiment classification on every node: ``python -m funcnet.experiments.treelstm``.

Embedding -> binary Tree-LSTM (Tai et al. 2015) run bottom-up under ``lax.scan`` over
list-scheduled steps -> dropout -> a 5-class classifier on every node, trained with funcnet's
engine (Adam; early stopping on validation root accuracy; Adagrad and any other optimizer
from config). Reports fine-grained (5-class) root accuracy, binary root accuracy (neutral roots
dropped; the predicted polarity is whether p(3) + p(4) exceeds p(0) + p(1)) and all-node
accuracy, and writes ``results.json``.

With no ``--data`` it trains on a synthetic compositional sentiment language generated in code
(``funcnet.datasets.sentiment_language``), where negation and intensifiers act on the tree, so a
bag of words cannot solve it. ``--data DIR`` reads SST-format ``train.txt``, ``dev.txt`` and an
optional ``test.txt`` (``../shared/data/sst``).

    python -m funcnet.experiments.treelstm
    python -m funcnet.experiments.treelstm --data ../shared/data/sst --preset sst

The run is the ``tree_sentiment`` task of ``funcnet train`` (``funcnet.experiments.tree_sentiment``): ``funcnet train
experiments/configs/treelstm.toml -s RUN_DIR`` resolves the same config as this command's default preset.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from funcnet.errors import DataError

from ..config.tasks import train_run
from ..validation import ConfigError
from .tree_sentiment import PRESETS, resolve_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m funcnet.experiments.treelstm", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", help=f"one of {sorted(PRESETS)}")
    parser.add_argument("--data", help="an SST-format folder (train.txt, dev.txt, optional test.txt)")
    parser.add_argument("-o", "--override", action="append", default=[], help="section.key=value (repeatable)")
    parser.add_argument("--run-dir", help="default: runs/treelstm-<time>")
    args = parser.parse_args(argv)
    overrides = list(args.override) + ([f"data.path={args.data}"] if args.data else [])
    try:
        config = resolve_config(args.preset, overrides)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir or time.strftime("runs/treelstm-%Y%m%d-%H%M%S"))
    try:
        return train_run(config, run_dir)
    except (DataError, FileNotFoundError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
