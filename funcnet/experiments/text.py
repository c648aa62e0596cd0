"""Text for character language models: the default corpus, files and folders, vocabularies, TBPTT batches.

The default corpus needs no download: it is the source code of a fixed list of pure-Python
modules of the running interpreter's standard library (``STDLIB_MODULES``, about 1.4 MB on
CPython 3.11), read in that order, tabs expanded and non-ASCII characters replaced by ``?``.
Its content is fixed for a given Python version; the split is by position: the first 90% of
the lines train, the next 5% validate, the last 5% test.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from funcnet.datasets.cache import resolve as resolve_data
from funcnet.deploy.handlers import decode_chars, encode_chars
from funcnet.errors import DataError

STDLIB_MODULES = (
    "argparse.py", "textwrap.py", "difflib.py", "inspect.py", "dataclasses.py", "functools.py",
    "collections/__init__.py", "json/decoder.py", "json/encoder.py", "logging/__init__.py", "subprocess.py",
    "tarfile.py", "zipfile.py", "ast.py", "statistics.py", "random.py", "calendar.py", "configparser.py",
    "shutil.py", "tempfile.py", "threading.py", "enum.py", "csv.py", "heapq.py", "pprint.py",
)  # fmt: skip


class Corpus(NamedTuple):
    """Train, validation and (optional) test text, and where they came from."""

    source: str
    train: str
    validation: str
    test: str | None


def _clean(text: str) -> str:
    text = text.expandtabs(4)
    return "".join(c if c == "\n" or 32 <= ord(c) < 127 else "?" for c in text)


def _read(path: Path, encoding: str = "utf-8") -> str:
    """The text of ``path``: refused, naming the file and line, if it is binary or not in ``encoding``."""
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise DataError(f"{path}: a binary file (it holds NUL bytes), not text. Fix: give a text file.")
    try:
        text = data.decode(encoding)
    except LookupError:
        raise DataError(
            f"{path}: unknown encoding {encoding!r}. Fix: data.encoding = 'utf-8', 'latin-1', ..."
        ) from None
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}, line {line}: not {encoding} text ({error.reason} at byte {error.start}). Fix: convert it to "
            "UTF-8, or give its encoding (data.encoding = 'latin-1')."
        ) from None
    return _clean(text)


def _split_lines(text: str, fractions: Sequence[float] = (0.9, 0.05)) -> tuple[str, str, str]:
    """Splits at line boundaries: the first ``fractions[0]`` of the lines, the next ``fractions[1]``, the rest."""
    lines = text.splitlines(keepends=True)
    a = int(len(lines) * fractions[0])
    b = a + int(len(lines) * fractions[1])
    return "".join(lines[:a]), "".join(lines[a:b]), "".join(lines[b:])


def stdlib_corpus() -> Corpus:
    """The default corpus: Python standard-library source text, split 90/5/5 by lines.

    >>> corpus = stdlib_corpus()
    >>> len(corpus.train) > 500_000 and "def " in corpus.train
    True
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = [(root / name).read_text(encoding="utf-8") for name in STDLIB_MODULES if (root / name).exists()]
    if not parts:
        raise FileNotFoundError(f"no standard-library sources found under {root}; pass --data PATH")
    train, valid, test = _split_lines(_clean("\n".join(parts)))
    return Corpus(f"Python {sysconfig.get_python_version()} standard library sources ({root})", train, valid, test)


def load_corpus(path: str | os.PathLike | None, encoding: str = "utf-8") -> Corpus:
    """The default corpus (``path`` None or ""), a text file split 90/5/5 by lines, a folder with
    ``train.txt`` and ``valid.txt`` (and optionally ``test.txt``), or a fetched data set's name
    (``funcnet data fetch tinyshakespeare``).

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("train.txt", "valid.txt"):
    ...     _ = (folder / name).write_text("hello\\n")
    >>> load_corpus(folder).test is None
    True
    """
    if not path:
        return stdlib_corpus()
    path = Path(resolve_data(str(path)))  # a data set's name (``tinyshakespeare``) means its cached folder
    if path.is_dir():
        missing = [name for name in ("train.txt", "valid.txt") if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} is a folder without {missing}: expected train.txt and valid.txt")
        test = path / "test.txt"
        train, valid = (_read(path / name, encoding) for name in ("train.txt", "valid.txt"))
        return Corpus(str(path), train, valid, _read(test, encoding) if test.is_file() else None)
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such file or folder")
    train, valid, test = _split_lines(_read(path, encoding))
    if not valid or not train:
        raise DataError(
            f"{path}: too short to split into train/valid/test by lines ({len(train)} characters of training text). "
            "Fix: give a longer text (at least 20 lines), or a folder with train.txt and valid.txt."
        )
    return Corpus(str(path), train, valid, test)


class Vocabulary(NamedTuple):
    """Characters of the training text; id 0 is reserved for characters it does not contain.

    >>> vocab = Vocabulary.from_text("abca")
    >>> vocab.encode("abz").tolist(), vocab.decode([1, 2, 3])
    ([1, 2, 0], 'abc')
    """

    chars: str  # chars[i] is the character of id i; chars[0] is the unknown marker

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        """All distinct characters of ``text``, sorted, after the unknown marker."""
        return cls("\x00" + "".join(sorted(set(text) - {"\x00"})))

    @property
    def size(self) -> int:
        """Number of ids, the unknown marker included."""
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """int32 ids; characters outside the vocabulary map to 0."""
        return encode_chars(self.chars, text)

    def decode(self, ids: Sequence[int]) -> str:
        """The characters of ``ids`` (the unknown marker shows as ``?``)."""
        return decode_chars(self.chars, ids)
