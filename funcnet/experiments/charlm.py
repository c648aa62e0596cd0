"""A character-level LSTM language model: embedding -> stacked LSTM -> dense over the vocabulary.

One ``Model``, like every other: ``apply(params, state, ids, *, initial_carry=None, key=None,
train=False)``. Its ``state`` is ``{"carry": per-layer LSTM carries}``, the carry the last chunk
ended with (without gradient). Where a chunk starts:

- ``initial_carry`` given: from it (streaming evaluation and sampling hand ``state["carry"]`` on);
- else in training: from ``state["carry"]``, for truncated back-propagation through time (batches
  continue each stream, see ``funcnet.train.sequences.tbptt_dataset``);
- else in evaluation: from zeros.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import funcnet as fn
from funcnet.children import apply_child, init_child
from funcnet.core import Model, output_spec

from ..deploy.handlers import generate_text
from .text import Vocabulary


def char_lm(
    vocab_size: int,
    embed: int = 64,
    hidden: int = 256,
    layers: int = 1,
    dropout: float = 0.0,
    unroll: int = 1,
    compute_dtype: Any = None,
) -> Model:
    """Builds the language model.

    Args:
      vocab_size: number of character ids.
      embed: embedding size.
      hidden: LSTM units per layer.
      layers: stacked LSTM layers.
      dropout: drop probability between layers and before the output layer (training only).
      unroll: ``lax.scan`` unroll of the time loop.
      compute_dtype: the LSTMs' and the output layer's matmul operand dtype (``"bfloat16"``: mixed
        precision, see ``funcnet.precision``; ``None`` or ``""``: float32 throughout).

    Returns:
      A Model: ``apply(params, state, ids [B, T], *, initial_carry=None, key=None, train=False) ->
      (logits [B, T, V], {"carry": final carries})``, params ``{"embed", "rnn", "head"}``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> lm = char_lm(10, embed=4, hidden=8)
      >>> ids = jnp.zeros((2, 5), jnp.int32)
      >>> params, state = lm.init(jax.random.key(0), ids)
      >>> logits, state = lm.apply(params, state, ids, train=True)
      >>> more, state = lm.apply(params, state, ids, initial_carry=state["carry"])  # continue the streams
      >>> logits.shape, state["carry"][0].h.shape
      ((2, 5, 10), (2, 8))
    """
    cells = [fn.lstm_cell(hidden, compute_dtype=compute_dtype) for _ in range(layers)]
    children = {
        # Deferred: the first LSTM folds the table into its input projection (fn.Embedded).
        "embed": fn.embed(vocab_size, embed, deferred=True),
        "rnn": fn.stacked_rnn(cells, dropout=dropout, return_carry=True, unroll=unroll),
        "drop": fn.dropout(dropout),
        "head": fn.dense(vocab_size, compute_dtype=compute_dtype),
    }

    def zeros(batch_size: int):
        return tuple(cell.initial_carry((batch_size,)) for cell in cells)

    def init(key, ids, *, initial_carry=None):
        del initial_carry
        params: dict[str, Any] = {}
        params["embed"], _ = init_child("embed", children["embed"], key, ids)
        rows = output_spec(children["embed"], params["embed"], {}, ids)  # Embedded(table, ids) specs
        params["rnn"], _ = init_child("rnn", children["rnn"], key, rows)
        ys, _ = output_spec(children["rnn"], params["rnn"], {}, rows)  # (ys, final carries)
        params["head"], _ = init_child("head", children["head"], key, ys)
        return params, {"carry": zeros(ids.shape[0])}

    def apply(params, state, ids, *, initial_carry=None, key=None, train=False):
        if initial_carry is None:
            initial_carry = state["carry"] if train else zeros(ids.shape[0])
        x, _ = apply_child("embed", children["embed"], params, {}, ids)
        (ys, carry), _ = apply_child(
            "rnn", children["rnn"], params, {}, x, key=key, train=train, initial_carry=initial_carry
        )
        ys, _ = apply_child("drop", children["drop"], params, {}, ys, key=key, train=train)
        logits, _ = apply_child("head", children["head"], params, {}, ys)
        return logits, {"carry": lax.stop_gradient(carry)}

    return Model(init, apply, "char_lm")


def lm_loss(logits: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-sequence mean cross-entropy (nats) and bits per character against ``batch["y"]``.

    >>> import jax.numpy as jnp
    >>> metrics = lm_loss(jnp.zeros((1, 3, 4)), {"y": jnp.zeros((1, 3), jnp.int32)})
    >>> [round(float(metrics[k][0]), 4) for k in ("loss", "bpc")]  # uniform over 4: ln 4 nats, 2 bits
    [1.3863, 2.0]
    """
    nll = fn.losses.softmax_cross_entropy(logits, batch["y"], reduction="per_example")
    return {"loss": nll, "bpc": nll / math.log(2.0)}


def stream_bits_per_character(lm: Model, params: Any, ids: np.ndarray, *, rows: int = 16, seq_len: int = 256) -> float:
    """Bits per character over a whole text, the carry handed from chunk to chunk (no resets).

    The text is cut into ``rows`` contiguous streams evaluated in parallel; characters past the
    last full chunk of each row (fewer than ``seq_len``) are left out.

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> lm = char_lm(5, embed=2, hidden=4)
    >>> params, _ = lm.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    >>> 0 < stream_bits_per_character(lm, params, np.arange(200) % 5, rows=2, seq_len=10) < 5
    True
    """
    length = (len(ids) - 1) // rows // seq_len * seq_len
    if length == 0:
        raise ValueError(f"{len(ids)} characters are too few for {rows} rows of {seq_len}")
    starts = np.arange(rows)[:, None] * ((len(ids) - 1) // rows)
    x = ids[starts + np.arange(length)[None, :]]
    y = ids[starts + np.arange(length)[None, :] + 1]

    @jax.jit
    def chunk(carry, xs, ys):
        logits, state = lm.apply(params, {}, xs, initial_carry=carry)
        return state["carry"], fn.losses.softmax_cross_entropy(logits, ys, reduction="sum")

    _, zero_state = jax.eval_shape(lm.init, jax.random.key(0), jax.ShapeDtypeStruct((rows, seq_len), jnp.int32))
    carry, total = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_state["carry"]), 0.0
    for t in range(0, length, seq_len):
        carry, nll = chunk(carry, x[:, t : t + seq_len], y[:, t : t + seq_len])
        total += float(nll)
    return total / (rows * length) / math.log(2.0)


def sample(
    lm: Model, params: Any, vocab: Vocabulary, *, length: int = 400, temperature: float = 0.8, prime: str = "",
    seed: int = 0,
) -> str:  # fmt: skip
    """Generates ``length`` characters after ``prime`` by temperature sampling under ``lax.scan``.

    Deterministic for a seed; only characters of the vocabulary are emitted (the unknown id is
    never drawn).

    >>> import jax, jax.numpy as jnp
    >>> vocab = Vocabulary.from_text("ab\\n")
    >>> lm = char_lm(vocab.size, embed=2, hidden=4)
    >>> params, _ = lm.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    >>> text = sample(lm, params, vocab, length=20, seed=1)
    >>> len(text) == 20 and set(text) <= set("ab\\n") and text == sample(lm, params, vocab, length=20, seed=1)
    True
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    prime_ids = vocab.encode(prime or "\n")
    key = jax.random.key(seed)

    @jax.jit
    def generate(params, prime_ids):
        logits, state = lm.apply(params, {}, prime_ids[None])  # from zeros
        carry = state["carry"]

        def step(state, t):
            carry, last = state
            scaled = (last / temperature).at[0].set(-jnp.inf)  # never the unknown marker
            token = jax.random.categorical(jax.random.fold_in(key, t), scaled)
            logits, state = lm.apply(params, {}, token[None, None], initial_carry=carry)
            carry = state["carry"]
            return (carry, logits[0, -1]), token

        _, tokens = lax.scan(step, (carry, logits[0, -1]), jnp.arange(length))
        return tokens

    return vocab.decode(np.asarray(generate(params, jnp.asarray(prime_ids))))


def generate(
    lm: Model, params: Any, vocab: Vocabulary, *, length: int, temperature: float = 0.8, prime: str = "",
    seed: int = 0, steps: int | None = None,
) -> str:  # fmt: skip
    """``sample``'s text, from one program per ``steps`` (a bucket >= the prime's length + ``length``).

    The prime is fed token by token inside the same ``lax.scan`` that samples, so primes and lengths of
    every size share the bucket's program: serving many requests compiles once per bucket, not once per
    request. Equal to ``sample`` for the same arguments (the same keys draw the same characters).

    >>> import jax, jax.numpy as jnp
    >>> vocab = Vocabulary.from_text("ab\\n")
    >>> lm = char_lm(vocab.size, embed=2, hidden=4)
    >>> params, _ = lm.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    >>> options = dict(length=9, prime="ab", seed=1)
    >>> generate(lm, params, vocab, **options) == sample(lm, params, vocab, **options)
    True
    """
    program = functools.partial(_generate, lm, params)
    return generate_text(program, vocab.chars, length=length, temperature=temperature, prime=prime, seed=seed,
                         steps=steps)  # fmt: skip


_generate = jax.jit(lambda lm, *args: generation(lm, *args), static_argnums=0)  # one program per tokens' length


def generation(lm: Model, params: Any, tokens: jax.Array, prime_len: jax.Array, temperature: jax.Array,
               key_data: jax.Array) -> jax.Array:  # fmt: skip
    """The generation program (``funcnet.deploy.handlers.generate_text`` calls it; ``funcnet export`` exports it):
    feeds ``tokens[t]`` at step ``t`` while ``t < prime_len``, else the character drawn at ``t - 1``, for ``steps =
    len(tokens) - 1`` steps; returns the characters drawn after each step (those before ``prime_len - 1`` are
    discarded by the caller). ``key_data``: ``jax.random.key_data`` of the sampling key."""
    key, steps = jax.random.wrap_key_data(key_data), tokens.shape[0] - 1
    logits, state = lm.apply(params, {}, tokens[None, :1])  # the first character, from zeros

    def step(state, t):
        carry, last = state
        scaled = (last / temperature).at[0].set(-jnp.inf)  # never the unknown marker
        drawn = jax.random.categorical(jax.random.fold_in(key, t - (prime_len - 1)), scaled)
        fed = jnp.where(t + 1 < prime_len, tokens[t + 1], drawn)
        logits, state = lm.apply(params, {}, fed[None, None], initial_carry=carry)
        return (state["carry"], logits[0, -1]), drawn

    _, drawn = lax.scan(step, (state["carry"], logits[0, -1]), jnp.arange(steps))
    return drawn
