"""Level schedules: a batch of trees as fixed-shape arrays that one compiled program runs bottom-up.

A batch of ``T`` trees becomes one node-state buffer of ``R`` rows:

- rows ``0 .. L-1`` are leaf slots, leaf slot ``i`` is row ``i`` (all leaves run in one batched call);
- row ``L + s*W + w`` is internal slot ``w`` of step ``s``, for ``S`` steps of width ``W``;
- the last row ``R - 1 = L + S*W`` is a dummy that stays zero: missing children and padding point at it.

Internal nodes are packed into the steps by list scheduling: a node may run in any step after all its
children ran (leaves count as done before step 0). ``mode="list"`` fills fixed-width steps with Hu's
algorithm, deepest nodes (farthest from their root) first, which is optimal for a forest of trees
with unit-time nodes: the step count is the tallest tree's height when the steps are wide enough, and
about ``ceil(internal nodes / W)`` otherwise. ``mode="height"`` is the baseline: one step per height,
as wide as the widest level, which leaves most slots empty (root-near levels hold about one node per
tree). ``slot_stats`` reports the fraction of real slots.

``Buckets`` pad ``L`` and ``S`` up to a few allowed sizes, so an epoch compiles one program per bucket
instead of one per batch. ``postorder`` is the node-by-node order used by the oracle ``node_scan``.

>>> from funcnet.parse_trees import Vocabulary, parse_tree
>>> trees = [parse_tree("(3 (2 a) (3 (2 very) (4 good)))"), parse_tree("(1 bad)")]
>>> batch = schedule(trees, Vocabulary.from_trees(trees), width=2)
>>> batch.children.shape, batch.roots.tolist()  # [S, W, K]: 2 steps of 2 slots; 4 leaf rows
((2, 2, 2), [6, 3])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from .parse_trees import Tree, Vocabulary


class Buckets(NamedTuple):
    """Allowed leaf-slot counts ``L`` and step counts ``S``: a batch pads up to the smallest that fits.

    A batch larger than the largest value is rounded up to a multiple of the largest, which adds a shape
    (one more compilation); choose the largest to cover the data.

    >>> Buckets(leaves=(512, 640), steps=(24, 32)).steps
    (24, 32)
    """

    leaves: tuple[int, ...]
    steps: tuple[int, ...]


class TreeBatch(NamedTuple):
    """A batch of trees as buffer rows and steps (layout in the module docstring), all NumPy arrays."""

    leaf_tokens: np.ndarray  # int32[L] token ids of the leaf slots (padding 0)
    leaf_mask: np.ndarray  # float32[L] 1 for real leaves
    children: np.ndarray  # int32[S, W, K] buffer rows of each internal slot's children, in order; missing -> R-1
    child_mask: np.ndarray  # float32[S, W, K] 1 for real children
    internal_mask: np.ndarray  # float32[S, W] 1 for real internal nodes
    labels: np.ndarray  # int32[R] label of the node in each row (0 for padding)
    label_mask: np.ndarray  # float32[R] 1 for real nodes, leaves and internal
    node_tree: np.ndarray  # int32[R] index of the tree each row belongs to (0 for padding)
    roots: np.ndarray  # int32[T] buffer row of each tree's root (a leaf row for one-word trees; R-1 for padding)
    tree_mask: np.ndarray  # float32[T] 1 for real trees


class PostOrder(NamedTuple):
    """A batch of trees as one post-order node list (children before parents), for node-by-node scans."""

    tokens: np.ndarray  # int32[N] token ids of leaves (0 for internal nodes and padding)
    is_leaf: np.ndarray  # bool[N] (True for padding, the cheap branch)
    children: np.ndarray  # int32[N, K] indices of earlier nodes; missing and padding -> N, a dummy zero row
    child_mask: np.ndarray  # float32[N, K]
    labels: np.ndarray  # int32[N]
    label_mask: np.ndarray  # float32[N] 1 for real nodes
    node_tree: np.ndarray  # int32[N] index of each node's tree (0 for padding)
    roots: np.ndarray  # int32[T] index of each tree's root (N for padding trees)
    tree_mask: np.ndarray  # float32[T] 1 for real trees


class _Flat(NamedTuple):
    """The batch flattened: leaves left to right, internal nodes in post-order, child links as refs.

    A ref ``r >= 0`` is leaf ``r``; ``r < 0`` is internal node ``~r``.
    """

    leaf_tokens: list[int]
    leaf_labels: list[int]
    leaf_tree: list[int]
    labels: list[int]  # internal nodes
    node_tree: list[int]
    depth: list[int]  # 1 for a root; the number of steps that must follow the node, itself included
    leaves_before: list[int]  # leaves finished before each internal node
    kid_parent: np.ndarray  # int64[E] the internal node of each child link
    kid_pos: np.ndarray  # int64[E] the child's position among its siblings
    kid_ref: np.ndarray  # int64[E] the child
    roots: list[int]  # refs


def _flatten(trees: Sequence[Tree], vocab: Vocabulary, arity: int, caller: str) -> _Flat:
    encode = vocab.encode
    leaf_tokens, leaf_labels, leaf_tree = [], [], []
    labels, node_tree, depths, leaves_before = [], [], [], []
    kid_parent, kid_pos, kid_ref, roots = [], [], [], []
    for t, tree in enumerate(trees):
        stack = [(tree, 1, False)]
        done: list[int] = []  # refs of finished subtrees, popped by their parent
        while stack:
            node, depth, expanded = stack.pop()
            kids = node.children
            if not kids:
                done.append(len(leaf_tokens))
                leaf_tokens.append(encode(node.token))
                leaf_labels.append(node.label)
                leaf_tree.append(t)
            elif not expanded:
                stack.append((node, depth, True))
                stack.extend([(kid, depth + 1, False) for kid in reversed(kids)])
            else:
                k = len(kids)
                if k > arity:
                    raise ValueError(
                        f"{caller}: tree {t} has a node with {k} children, more than arity={arity}; "
                        f"pass arity={k} or more (child-sum cells take any arity)"
                    )
                node_id = len(labels)
                kid_parent.extend([node_id] * k)
                kid_pos.extend(range(k))
                kid_ref.extend(done[-k:])
                del done[-k:]
                done.append(~node_id)
                labels.append(node.label)
                node_tree.append(t)
                depths.append(depth)
                leaves_before.append(len(leaf_tokens))
        roots.append(done[0])
    links = (np.asarray(column, dtype=np.int64) for column in (kid_parent, kid_pos, kid_ref))
    return _Flat(leaf_tokens, leaf_labels, leaf_tree, labels, node_tree, depths, leaves_before, *links, roots)


def _hu(flat: _Flat, width: int) -> tuple[np.ndarray, np.ndarray, int]:
    """List-schedules the internal nodes into steps of ``width``, deepest ready nodes first (Hu, 1961)."""
    n = len(flat.labels)
    internal = flat.kid_ref < 0
    parent = np.full(n, -1, dtype=np.int64)
    parent[~flat.kid_ref[internal]] = flat.kid_parent[internal]
    pending = np.bincount(flat.kid_parent[internal], minlength=n).tolist()
    parent = parent.tolist()
    depth = flat.depth
    top = max(depth, default=0)
    ready: list[list[int]] = [[] for _ in range(top + 1)]  # ready nodes by depth
    for node in range(n):
        if not pending[node]:
            ready[depth[node]].append(node)
    step, slot = [0] * n, [0] * n
    s = scheduled = 0
    while scheduled < n:
        taken, unlocked = 0, []
        level = top
        while taken < width and level > 0:
            bucket = ready[level]
            while bucket and taken < width:
                node = bucket.pop()
                step[node], slot[node] = s, taken
                taken += 1
                up = parent[node]
                if up >= 0:
                    pending[up] -= 1
                    if not pending[up]:
                        unlocked.append(up)
            if not bucket:
                level -= 1
        scheduled += taken
        for node in unlocked:  # runnable from the next step on
            ready[depth[node]].append(node)
        while top > 0 and not ready[top]:
            top -= 1
        s += 1
    return np.asarray(step, dtype=np.int64), np.asarray(slot, dtype=np.int64), s


def _by_height(flat: _Flat) -> tuple[np.ndarray, np.ndarray, int, int]:
    """One step per height (a leaf has height 0, so height ``h`` runs in step ``h - 1``), packed left."""
    n = len(flat.labels)
    heights = [1] * n
    for up, ref in zip(flat.kid_parent.tolist(), flat.kid_ref.tolist(), strict=True):
        if ref < 0 and heights[~ref] >= heights[up]:  # post-order: a child's height is final before its parent's
            heights[up] = heights[~ref] + 1
    step = np.asarray(heights, dtype=np.int64) - 1
    if not n:
        return step, step, 0, 1
    counts = np.bincount(step)
    order = np.argsort(step, kind="stable")
    slot = np.empty(n, dtype=np.int64)
    slot[order] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    return step, slot, len(counts), int(counts.max())


def _padded(needed: int, allowed: Sequence[int] | None) -> int:
    if allowed is None:
        return needed
    fits = [size for size in allowed if size >= needed]
    if fits:
        return min(fits)
    largest = max(allowed)
    return math.ceil(needed / largest) * largest


def _check_buckets(buckets: Buckets | None, caller: str) -> None:
    if buckets is None:
        return
    for name, sizes in zip(("leaves", "steps"), buckets, strict=True):
        if not sizes or any(int(size) != size or size < 1 for size in sizes):
            raise ValueError(f"{caller}: expected Buckets.{name} to be positive integers, got {sizes!r}")


def _num_trees(trees: Sequence[Tree], num_trees: int | None, caller: str) -> int:
    if not trees:
        raise ValueError(f"{caller}: expected at least one tree, got an empty batch")
    if num_trees is not None and num_trees < len(trees):
        raise ValueError(f"{caller}: num_trees={num_trees} is smaller than the batch of {len(trees)} trees")
    return len(trees) if num_trees is None else num_trees


def schedule(
    trees: Sequence[Tree],
    vocab: Vocabulary,
    *,
    width: int = 24,
    arity: int = 2,
    num_trees: int | None = None,
    buckets: Buckets | None = None,
    mode: str = "list",
) -> TreeBatch:
    """Schedules a batch of trees into leaf slots and fixed-width steps (host-side NumPy).

    Args:
      trees: the batch; every node needs a label, every leaf a token.
      vocab: maps leaf tokens to ids (unknown tokens -> 0).
      width: ``W``, internal slots per step in ``mode="list"``; ignored in ``mode="height"``, where ``W`` is the
        widest level of the batch.
      arity: ``K``, child slots per node: 2 for binary trees; nodes with fewer children point the rest at the dummy.
      num_trees: pads ``T`` to this many trees (the last batch of an epoch), padding trees masked out.
      buckets: pad ``L`` and ``S`` up to allowed sizes (e.g. ``funcnet.experiments.tree_sentiment.SST_BUCKETS``);
        None pads nothing, so every batch has its own shape.
      mode: ``"list"`` (Hu's list scheduling) or ``"height"`` (one step per height, the baseline).

    Returns:
      A ``TreeBatch`` (layout in the module docstring).

    Raises:
      ValueError: an empty batch, a node with more than ``arity`` children, bad sizes or mode.

    >>> from funcnet.parse_trees import Vocabulary, parse_tree
    >>> trees = [parse_tree("(3 (2 a) (3 (2 very) (4 good)))")]
    >>> batch = schedule(trees, Vocabulary.from_trees(trees), width=4, buckets=Buckets((8,), (4,)))
    >>> batch.leaf_mask.shape, batch.internal_mask.shape, batch.children[0, 0].tolist(), batch.roots.tolist()
    ((8,), (4, 4), [1, 2], [12])
    """
    caller = "schedule"
    if mode not in ("list", "height"):
        raise ValueError(f"{caller}: expected mode 'list' or 'height', got {mode!r}")
    if width < 1 or arity < 1:
        raise ValueError(f"{caller}: expected width >= 1 and arity >= 1, got width={width}, arity={arity}")
    _check_buckets(buckets, caller)
    T = _num_trees(trees, num_trees, caller)
    flat = _flatten(trees, vocab, arity, caller)
    if mode == "list":
        step, slot, steps = _hu(flat, width)
        W = width
    else:
        step, slot, steps, W = _by_height(flat)
    L = _padded(len(flat.leaf_tokens), buckets and buckets.leaves)
    S = _padded(steps, buckets and buckets.steps)
    R = L + S * W + 1
    dummy = R - 1

    def leaf_column(values, dtype, size=L):
        out = np.zeros(size, dtype=dtype)
        out[: len(values)] = values
        return out

    n_leaves = len(flat.leaf_tokens)
    flat_slot = step * W + slot
    internal_row = L + flat_slot
    row = np.concatenate([np.arange(n_leaves), internal_row])  # by ref: leaf r at r, internal ~r at n_leaves + ~r
    ref = flat.kid_ref
    children = np.full((S * W, arity), dummy, dtype=np.int32)
    child_mask = np.zeros((S * W, arity), dtype=np.float32)
    children[flat_slot[flat.kid_parent], flat.kid_pos] = row[np.where(ref >= 0, ref, n_leaves + ~ref)]
    child_mask[flat_slot[flat.kid_parent], flat.kid_pos] = 1
    internal_mask = np.zeros(S * W, dtype=np.float32)
    internal_mask[flat_slot] = 1
    labels = leaf_column(flat.leaf_labels, np.int32, R)
    labels[internal_row] = flat.labels
    label_mask = leaf_column(np.ones(n_leaves), np.float32, R)
    label_mask[internal_row] = 1
    node_tree = leaf_column(flat.leaf_tree, np.int32, R)
    node_tree[internal_row] = flat.node_tree
    root_ref = np.asarray(flat.roots, dtype=np.int64)
    roots = np.full(T, dummy, dtype=np.int32)
    roots[: len(trees)] = row[np.where(root_ref >= 0, root_ref, n_leaves + ~root_ref)]
    return TreeBatch(
        leaf_tokens=leaf_column(flat.leaf_tokens, np.int32),
        leaf_mask=leaf_column(np.ones(n_leaves), np.float32),
        children=children.reshape(S, W, arity),
        child_mask=child_mask.reshape(S, W, arity),
        internal_mask=internal_mask.reshape(S, W),
        labels=labels,
        label_mask=label_mask,
        node_tree=node_tree,
        roots=roots,
        tree_mask=leaf_column(np.ones(len(trees)), np.float32, T),
    )


def slot_stats(batch: TreeBatch) -> dict[str, float]:
    """How full a ``TreeBatch`` is: real versus padded leaf and internal slots.

    >>> from funcnet.parse_trees import Vocabulary, parse_tree
    >>> trees = [parse_tree("(3 (2 a) (3 (2 very) (4 good)))")]
    >>> stats = slot_stats(schedule(trees, Vocabulary.from_trees(trees), width=2))
    >>> stats["steps"], stats["internal"], stats["internal_slots"], stats["internal_fraction"]
    (2, 2, 4, 0.5)
    """
    leaf_mask, internal_mask = np.asarray(batch.leaf_mask), np.asarray(batch.internal_mask)
    steps, width = internal_mask.shape
    leaves, internal = int(leaf_mask.sum()), int(internal_mask.sum())
    return {
        "trees": int(np.asarray(batch.tree_mask).sum()),
        "steps": steps,
        "width": width,
        "leaves": leaves,
        "leaf_slots": leaf_mask.size,
        "internal": internal,
        "internal_slots": internal_mask.size,
        "leaf_fraction": leaves / max(leaf_mask.size, 1),
        "internal_fraction": internal / max(internal_mask.size, 1),
        "real_fraction": (leaves + internal) / max(leaf_mask.size + internal_mask.size, 1),
    }


def postorder(
    trees: Sequence[Tree],
    vocab: Vocabulary,
    *,
    arity: int = 2,
    num_nodes: int | None = None,
    num_trees: int | None = None,
) -> PostOrder:
    """Lists the nodes of a batch in post-order, tree after tree, children before their parent.

    Args:
      trees: the batch.
      vocab: maps leaf tokens to ids.
      arity: ``K``, child slots per node.
      num_nodes: pads ``N`` to this many nodes (padding nodes are masked leaves of token 0, never referenced).
      num_trees: pads ``T`` to this many trees (roots ``N``, masked out).

    Returns:
      A ``PostOrder``; ``children`` index earlier nodes, or ``N`` (a dummy zero row) for missing children.

    >>> from funcnet.parse_trees import Vocabulary, parse_tree
    >>> trees = [parse_tree("(3 (2 a) (3 (2 very) (4 good)))")]
    >>> order = postorder(trees, Vocabulary.from_trees(trees))
    >>> order.is_leaf.tolist(), order.children.tolist(), order.roots.tolist()
    ([True, True, True, False, False], [[5, 5], [5, 5], [5, 5], [1, 2], [0, 3]], [4])
    """
    caller = "postorder"
    T = _num_trees(trees, num_trees, caller)
    flat = _flatten(trees, vocab, arity, caller)
    n_leaves, n_internal = len(flat.leaf_tokens), len(flat.labels)
    needed = n_leaves + n_internal
    N = needed if num_nodes is None else num_nodes
    if N < needed:
        raise ValueError(f"{caller}: num_nodes={num_nodes} is smaller than the {needed} nodes of the batch")
    # A node's post-order index counts the nodes finished before it: internal node j follows j internal
    # nodes and the leaves finished before it; leaf i follows i leaves and the internal nodes finished before it.
    leaves_before = np.asarray(flat.leaves_before, dtype=np.int64)
    internal_index = np.arange(n_internal) + leaves_before
    leaf_index = np.arange(n_leaves) + np.searchsorted(leaves_before, np.arange(n_leaves), side="right")
    index = np.concatenate([leaf_index, internal_index])  # by ref: leaf r at r, internal ~r at n_leaves + ~r
    ref = flat.kid_ref
    parents = internal_index[flat.kid_parent]
    children = np.full((N, arity), N, dtype=np.int32)
    child_mask = np.zeros((N, arity), dtype=np.float32)
    children[parents, flat.kid_pos] = index[np.where(ref >= 0, ref, n_leaves + ~ref)]
    child_mask[parents, flat.kid_pos] = 1

    def column(values, dtype, at=None):
        out = np.zeros(N, dtype=dtype)
        out[leaf_index if at is None else at] = values
        return out

    is_leaf = np.ones(N, dtype=bool)
    is_leaf[internal_index] = False
    labels = column(flat.leaf_labels, np.int32)
    labels[internal_index] = flat.labels
    node_tree = column(flat.leaf_tree, np.int32)
    node_tree[internal_index] = flat.node_tree
    label_mask = np.zeros(N, dtype=np.float32)
    label_mask[:needed] = 1
    root_ref = np.asarray(flat.roots, dtype=np.int64)
    roots = np.full(T, N, dtype=np.int32)
    roots[: len(trees)] = index[np.where(root_ref >= 0, root_ref, n_leaves + ~root_ref)]
    tree_mask = np.zeros(T, dtype=np.float32)
    tree_mask[: len(trees)] = 1
    return PostOrder(
        tokens=column(flat.leaf_tokens, np.int32),
        is_leaf=is_leaf,
        children=children,
        child_mask=child_mask,
        labels=labels,
        label_mask=label_mask,
        node_tree=node_tree,
        roots=roots,
        tree_mask=tree_mask,
    )


def grouped_batch(
    trees: Sequence[Tree], vocab: Vocabulary, *, groups: int, trees_per_group: int, width: int, buckets: Buckets | None
) -> dict[str, np.ndarray]:
    """``trees`` split into ``groups`` groups of ``trees_per_group`` (one per device), each group scheduled
    (``schedule``) at one shared bucket shape and stacked: every ``TreeBatch`` field with a leading group axis,
    plus ``"mask"`` (= ``tree_mask``: 1 for real trees, 0 for the padding of a short last batch).

    >>> from funcnet.parse_trees import Vocabulary, parse_tree
    >>> trees = [parse_tree("(3 (2 a) (3 good))"), parse_tree("(1 bad)"), parse_tree("(2 ok)")]
    >>> batch = grouped_batch(trees, Vocabulary.from_trees(trees), groups=2, trees_per_group=2, width=2, buckets=None)
    >>> batch["tree_mask"].tolist(), batch["leaf_tokens"].shape[0]
    ([[1.0, 1.0], [1.0, 0.0]], 2)
    """
    split = [list(trees[g * trees_per_group : (g + 1) * trees_per_group]) for g in range(groups)]
    real = [len(group) for group in split]
    split = [group or list(trees[:1]) for group in split]  # an empty group schedules one masked copy
    scheduled = [schedule(group, vocab, width=width, num_trees=trees_per_group, buckets=buckets) for group in split]
    if len({(s.leaf_tokens.shape, s.children.shape) for s in scheduled}) > 1:
        # groups landed in different buckets: schedule all of them at the largest
        leaves, steps = max(s.leaf_tokens.shape[0] for s in scheduled), max(s.children.shape[0] for s in scheduled)
        shared = Buckets((leaves,), (steps,))
        scheduled = [schedule(g, vocab, width=width, num_trees=trees_per_group, buckets=shared) for g in split]
    batch = {name: np.stack([getattr(s, name) for s in scheduled]) for name in TreeBatch._fields}
    real_trees = np.stack([np.arange(trees_per_group) < n for n in real]).astype(np.float32)
    batch["tree_mask"] = batch["tree_mask"] * real_trees
    batch["mask"] = batch["tree_mask"]
    return batch
