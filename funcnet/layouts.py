"""Module layouts: the network each question of a neural module network runs, as a tree of module instances.

A layout is a tree of ``Layout(module, word, children)`` nodes (Andreas et al. 2016; N2NMN's expert
layouts): ``find[red]`` attends to red cells, ``transform[above](x)`` to the cells above ``x``'s,
``and(x, y)`` / ``or(x, y)`` intersect and unite attentions, and the root ``exists(x)`` answers yes or no.
Written as text::

    exists(and(find[red], transform[above](find[circle])))     # is there a red shape above a circle?

``MODULES`` gives each module's arity and whether it takes a word. ``LayoutVocab`` numbers the words of a
module set: ``find`` words (the leaves' tokens) and the internal module instances (``transform[above]``,
``and``, ...). ``layout_batch`` schedules a batch of layouts with the tree scheduler
(``funcnet.tree_schedule.schedule``) that the Tree-LSTM uses: the ``find`` leaves run in one batched call,
the internal instances in fixed-width steps, and the root's answer module reads each layout's body at
``roots``. A layout the vocabulary cannot run raises ``LayoutError`` naming the question.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from .parse_trees import Tree, Vocabulary
from .tree_schedule import Buckets, TreeBatch, schedule


class ModuleKind(NamedTuple):
    """How a module is called: its number of attention inputs and whether it takes a word."""

    arity: int
    takes_word: bool


MODULES: Mapping[str, ModuleKind] = {
    "find": ModuleKind(0, True),  # image -> attention
    "transform": ModuleKind(1, True),  # attention -> attention
    "and": ModuleKind(2, False),  # attention, attention -> attention
    "or": ModuleKind(2, False),
    "exists": ModuleKind(1, False),  # attention -> answer (the root)
}
ANSWER = "exists"  # the root module of every layout


class LayoutError(ValueError):
    """A layout that cannot run: an unknown module, a wrong arity, a word the vocabulary lacks."""


class Layout(NamedTuple):
    """One module instance and its inputs.

    >>> str(Layout("exists", None, (Layout("find", "red"),)))
    'exists(find[red])'
    """

    module: str
    word: str | None = None
    children: tuple[Layout, ...] = ()

    def __str__(self) -> str:
        head = self.module + (f"[{self.word}]" if self.word is not None else "")
        return head + (f"({', '.join(map(str, self.children))})" if self.children else "")

    def depth(self) -> int:
        """Modules on the longest path from the root.

        >>> parse_layout("exists(and(find[red], find[circle]))").depth()
        3
        """
        return 1 + max((child.depth() for child in self.children), default=0)


_TOKEN = re.compile(r"\s*(?:([a-z_]+)(?:\[([a-z_]+)\])?|([(),]))")


def parse_layout(text: str) -> Layout:
    """A layout from its text form (``str(layout)``); LayoutError saying where the text is malformed.

    >>> parse_layout("exists(or(find[red], transform[left_of](find[square])))").children[0].children[1].word
    'left_of'
    """
    tokens = []
    position = 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        if not match:
            raise LayoutError(f"layout {text!r}: cannot read {text[position : position + 12]!r} at column {position}")
        tokens.append((match.group(1), match.group(2), match.group(3), position))
        position = match.end()
    layout, end = _parse(text, tokens, 0)
    if end != len(tokens):
        raise LayoutError(f"layout {text!r}: unexpected text at column {tokens[end][3]}")
    return layout


def _parse(text: str, tokens: list, i: int) -> tuple[Layout, int]:
    if i >= len(tokens) or tokens[i][0] is None:
        raise LayoutError(f"layout {text!r}: expected a module name at the {'end' if i >= len(tokens) else i}")
    module, word, _, _ = tokens[i]
    i += 1
    children = []
    if i < len(tokens) and tokens[i][2] == "(":
        while True:
            child, i = _parse(text, tokens, i + 1)
            children.append(child)
            if i < len(tokens) and tokens[i][2] == ",":
                continue
            if i < len(tokens) and tokens[i][2] == ")":
                i += 1
                break
            raise LayoutError(f"layout {text!r}: expected ',' or ')' after {child}")
    return Layout(module, word, tuple(children)), i


class LayoutVocab(NamedTuple):
    """The words of a module set, numbered for the executor.

    Attributes:
      find: the ``find`` words; id ``i`` is ``find.tokens[i]`` (id 0 is ``<unk>``, never valid in a layout).
      instances: the internal module instances ``(module, word)``; id 0 is padding, so instance ``i``
        is label ``i`` of the scheduled body.
    """

    find: Vocabulary
    instances: tuple[tuple[str, str | None], ...]

    @classmethod
    def create(cls, words: Mapping[str, Sequence[str]]) -> LayoutVocab:
        """From each word-taking module's words, e.g. ``{"find": [...], "transform": [...]}``.

        >>> vocab = LayoutVocab.create({"find": ["red", "circle"], "transform": ["above"]})
        >>> vocab.instances
        (('<pad>', None), ('transform', 'above'), ('and', None), ('or', None))
        """
        unknown = sorted(set(words) - {name for name, kind in MODULES.items() if kind.takes_word})
        if unknown:
            raise LayoutError(f"LayoutVocab: {unknown[0]!r} takes no words; word modules: find, transform")
        instances: list[tuple[str, str | None]] = [("<pad>", None)]
        for module, kind in MODULES.items():
            if module in ("find", ANSWER):
                continue
            instances += [(module, word) for word in words.get(module, ())] if kind.takes_word else [(module, None)]
        return cls(Vocabulary.from_tokens(["<unk>", *words.get("find", ())]), tuple(instances))

    def instance_id(self, module: str, word: str | None) -> int | None:
        """The id of an internal instance, or None if the vocabulary lacks it."""
        try:
            return self.instances.index((module, word))
        except ValueError:
            return None

    def instance_table(self) -> tuple[np.ndarray, np.ndarray]:
        """``kinds, words``: for each instance id, its module's index in ``internal_modules()`` (-1: padding)
        and its word's index among that module's words (0 for a module without words)."""
        names = self.internal_modules()
        kinds = [names.index(module) if module in names else -1 for module, _ in self.instances]
        words = [self.words(module).index(word) if word is not None else 0 for module, word in self.instances]
        return np.asarray(kinds, np.int32), np.asarray(words, np.int32)

    def internal_modules(self) -> list[str]:
        """The internal modules' names in instance order (``transform``, ``and``, ``or``)."""
        return list(dict.fromkeys(module for module, _ in self.instances[1:]))

    def words(self, module: str) -> list[str]:
        """The words of a word-taking module, in id order."""
        if module == "find":
            return list(self.find.tokens[1:])
        return [word for m, word in self.instances if m == module and word is not None]


def check_layout(layout: Layout, vocab: LayoutVocab, where: str) -> None:
    """LayoutError naming ``where`` (the question) unless ``layout`` is ``exists(...)`` over known instances."""
    if layout.module != ANSWER:
        raise LayoutError(f"{where}: the layout's root must be {ANSWER}(...), got {layout.module}")
    stack = [layout]
    while stack:
        node = stack.pop()
        kind = MODULES.get(node.module)
        if kind is None:
            raise LayoutError(f"{where}: unknown module {node.module!r} in {node}; modules: {', '.join(MODULES)}")
        if len(node.children) != kind.arity:
            raise LayoutError(f"{where}: {node.module} takes {kind.arity} input(s), got {len(node.children)} in {node}")
        if node is not layout and node.module == ANSWER:
            raise LayoutError(f"{where}: {ANSWER} answers; it can only be the root, not inside {layout}")
        if kind.takes_word != (node.word is not None):
            need = "a word" if kind.takes_word else "no word"
            raise LayoutError(f"{where}: {node.module} takes {need}, got {node}")
        if node.module == "find" and node.word not in vocab.find.ids:
            raise LayoutError(f"{where}: find has no word {node.word!r}; its words: {vocab.words('find')}")
        if node.module not in ("find", ANSWER) and vocab.instance_id(node.module, node.word) is None:
            known = vocab.words(node.module)
            raise LayoutError(f"{where}: {node.module} has no word {node.word!r}; its words: {known}")
        stack.extend(node.children)


def body_tree(layout: Layout, vocab: LayoutVocab) -> Tree:
    """The layout below its answer module as a ``Tree`` for the scheduler: ``find`` leaves with their word as
    the token, internal nodes labelled by instance id. The layout must pass ``check_layout``."""

    def convert(node: Layout) -> Tree:
        if node.module == "find":
            return Tree(0, token=node.word)
        return Tree(vocab.instance_id(node.module, node.word), tuple(convert(child) for child in node.children))

    return convert(layout.children[0])


def layout_batch(
    layouts: Sequence[Layout],
    vocab: LayoutVocab,
    *,
    width: int,
    num_layouts: int | None = None,
    buckets: Buckets | None = None,
    where: Iterable[str] | None = None,
) -> TreeBatch:
    """A batch of layouts scheduled for ``funcnet.layers.nmn.layout_executor`` (checked first; ``where`` names
    each layout in errors, e.g. its question). ``leaf_tokens`` are ``find`` word ids, ``labels`` of internal
    rows instance ids, ``node_tree`` each row's layout (the image its ``find`` reads), ``roots`` each layout's
    body (what ``exists`` reads).

    >>> batch = layout_batch([parse_layout("exists(and(find[red], find[circle]))")],
    ...                      LayoutVocab.create({"find": ["red", "circle"]}), width=2)
    >>> batch.leaf_tokens.tolist(), batch.labels.tolist(), batch.roots.tolist()
    ([1, 2], [0, 0, 1, 0, 0], [2])
    """
    names = list(where) if where is not None else [f"layout {i}" for i in range(len(layouts))]
    for layout, name in zip(layouts, names, strict=True):
        check_layout(layout, vocab, name)
    trees = [body_tree(layout, vocab) for layout in layouts]
    return schedule(trees, vocab.find, width=width, arity=2, num_trees=num_layouts, buckets=buckets)
