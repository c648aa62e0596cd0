"""Bad data gets one line naming the file and line: binary and non-UTF-8 text, empty files, bad trees, labels."""

from __future__ import annotations

import pytest

from funcnet.errors import DataError
from funcnet.experiments import rnn, treelstm
from funcnet.experiments.text import load_corpus
from funcnet.parse_trees import TreeParseError, read_trees

LINES = "".join(f"line {i} of some text\n" for i in range(40))


def test_a_binary_file_is_refused(tmp_path):
    path = tmp_path / "ls"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    with pytest.raises(DataError, match=rf"^{path}: a binary file \(it holds NUL bytes\), not text\. Fix"):
        load_corpus(path)


def test_text_in_another_encoding_names_its_line_and_can_be_read_with_its_encoding(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes((LINES[:60] + "caf\xe9 au lait\n" + LINES).encode("latin-1"))
    line = LINES[:60].count("\n") + 1
    with pytest.raises(DataError, match=rf"^{path}, line {line}: not utf-8 text \(invalid continuation byte .*"
                       r"Fix: .*data\.encoding = 'latin-1'"):  # fmt: skip
        load_corpus(path)
    assert "caf? au lait" in load_corpus(path, encoding="latin-1").train  # read, then non-ASCII cleaned as always


def test_an_empty_or_too_short_file_is_refused(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("")
    with pytest.raises(DataError, match=rf"^{path}: too short to split into train/valid/test by lines"):
        load_corpus(path)


def test_the_rnn_job_reports_bad_data_in_one_line(tmp_path, capsys):
    path = tmp_path / "empty.txt"
    path.write_text("")
    code = rnn.main(["--preset", "tiny", "--data", str(path), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: {path}: too short") and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"(3 (2 a) (3 good))\n(2 (1 bad)\n", r"line 2, column \d+: .*unbalanced|line 2, column \d+: expected"),
        (b"(3 (2 a) (3 good))\n(7 (2 a) (9 fine))\n", r"line 2, column 1: label 7 is outside the 5 classes 0-4"),
        (b"(3 (2 a) (3 good))\n(3 (2 caf\xe9) (3 fine))\n", r"line 2, column \d+: not UTF-8 text"),
    ],
    ids=["unbalanced", "label_outside_classes", "latin1"],
)
def test_a_bad_tree_file_names_its_line(tmp_path, content, expected):
    path = tmp_path / "train.txt"
    path.write_bytes(content)
    with pytest.raises(TreeParseError, match=rf"^{path}: ({expected})"):
        read_trees(path, classes=5)
    assert isinstance(TreeParseError("x", 1, 1), DataError)


def test_the_treelstm_job_reports_a_bad_tree_in_one_line(tmp_path, capsys):
    (tmp_path / "sst").mkdir()
    (tmp_path / "sst" / "train.txt").write_text("(3 (2 a) (3 good))\n(9 (2 a) (3 good))\n")
    (tmp_path / "sst" / "dev.txt").write_text("(3 (2 a) (3 good))\n")
    code = treelstm.main(["--preset", "tiny", "--data", str(tmp_path / "sst"), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(
        f"error: {tmp_path / 'sst' / 'train.txt'}: line 2, column 1: label 9 is outside the 5 classes"
    )
