"""The synthetic sentiment language: every node's label follows from its children by the documented rules."""

from __future__ import annotations

import itertools
from collections import Counter

from funcnet.datasets import sentiment_language
from funcnet.datasets.sentiment import INTENSIFIERS, LEXICON, NEGATORS
from funcnet.parse_trees import leaves, parse_tree

WORD_VALUE = {word: value for value, words in LEXICON.items() for word in words}
WORD_VALUE.update({word: 0 for word in (*NEGATORS, *INTENSIFIERS, "but")})


def _check(node) -> int:
    """Recomputes the value of ``node`` from the rules and asserts the stored label matches."""
    value = node.label - 2
    if node.is_leaf:
        assert WORD_VALUE[node.token] == value, node
        return value
    left, right = node.children
    a, b = _check(left), _check(right)
    if left.is_leaf and left.token in NEGATORS:
        want = max(-2, min(2, -b))
    elif left.is_leaf and left.token in INTENSIFIERS:
        want = max(-2, min(2, 2 * b))
    elif left.is_leaf and left.token == "but":
        want = b
    elif not right.is_leaf and right.children[0].is_leaf and right.children[0].token == "but":
        want = b if b != 0 else a
    else:
        want = max(-2, min(2, a + b))
    assert want == value, (node, want)
    return value


def test_every_label_follows_from_the_tree():
    for line in sentiment_language(500, seed=7):
        _check(parse_tree(line))


def test_deterministic_and_all_labels_occur():
    assert sentiment_language(50, seed=1) == sentiment_language(50, seed=1)
    assert sentiment_language(50, seed=1) != sentiment_language(50, seed=2)
    roots = Counter(parse_tree(line).label for line in sentiment_language(2000, seed=0))
    assert set(roots) == {0, 1, 2, 3, 4} and min(roots.values()) > 50


def test_the_same_words_can_carry_opposite_labels():
    # A bag of words cannot decide the label: find sentences with equal word multisets, different roots.
    by_bag: dict[tuple[str, ...], set[int]] = {}
    for line in sentiment_language(20_000, seed=0):
        tree = parse_tree(line)
        by_bag.setdefault(tuple(sorted(leaves(tree))), set()).add(tree.label)
    conflicting = [labels for labels in by_bag.values() if len(labels) > 1]
    assert len(conflicting) >= 10  # 20 with this seed: bags rarely repeat in a 40-word vocabulary
    assert any(abs(a - b) >= 2 for labels in conflicting for a, b in itertools.combinations(labels, 2))
