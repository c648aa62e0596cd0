"""PyTorch Tree-LSTM baselines for ``treelstm.py``: per-node recursion and level-batched.

Both use the cell funcnet's ``binary_tree_lstm_cell`` computes (Tai et al. 2015, constituency form:
leaves read a word, internal nodes read only their two ordered children)::

    leaf:  i, o, g = split(x @ W_leaf + b)                    c = s(i) * tanh(g)
    node:  i, o, g, f_l, f_r = split([h_l, h_r] @ U + b)       c = s(i) * tanh(g) + s(f_l) * c_l + s(f_r) * c_r
    both:  h = s(o) * tanh(c);  logits = h @ W_out + b_out at every node; loss = summed cross-entropy / trees

``PerNode`` is what PyTorch users write (as in the reference ``treelstm.pytorch``): embed a sentence's
words in one call, then recurse in Python, one cell call per node. ``LevelBatched`` runs all nodes of
one height across the batch in one cell call, gathering children states with ``index_select``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from funcnet.tree_schedule import schedule


class TreeLSTMCell(nn.Module):
    """The binary Tree-LSTM equations, batched over nodes, and the per-node classifier."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, classes: int, sparse: bool = False):
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Embedding(vocab_size, embed, sparse=sparse)
        self.leaf_gates = nn.Linear(embed, 3 * hidden)
        self.node_gates = nn.Linear(2 * hidden, 5 * hidden)
        self.out = nn.Linear(hidden, classes)

    def leaf(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, o, g = self.leaf_gates(x).chunk(3, dim=-1)
        c = torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def node(self, h_kids: torch.Tensor, c_left: torch.Tensor, c_right: torch.Tensor):
        """``h_kids: [n, 2H]`` (left | right), ``c_left, c_right: [n, H]``."""
        i, o, g, f_l, f_r = self.node_gates(h_kids).chunk(5, dim=-1)
        c = torch.sigmoid(i) * torch.tanh(g) + torch.sigmoid(f_l) * c_left + torch.sigmoid(f_r) * c_right
        return torch.sigmoid(o) * torch.tanh(c), c


# ---------------------------------------------------------------- per-node recursion


class Node(NamedTuple):
    """A tree node for the recursion: ``leaf`` is the leaf's position in its sentence, -1 for internal nodes."""

    leaf: int
    children: tuple[Node, ...]


class PerNodeTree(NamedTuple):
    root: Node
    tokens: torch.Tensor  # int64[leaves] the sentence's word ids
    labels: list[int]  # every node's label, post-order


def per_node_tree(tree, vocab) -> PerNodeTree:
    """Converts a ``funcnet.parse_trees.Tree`` (data preparation, untimed)."""
    tokens: list[int] = []
    labels: list[int] = []

    def convert(t) -> Node:
        if not t.children:
            tokens.append(vocab.encode(t.token))
            node = Node(len(tokens) - 1, ())
        else:
            node = Node(-1, tuple(convert(kid) for kid in t.children))
        labels.append(t.label)
        return node

    root = convert(tree)
    return PerNodeTree(root, torch.tensor(tokens, dtype=torch.int64), labels)


class PerNode(nn.Module):
    """Python recursion over each tree's nodes, one cell call per node; one classifier call per batch."""

    def __init__(self, cell: TreeLSTMCell):
        super().__init__()
        self.cell = cell

    def visit(self, node: Node, words: torch.Tensor, states: list[torch.Tensor]):
        if node.leaf >= 0:
            h, c = self.cell.leaf(words[node.leaf : node.leaf + 1])
        else:
            kids = [self.visit(kid, words, states) for kid in node.children]
            if len(kids) == 1:  # SST is binarized; a unary node's right child is absent (zero state)
                kids.append((torch.zeros_like(kids[0][0]), torch.zeros_like(kids[0][1])))
            (h_l, c_l), (h_r, c_r) = kids
            h, c = self.cell.node(torch.cat([h_l, h_r], dim=-1), c_l, c_r)
        states.append(h)
        return h, c

    def forward(self, batch: tuple[list[PerNodeTree], torch.Tensor]) -> torch.Tensor:
        trees, labels = batch
        states: list[torch.Tensor] = []
        for tree in trees:
            self.visit(tree.root, self.cell.embed(tree.tokens), states)
        logits = self.cell.out(torch.cat(states))
        return F.cross_entropy(logits, labels, reduction="sum") / len(trees)


def per_node_batch(trees: list[PerNodeTree]):
    return trees, torch.tensor([label for tree in trees for label in tree.labels], dtype=torch.int64)


# ---------------------------------------------------------------- level-batched


class LevelBatch(NamedTuple):
    """A batch laid out by height: row 0 is a zero state, then the leaves, then each level's nodes."""

    leaf_tokens: torch.Tensor  # int64[L]
    levels: list[torch.Tensor]  # int64[2 * n_level] rows of each level's (left, right) children; absent -> 0
    labels: torch.Tensor  # int64[rows - 1] the label of rows 1.. in order
    trees: int


def level_batch(trees, vocab) -> LevelBatch:
    """Levels by height from funcnet's scheduler (``mode="height"``, no buckets), compacted (host-side NumPy)."""
    b = schedule(trees, vocab, mode="height")
    steps, width, _ = b.children.shape
    num_leaves = b.leaf_tokens.shape[0]
    real = np.flatnonzero(b.internal_mask.reshape(-1) > 0)  # row order is level order, packed left
    compact = np.zeros(num_leaves + steps * width + 1, dtype=np.int64)  # padded row -> compact row; dummy -> 0
    compact[:num_leaves] = 1 + np.arange(num_leaves)
    compact[num_leaves + real] = 1 + num_leaves + np.arange(real.size)
    counts = b.internal_mask.sum(1).astype(np.int64)
    levels = [torch.from_numpy(compact[b.children[s, :n]].reshape(-1)) for s, n in enumerate(counts) if n]
    rows = np.concatenate([np.arange(num_leaves), num_leaves + real])
    return LevelBatch(
        torch.from_numpy(b.leaf_tokens.astype(np.int64)),
        levels,
        torch.from_numpy(b.labels[rows].astype(np.int64)),
        len(trees),
    )


class LevelBatched(nn.Module):
    """All nodes of one height across the batch in one cell call; children gathered with ``index_select``."""

    def __init__(self, cell: TreeLSTMCell):
        super().__init__()
        self.cell = cell

    def forward(self, batch: LevelBatch) -> torch.Tensor:
        hidden = self.cell.hidden
        h, c = self.cell.leaf(self.cell.embed(batch.leaf_tokens))
        zero = h.new_zeros(1, hidden)
        h_all, c_all = torch.cat([zero, h]), torch.cat([zero, c])
        for kids in batch.levels:
            h_kids = h_all.index_select(0, kids).view(-1, 2 * hidden)
            c_kids = c_all.index_select(0, kids).view(-1, 2, hidden)
            h, c = self.cell.node(h_kids, c_kids[:, 0], c_kids[:, 1])
            h_all, c_all = torch.cat([h_all, h]), torch.cat([c_all, c])
        logits = self.cell.out(h_all[1:])
        return F.cross_entropy(logits, batch.labels, reduction="sum") / batch.trees


def make_step(model: nn.Module, learning_rate: float, autocast: bool = False):
    """``step(batch) -> loss``: forward, backward and one ``torch.optim.Adagrad`` update.

    ``autocast``: the forward under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (bfloat16 matmuls).
    """
    optimizer = torch.optim.Adagrad(model.parameters(), lr=learning_rate)

    def step(batch) -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(batch)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step
