"""Labelled parse trees: the PTB bracket format and a vocabulary.

A tree has an integer label on every node, as in the Stanford Sentiment Treebank::

    (3 (2 It) (4 (2 's) (3 (2 a) (3 lovely) (2 film))))

A leaf is ``(label token)``, where the token is everything between the label and the closing
bracket: it may contain spaces (``(2 8 1\\/2)`` holds the token ``8 1\\/2``) and keeps PTB escapes
as written (``-LRB-``, ``\\/``). Tokens cannot contain brackets (PTB writes them ``-LRB-``/``-RRB-``).
Malformed input raises ``TreeParseError`` with the line and column of the mistake; ``read_trees``
never skips a line, so a bad line cannot shift the data.

The schedules that turn a batch of trees into arrays for a compiled program (``schedule``,
``postorder``, ``TreeBatch``, ``Buckets``, ``slot_stats``) are ``funcnet.tree_schedule``'s, which imports
this module (not the other way round).

>>> tree = parse_tree("(3 (2 It) (4 (2 works) (2 .)))")
>>> tree.label, leaves(tree), num_nodes(tree), height(tree)
(3, ['It', 'works', '.'], 5, 2)
>>> to_ptb(tree)
'(3 (2 It) (4 (2 works) (2 .)))'
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterable
from typing import NamedTuple

from .errors import DataError

UNKNOWN = "<unk>"


class Tree(NamedTuple):
    """A labelled tree node; a leaf has no children and a token.

    Attributes:
      label: the node's label (SST: sentiment 0..4).
      children: child trees, in order; empty for a leaf.
      token: the leaf's word as written in the file (PTB escapes kept); None for internal nodes.

    >>> Tree(2, token="fine").is_leaf, Tree(3, (Tree(2, token="a"), Tree(3, token="b"))).is_leaf
    (True, False)
    """

    label: int
    children: tuple[Tree, ...] = ()
    token: str | None = None

    @property
    def is_leaf(self) -> bool:
        """Whether the node has no children.

        >>> parse_tree("(2 word)").is_leaf
        True
        """
        return not self.children


def _nodes(tree: Tree) -> Iterable[tuple[Tree, int]]:
    """Yields ``(node, depth)`` in pre-order, children left to right, without recursion."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        stack.extend((child, depth + 1) for child in reversed(node.children))


def leaves(tree: Tree) -> list[str]:
    """The tokens of the leaves, left to right.

    >>> leaves(parse_tree("(1 (2 not) (3 good))"))
    ['not', 'good']
    """
    return [node.token for node, _ in _nodes(tree) if not node.children]


def num_nodes(tree: Tree) -> int:
    """The number of nodes, leaves included.

    >>> num_nodes(parse_tree("(1 (2 not) (3 good))"))
    3
    """
    return sum(1 for _ in _nodes(tree))


def height(tree: Tree) -> int:
    """The number of edges on the longest path from the node down to a leaf (a leaf has height 0).

    >>> height(parse_tree("(2 word)")), height(parse_tree("(1 (2 not) (3 (2 very) (3 good)))"))
    (0, 2)
    """
    return max(depth for _, depth in _nodes(tree))


class TreeParseError(DataError):
    """Malformed bracketed tree, with the 1-based line and column of the mistake.

    Attributes:
      line: 1-based line number (of the file, for ``read_trees``).
      column: 1-based column in that line.
      detail: what was expected and what was found.
      source: the file name, when the tree came from a file.

    >>> try:
    ...     parse_tree("(2 (1 bad)", line=7)
    ... except TreeParseError as e:
    ...     print(e.line, e.column)
    7 11
    """

    def __init__(self, detail: str, line: int, column: int, source: str | None = None):
        self.detail, self.line, self.column, self.source = detail, line, column, source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}line {self.line}, column {self.column}: {self.detail}"

    def __reduce__(self):
        return (type(self), (self.detail, self.line, self.column, self.source))


_BRACKETS = re.compile(r"([()])")


def _show(text: str, limit: int = 20) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_tree(text: str, line: int = 1) -> Tree:
    """Parses one bracketed tree ``(label child...)`` / ``(label token)``.

    Args:
      text: the tree; surrounding whitespace is ignored, and nothing else may follow the tree.
      line: the line number reported in errors for the first line of ``text``.

    Returns:
      The root ``Tree``.

    Raises:
      TreeParseError: unbalanced brackets, a missing or non-integer label, an empty node or empty text,
        a node with both a token and children, or text after the tree; with line and column.

    >>> parse_tree("(2 (2 8 1\\\\/2) (2 hours))").children[0].token
    '8 1\\\\/2'
    """

    def fail(detail: str, offset: int) -> TreeParseError:
        row = text.count("\n", 0, offset)
        column = offset - (text.rfind("\n", 0, offset) + 1) + 1
        return TreeParseError(detail, line + row, column)

    # ``parts`` alternates text chunks (even indices, maybe empty) and single brackets (odd indices).
    parts = _BRACKETS.split(text)
    open_nodes: list[list] = []  # [label, token, children, offset of "("]
    root = None
    offset = 0
    for index, part in enumerate(parts):
        start, offset = offset, offset + len(part)
        if index % 2 == 0:
            if not part or part.isspace():
                continue
            at = start + len(part) - len(part.lstrip())
            if not open_nodes:
                expected = "'(' to open a tree" if root is None else "end of line after the tree"
                raise fail(f"expected {expected}, found {_show(part)}", at)
            node = open_nodes[-1]
            if node[0] is not None:  # text after a child tree
                raise fail(f"a node cannot have both children and a token: found {_show(part)} after a child tree", at)
            head, *rest = part.split(None, 1)
            label, token = head, (rest[0].strip() if rest else "")
            if not (label.isascii() and label.isdecimal()):
                raise fail(f"expected a non-negative integer label after '(', found {_show(label)}", at)
            node[0], node[1] = int(label), token or None
        elif part == "(":
            if open_nodes:
                node = open_nodes[-1]
                if node[0] is None:
                    raise fail("expected a label after '(', found '('", start)
                if node[1] is not None:
                    raise fail(
                        f"a node cannot have both a token ({_show(node[1])}) and children: found '(' after the token",
                        start,
                    )
            elif root is not None:
                raise fail("expected end of line after the tree, found '(' (one tree per line)", start)
            open_nodes.append([None, None, [], start])
        else:  # ")"
            if not open_nodes:
                expected = "'(' to open a tree" if root is None else "end of line after the tree"
                raise fail(f"expected {expected}, found ')' (unbalanced brackets)", start)
            label, token, children, _ = open_nodes.pop()
            if label is None:
                raise fail("expected a label after '(', found ')'", start)
            if token is None and not children:
                raise fail(f"expected a token or child trees after the label {label}, found ')'", start)
            tree = Tree(label, tuple(children), token)
            if open_nodes:
                open_nodes[-1][2].append(tree)
            else:
                root = tree
    if open_nodes:
        opened = open_nodes[-1][3]
        where = fail("", opened)
        raise fail(
            f"expected ')' to close the node opened at line {where.line}, column {where.column}, "
            f"found end of text (unbalanced brackets)",
            len(text.rstrip()),
        )
    if root is None:
        raise fail("expected a tree '(label ...)', found empty text", 0)
    return root


def read_trees(path: str | os.PathLike, classes: int | None = None) -> list[Tree]:
    """Reads one tree per non-empty line of a PTB/SST file (UTF-8).

    Args:
      path: the file.
      classes: if given, every node's label must be below it (SST: 5).

    Raises:
      TreeParseError: for the first malformed line, with that line's number and the file name: bad
        brackets, a label ``>= classes``, text that is not UTF-8; or for an empty file.

    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     file = pathlib.Path(d, "dev.txt")
    ...     _ = file.write_text("(3 (2 a) (3 good))\\n(1 (2 not) (3 fine))\\n")
    ...     [tree.label for tree in read_trees(file)]
    [3, 1]
    """
    trees = []
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                detail = (
                    f"not UTF-8 text ({error.reason} at byte {error.start} of the line). Fix: convert the file to UTF-8"
                )
                raise TreeParseError(detail, number, error.start + 1, source=str(path)) from None
            if not text.strip():
                continue
            try:
                tree = parse_tree(text.rstrip("\r\n"), line=number)
            except TreeParseError as error:
                raise TreeParseError(error.detail, error.line, error.column, source=str(path)) from None
            bad = [label for label in _labels(tree) if classes is not None and not 0 <= label < classes]
            if bad:
                detail = f"label {bad[0]} is outside the {classes} classes 0-{classes - 1}. Fix: relabel the tree"
                raise TreeParseError(detail, number, text.find(f"({bad[0]}") + 1, source=str(path))
            trees.append(tree)
    if not trees:
        raise TreeParseError("expected one tree per line, found an empty file", 1, 1, source=str(path))
    return trees


def _labels(tree: Tree) -> list[int]:
    """Every node's label, root first."""
    labels, stack = [], [tree]
    while stack:
        node = stack.pop()
        labels.append(node.label)
        stack.extend(node.children)
    return labels


def to_ptb(tree: Tree) -> str:
    """Writes a tree in the bracket format, single-spaced: ``parse_tree(to_ptb(t)) == t``.

    >>> to_ptb(Tree(1, (Tree(2, token="not"), Tree(3, token="good"))))
    '(1 (2 not) (3 good))'
    """
    out = []
    stack: list[Tree | str] = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif item.children:
            out.append(f"({item.label}")
            stack.append(")")
            for child in reversed(item.children):
                stack.extend((child, " "))
        else:
            if not item.token:
                raise ValueError(f"to_ptb: a leaf needs a token, got {item!r}")
            out.append(f"({item.label} {item.token})")
    return "".join(out)


class Vocabulary(NamedTuple):
    """Token ids, most frequent first, with the unknown token at id 0.

    Attributes:
      tokens: the token of each id; ``tokens[0]`` is ``"<unk>"``.
      ids: token -> id for the known tokens.

    >>> vocab = Vocabulary.from_trees([parse_tree("(3 (2 a) (3 (2 a) (3 film)))")])
    >>> vocab.tokens, vocab.encode("a"), vocab.encode("unseen"), vocab.size
    (('<unk>', 'a', 'film'), 1, 0, 3)
    """

    tokens: tuple[str, ...]
    ids: dict[str, int]

    @classmethod
    def from_tokens(cls, tokens: Iterable[str]) -> Vocabulary:
        """The vocabulary of ``tokens`` in order (id ``i`` is ``tokens[i]``), e.g. as a run recorded it.

        >>> Vocabulary.from_tokens(["<unk>", "a", "film"]).ids["film"]
        2
        """
        tokens = tuple(tokens)
        return cls(tokens, {token: i for i, token in enumerate(tokens)})

    @classmethod
    def from_trees(cls, trees: Iterable[Tree], min_count: int = 1) -> Vocabulary:
        """Builds the vocabulary of the leaves' tokens seen at least ``min_count`` times.

        Ties in frequency are broken alphabetically, so the ids depend only on the data.

        >>> Vocabulary.from_trees([parse_tree("(3 (2 a) (3 (2 a) (3 film)))")], min_count=2).tokens
        ('<unk>', 'a')
        """
        if min_count < 1:
            raise ValueError(f"Vocabulary.from_trees: expected min_count >= 1, got {min_count}")
        counts = collections.Counter(token for tree in trees for token in leaves(tree))
        counts.pop(UNKNOWN, None)
        kept = sorted((token for token, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
        tokens = (UNKNOWN, *kept)
        return cls(tokens, {token: i for i, token in enumerate(tokens)})

    def encode(self, token: str | None) -> int:
        """The id of ``token``; 0 (unknown) if it is not in the vocabulary.

        >>> Vocabulary.from_trees([parse_tree("(2 word)")]).encode("word")
        1
        """
        return self.ids.get(token, 0)

    @property
    def size(self) -> int:
        """The number of ids, the unknown token included.

        >>> Vocabulary.from_trees([parse_tree("(2 word)")]).size
        2
        """
        return len(self.tokens)
