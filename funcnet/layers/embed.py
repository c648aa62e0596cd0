"""Embedding: a learned ``[vocab_size, features]`` table looked up by integer ids."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .. import initializers
from ..core import Model
from ..errors import ParamsError, check_integer, check_params, describe
from ..initializers import Initializer
from ._sharding import sharding_like


class Rows(NamedTuple):
    """Some rows of an embedding table, in place of the table: one of ``embed``'s two forms of its param.

    ``params["embedding"]`` is the whole ``[vocab_size, features]`` table, or ``Rows`` of some of its rows
    (``[rows, features]``), the ids then numbering those rows. The gradient of a ``Rows`` is ``[rows,
    features]``, not the table's shape: whoever hands ``embed`` a ``Rows`` (a row-sparse update, such as
    ``funcnet.train.sparse``) differentiates and updates only those rows, and writes them back itself.

    >>> import jax, jax.numpy as jnp
    >>> layer = embed(100, 2)
    >>> rows, _ = layer.apply({"embedding": Rows(jnp.eye(2))}, {}, jnp.array([1, 0]))
    >>> rows.tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """

    values: jax.Array  # [rows used, features]


class Embedded(NamedTuple):
    """``table[ids]`` not gathered yet: what ``embed(..., deferred=True)`` returns.

    An LSTM folds it into its input projection: ``table[ids] @ w_ih`` is ``(table @ w_ih)[ids]``, one
    ``[vocab, 4H]`` matmul and a gather instead of a ``[batch * time, features]`` matmul (and its two
    gradient matmuls). ``rnn``, ``stacked_rnn`` and ``bidirectional`` take it as their ``xs``; ``rnn``
    of a cell without a whole-sequence ``scan`` calls ``lookup()`` first. Other layers need the rows:
    ``lookup()``; the input checks of other layers reject it with that fix. It has the ``shape``,
    ``dtype`` and ``ndim`` of the rows it stands for.

    Example:
      >>> import jax.numpy as jnp
      >>> rows = Embedded(jnp.eye(3), jnp.array([[2, 0]]))
      >>> rows.shape, rows.lookup().tolist()
      ((1, 2, 3), [[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
    """

    table: jax.Array  # [vocab, features]
    ids: jax.Array  # int [...]; ids outside [0, vocab) give NaN rows (negative ones included)

    # What a layer's input check (``funcnet.errors.check_array``) tells a user who passed it elsewhere.
    ARRAY_HINT = (
        " rows (embed(..., deferred=True)), which only rnn, stacked_rnn and bidirectional read. "
        "Fix: rows.lookup(), or embed without deferred"
    )

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.ids.shape, self.table.shape[-1])

    @property
    def dtype(self) -> jnp.dtype:
        return jnp.dtype(self.table.dtype)

    @property
    def ndim(self) -> int:
        return self.ids.ndim + 1

    def lookup(self) -> jax.Array:
        """The rows ``table[ids]`` (``[..., features]``), NaN for an id outside ``[0, vocab)``."""
        return take_rows(self.table, self.ids)


def rows_spec(xs: Any) -> Any:
    """``xs`` as the rnn layers' input checks read it: the rows' ``ShapeDtypeStruct`` for ``Embedded``."""
    return jax.ShapeDtypeStruct(xs.shape, xs.dtype) if isinstance(xs, Embedded) else xs


def take_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
    """``table[ids]`` along axis 0, with NaN rows for ids outside ``[0, len(table))``, negative ones included."""
    ids = jnp.where(ids < 0, table.shape[0], ids)  # no wrap-around: negative ids are out of range too
    sharding = sharding_like(ids, (*ids.shape, table.shape[-1]))
    if sharding is not None:  # a batch of ids on a mesh with Explicit axes: the rows are sharded like it
        return table.at[ids].get(mode="fill", fill_value=jnp.nan, out_sharding=sharding)
    return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)


def embed(
    vocab_size: int,
    features: int,
    *,
    embedding_init: Initializer | None = None,
    dtype=jnp.float32,
    deferred: bool = False,
) -> Model:
    """Maps integer ids ``[...]`` to vectors ``[..., features]``.

    Ids outside ``[0, vocab_size)`` cannot be checked inside ``jit`` (they are traced values);
    they give NaN rows, negative ids included (no NumPy-style wrap-around), so a bad id shows up
    in the loss at once instead of silently reading another word's row.

    Args:
      vocab_size: number of rows.
      features: size of each vector.
      embedding_init: initializer of the table (normal with stddev 1 by default).
      dtype: dtype of the table.
      deferred: return ``Embedded(table, ids)`` instead of the rows: the same function for ``rnn``,
        ``stacked_rnn`` and ``bidirectional``, which an LSTM computes faster by folding the table
        into its input projection (``experiments/bench/charlstm.py``). Other layers need the rows.

    Returns:
      A Model with params ``{"embedding": [vocab_size, features]}``.

    Raises:
      DTypeError: the ids are not integers.

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> layer = fn.embed(65, 16)
      >>> params, state = layer.init(jax.random.key(0), jnp.zeros((2, 100), jnp.int32))
      >>> layer.apply(params, state, jnp.zeros((2, 100), jnp.int32))[0].shape
      (2, 100, 16)
    """
    if vocab_size < 1 or features < 1:
        raise ValueError(f"embed: vocab_size and features must be positive, got {vocab_size}, {features}")
    embedding_init = embedding_init or initializers.normal(1.0)

    def init(key, ids):
        check_integer("embed", ids)
        return {"embedding": embedding_init(key, (vocab_size, features), dtype)}, {}

    def apply(params, state, ids, *, key=None, train=False):
        del key, train
        check_params("embed", params, {"embedding": None})
        table = params["embedding"]
        if isinstance(table, Rows):  # some rows of the table: the ids number them
            table = table.values
            expected = (table.shape[0], features)
        else:
            expected = (vocab_size, features)
        if table.shape != expected:
            raise ParamsError(
                "embed",
                f"params do not belong to this model: embedding should be {expected}, got {describe(table)}.",
            )
        check_integer("embed", ids)
        return (Embedded(table, ids) if deferred else take_rows(table, ids)), state

    return Model(init, apply, "embed")
