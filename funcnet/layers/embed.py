"""Embedding: a learned ``[vocab_size, features]`` table looked up by integer ids."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import initializers
from ..core import Model
from ..errors import ParamsError, check_integer, check_params, describe
from ..initializers import Initializer


class Rows(NamedTuple):
    """Some rows of an embedding table, in place of the table: the row-sparse update's compact table.

    The train step with ``sparse_rows`` (``funcnet.train.sparse``) hands ``embed`` a ``Rows`` holding only the
    rows a batch uses, and ids renumbered into it, so the gradient and the optimizer update touch only those rows.
    """

    values: jax.Array  # [rows used, features]


def embed(vocab_size: int, features: int, *, embedding_init: Initializer | None = None, dtype=jnp.float32) -> Model:
    """Maps integer ids ``[...]`` to vectors ``[..., features]``.

    Ids outside ``[0, vocab_size)`` cannot be checked inside ``jit`` (they are traced values);
    they give NaN rows, negative ids included (no NumPy-style wrap-around), so a bad id shows up
    in the loss at once instead of silently reading another word's row.

    Args:
      vocab_size: number of rows.
      features: size of each vector.
      embedding_init: initializer of the table (normal with stddev 1 by default).
      dtype: dtype of the table.

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
        if isinstance(table, Rows):  # the compact table of a row-sparse update: ids index its rows
            table, vocab = table.values, table.values.shape[0]
            expected = (vocab, features)
        else:
            vocab, expected = vocab_size, (vocab_size, features)
        if table.shape != expected:
            raise ParamsError(
                "embed",
                f"params do not belong to this model: embedding should be {expected}, got {describe(table)}.",
            )
        check_integer("embed", ids)
        ids = jnp.where(ids < 0, vocab, ids)  # no wrap-around: negative ids are out of range too
        return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan), state

    return Model(init, apply, "embed")
