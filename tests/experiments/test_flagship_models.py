"""The char-LM and the Tree-LSTM sentiment model are their layers composed with the public helpers.

Reference: each layer initialized and applied on its own with the key a combinator gives the child
of that name (``child_key``). Equal params (exactly) and equal outputs (float32 rounding only: the
same operations in the same order) mean moving the models onto ``init_child``/``apply_child``/
``output_spec`` changed nothing.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

import funcnet as fn
from funcnet.children import child_key
from funcnet.experiments.charlm import char_lm
from funcnet.experiments.tree_sentiment import sentiment_model
from funcnet.parse_trees import Vocabulary, parse_tree
from funcnet.train.tree_batches import FIELDS, TreeBatches


def test_char_lm_equals_its_layers_applied_in_turn():
    lm = char_lm(12, embed=5, hidden=7, layers=2, dropout=0.3)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 12, (3, 6)), jnp.int32)
    key, step_key = jax.random.key(1), jax.random.key(2)
    params, state = lm.init(key, ids)

    embed = fn.embed(12, 5, deferred=True)
    rnn = fn.stacked_rnn([fn.lstm_cell(7), fn.lstm_cell(7)], dropout=0.3, return_carry=True)
    head = fn.dense(12)
    want = {
        "embed": embed.init(child_key(key, "embed"), ids)[0],
        "rnn": rnn.init(child_key(key, "rnn"), jnp.zeros((3, 6, 5)))[0],
        "head": head.init(child_key(key, "head"), jnp.zeros((3, 6, 7)))[0],
    }
    chex.assert_trees_all_equal(params, want)

    carry = tuple(fn.LSTMCarry(jnp.full((3, 7), 0.1 * i), jnp.full((3, 7), -0.2)) for i in range(2))
    logits, new_state = lm.apply(params, {"carry": carry}, ids, key=step_key, train=True)
    rows, _ = embed.apply(want["embed"], {}, ids)
    (ys, final), _ = rnn.apply(want["rnn"], {}, rows, None, carry, key=child_key(step_key, "rnn"), train=True)
    ys, _ = fn.dropout(0.3).apply({}, {}, ys, key=child_key(step_key, "drop"), train=True)
    expected, _ = head.apply(want["head"], {}, ys)
    chex.assert_trees_all_close(logits, expected, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(new_state["carry"], final, rtol=1e-6, atol=1e-6)
    evaluated, _ = lm.apply(params, state, ids)  # eval: from zero carries, no dropout
    assert not jnp.allclose(evaluated, logits)


def test_tree_sentiment_model_equals_its_layers_applied_in_turn():
    trees = [parse_tree("(3 (2 a) (4 good))"), parse_tree("(1 (2 the) (0 (1 bad) (2 film)))")] * 2
    batch = next(TreeBatches(trees, Vocabulary.from_trees(trees), 4).epoch(0))
    fields = [jnp.asarray(batch[f]) for f in FIELDS]
    model = sentiment_model(8, embed=4, hidden=5, dropout=0.25)
    key, step_key = jax.random.key(0), jax.random.key(3)
    params, state = model.init(key, *fields)

    group = {f: a[0] for f, a in zip(FIELDS, fields, strict=True)}
    embed, tree, head, drop = fn.embed(8, 4), fn.tree(fn.binary_tree_lstm_cell(5)), fn.dense(5), fn.dropout(0.25)
    x = jnp.zeros((*group["leaf_tokens"].shape, 4))
    want = {
        "embed": embed.init(child_key(key, "embed"), group["leaf_tokens"])[0],
        "tree": tree.init(child_key(key, "tree"), x, group)[0],
        "head": head.init(child_key(key, "head"), jnp.zeros((1, 5)))[0],
    }
    chex.assert_trees_all_equal(params, want)

    logits, _ = model.apply(params, state, *fields, key=step_key, train=True)
    group_key = jax.random.split(step_key, 1)[0]
    x, _ = embed.apply(want["embed"], {}, group["leaf_tokens"])
    x, _ = drop.apply({}, {}, x, key=child_key(group_key, "drop"), train=True)
    states, _ = tree.apply(want["tree"], {}, x, group)
    h, _ = drop.apply({}, {}, states.h, key=child_key(jax.random.fold_in(group_key, 1), "drop"), train=True)
    expected, _ = head.apply(want["head"], {}, h)
    chex.assert_trees_all_close(logits[0], expected, rtol=1e-6, atol=1e-6)
