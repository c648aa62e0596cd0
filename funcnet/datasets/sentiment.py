"""A compositional sentiment language: labelled binary parse trees generated in code.

Every node carries a sentiment value ``v`` in -2..2 (label ``v + 2``, SST's 0..4 scale), and the
value of every node follows from its children by fixed rules:

- a word has its lexicon value: ``superb`` +2, ``good`` +1, ``film`` 0, ``dull`` -1, ``awful`` -2;
- ``(intensifier X)`` doubles X (clipped to -2..2): ``very good`` = +2; the intensifier itself is 0;
- ``(negator X)`` flips X: ``not good`` = -1, ``not very good`` = -2; the negator itself is 0;
- ``(but Y)`` has Y's value, and ``(X (but Y))`` takes Y's value unless Y is neutral (the contrast
  wins), else X's;
- any other pair adds its parts, clipped: ``the film`` = 0, ``(the (good film)) (not dull)`` = +2.

Negation is scoped by the tree, so the same bag of words can carry opposite labels:
``(the (good film)) (not dull)`` is +2 and ``(the (dull film)) (not good)`` is -2, with the words
{the, good, dull, film, not} in both. A bag-of-words model cannot read the label off the words;
a tree model can. Sentences are a clause (a noun phrase and a possibly negated or intensified
adjective phrase), or two clauses joined by ``but``; 1 to about 15 words.

>>> trees = sentiment_language(3, seed=0)
>>> len(trees), trees[0].startswith("(")
(3, True)
"""

from __future__ import annotations

import numpy as np

LEXICON = {
    2: ("superb", "brilliant", "masterful", "wonderful"),
    1: ("good", "fine", "charming", "funny", "clever", "warm"),
    0: ("film", "movie", "plot", "story", "cast", "ending", "script", "director", "music", "the", "a", "this"),
    -1: ("dull", "slow", "bland", "silly", "thin", "flat"),
    -2: ("awful", "dreadful", "terrible", "unbearable"),
}
NEGATORS = ("not", "never", "hardly")
INTENSIFIERS = ("very", "really", "extremely")
NOUNS = ("film", "movie", "plot", "story", "cast", "ending", "script", "director", "music")
DETERMINERS = ("the", "a", "this")


def _clip(v: int) -> int:
    return max(-2, min(2, v))


class _Generator:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def word(self, words) -> str:
        return str(words[self.rng.integers(len(words))])

    def leaf(self, value: int, word: str) -> tuple[int, str]:
        return value, f"({value + 2} {word})"

    def pair(self, left: tuple[int, str], right: tuple[int, str], value: int) -> tuple[int, str]:
        return value, f"({value + 2} {left[1]} {right[1]})"

    def adjective(self, depth: int) -> tuple[int, str]:
        roll = self.rng.random()
        if depth > 0 and roll < 0.25:
            inner = self.adjective(depth - 1)
            neg = self.leaf(0, self.word(NEGATORS))
            return self.pair(neg, inner, _clip(-inner[0]))
        if depth > 0 and roll < 0.45:
            inner = self.adjective(depth - 1)
            intensifier = self.leaf(0, self.word(INTENSIFIERS))
            return self.pair(intensifier, inner, _clip(2 * inner[0]))
        value = int(self.rng.choice([2, 1, 1, -1, -1, -2]))
        return self.leaf(value, self.word(LEXICON[value]))

    def noun_phrase(self) -> tuple[int, str]:
        det = self.leaf(0, self.word(DETERMINERS))
        noun = self.leaf(0, self.word(NOUNS))
        if self.rng.random() < 0.4:
            adjective = self.adjective(1)
            noun = self.pair(adjective, noun, adjective[0])
        return self.pair(det, noun, noun[0])

    def clause(self, depth: int) -> tuple[int, str]:
        subject = self.noun_phrase()
        predicate = self.adjective(depth)
        if self.rng.random() < 0.3:
            neg = self.leaf(0, self.word(NEGATORS))
            predicate = self.pair(neg, predicate, _clip(-predicate[0]))
        return self.pair(subject, predicate, _clip(subject[0] + predicate[0]))

    def sentence(self) -> tuple[int, str]:
        first = self.clause(2)
        if self.rng.random() < 0.35:
            second = self.clause(2)
            but = self.pair(self.leaf(0, "but"), second, second[0])
            value = second[0] if second[0] != 0 else first[0]
            return self.pair(first, but, value)
        return first


def sentiment_language(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of the language as PTB bracketed trees with a label on every node.

    Deterministic for ``(n, seed)``; read them with ``funcnet.parse_trees.parse_tree``.

    >>> sentiment_language(1, seed=3)[0].count("(") > 4
    True
    """
    generator = _Generator(np.random.default_rng(seed))
    return [generator.sentence()[1] for _ in range(n)]
