"""An exported model on disk, and loading it with no model code.

An artefact directory holds::

    artefact.json              the manifest: kind, versions, platforms, programs and their signatures,
                               the weights' names, the preprocessing and what the request handler needs
    weights.npz                the parameters and model state, plain arrays by path (read without pickle)
    programs/<name>.stablehlo  each program serialised by ``jax.export``: ``program(weights, *inputs)``

Every file's SHA-256 is in the manifest. ``load`` refuses, in one line naming the file, an artefact it
cannot run: another format, a newer format version, a program whose calling convention this JAX does
not support, a platform the artefact was not exported for, a damaged or missing file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

from . import handlers
from .requests import predict_requests

FORMAT = "funcnet-artefact"
FORMAT_VERSION = 1
MANIFEST = "artefact.json"
WEIGHTS = "weights.npz"


class ArtefactError(ValueError):
    """An artefact that cannot be loaded here; the message names the file and why."""


def check_serialisation() -> None:
    """Raises ArtefactError unless ``jax.export`` can (de)serialise programs here (it needs ``flatbuffers``)."""
    try:
        import flatbuffers  # noqa: F401 (only whether it imports)
    except ImportError:
        raise ArtefactError(
            "exporting and loading artefacts needs flatbuffers (jax.export's serialisation). Fix: pip install "
            "'funcnet[serve]' (or flatbuffers)"
        ) from None


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Program:
    """One exported program, compiled per input shape on first use (``compilations`` counts them)."""

    def __init__(self, name: str, exported: jax_export.Exported, weights: list[jax.Array]):
        self.name, self.exported, self.weights = name, exported, weights
        self._call = jax.jit(exported.call)

    def __call__(self, *inputs: Any) -> Any:
        return self._call(self.weights, *inputs)

    @property
    def compilations(self) -> int:
        return self._call._cache_size()


class Artefact:
    """A loaded artefact: ``manifest``, ``programs`` (name -> ``Program``) and ``handler`` (requests in,
    outputs out, as ``funcnet predict`` of the run it came from; ``funcnet.deploy.handlers``)."""

    def __init__(self, directory: Path, manifest: dict[str, Any], programs: dict[str, Program]):
        self.directory, self.manifest, self.programs = directory, manifest, programs
        self.handler = handlers.build(manifest["kind"], manifest["handler"], manifest["preprocessing"], programs)

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    def predict(self, requests: list[Any], batch_size: int = 64) -> list[dict[str, Any]]:
        """The outputs of decoded requests (JSON-like), in order; ``{"error": ...}`` for a bad one."""
        return predict_requests(self.handler, requests, batch_size)

    def metadata(self) -> dict[str, Any]:
        """What a server reports of the model: its kind, source, versions, platforms and programs' signatures."""
        return {k: self.manifest[k] for k in ("kind", "source", "versions", "platforms", "programs")}

    def compilations(self) -> dict[str, int]:
        """Programs compiled so far, per exported program (one per input shape met)."""
        return {name: program.compilations for name, program in self.programs.items()}


def load(directory: str | os.PathLike) -> Artefact:
    """The artefact in ``directory`` (``funcnet export``), checked and ready to predict.

    Raises:
      ArtefactError: in one line naming the file: not an artefact, made by a newer funcnet, a calling
        convention this JAX cannot run, not exported for this machine's platform, a damaged or missing file.
    """
    directory = Path(directory)
    manifest = _manifest(directory)
    check_serialisation()
    platform = jax.default_backend()
    platform = "cuda" if platform == "gpu" else platform
    if platform not in manifest["platforms"]:
        raise ArtefactError(
            f"{directory / MANIFEST}: exported for {manifest['platforms']}, and this machine runs {platform}. "
            f"Fix: export again with --platforms {','.join([*manifest['platforms'], platform])}"
        )
    weights = _weights(directory, manifest)
    programs = {name: Program(name, _program(directory, name, entry), weights)
                for name, entry in manifest["programs"].items()}  # fmt: skip
    return Artefact(directory, manifest, programs)


def _manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtefactError(f"{path}: no such file: {directory} is not an artefact (funcnet export writes one)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtefactError(f"{path}: not a readable manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtefactError(f"{path}: not a funcnet artefact manifest (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtefactError(
            f"{path}: artefact format {version}, made by funcnet {manifest.get('versions', {}).get('funcnet')}; this "
            f"funcnet reads formats up to {FORMAT_VERSION}. Fix: upgrade funcnet, or export with this one"
        )
    return manifest


def _checked(directory: Path, entry: Mapping[str, Any]) -> Path:
    path = directory / entry["file"]
    if not path.is_file():
        raise ArtefactError(f"{path}: missing from the artefact")
    if sha256(path) != entry["sha256"]:
        raise ArtefactError(f"{path}: damaged (its SHA-256 differs from the manifest's). Fix: export again")
    return path


def _weights(directory: Path, manifest: Mapping[str, Any]) -> list[jax.Array]:
    entry = manifest["weights"]
    path = _checked(directory, entry)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [name for name in entry["names"] if name not in arrays.files]
            if missing:
                raise ArtefactError(f"{path}: lacks the weights {missing[:3]} that the programs take")
            return [jax.device_put(arrays[name]) for name in entry["names"]]
    except (OSError, ValueError) as error:
        if isinstance(error, ArtefactError):
            raise
        raise ArtefactError(f"{path}: not a readable array file ({error})") from None


def _program(directory: Path, name: str, entry: Mapping[str, Any]) -> jax_export.Exported:
    path = _checked(directory, entry)
    low, high = (jax_export.minimum_supported_calling_convention_version,
                 jax_export.maximum_supported_calling_convention_version)  # fmt: skip
    version = entry["calling_convention"]
    if not low <= version <= high:
        raise ArtefactError(
            f"{path}: calling convention {version}; this JAX ({jax.__version__}) runs {low} to {high}. Fix: export "
            "again with this JAX, or load with a JAX that supports it"
        )
    try:
        return jax_export.deserialize(bytearray(path.read_bytes()))
    except Exception as error:
        raise ArtefactError(f"{path}: not a program this JAX can read ({type(error).__name__}: {error})") from None
