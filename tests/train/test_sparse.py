"""Row-sparse embedding updates: exact for SGD/Adagrad/clipping, lazy for Adam, on 8 devices, from config."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet.config import ConfigError
from funcnet.config.optimizer import make_optimizer
from funcnet.train.sparse import gather_rows
from funcnet.train.state import create_train_state, data_mesh
from funcnet.train.step import make_train_step

VOCAB = 50
MODEL = fn.serial(fn.embed(VOCAB, 6), fn.reshape((-1,)), fn.dense(3))  # [B, 4] ids -> [B, 3] logits
SPARSE = {"embed_0/embedding": "x"}


def loss_fn(logits, batch):
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])


def _batch(seed, n=16, high=VOCAB // 2):
    rng = np.random.default_rng(seed)
    return {  # ids from half the vocabulary, with repeats within and across examples
        "x": rng.integers(0, high, (n, 4)).astype(np.int32),
        "y": rng.integers(0, 3, n).astype(np.int32),
        "mask": np.ones(n, np.float32),
    }


def _train(optimizer, sparse_rows, batches, mesh=None, skip_nan_updates=False):
    state = create_train_state(MODEL, optimizer, jax.random.key(0), batches[0]["x"], mesh=mesh)
    step = make_train_step(
        MODEL, loss_fn, optimizer, mesh=mesh, sparse_rows=sparse_rows, skip_nan_updates=skip_nan_updates
    )
    history = []
    for batch in batches:
        state, metrics = step(state, batch)
        history.append(jax.block_until_ready(metrics))
    return state, history, step


@pytest.mark.parametrize(
    "optimizer",
    [optax.sgd(0.5), optax.adagrad(0.3), optax.chain(optax.clip_by_global_norm(0.05), optax.adagrad(0.3))],
    ids=["sgd", "adagrad", "clip+adagrad"],
)
def test_sparse_update_equals_the_dense_update_for_sgd_and_adagrad(optimizer):
    batches = [_batch(seed) for seed in range(4)]
    dense, dense_history, _ = _train(optimizer, None, batches)
    sparse, sparse_history, step = _train(optimizer, SPARSE, batches)
    # Tolerance: the same float32 arithmetic in another order (the row gradients are summed per unique id
    # before the update, and 8 devices reduce in a tree), a few ulps per step.
    chex.assert_trees_all_close(sparse.params, dense.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(sparse.opt_state, dense.opt_state, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(sparse_history, dense_history, rtol=1e-5, atol=1e-6)
    assert step.jitted._cache_size() == 1  # new ids every batch, one compilation
    table = np.asarray(sparse.params["embed_0"]["embedding"])
    initial = create_train_state(MODEL, optimizer, jax.random.key(0), batches[0]["x"]).params
    untouched = np.asarray(initial["embed_0"]["embedding"])
    np.testing.assert_array_equal(table[VOCAB // 2 :], untouched[VOCAB // 2 :])  # ids never used: bit-identical


def test_sparse_update_on_8_devices_equals_one_device():
    assert jax.device_count() == 8
    batches = [_batch(seed) for seed in range(3)]
    one, _, _ = _train(optax.adagrad(0.3), SPARSE, batches, mesh=data_mesh(jax.devices()[:1]))
    eight, _, _ = _train(optax.adagrad(0.3), SPARSE, batches, mesh=data_mesh())
    chex.assert_trees_all_close(eight.params, one.params, rtol=1e-5, atol=1e-6)  # all-reduce order: a few ulps
    assert eight.params["embed_0"]["embedding"].sharding.is_fully_replicated


def test_adam_is_lazy_rows_absent_from_a_batch_do_not_move():
    first, second = _batch(0), _batch(1)
    second["x"] = np.where(second["x"] == first["x"][0, 0], first["x"][0, 0] + 1, second["x"])  # drop one id
    absent = int(first["x"][0, 0])
    assert absent not in second["x"]
    dense, _, _ = _train(optax.adam(0.1), None, [first, second])
    sparse, _, _ = _train(optax.adam(0.1), SPARSE, [first, second])
    after_first, _, _ = _train(optax.adam(0.1), SPARSE, [first])
    row = lambda s: np.asarray(s.params["embed_0"]["embedding"][absent])  # noqa: E731
    np.testing.assert_array_equal(row(sparse), row(after_first))  # lazy: its moments wait for its next use
    assert np.abs(row(dense) - row(after_first)).max() > 1e-3  # dense Adam moves it by its momentum


def test_out_of_range_ids_still_give_a_nan_loss_and_skip_keeps_the_state():
    good, bad = _batch(0), _batch(1)
    bad["x"][3, 1] = VOCAB  # one id past the table
    state, history, _ = _train(optax.adagrad(0.3), SPARSE, [good, bad], skip_nan_updates=True)
    assert history[0]["finite"] == 1.0 and history[1]["finite"] == 0.0
    kept, _, _ = _train(optax.adagrad(0.3), SPARSE, [good], skip_nan_updates=True)  # the same program
    chex.assert_trees_all_equal(state.params, kept.params)
    chex.assert_trees_all_equal(state.opt_state, kept.opt_state)


def test_gather_renumbers_ids_and_pads_the_used_rows():
    table = jnp.arange(12.0).reshape(6, 2)
    g = gather_rows(
        {"e": table}, optax.adagrad(0.1).init({"e": table}), {"ids": jnp.array([[5, 2], [5, -1]])}, {"e": "ids"}
    )
    used = np.asarray(g.used["e"])
    np.testing.assert_array_equal(used, [2, 5, 6, 6])  # unique ids, then the pad index V (dropped on write)
    ids = np.asarray(g.batch["ids"])
    np.testing.assert_array_equal(used[ids[ids < 4]], [5, 2, 5])  # renumbered ids point at their rows
    assert ids[1, 1] == 4  # the bad id stays out of range of the 4 compact rows, so embed gives NaN
    np.testing.assert_array_equal(g.params["e"].values[:2], table[np.array([2, 5])])
    assert jax.tree.leaves(g.opt_state)[0].shape == (4, 2)  # Adagrad's accumulator gathered like the table


@pytest.mark.parametrize(
    ("sparse_rows", "message"),
    [
        ({"embed_0/table": "x"}, r"no param 'embed_0/table'; the params are \['dense_0/bias'"),
        ({"embed_0/embedding": "ids"}, r"takes its ids from batch\['ids'\], but the batch holds \['mask', 'x', 'y'\]"),
        ({"dense_0/bias": "x"}, r"param 'dense_0/bias' is not a \[rows, features\] table"),
        ({"embed_0/embedding": "mask"}, r"batch\['mask'\] must hold integer ids"),
    ],
)
def test_sparse_rows_errors_name_what_is_wrong(sparse_rows, message):
    with pytest.raises(ValueError, match=message):
        _train(optax.sgd(0.1), sparse_rows, [_batch(0)])


def test_sparse_rows_and_learning_rate_scale_from_config():
    config = {
        "type": "sgd",
        "learning_rate": 0.5,
        "sparse_rows": SPARSE,
        "learning_rate_scale": {"embed_0/.*": 0.1},
    }
    optimizer = make_optimizer(config)
    assert optimizer.sparse_rows == SPARSE
    batches = [_batch(0)]
    scaled, _, _ = _train(optimizer.transform, optimizer.sparse_rows, batches)
    plain, _, _ = _train(optax.sgd(0.5), None, batches)
    start = create_train_state(MODEL, optax.sgd(0.5), jax.random.key(0), batches[0]["x"]).params
    # the embedding moves a tenth as far; the dense layer as far as with plain SGD (float32 rounding only)
    np.testing.assert_allclose(
        scaled.params["embed_0"]["embedding"] - start["embed_0"]["embedding"],
        0.1 * (plain.params["embed_0"]["embedding"] - start["embed_0"]["embedding"]),
        atol=3e-7,  # two params of size ~1 subtracted: ~1 float32 ulp (1.2e-7) each
    )
    np.testing.assert_allclose(scaled.params["dense_0"]["kernel"], plain.params["dense_0"]["kernel"], atol=1e-7)


def test_learning_rate_scale_pattern_that_matches_nothing_fails_at_init():
    optimizer = make_optimizer({"type": "sgd", "learning_rate": 0.1, "learning_rate_scale": {"embedding": 0.1}})
    with pytest.raises(ConfigError, match=r"optimizer.learning_rate_scale.embedding: pattern 'embedding' matches no"):
        optimizer.transform.init({"embed": {"embedding": jnp.zeros((3, 2))}})
