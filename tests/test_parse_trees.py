"""Bracketed trees: the parser against SST and hand-written cases, errors with line and column, the vocabulary."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from funcnet.parse_trees import (
    Tree,
    TreeParseError,
    Vocabulary,
    height,
    leaves,
    num_nodes,
    parse_tree,
    read_trees,
    to_ptb,
)

SST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst"


def sst_lines(split: str) -> list[str]:
    path = SST / f"{split}.txt"
    if not path.exists():
        pytest.skip(f"SST {split} split not found at {path} (the shared data folder is absent); nothing to round-trip")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module", params=["dev", "train"])
def sst(request):
    split = request.param
    lines = sst_lines(split)
    return split, lines, read_trees(SST / f"{split}.txt")


# ---- the SST files -------------------------------------------------------------------------------------------


def test_every_sst_line_round_trips(sst):
    split, lines, trees = sst
    assert len(trees) == len(lines)
    mismatches = [
        i + 1 for i, (line, tree) in enumerate(zip(lines, trees, strict=True)) if to_ptb(tree) != line.strip()
    ]
    assert not mismatches, f"{split}: lines {mismatches[:5]} do not round-trip"
    # And parsing what was written gives the same tree back.
    assert all(parse_tree(to_ptb(tree)) == tree for tree in trees[:200])


def test_sst_facts_from_the_data_readme(sst):
    split, _, trees = sst
    assert len(trees) == {"train": 8544, "dev": 1101}[split]
    stack = list(trees)
    internal_arities, labels = set(), set()
    while stack:
        node = stack.pop()
        labels.add(node.label)
        if node.children:
            internal_arities.add(len(node.children))
            assert node.token is None
            stack.extend(node.children)
        else:
            assert node.token and node.token == node.token.strip()
    assert internal_arities == {2}, "every internal SST node is binary"
    assert labels == {0, 1, 2, 3, 4}
    assert max(num_nodes(tree) for tree in trees) == {"train": 103, "dev": 97}[split]
    assert max(height(tree) for tree in trees) <= 29
    # The README: mean about 37 nodes a tree; a loose check that these are the real SST trees.
    assert 30 < np.mean([num_nodes(tree) for tree in trees]) < 45


def test_sst_tokens_with_spaces_and_escapes_survive():
    sst_lines("train")  # skips when absent
    trees = read_trees(SST / "train.txt")
    tokens = [token for tree in trees for token in leaves(tree)]
    # The README's three tokens with a space hold a no-break space (U+00A0), which str.split() would split on.
    spaced = [token for token in tokens if any(char.isspace() for char in token)]
    assert spaced == ["8\xa01\\/2", "2\xa01\\/2", "2\xa01\\/2"]
    assert {"-LRB-", "-RRB-"} <= set(tokens)
    assert not any("(" in token or ")" in token for token in tokens)


# ---- hand-written cases -------------------------------------------------------------------------------------


def test_leaf_token_is_everything_between_label_and_bracket():
    tree = parse_tree("(2 (2 8 1\\/2) (2 hours))")
    assert tree.children[0] == Tree(2, (), "8 1\\/2")
    assert to_ptb(tree) == "(2 (2 8 1\\/2) (2 hours))"
    assert parse_tree("(2 8  1\\/2 )").token == "8  1\\/2"  # inner whitespace kept, outer stripped


@pytest.mark.parametrize(
    "token", ["-LRB-", "-RRB-", "-LCB-", "\\/", "\\*", "``", "''", "'s", "n't", "--", "...", "A.C."]
)
def test_ptb_escapes_are_kept_as_written(token):
    tree = parse_tree(f"(3 (2 {token}) (2 x))")
    assert tree.children[0].token == token
    assert to_ptb(tree) == f"(3 (2 {token}) (2 x))"


def test_single_word_tree():
    tree = parse_tree("(4 wonderful)")
    assert tree == Tree(4, (), "wonderful") and tree.is_leaf
    assert (leaves(tree), num_nodes(tree), height(tree)) == (["wonderful"], 1, 0)


def test_whitespace_between_brackets_is_normalised():
    tree = parse_tree("  (3\t(2 a)\n  (3   (2 very) (4 good) ) )  ")
    assert to_ptb(tree) == "(3 (2 a) (3 (2 very) (4 good)))"


def test_deep_nesting_needs_no_recursion():
    depth = 5000  # far beyond Python's recursion limit
    text = "(1 (2 a) " * depth + "(2 z)" + ")" * depth
    tree = parse_tree(text)
    assert height(tree) == depth and num_nodes(tree) == 2 * depth + 1
    assert leaves(tree) == ["a"] * depth + ["z"]
    assert to_ptb(tree) == text


def test_n_ary_nodes():
    tree = parse_tree("(2 (1 a) (2 b) (3 c) (4 d))")
    assert [child.label for child in tree.children] == [1, 2, 3, 4]
    assert height(tree) == 1 and num_nodes(tree) == 5


def test_helpers_agree_with_recursion_on_random_trees():
    rng = np.random.default_rng(0)

    def random_tree(n):
        nodes = [Tree(int(rng.integers(5)), (), f"w{rng.integers(9)}") for _ in range(n)]
        while len(nodes) > 1:
            k = int(rng.integers(2, min(3, len(nodes)) + 1))
            i = int(rng.integers(len(nodes) - k + 1))
            nodes[i : i + k] = [Tree(int(rng.integers(5)), tuple(nodes[i : i + k]))]
        return nodes[0]

    def ref_height(t):
        return 0 if not t.children else 1 + max(ref_height(c) for c in t.children)

    def ref_leaves(t):
        return [t.token] if not t.children else [w for c in t.children for w in ref_leaves(c)]

    def ref_ptb(t):
        return f"({t.label} {t.token})" if not t.children else f"({t.label} {' '.join(map(ref_ptb, t.children))})"

    for n in range(1, 40):
        tree = random_tree(n)
        assert leaves(tree) == ref_leaves(tree) and len(leaves(tree)) == n
        assert height(tree) == ref_height(tree)
        assert to_ptb(tree) == ref_ptb(tree)
        assert parse_tree(to_ptb(tree)) == tree


def test_to_ptb_rejects_a_leaf_without_token():
    with pytest.raises(ValueError, match="a leaf needs a token"):
        to_ptb(Tree(2, (Tree(1),)))


# ---- malformed input: what, where -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("(2 (1 bad)", 11, r"expected '\)' to close the node opened at line 4, column 1, found end of text"),
        ("(2 (1 bad) (3 x)", 17, r"node opened at line 4, column 1.*unbalanced"),
        ("(2 (1 bad)))", 12, r"expected end of line after the tree, found '\)' \(unbalanced brackets\)"),
        (")", 1, r"expected '\(' to open a tree, found '\)'"),
        ("( (2 a))", 3, r"expected a label after '\(', found '\('"),
        ("()", 2, r"expected a label after '\(', found '\)'"),
        ("(x word)", 2, r"expected a non-negative integer label after '\(', found 'x'"),
        ("(2 (-1 word))", 5, r"non-negative integer label.*found '-1'"),
        ("(2.5 word)", 2, r"integer label.*found '2.5'"),
        ("(2)", 3, r"expected a token or child trees after the label 2, found '\)'"),
        ("(2 a) (3 b)", 7, r"expected end of line after the tree, found '\(' \(one tree per line\)"),
        ("(2 a) extra", 7, r"expected end of line after the tree, found 'extra'"),
        ("(2 word (3 x))", 9, r"both a token \('word'\) and children"),
        ("(3 (2 a) stray (2 b))", 10, r"both children and a token: found 'stray' after a child tree"),
        ("word", 1, r"expected '\(' to open a tree, found 'word'"),
        ("", 1, r"expected a tree '\(label \.\.\.\)', found empty text"),
        ("   ", 1, r"found empty text"),
    ],
)
def test_malformed_trees_report_line_column_and_what(text, column, message):
    with pytest.raises(TreeParseError, match=message) as info:
        parse_tree(text, line=4)
    assert (info.value.line, info.value.column) == (4, column)
    assert str(info.value).startswith(f"line 4, column {column}: ")
    assert isinstance(info.value, ValueError)


def test_errors_in_multi_line_text_point_at_the_right_line():
    with pytest.raises(TreeParseError) as info:
        parse_tree("(2\n  (1 a)\n  (x b))")
    assert (info.value.line, info.value.column) == (3, 4)


def test_error_pickles_with_its_position():
    error = pickle.loads(pickle.dumps(TreeParseError("expected x, found y", 3, 5, source="dev.txt")))
    assert (error.line, error.column, str(error)) == (3, 5, "dev.txt: line 3, column 5: expected x, found y")


def write(tmp_path, text: str, name="trees.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def test_an_error_on_line_3_of_a_file_reports_line_3(tmp_path):
    path = write(tmp_path, "(3 (2 a) (3 b))\n(1 (2 not) (3 good))\n(2 (2 a) (3 b)\n(2 ok)\n")
    with pytest.raises(TreeParseError, match=r"trees\.txt: line 3, column 15: expected '\)'") as info:
        read_trees(path)
    assert (info.value.line, info.value.column, info.value.source) == (3, 15, str(path))


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = write(tmp_path, "(3 (2 a) (3 b))\n\n   \n(1 (x not) (3 good))\n")
    with pytest.raises(TreeParseError, match="line 4, column 5") as info:
        read_trees(path)
    assert info.value.line == 4
    good = write(tmp_path, "(3 (2 a) (3 b))\n\n(1 (2 not) (3 good))\n", "good.txt")
    assert [tree.label for tree in read_trees(good)] == [3, 1]


def test_windows_line_endings(tmp_path):
    path = write(tmp_path, "(3 (2 a) (3 b))\r\n(1 (2 not) (3 good))\r\n")
    assert [to_ptb(tree) for tree in read_trees(path)] == ["(3 (2 a) (3 b))", "(1 (2 not) (3 good))"]


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_an_empty_file_raises(tmp_path, text):
    with pytest.raises(TreeParseError, match="expected one tree per line, found an empty file") as info:
        read_trees(write(tmp_path, text))
    assert (info.value.line, info.value.column) == (1, 1)


def test_a_tree_split_over_two_lines_is_an_error_not_a_shift(tmp_path):
    path = write(tmp_path, "(3 (2 a)\n (3 b))\n")
    with pytest.raises(TreeParseError, match="line 1, column 9: expected '\\)'"):
        read_trees(path)


# ---- the vocabulary ----------------------------------------------------------------------------------------------


def test_vocabulary_counts_ids_and_unknown():
    trees = [parse_tree("(3 (2 the) (3 (2 the) (3 film)))"), parse_tree("(1 (2 a) (1 (2 the) (1 dud)))")]
    vocab = Vocabulary.from_trees(trees)
    # Most frequent first, ties alphabetical; id 0 is the unknown token.
    assert vocab.tokens == ("<unk>", "the", "a", "dud", "film")
    assert [vocab.encode(t) for t in ("the", "a", "dud", "film", "unseen", None)] == [1, 2, 3, 4, 0, 0]
    assert vocab.size == 5
    assert Vocabulary.from_trees(trees, min_count=2).tokens == ("<unk>", "the")
    assert Vocabulary.from_trees([parse_tree("(2 <unk>)")]).tokens == ("<unk>",)
    with pytest.raises(ValueError, match="min_count >= 1"):
        Vocabulary.from_trees(trees, min_count=0)


def test_vocabulary_of_sst_train():
    sst_lines("train")  # skips when absent
    trees = read_trees(SST / "train.txt")
    vocab = Vocabulary.from_trees(trees)
    assert vocab.tokens[:4] == ("<unk>", ".", ",", "the")
    assert vocab.size - 1 == len({token for tree in trees for token in leaves(tree)})
    assert all(vocab.encode(token) == i for i, token in enumerate(vocab.tokens))
