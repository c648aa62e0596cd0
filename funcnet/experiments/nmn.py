"""Neural module networks on SHAPES-style questions: ``python -m funcnet.experiments.nmn``.

Generates the questions (no download), trains the module network (``funcnet.layers.nmn``: a network per
question, a batch of them compiled once per bucket shape) and, with ``--baseline``, the CNN+LSTM baseline
with the same budget; prints each one's accuracy on questions drawn like training and on the systematic
split (colour-shape pairs no training question names), and the shapes compiled per epoch. Each run is the
``nmn`` task of ``funcnet train`` (``experiments/configs/nmn.toml``) in its own directory with its
``results.json``.

    python -m funcnet.experiments.nmn                       # the module network
    python -m funcnet.experiments.nmn --baseline            # and the CNN+LSTM, side by side
    python -m funcnet.experiments.nmn -o data.train_size=2000 -o trainer.epochs=4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..config.run_config import apply_overrides
from ..config.tasks import train_run
from ..validation import ConfigError
from .nmn_task import NMN


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m funcnet.experiments.nmn", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", action="store_true", help="also train the CNN+LSTM baseline")
    parser.add_argument("-o", "--override", action="append", default=[], help="section.key=value (repeatable)")
    parser.add_argument("--run-dir", help="default: runs/nmn-<time>; the runs in its nmn/ and cnn_lstm/")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir or time.strftime("runs/nmn-%Y%m%d-%H%M%S"))
    runs = {kind: run_dir / kind for kind in ("nmn", "cnn_lstm")[: 2 if args.baseline else 1]}
    try:
        configs = {kind: NMN().resolve(apply_overrides({"model": {"kind": kind}}, args.override)) for kind in runs}
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for kind, directory in runs.items():
        print(f"--- {kind} in {directory}")
        code = train_run(configs[kind], directory)
        if code:
            return code
    print(f"\n{'model':<10} {'like training':>14} {'systematic':>11} {'compilations':>13}")
    for kind, directory in runs.items():
        results = json.loads((directory / "results.json").read_text())
        print(f"{kind:<10} {results['like_training']['accuracy']:>14.4f} {results['systematic']['accuracy']:>11.4f} "
              f"{results['compilations_this_session']:>13}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
