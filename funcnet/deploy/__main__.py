"""``python -m funcnet.deploy ARTEFACT``: serve an artefact with the runtime alone (no layers, trainer, optax or
orbax imported), as ``funcnet serve ARTEFACT`` does from a training install.

    python -m funcnet.deploy artefacts/iris [--host 127.0.0.1] [--port 8000] [--max-batch 64] [--max-wait-ms 0]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .artefact import ArtefactError, load


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m funcnet.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("artefact")
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=64, help="instances per compiled call (1: no batching)")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="how long a batch waits to fill")
    parser.add_argument("--max-request-kb", type=int, default=1024, help="the largest request body")
    args = parser.parse_args(argv)
    try:
        artefact = load(args.artefact)
    except ArtefactError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from . import server  # the serve extra (FastAPI, uvicorn)

    app = server.make_app(artefact.handler, artefact.metadata(), artefact.compilations,
                          max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                          max_request_kb=args.max_request_kb)  # fmt: skip
    print(f"serving {args.artefact} ({artefact.kind}) at http://{args.host}:{args.port}", flush=True)
    server.serve(app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
