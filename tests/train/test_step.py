"""Train and eval steps: data-parallel equals single-device, masks, NaN handling, shard_map."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import funcnet as fn
from funcnet.train.state import create_train_state, data_mesh
from funcnet.train.step import eval_step_fn, make_eval_step, make_train_step, train_step_fn

MODEL = fn.serial(fn.dense(16), fn.relu(), fn.dropout(0.2), fn.dense(3))
OPTIMIZER = optax.adam(1e-2)


def loss_fn(logits, batch):
    return {
        "loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]),
        "accuracy": (logits.argmax(-1) == batch["y"]).astype(jnp.float32),
    }


def _batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((n, 5)).astype(np.float32),
        "y": rng.integers(0, 3, n).astype(np.int32),
        "mask": np.ones(n, np.float32),
    }


def _run(mesh, batches, steps=3):
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), batches[0]["x"], mesh=mesh)
    step = make_train_step(MODEL, loss_fn, OPTIMIZER, mesh=mesh)
    history = []
    for batch in batches[:steps]:
        state, metrics = step(state, batch)
        history.append(jax.block_until_ready(metrics))  # block: see DESIGN.md on CPU rendezvous
    return state, history


def test_data_parallel_on_8_devices_equals_one_device():
    assert jax.device_count() == 8
    batches = [_batch(seed=i) for i in range(3)]
    one, history_one = _run(data_mesh(jax.devices()[:1]), batches)
    eight, history_eight = _run(data_mesh(), batches)
    # Tolerance: the 8-device gradient is a tree of partial sums (one per device) added by an
    # all-reduce, so float32 rounding differs from one device's single sum; Adam's division by
    # sqrt(v) amplifies it a little over 3 steps. 1e-5 relative is ~100 float32 ulps.
    chex.assert_trees_all_close(eight.params, one.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(history_eight, history_one, rtol=1e-5, atol=1e-6)
    assert eight.params["dense_0"]["kernel"].sharding.is_fully_replicated


def test_padding_with_masked_examples_changes_nothing():
    batch = _batch(24)
    padded = {k: np.concatenate([v, v[:8]]) for k, v in batch.items()}
    padded["mask"][24:] = 0.0
    model = fn.serial(fn.dense(8), fn.relu(), fn.dense(3))  # no dropout: masks depend on batch shape
    mesh = data_mesh()
    state = create_train_state(model, OPTIMIZER, jax.random.key(0), batch["x"], mesh=mesh)
    step = jax.jit(train_step_fn(model, loss_fn, OPTIMIZER))
    a, metrics_a = step(state, batch)
    b, metrics_b = step(state, padded)
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-6, atol=1e-7)
    assert float(metrics_b["count"]) == 24.0
    chex.assert_trees_all_close(metrics_a["loss"], metrics_b["loss"], rtol=1e-6)


def test_metrics_are_means_over_real_examples():
    batch = _batch(8)
    batch["mask"][6:] = 0.0
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), batch["x"])
    metrics = make_eval_step(MODEL, loss_fn)(state, batch)
    logits, _ = MODEL.apply(state.params, state.model_state, batch["x"])
    want = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])[:6].mean()
    chex.assert_trees_all_close(metrics["loss"], want, rtol=1e-6)
    assert float(metrics["count"]) == 6.0


def test_step_key_depends_only_on_the_step_number():
    batch = _batch(8)
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), batch["x"])
    step = jax.jit(train_step_fn(MODEL, loss_fn, OPTIMIZER))
    a, _ = step(state, batch)
    b, _ = step(state, batch)
    chex.assert_trees_all_equal(a.params, b.params)
    c, _ = step(state._replace(step=jnp.int32(5)), batch)
    assert not np.allclose(a.params["dense_0"]["kernel"], c.params["dense_0"]["kernel"])


def test_nan_loss_is_flagged_and_optionally_skipped():
    batch = _batch(8)
    batch["x"][0, 0] = np.nan
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), batch["x"])
    kept, metrics = jax.jit(train_step_fn(MODEL, loss_fn, OPTIMIZER, skip_nan_updates=True))(state, batch)
    assert float(metrics["finite"]) == 0.0 and int(kept.step) == 1
    chex.assert_trees_all_equal(kept.params, state.params)
    chex.assert_trees_all_equal(kept.opt_state, state.opt_state)
    applied, metrics = jax.jit(train_step_fn(MODEL, loss_fn, OPTIMIZER))(state, batch)
    assert "finite" not in metrics and np.isnan(float(metrics["loss"]))  # the loss itself shows it
    assert np.isnan(np.asarray(applied.params["dense_0"]["kernel"])).any()


def test_batch_not_divisible_by_devices_is_a_clear_error():
    batch = _batch(30)
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), batch["x"])
    with pytest.raises(ValueError, match="a batch of 30 examples cannot be split evenly over 8 devices"):
        make_train_step(MODEL, loss_fn, OPTIMIZER)(state, batch)


def test_loss_must_be_per_example():
    batch = _batch(8)
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), batch["x"])
    with pytest.raises(ValueError, match=r"PER-EXAMPLE values of the mask's shape \(8,\); 'loss' has shape \(\)"):
        eval_step_fn(MODEL, lambda out, b: jnp.mean(out))(state, batch)


def _unmasked(batch):
    return {k: v for k, v in batch.items() if k != "mask"}


@pytest.mark.parametrize("devices", [1, 8])
def test_a_batch_without_mask_trains_like_one_with_a_mask_of_ones(devices):
    model = fn.serial(fn.dense(8), fn.relu(), fn.dense(3))  # no dropout: masks depend on batch shape
    mesh = data_mesh(jax.devices()[:devices])
    batches = [_batch(16, seed=i) for i in range(2)]
    runs = []
    for form in (lambda b: b, _unmasked):
        state = create_train_state(model, OPTIMIZER, jax.random.key(0), batches[0]["x"], mesh=mesh)
        step = make_train_step(model, loss_fn, OPTIMIZER, mesh=mesh)
        evaluate = make_eval_step(model, loss_fn, mesh=mesh)
        history = []
        for batch in batches:
            state, metrics = step(state, form(batch))
            history.append(jax.block_until_ready(metrics))
        runs.append((state.params, history, evaluate(state, form(batches[0]))))
    (masked, masked_history, masked_eval), (plain, plain_history, plain_eval) = runs
    chex.assert_trees_all_close(plain, masked, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(plain_history, masked_history, rtol=1e-6)
    chex.assert_trees_all_close(plain_eval, masked_eval, rtol=1e-6)
    assert float(plain_history[0]["count"]) == 16.0 and float(plain_eval["count"]) == 16.0


def test_a_batch_without_mask_reduces_no_mask():
    """What the mask-less form saves: the mask's sum (and the division by it) is not in the step."""
    model = fn.serial(fn.dense(8), fn.relu(), fn.dense(3))
    batch = _batch(8)
    state = create_train_state(model, OPTIMIZER, jax.random.key(0), batch["x"])
    step = train_step_fn(model, loss_fn, OPTIMIZER)
    masked, plain = (str(jax.make_jaxpr(step)(state, b)) for b in (batch, _unmasked(batch)))
    assert masked.count("reduce_sum") - plain.count("reduce_sum") == 1  # sum(mask)
    assert plain.count(" max ") < masked.count(" max ")  # max(count, 1) and its derivative; relu's are in both


def test_a_batch_without_mask_needs_per_example_values_and_an_example_axis():
    batch = _unmasked(_batch(8))
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), batch["x"])
    with pytest.raises(ValueError, match=r"PER-EXAMPLE values of the batch's shape \(8,\); 'loss' has shape \(\)"):
        eval_step_fn(MODEL, lambda out, b: jnp.mean(out))(state, batch)
    with pytest.raises(ValueError, match="a batch of 6 examples cannot be split evenly over 8 devices"):
        make_train_step(MODEL, loss_fn, OPTIMIZER)(state, _unmasked(_batch(6)))
    with pytest.raises(ValueError, match=r"leading axis of 'x', and it has none. Fix: add batch\['mask'\]"):
        eval_step_fn(fn.function(lambda x: x), lambda out, b: out)(state._replace(params={}), {"x": jnp.float32(1.0)})


def test_a_batch_without_mask_takes_its_size_from_the_examples_of_the_first_input():
    from funcnet.layers.embed import Embedded

    rows = Embedded(jnp.ones((50, 4)), jnp.zeros((8, 3), jnp.int32))  # a table of 50 rows, 8 examples
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), jnp.ones((8, 5)))._replace(params={})
    per_example = lambda out, b: jnp.ones(out.shape[0])  # noqa: E731
    metrics = eval_step_fn(fn.function(lambda x: x.lookup()[:, 0, 0]), per_example)(state, {"x": rows})
    assert float(metrics["count"]) == 8.0
    uneven = {"x": {"a": jnp.ones(3), "b": jnp.ones((8, 2))}}
    with pytest.raises(ValueError, match=r"leading axis of 'x', and it has several: \[3, 8\]"):
        eval_step_fn(fn.function(lambda x: x["b"][:, 0]), per_example)(state, uneven)
    empty = eval_step_fn(fn.function(lambda x: x[:, 0]), per_example)(state, {"x": jnp.ones((0, 5))})
    assert float(empty["count"]) == 0.0 and float(empty["loss"]) == 0.0  # as a mask of no real example gives


def test_the_engine_metric_names_are_reserved():
    batch = _batch(8)
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), batch["x"])

    def clashing(logits, batch):
        return {**loss_fn(logits, batch), "finite": jnp.ones(8)}

    with pytest.raises(ValueError, match=r"\['finite'\]: the engine's own metric names"):
        eval_step_fn(MODEL, clashing)(state, batch)


def test_train_step_compiles_once_and_donates_the_state():
    batch = _batch(16)
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), batch["x"])
    step = make_train_step(MODEL, loss_fn, OPTIMIZER)
    old = state
    for i in range(3):
        state, metrics = step(state, _batch(16, seed=i))
        jax.block_until_ready(metrics)
    assert step.jitted._cache_size() == 1
    assert old.params["dense_0"]["kernel"].is_deleted()


def test_own_shard_map_over_the_pure_step_equals_the_jitted_step():
    """The documented recipe for users who want their own shard_map (or pmap-like) loop."""
    mesh = data_mesh()
    model = fn.serial(fn.dense(8), fn.relu(), fn.dense(3))
    batch = _batch(32)
    state = create_train_state(model, OPTIMIZER, jax.random.key(0), batch["x"], mesh=mesh)
    pure = train_step_fn(model, loss_fn, OPTIMIZER, axis_name="data")
    mapped = jax.jit(jax.shard_map(pure, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P())))
    for form in (lambda b: b, _unmasked):  # without a mask the count is a constant, summed over the axis
        state = create_train_state(model, OPTIMIZER, jax.random.key(0), batch["x"], mesh=mesh)
        by_hand, metrics_by_hand = mapped(state, jax.device_put(form(batch), jax.NamedSharding(mesh, P("data"))))
        state = create_train_state(model, OPTIMIZER, jax.random.key(0), batch["x"], mesh=mesh)
        engine, metrics = make_train_step(model, loss_fn, OPTIMIZER, mesh=mesh)(state, batch)
        # Tolerance: same math, different reduction trees (per-shard sums + psum vs XLA's all-reduce).
        chex.assert_trees_all_close(by_hand.params, engine.params, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(metrics_by_hand["loss"], metrics["loss"], rtol=1e-5)
        assert float(metrics_by_hand["count"]) == 32.0


def test_grouped_batches_average_over_every_real_example():
    """A batch of per-device groups, mask [G, B/G], averages like the flat batch."""
    batch = _batch(8)
    batch["mask"][6:] = 0.0
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), batch["x"])
    flat = eval_step_fn(MODEL, loss_fn)(state, batch)
    grouped_model = fn.function(lambda x: MODEL.apply(state.params, {}, x.reshape(8, 5))[0].reshape(2, 4, 3))
    grouped = {k: v.reshape(2, 4, *v.shape[1:]) for k, v in batch.items()}
    metrics = eval_step_fn(grouped_model, loss_fn)(state._replace(params={}), grouped)
    chex.assert_trees_all_close(metrics, flat, rtol=1e-6)


def _nan_gradient_where(flag):
    """Identity on ``out`` whose gradient is NaN for the rows where ``flag`` is 1: a finite loss, a NaN gradient."""

    @jax.custom_jvp
    def poison(out, flag):
        return out

    @poison.defjvp
    def poison_jvp(primals, tangents):
        out, flag = primals
        return out, tangents[0] * jnp.where(flag[:, None] > 0, jnp.nan, 1.0)

    return lambda out: poison(out, flag)


def test_grad_norm_is_computed_only_when_asked_and_equals_the_reference():
    model = fn.serial(fn.dense(8), fn.relu(), fn.dense(3))  # no dropout: the reference needs no key
    batch = _batch(16)
    state = create_train_state(model, OPTIMIZER, jax.random.key(0), batch["x"])
    _, plain = jax.jit(train_step_fn(model, loss_fn, OPTIMIZER))(state, batch)
    _, logged = jax.jit(train_step_fn(model, loss_fn, OPTIMIZER, log_grad_norm=True))(state, batch)
    assert sorted(plain) == ["accuracy", "count", "loss"]
    assert sorted(logged) == ["accuracy", "count", "grad_norm", "loss"]

    def mean_loss(params):
        logits, _ = model.apply(params, {}, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    grads = jax.grad(mean_loss)(state.params)
    want = np.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads)))
    np.testing.assert_allclose(float(logged["grad_norm"]), want, rtol=1e-5)  # float32 sums in another order
    chex.assert_trees_all_close({k: v for k, v in logged.items() if k != "grad_norm"}, plain, rtol=1e-6)


def test_finite_checks_the_gradient_when_updates_are_skipped():
    """With skipping, ``finite`` is the condition for applying an update: the loss and the gradient."""
    model = fn.serial(fn.dense(8), fn.relu(), fn.dense(3))
    batch = _batch(8)
    batch["poison"] = np.eye(8, dtype=np.float32)[3]  # example 3: a finite loss, a NaN gradient

    def poisoned_loss(logits, batch):
        return loss_fn(_nan_gradient_where(batch["poison"])(logits), batch)

    state = create_train_state(model, OPTIMIZER, jax.random.key(0), batch["x"])
    applied, metrics = jax.jit(train_step_fn(model, poisoned_loss, OPTIMIZER))(state, batch)
    assert np.isfinite(float(metrics["loss"])) and "finite" not in metrics  # the loss is all there is to check
    assert np.isnan(np.asarray(applied.params["dense_0"]["kernel"])).any()
    skipped, metrics = jax.jit(train_step_fn(model, poisoned_loss, OPTIMIZER, skip_nan_updates=True))(state, batch)
    assert float(metrics["finite"]) == 0.0 and "grad_norm" not in metrics
    chex.assert_trees_all_equal(skipped.params, state.params)


def test_a_model_without_key_and_train_is_refused_when_the_step_is_built():
    def apply(params, state, x):  # the contract's key= and train= are missing
        return x, state

    model = fn.Model(lambda key, x: ({}, {}), apply, "bare")
    with pytest.raises(fn.ContractError, match=r"at bare: apply must take the keywords key and train"):
        train_step_fn(model, lambda out, batch: out[:, 0], optax.sgd(0.1))
    with pytest.raises(fn.ContractError, match=r"at bare: apply must take the keywords key and train"):
        eval_step_fn(model, lambda out, batch: out[:, 0])
