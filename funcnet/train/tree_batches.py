"""Tree batches for the training engine: shuffled, list-scheduled, one group of trees per device.

A batch is a dict of arrays with a leading group axis ``G`` (the data-parallel device count):
group ``g`` holds ``T`` trees scheduled together (``funcnet.tree_schedule.schedule``), and every group of a
batch is padded to the same bucket, so the engine shards the batch along its first axis and each
device runs its own trees. ``mask`` is the ``[G, T]`` tree mask; the loss returns per-tree values of
that shape. Per-tree arrays (``extras``: a module network's images and answers) come along as
``[G, T, ...]``, zero for padding trees.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from ..parse_trees import Tree, Vocabulary
from ..tree_schedule import Buckets, TreeBatch, grouped_batch, schedule
from .data import BatchIterator, Position

FIELDS = TreeBatch._fields


def auto_buckets(trees: Sequence[Tree], vocab: Vocabulary, trees_per_group: int, width: int, seed: int = 0) -> Buckets:
    """Two leaf sizes and two step counts covering random batches of ``trees``: at most 4 shapes.

    >>> from ..parse_trees import parse_tree
    >>> trees = [parse_tree("(1 (2 a) (3 b))")] * 10
    >>> auto_buckets(trees, Vocabulary.from_trees(trees), 5, width=4)
    Buckets(leaves=(16, 16), steps=(8, 8))
    """
    rng = np.random.default_rng(seed)
    leaves, steps = [], []
    for _ in range(64):
        batch = [trees[i] for i in rng.choice(len(trees), size=min(trees_per_group, len(trees)), replace=False)]
        scheduled = schedule(batch, vocab, width=width)
        leaves.append(scheduled.leaf_tokens.shape[0])
        steps.append(scheduled.children.shape[0])

    def sizes(values, multiple):
        top = max(values) * 1.25  # headroom for rarer, larger batches
        return tuple(int(math.ceil(v / multiple) * multiple) for v in (np.percentile(values, 75), top))

    return Buckets(leaves=sizes(leaves, 16), steps=sizes(steps, 8))


class TreeBatches:
    """Epochs of grouped tree batches with a seeded shuffle and a restorable position.

    Args:
      trees: the examples.
      vocab: token ids.
      batch_size: trees per batch (rounded up to a multiple of ``groups``).
      groups: groups per batch, the device count of the data-parallel mesh.
      width: internal slots per scan step.
      buckets: allowed leaf and step sizes (``auto_buckets`` by default).
      shuffle: a permutation of the trees per epoch from ``(seed, epoch)``.
      extras: per-tree arrays by name (first axis: the trees), batched beside the schedule.
    """

    def __init__(
        self,
        trees: Sequence[Tree],
        vocab: Vocabulary,
        batch_size: int,
        *,
        groups: int = 1,
        width: int = 24,
        buckets: Buckets | None = None,
        shuffle: bool = True,
        seed: int = 0,
        extras: Mapping[str, np.ndarray] | None = None,
    ):
        if not trees:
            raise ValueError("TreeBatches: no trees")
        self.extras = {name: np.asarray(array) for name, array in (extras or {}).items()}
        for name, array in self.extras.items():
            if len(array) != len(trees):
                raise ValueError(f"TreeBatches: extras[{name!r}] has {len(array)} rows for {len(trees)} trees")
        self.trees, self.vocab, self.groups, self.width = list(trees), vocab, groups, width
        self.trees_per_group = -(-batch_size // groups)
        self.batch_size = self.trees_per_group * groups
        self.buckets = buckets or auto_buckets(self.trees, vocab, self.trees_per_group, width, seed)
        self.shuffle, self.seed = shuffle, seed

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch; the last one is padded with masked trees."""
        return -(-len(self.trees) // self.batch_size)

    def _batch(self, trees: list[Tree]) -> dict[str, np.ndarray]:
        return grouped_batch(trees, self.vocab, groups=self.groups, trees_per_group=self.trees_per_group,
                             width=self.width, buckets=self.buckets)  # fmt: skip

    def order(self, epoch: int) -> np.ndarray:
        """The example order of ``epoch``."""
        n = len(self.trees)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The batches of ``epoch`` from batch index ``start``."""
        order = self.order(epoch)
        for index in range(start, self.steps_per_epoch):
            yield self.batch(order[index * self.batch_size : (index + 1) * self.batch_size])

    def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """One batch of the trees at ``rows`` (at most ``batch_size``; fewer are padded with masked trees)."""
        batch = self._batch([self.trees[i] for i in rows])
        for name, array in self.extras.items():
            padded = np.zeros((self.batch_size, *array.shape[1:]), array.dtype)
            padded[: len(rows)] = array[rows]
            batch[name] = padded.reshape(self.groups, self.trees_per_group, *array.shape[1:])
        return batch

    def iterate(self, position: Position | None = None) -> BatchIterator:
        """Batches across epochs from ``position``, with ``.position`` for checkpoints."""
        position = position or Position(0, 0)
        return BatchIterator(lambda epoch, start: self.epoch(epoch, start), Position(*position))
