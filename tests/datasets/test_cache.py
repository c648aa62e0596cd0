"""Fetching public data sets into the cache, against a local HTTP server: checksums, atomic files, clear errors
when the network or the file is wrong, and ``--data sst`` reading the cached copy."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading

import pytest

from funcnet.config import cli
from funcnet.datasets import cache
from funcnet.experiments import treelstm

TREES = ["(3 (2 a) (3 good))", "(1 (2 a) (1 (1 dull) (2 film)))", "(4 (3 very) (4 good))", "(0 awful)"]


@pytest.fixture
def server(tmp_path):
    """A folder served over HTTP on 127.0.0.1; yields (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _source(root, base, files, derive=None):
    for name, text in files.items():
        (root / name).write_text(text)
    sums = {name: (base + name, hashlib.sha256(text.encode()).hexdigest()) for name, text in files.items()}
    return cache.Source(sums, "a fixture", derive)


def test_a_data_set_is_fetched_checked_and_kept(server, tmp_path):
    root, base = server
    files = {"train.txt": "\n".join(TREES * 5) + "\n", "dev.txt": "\n".join(TREES) + "\n"}
    sources = {"sst": _source(root, base, files)}
    log = []
    target = cache.fetch("sst", folder=tmp_path / "cache", sources=sources, log=log.append)
    assert {p.name: p.read_text() for p in target.iterdir()} == files
    assert cache.fetch("sst", folder=tmp_path / "cache", sources=sources, log=log.append) == target
    assert sum("already fetched" in line for line in log) == 2  # the second fetch downloaded nothing


def test_a_file_that_is_not_what_its_checksum_says_is_not_cached(server, tmp_path):
    root, base = server
    sources = {"sst": _source(root, base, {"train.txt": "(2 a)\n"})}
    (root / "train.txt").write_text("(2 tampered)\n")
    with pytest.raises(cache.DataFetchError, match=r"train.txt: SHA-256 [0-9a-f]{64}, expected [0-9a-f]{64}"):
        cache.fetch("sst", folder=tmp_path / "cache", sources=sources, log=lambda line: None)
    assert list((tmp_path / "cache" / "sst").iterdir()) == []  # no file, no temporary left behind


def test_an_unreachable_server_is_one_clear_error(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sources = {"sst": cache.Source({"train.txt": (f"http://127.0.0.1:{port}/train.txt", "0" * 64)}, "unreachable")}
    with pytest.raises(cache.DataFetchError) as error:
        cache.fetch("sst", folder=tmp_path / "cache", sources=sources, log=lambda line: None, timeout=5)
    message = str(error.value)
    assert message.startswith(f"cannot download http://127.0.0.1:{port}/train.txt: ") and "by hand to" in message
    assert "funcnet data fetch sst" in message


def test_tinyshakespeare_is_split_by_characters_at_line_boundaries(server, tmp_path):
    root, base = server
    text = "".join(f"line {i} of the play\n" for i in range(400))
    sources = {"tinyshakespeare": _source(root, base, {"input.txt": text}, cache.SOURCES["tinyshakespeare"].derive)}
    target = cache.fetch("tinyshakespeare", folder=tmp_path / "cache", sources=sources, log=lambda line: None)
    parts = [(target / f"{name}.txt").read_text() for name in ("train", "valid", "test")]
    assert "".join(parts) == text and all(part.endswith("\n") for part in parts)
    assert len(parts[0]) <= 0.9 * len(text) < len(parts[0]) + len("line 399 of the play\n")
    assert len(parts[0]) + len(parts[1]) <= 0.95 * len(text)


def test_data_sst_reads_the_cached_copy(server, tmp_path, monkeypatch, capsys):
    root, base = server
    monkeypatch.setenv("FUNCNET_DATA", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="run `funcnet data fetch sst`"):
        cache.resolve("sst")
    files = {"train.txt": "\n".join(TREES * 5) + "\n", "dev.txt": "\n".join(TREES) + "\n",
             "test.txt": "\n".join(TREES) + "\n"}  # fmt: skip
    monkeypatch.setitem(cache.SOURCES, "sst", _source(root, base, files))
    assert cli.main(["data", "fetch", "sst"]) == 0
    code = treelstm.main(["--data", "sst", "--preset", "tiny", "--run-dir", str(tmp_path / "run"),
                          "-o", "trainer.progress=false"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and f"data: {tmp_path / 'cache' / 'sst'}: 20 train, 4 dev, 4 test trees" in out, out


def test_the_command_lists_sources_and_refuses_unknown_names(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FUNCNET_DATA", str(tmp_path))
    assert cli.main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    assert "sst" in listing and "tinyshakespeare" in listing and str(tmp_path) in listing
    assert cli.main(["data", "fetch", "mnist"]) == 2
    assert "name data sets to fetch, of sst, tinyshakespeare; got ['mnist']" in capsys.readouterr().err
