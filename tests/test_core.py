"""The model contract: naming, keys, params checks, errors with paths, param_count and summary."""

from __future__ import annotations

import re
import zlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet.children import child_key, name_children, name_hash


def test_function_wraps_a_pure_function_without_params():
    model = fn.function(lambda x, y: x * y, name="mul")
    params, state = model.init(jax.random.key(0), jnp.ones(2), jnp.ones(2))
    assert (params, state, model.name) == ({}, {}, "mul")
    out, _ = model.apply(params, state, jnp.array([2.0, 3.0]), jnp.array([4.0, 5.0]))
    chex.assert_trees_all_equal(out, jnp.array([8.0, 15.0]))


def test_function_rejects_params():
    with pytest.raises(fn.ParamsError, match=r"at mul: mul has no params or state, got params \['w'\]"):
        fn.function(jnp.sin, name="mul").apply({"w": 1}, {}, jnp.ones(1))


def test_positional_names_count_per_type_and_keywords_are_kept():
    names = list(name_children([fn.dense(1), fn.relu(), fn.dense(1), fn.relu()], {"head": fn.dense(1)}))
    assert names == ["dense_0", "relu_0", "dense_1", "relu_1", "head"]


def test_name_clash_and_non_models_are_rejected():
    with pytest.raises(ValueError, match="'dense_0' is used twice"):
        fn.serial(fn.dense(1), dense_0=fn.dense(2))
    with pytest.raises(TypeError, match=r"child 0: relu is a layer factory, not a layer. Fix: call it: relu\(\)"):
        fn.serial(fn.relu)
    with pytest.raises(TypeError, match=r"child 1: dense is a layer factory.*call it: dense\(\.\.\.\)"):
        fn.serial(fn.relu(), fn.dense)
    with pytest.raises(TypeError, match=r"child 'head': expected a funcnet Model or a function of arrays, got int"):
        fn.serial(fn.dense(1), head=3)
    with pytest.raises(ValueError, match="at least one child"):
        fn.serial()


def test_name_hash_is_stable_across_processes():
    # crc32 is fixed by its specification: this value must never change, or checkpoints'
    # randomness (dropout masks after resume) would differ between versions.
    assert name_hash("encoder") == zlib.crc32(b"encoder") & 0x7FFFFFFF


def test_children_get_distinct_keys_derived_from_their_names():
    key = jax.random.key(0)
    a, b = child_key(key, "a"), child_key(key, "b")
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(b))
    np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(jax.random.fold_in(key, name_hash("a"))))
    assert child_key(None, "a") is None


def test_same_layer_type_gets_different_init_in_serial():
    model = fn.serial(fn.dense(4), fn.dense(4))
    params, _ = model.init(jax.random.key(0), jnp.ones((1, 4)))
    assert not np.allclose(params["dense_0"]["kernel"], params["dense_1"]["kernel"])


def test_init_is_deterministic_in_the_key():
    model = fn.serial(fn.dense(4), fn.dense(2))
    a = model.init(jax.random.key(7), jnp.ones((1, 3)))
    b = model.init(jax.random.key(7), jnp.ones((1, 3)))
    chex.assert_trees_all_equal(a, b)


def test_init_accepts_shape_dtype_structs_and_eval_shape():
    model = fn.serial(hidden=fn.dense(8), out=fn.dense(2))
    spec = jax.ShapeDtypeStruct((5, 3), jnp.float32)
    real = model.init(jax.random.key(0), spec)
    abstract = jax.eval_shape(model.init, jax.random.key(0), spec)
    chex.assert_trees_all_equal_shapes_and_dtypes(real, abstract)
    assert real[0]["hidden"]["kernel"].shape == (3, 8)


def test_error_path_names_every_level():
    model = fn.serial(encoder=fn.serial(fn.dense(256), fn.relu(), fn.dense(256)), head=fn.dense(2))
    params, state = model.init(jax.random.key(0), jnp.ones((2, 128)))
    with pytest.raises(fn.ShapeError, match=r"at encoder/dense_0: expected last axis 128, got \(32, 100, 64\) float32"):
        model.apply(params, state, jnp.ones((32, 100, 64)))


def test_wrong_dtype_is_a_type_error_with_path():
    model = fn.serial(fn.dense(4))
    params, state = model.init(jax.random.key(0), jnp.ones((2, 3)))
    with pytest.raises(TypeError, match=r"at dense_0: expected a floating-point input, got \(2, 3\) int32"):
        model.apply(params, state, jnp.ones((2, 3), jnp.int32))


def test_wrong_rank_names_the_layer():
    with pytest.raises(ValueError, match=r"at dense: expected input of rank >= 1, got \(\) float32"):
        fn.dense(3).init(jax.random.key(0), jnp.float32(1.0))


def test_params_from_another_model_are_rejected_with_path():
    a = fn.serial(enc=fn.dense(4), head=fn.dense(2))
    b = fn.serial(enc=fn.dense(4), out=fn.dense(2))
    pa, sa = a.init(jax.random.key(0), jnp.ones((1, 3)))
    with pytest.raises(
        fn.ParamsError, match=r"at serial: params do not belong to this model: unexpected keys \['head'\]"
    ):
        b.apply(pa, sa, jnp.ones((1, 3)))
    other = fn.serial(enc=fn.dense(5), head=fn.dense(2))
    with pytest.raises(fn.ParamsError, match=r"at enc: params do not belong to this model: kernel should be \[in, 5\]"):
        other.apply(pa, sa, jnp.ones((1, 3)))


def test_errors_raise_at_trace_time_under_jit():
    model = fn.serial(fn.dense(4))
    params, state = model.init(jax.random.key(0), jnp.ones((2, 3)))
    with pytest.raises(fn.ShapeError, match="at dense_0"):
        jax.jit(model.apply)(params, state, jnp.ones((2, 5)))


def test_param_count():
    params, _ = fn.serial(fn.dense(100), fn.dense(10)).init(jax.random.key(0), jnp.ones((1, 1000)))
    assert fn.param_count(params) == 1000 * 100 + 100 + 100 * 10 + 10


def test_summary_needs_no_real_arrays():
    # 40 GB of float32 params if they were allocated: only eval_shape can summarize this.
    huge = fn.serial(fn.dense(100_000), fn.dense(100_000))
    text = fn.summary(huge, jax.ShapeDtypeStruct((1, 100_000), jnp.float32))
    assert "params/dense_0/kernel (100000, 100000) float32 10000000000" in text
    assert "output (1, 100000) float32" in text
    assert "params 20,000,200,000 (80,000,800,000 B)" in text


def test_summary_lists_state():
    text = fn.summary(fn.serial(fn.dense(3), fn.batch_norm()), jax.ShapeDtypeStruct((4, 2), jnp.float32))
    assert re.search(r"state/batch_norm_0/mean +\(3,\) +float32 +3", text)
    assert "state 6 (24 B)" in text
