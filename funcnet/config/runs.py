"""Reopening a run made from a config file, without the code that trained it."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..train.run import LoadedRun
from ..train.run import load_run as load_trained
from ..train.run_files import read_preprocessing, read_record
from ..validation import ConfigError
from .run_config import import_modules
from .tasks import task_of


def load_run(run_dir: str | os.PathLike, *, checkpoint: str | int = "best") -> LoadedRun:
    """A run trained by ``funcnet train`` (or any run with a ``config.json``) reopened for inference.

    The model is built from the run's config (its ``imports`` are imported from the files training
    recorded, said on stderr: importing runs their code), then the parameters and model state of the
    checkpoint are restored: no optimizer, loss or data needed.

    Args:
      run_dir: the run directory.
      checkpoint: ``"best"``, ``"latest"`` or a step number.

    Returns:
      A ``funcnet.train.LoadedRun``: ``.model``, ``.params``, ``.state``, ``.config``, ``.preprocessing``,
      ``.predict(*inputs)``.

    Raises:
      FileNotFoundError: ``run_dir`` has no ``config.json`` (a run made by Python ``fit`` without
        ``config=``: reopen it with ``funcnet.train.load_run(run_dir, model)``) or no checkpoint.
      ConfigError: the config's model cannot be built here.
    """
    saved = Path(run_dir) / "config.json"
    if not saved.exists():
        raise FileNotFoundError(
            f"{run_dir} has no config.json to build its model from. Fix: funcnet.train.load_run(run_dir, model) "
            "with the model it trained"
        )
    config = json.loads(saved.read_text())
    import_modules(config, search_dirs=recorded_imports(run_dir, config.get("imports", [])))
    model = task_of(config).model(config, read_preprocessing(run_dir))
    return load_trained(run_dir, model, checkpoint=checkpoint)


def recorded_imports(run_dir: str | os.PathLike, names: Sequence[str]) -> list[str]:
    """The folders to import a run's ``imports`` from: where training found them (``run.json``), said aloud.

    A config's ``imports`` run code. Reopening a run imports exactly the files its training imported, not
    whatever the working directory holds under those names.
    """
    recorded = read_record(run_dir).get("imports", {})
    folders = []
    for name in names:
        file = recorded.get(name)
        if file is None:  # a module of an installed package (or a run from before this was recorded)
            print(f"importing {name} (the run's config imports it)", file=sys.stderr)
            continue
        if not os.path.exists(file):
            raise ConfigError(
                "imports", f"the run imported {name!r} from {file}, which no longer exists. Fix: put it back."
            )
        print(f"importing {name} from {file} (the run's config imports it: that runs its code)", file=sys.stderr)
        folder = Path(file).parent
        for _ in range(name.count(".") + file.endswith("__init__.py")):  # the folder the top package sits in
            folder = folder.parent
        folders.append(str(folder))
    return folders
