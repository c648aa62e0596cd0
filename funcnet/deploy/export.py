"""Writing an artefact: programs serialised with ``jax.export``, the weights as plain arrays, the manifest.

A program is ``program(weights, *inputs)``: ``weights`` the flat list of the parameter and model-state
arrays in the manifest's order, ``inputs`` with symbolic dimensions (``jax.export.symbolic_shape``), so one
program serves every batch size (and sequence length) and is compiled per shape where it is loaded.
Lowered for several platforms (``platforms=("cpu", "cuda")``), an artefact made on a CPU machine runs on
a GPU one.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax import export as jax_export

from ..core import param_path
from .artefact import FORMAT, FORMAT_VERSION, MANIFEST, WEIGHTS, check_serialisation, sha256

PLATFORMS = ("cpu", "cuda")  # what `funcnet export` lowers for unless told otherwise


def flat_weights(tree: Any) -> tuple[dict[str, np.ndarray], Callable[[list[Any]], Any]]:
    """``tree``'s arrays by ``/``-joined path, in order, and the function that rebuilds the tree from a list of them.

    >>> named, rebuild = flat_weights({"params": {"w": np.ones(2)}, "state": {}})
    >>> list(named), rebuild([np.zeros(2)])["params"]["w"].tolist()
    (['params/w'], [0.0, 0.0])
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    named = {param_path(path): np.asarray(leaf) for path, leaf in leaves}
    return named, lambda arrays: jax.tree_util.tree_unflatten(treedef, list(arrays))


def export_program(function: Callable[..., Any], weights: Mapping[str, np.ndarray], inputs: Sequence[Any],
                   platforms: Sequence[str]) -> jax_export.Exported:  # fmt: skip
    """``function(weights_list, *inputs)`` exported for ``platforms``; ``inputs``: ``jax.ShapeDtypeStruct`` s,
    their shapes possibly symbolic."""
    specs = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in weights.values()]
    return jax_export.export(jax.jit(function), platforms=tuple(platforms))(specs, *inputs)


def describe(exported: jax_export.Exported, names: Sequence[str]) -> dict[str, Any]:
    """The signature of a program's inputs (after the weights) and outputs: names, shapes (symbolic dimensions
    as text), dtypes."""

    def spec(aval) -> dict[str, Any]:
        return {"shape": [d if isinstance(d, int) else str(d) for d in aval.shape], "dtype": str(aval.dtype)}

    weights = len(exported.in_avals) - len(names)
    inputs = [{"name": n, **spec(a)} for n, a in zip(names, exported.in_avals[weights:], strict=True)]
    return {"inputs": inputs, "outputs": [spec(a) for a in exported.out_avals]}


def write_artefact(
    directory: str | os.PathLike,
    *,
    kind: str,
    programs: Mapping[str, tuple[jax_export.Exported, Sequence[str]]],
    weights: Mapping[str, np.ndarray],
    handler: Mapping[str, Any],
    preprocessing: Mapping[str, Any],
    source: Mapping[str, Any],
) -> Path:
    """Writes the artefact (the module docstring of ``funcnet.deploy.artefact``) to ``directory``, which must not
    exist or be empty; written to a temporary folder first and moved in place, so a failure leaves nothing.

    ``programs``: name -> (exported, the names of its inputs after the weights).
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty. Fix: choose a new directory for the artefact")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        (staging / "programs").mkdir()
        np.savez(staging / WEIGHTS, **weights)
        entries = {}
        for name, (exported, names) in programs.items():
            file = f"programs/{name}.stablehlo"
            (staging / file).write_bytes(exported.serialize())
            entries[name] = {"file": file, "sha256": sha256(staging / file),
                             "calling_convention": exported.calling_convention_version,
                             **describe(exported, names)}  # fmt: skip
        platforms = sorted({p for exported, _ in programs.values() for p in exported.platforms})
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": dict(source),
            "versions": _versions(),
            "platforms": platforms,
            "weights": {"file": WEIGHTS, "sha256": sha256(staging / WEIGHTS), "names": list(weights)},
            "programs": entries,
            "preprocessing": dict(preprocessing),
            "handler": dict(handler),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if directory.exists():
            directory.rmdir()
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _versions() -> dict[str, Any]:
    import jaxlib

    from .. import __version__

    low, high = (jax_export.minimum_supported_calling_convention_version,
                 jax_export.maximum_supported_calling_convention_version)  # fmt: skip
    return {"funcnet": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "calling_conventions_supported": [low, high]}  # fmt: skip


class ProgramSpec(NamedTuple):
    """One program of a model: ``function(weights, *inputs)`` (``weights``: ``{"params", "state"}``) and its
    inputs' names and specs (shapes may hold ``jax.export.symbolic_shape`` dimensions)."""

    function: Callable[..., Any]
    inputs: dict[str, jax.ShapeDtypeStruct]


class Serving(NamedTuple):
    """What serving a run takes: its ``kind`` (``funcnet.deploy.handlers.KINDS``), the handler's ``config``
    and its ``programs``. ``funcnet predict`` jits the programs over the run's weights; ``funcnet export``
    serialises them; both hand them to the same handler (``funcnet.deploy.handlers.build``)."""

    kind: str
    config: dict[str, Any]
    programs: dict[str, ProgramSpec]


def jitted(serving: Serving, weights: Any) -> dict[str, Callable[..., Any]]:
    """The programs of ``serving`` over ``weights``, jitted: what a reopened run predicts with."""
    placed = jax.device_put(weights)
    return {name: _bound(jax.jit(spec.function), placed) for name, spec in serving.programs.items()}


def _bound(function: Callable[..., Any], weights: Any) -> Callable[..., Any]:
    def call(*inputs: Any) -> Any:
        return function(weights, *inputs)

    call.compilations = function._cache_size  # type: ignore[attr-defined]
    return call


def export_serving(serving: Serving, weights: Any, platforms: Sequence[str]):
    """``serving``'s programs exported over ``weights``: ``({name: (Exported, input names)}, named weights)``."""
    check_serialisation()
    named, rebuild = flat_weights(weights)
    programs = {}
    for name, spec in serving.programs.items():

        def function(arrays, *inputs, spec=spec):
            return spec.function(rebuild(arrays), *inputs)

        programs[name] = (export_program(function, named, list(spec.inputs.values()), platforms), list(spec.inputs))
    return programs, named
