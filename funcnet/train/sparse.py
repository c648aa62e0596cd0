"""Row-sparse embedding updates: the gradient and the optimizer update touch only the rows a batch uses.

A dense update of a ``[V, D]`` embedding table costs the whole table every step: autodiff scatters the
rows' gradients into a zero ``[V, D]`` array, and the optimizer reads and writes every row of the table
and of its state (Adagrad's accumulator, Adam's moments). With a vocabulary of 20,000 words and a
batch of 700 that is most of a small model's step. ``sparse_rows = {"embed/embedding": "tokens"}``
(a param path and the batch key of the ids that index it; ``optimizer.sparse_rows`` in a config)
makes the train step do instead::

    used, inverse = unique(batch["tokens"])                  # static size: the number of ids
    params["embed"]["embedding"] = Rows(table[used])         # [n, D], what funcnet.embed accepts
    batch["tokens"] = inverse                                # ids renumbered into the compact table
    grads = grad(loss)(params, batch)                        # [n, D] for the table
    each optimizer-state leaf shaped like the table          # gathered to [n, D] the same way
    updates = optimizer.update(grads, state, params)         # on the compact tree
    table[used] = table[used] + updates; state[used] = ...   # scattered back, in place (donated)

Rows not in the batch have a zero gradient in the dense update. Optimizers that leave a param alone
when its gradient is zero (SGD without momentum, Adagrad, gradient clipping by global norm, whose
norm the zero rows do not change) give exactly the dense result. Optimizers with momentum, Adam's
moments, or weight decay would still move unused rows in the dense update; here those rows wait
until they are used ("lazy" updates, as PyTorch's ``SparseAdam`` and sparse Adagrad with momentum):
a different, commonly used optimizer, not the dense one.

Only ``funcnet.embed`` layers can read a compact table (``Rows``); a table used any other way (tied
output weights) must keep the dense update. Each table takes its ids from one batch key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..core import param_path as _path
from ..layers.embed import Rows

SparseRows = Mapping[str, str]  # "/"-joined param path -> batch key of the ids that index that table


class Gathered(NamedTuple):
    """The compact tree a row-sparse step differentiates and updates, and how to write it back."""

    params: Any  # the params, each sparse table replaced by Rows(table[used])
    opt_state: Any  # the optimizer state, each leaf shaped like a sparse table gathered the same way
    batch: dict[str, jax.Array]  # the batch, each sparse table's ids renumbered into its compact rows
    used: dict[str, jax.Array]  # param path -> int32[n] the table rows gathered (``V`` pads: dropped on write)
    tables: dict[str, tuple[int, ...]]  # param path -> the full table's shape


def _owner(name: str, tables: Mapping[str, tuple[int, ...]], shape: tuple[int, ...]) -> str | None:
    """The sparse table a leaf named ``name`` of that shape mirrors (its path ends with the table's), or None."""
    for path, table_shape in tables.items():
        if tuple(shape) == table_shape and (name == path or name.endswith("/" + path)):
            return path
    return None


def check_sparse_rows(sparse_rows: SparseRows, params: Any, batch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Raises unless every path names a 2-D param and every batch key holds integer ids; returns the tables' shapes.

    >>> import jax.numpy as jnp
    >>> check_sparse_rows({"embed/embedding": "ids"}, {"embed": {"embedding": jnp.zeros((5, 2))}},
    ...                   {"ids": jnp.zeros(3, jnp.int32)})
    {'embed/embedding': (5, 2)}
    """
    leaves = {_path(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    tables = {}
    for path, key in sparse_rows.items():
        if path not in leaves:
            raise ValueError(
                f"sparse_rows: no param {path!r}; the params are {sorted(leaves)}. Fix: name an embedding table by "
                "its '/'-joined path, e.g. 'embed/embedding'."
            )
        if getattr(leaves[path], "ndim", 0) != 2:
            raise ValueError(f"sparse_rows: param {path!r} is not a [rows, features] table: {leaves[path].shape}")
        if key not in batch:
            raise ValueError(
                f"sparse_rows: {path!r} takes its ids from batch[{key!r}], but the batch holds {sorted(batch)}. "
                "Fix: name the batch key whose ids the embedding looks up."
            )
        if not jnp.issubdtype(batch[key].dtype, jnp.integer):
            raise ValueError(f"sparse_rows: batch[{key!r}] must hold integer ids, got {batch[key].dtype}")
        tables[path] = tuple(leaves[path].shape)
    return tables


def gather_rows(params: Any, opt_state: Any, batch: Mapping[str, jax.Array], sparse_rows: SparseRows) -> Gathered:
    """The compact params, optimizer state and batch of one step (see the module docstring).

    Ids outside ``[0, V)`` stay out of range of the compact table, so ``embed`` still gives NaN rows for them.

    >>> import jax.numpy as jnp
    >>> g = gather_rows({"e": jnp.arange(8.0).reshape(4, 2)}, (), {"ids": jnp.array([3, 1, 3])}, {"e": "ids"})
    >>> g.used["e"].tolist(), g.batch["ids"].tolist(), g.params["e"].values[:2].tolist()
    ([1, 3, 4], [1, 0, 1], [[2.0, 3.0], [6.0, 7.0]])
    """
    tables = check_sparse_rows(sparse_rows, params, batch)
    batch, used = dict(batch), {}
    for path, key in sparse_rows.items():
        vocab, ids = tables[path][0], batch[key]
        flat = ids.reshape(-1)
        valid = (flat >= 0) & (flat < vocab)
        rows, inverse = jnp.unique(jnp.where(valid, flat, vocab), size=flat.size, fill_value=vocab, return_inverse=True)
        used[path] = rows.astype(jnp.int32)
        batch[key] = jnp.where(valid, inverse.reshape(-1), flat.size).reshape(ids.shape).astype(ids.dtype)

    def gather(wrap):
        def one(key_path, leaf):
            owner = _owner(_path(key_path), tables, getattr(leaf, "shape", ()))
            if owner is None:
                return leaf
            rows = jnp.take(leaf, used[owner], axis=0, mode="fill", fill_value=0)
            return Rows(rows) if wrap else rows

        return one

    params = jax.tree_util.tree_map_with_path(gather(True), params)
    opt_state = jax.tree_util.tree_map_with_path(gather(False), opt_state)
    return Gathered(params, opt_state, batch, used, tables)


def unwrap(tree: Any) -> Any:
    """The tree with each ``Rows`` replaced by its array (what optax sees)."""
    return jax.tree.map(lambda x: x.values if isinstance(x, Rows) else x, tree, is_leaf=lambda x: isinstance(x, Rows))


def scatter_rows(full: Any, compact: Any, used: Mapping[str, jax.Array], tables: Mapping[str, tuple[int, ...]]) -> Any:
    """``full`` with the rows of each sparse table (and of the state leaves mirroring it) set from ``compact``.

    Padding entries of ``used`` (index ``V``) are dropped.

    >>> import jax.numpy as jnp
    >>> scatter_rows({"e": jnp.zeros((3, 1))}, {"e": jnp.ones((2, 1))}, {"e": jnp.array([2, 3])}, {"e": (3, 1)})
    {'e': Array([[0.],
           [0.],
           [1.]], dtype=float32)}
    """

    def one(key_path, leaf, rows):
        owner = _owner(_path(key_path), tables, getattr(leaf, "shape", ()))
        if owner is None:
            return rows
        return leaf.at[used[owner]].set(rows.astype(leaf.dtype), mode="drop")  # pads repeat V: not unique

    return jax.tree_util.tree_map_with_path(one, full, compact)
