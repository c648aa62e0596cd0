"""Public data sets fetched into a cache folder, each file checked against its SHA-256.

``funcnet data fetch sst`` (or ``fetch("sst")``) downloads a data set into ``cache_folder() / "sst"`` and an
experiment's ``--data sst`` (a config's ``data.path = "sst"``) then reads it from there (``resolve``). A
download goes to a temporary file first and lands only when its checksum matches, so the cache never holds
a partial or altered file. The cache is ``$FUNCNET_DATA`` if set, else ``$XDG_CACHE_HOME/funcnet/data``
(``~/.cache/funcnet/data``).

========================  ==========================================================================
``sst``                   Stanford Sentiment Treebank (Socher et al. 2013): PTB bracketed trees with a
                          sentiment label 0..4 on every node; ``train.txt`` 8,544, ``dev.txt`` 1,101,
                          ``test.txt`` 2,210 trees. The copy of the DyNet benchmark suite
                          (neulab/dynet-benchmark, data/trees). Licence: none stated by that repository;
                          the treebank's site asks to cite the paper.
``tinyshakespeare``       Tiny Shakespeare (karpathy/char-rnn, data/tinyshakespeare/input.txt; the
                          repository is MIT, the text is Shakespeare's): 1,115,394 characters, split at
                          line boundaries into ``train.txt`` (the first 90% of the characters),
                          ``valid.txt`` (the next 5%) and ``test.txt`` (the rest).
========================  ==========================================================================
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple


class DataFetchError(RuntimeError):
    """A data set that could not be fetched: unreachable, or not what its checksum says. Nothing was cached."""


class Source(NamedTuple):
    """Where a data set's files come from: ``files`` maps each downloaded name to its URL and SHA-256;
    ``derive`` (optional) writes the files the experiments read from the downloaded ones, in the folder."""

    files: Mapping[str, tuple[str, str]]
    about: str
    derive: Callable[[Path], None] | None = None


def _split_characters(folder: Path) -> None:
    """``input.txt`` -> train/valid/test.txt: cut at the last line boundary before 90% and 95% of the characters."""
    text = (folder / "input.txt").read_text(encoding="utf-8")
    cuts = [text.rfind("\n", 0, int(len(text) * fraction)) + 1 for fraction in (0.9, 0.95)]
    parts = text[: cuts[0]], text[cuts[0] : cuts[1]], text[cuts[1] :]
    for name, part in zip(("train.txt", "valid.txt", "test.txt"), parts, strict=True):
        _write_atomically(folder / name, part.encode("utf-8"))


_DYNET = "https://raw.githubusercontent.com/neulab/dynet-benchmark/master/data/trees/"
_CHAR_RNN = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"
SOURCES: dict[str, Source] = {
    "sst": Source(
        {
            "train.txt": (_DYNET + "train.txt", "e2f3f41b0b1e6d4dddc0effe3bfc2d27ed8928079aa9a03d652311614fc5feb7"),
            "dev.txt": (_DYNET + "dev.txt", "0e9336aed6e4730e19f58d00a77b3f0297efdb755f7b5e598c98a05e3f97ea40"),
            "test.txt": (_DYNET + "test.txt", "6e54806dee95cf80cd918e7dfb3f6770f6df24bf826f289a4d1f709e1c8f6761"),
        },
        "Stanford Sentiment Treebank (Socher et al. 2013), the DyNet benchmark suite's copy; cite the paper",
    ),
    "tinyshakespeare": Source(
        {"input.txt": (_CHAR_RNN + "input.txt", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")},
        "Tiny Shakespeare (karpathy/char-rnn, MIT), split 90/5/5 by characters at line boundaries",
        _split_characters,
    ),
}


def cache_folder() -> Path:
    """Where fetched data sets live: ``$FUNCNET_DATA``, else ``$XDG_CACHE_HOME/funcnet/data``, else
    ``~/.cache/funcnet/data``."""
    if os.environ.get("FUNCNET_DATA"):
        return Path(os.environ["FUNCNET_DATA"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "funcnet" / "data"


def is_fetched(name: str, folder: Path | None = None) -> bool:
    """Whether every file of ``name`` is in the cache."""
    target = (folder or cache_folder()) / name
    return all((target / file).is_file() for file in SOURCES[name].files)


def fetch(name: str, *, folder: Path | None = None, timeout: float = 60.0, sources: Mapping[str, Source] = SOURCES,
          log: Callable[[str], None] = print) -> Path:  # fmt: skip
    """Downloads data set ``name`` into ``folder`` (default ``cache_folder()``) / ``name``; returns that folder.
    Files already there with the right checksum are kept.

    Raises:
      KeyError: an unknown name.
      DataFetchError: a file could not be downloaded or its checksum differs (the message says which,
        and how to fetch it by hand); nothing partial is left in the cache.
    """
    if name not in sources:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(sources)}")
    source = sources[name]
    target = (folder or cache_folder()) / name
    target.mkdir(parents=True, exist_ok=True)
    for file, (url, expected) in source.files.items():
        path = target / file
        if path.is_file() and _sha256(path.read_bytes()) == expected:
            log(f"{path}: already fetched")
            continue
        log(f"fetching {url}")
        data = _download(url, timeout, name, path)
        digest = _sha256(data)
        if digest != expected:
            raise DataFetchError(
                f"{url}: SHA-256 {digest}, expected {expected}: not the file funcnet knows; nothing was cached. "
                f"If the source changed, fetch it by hand into {target} and check it"
            )
        _write_atomically(path, data)
    if source.derive is not None:
        source.derive(target)
    log(f"{name}: in {target}")
    return target


def _download(url: str, timeout: float, name: str, path: Path) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DataFetchError(
            f"cannot download {url}: {reason}. Check the network (or a proxy: HTTPS_PROXY), or download the file "
            f"by hand to {path} and run `funcnet data fetch {name}` again to check it"
        ) from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def resolve(path: str) -> str:
    """A data path as given (``--data``, ``data.path``): a file or folder that exists, or the name of a data set,
    which means its cached folder. FileNotFoundError saying how to fetch a named one not yet fetched.

    >>> resolve("") == "" and resolve("/no/such/thing") == "/no/such/thing"
    True
    """
    if not path or path not in SOURCES or Path(path).exists():
        return path
    if not is_fetched(path):
        raise FileNotFoundError(f"data set {path!r} is not fetched yet: run `funcnet data fetch {path}` "
                                f"(it goes to {cache_folder() / path})")  # fmt: skip
    return str(cache_folder() / path)
