"""``python -m funcnet.deploy ARTEFACT``: serve an artefact with the runtime alone (no layers, trainer, optax or
orbax imported), as ``funcnet serve ARTEFACT`` does from a training install.

    python -m funcnet.deploy artefacts/iris [--host 127.0.0.1] [--port 8000] [--max-batch 64] [--max-wait-ms 0]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import server
from .artefact import ArtefactError, load
from .requests import RequestError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m funcnet.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("artefact")
    server.add_options(parser)
    args = parser.parse_args(argv)
    try:
        artefact = load(args.artefact)
        options = server.app_options(args)
        app = server.make_app(artefact.handler, artefact.metadata(), artefact.compilations, **options)
    except (ArtefactError, OSError, RequestError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"serving {args.artefact} ({artefact.kind}) at http://{args.host}:{args.port}", flush=True)
    server.serve(app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
