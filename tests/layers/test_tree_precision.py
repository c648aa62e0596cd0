"""Mixed precision in the tree cells: bfloat16 matmul operands, float32 everything else."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet.layers.tree import tree
from funcnet.layers.tree_cells import TreeCarry, binary_tree_lstm_cell, child_sum_tree_lstm_cell, tree_rnn_cell

from .test_tree import H, random_layout, setup

CELLS = {
    "binary_tree_lstm": lambda **kw: binary_tree_lstm_cell(H, **kw),
    "child_sum_tree_lstm": lambda **kw: child_sum_tree_lstm_cell(H, **kw),
    "tree_rnn": lambda **kw: tree_rnn_cell(H, **kw),
}


def relative_error(got, want) -> float:
    got, want = jnp.concatenate([a.ravel() for a in got]), jnp.concatenate([a.ravel() for a in want])
    return float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))


def pulled_back(cell, params, x, b, cotangent, custom_vjp=True):
    model = tree(cell, custom_vjp=custom_vjp)
    out, vjp = jax.vjp(lambda p, x: model.apply(p, {}, x, b)[0], params, x)
    return out, vjp(cotangent)


@pytest.mark.parametrize("name", list(CELLS))
def test_bfloat16_matmuls_stay_close_to_float32_and_keep_float32_states_and_gradients(name):
    cell32, arity, trees_, vocab, params, table, _ = setup(name)
    cell16 = CELLS[name](compute_dtype="bfloat16")
    b = random_layout(trees_, vocab, arity, 1, pad_trees=2, size=(40, 14, 9))
    x = table[b["leaf_tokens"]]
    cotangent = TreeCarry(*np.random.default_rng(5).standard_normal((2, len(b["label_mask"]), H)).astype(np.float32))
    run = jax.jit(pulled_back, static_argnums=0)
    want, got = run(cell32, params, x, b, cotangent), run(cell16, params, x, b, cotangent)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(got))
    # bfloat16 keeps 8 bits of mantissa: each rounded operand is off by <= 2^-9 relative, and the errors of a
    # few hundred products partly cancel; through trees of <= 6 levels the outputs and gradients move by
    # ~0.05-0.4% (observed). A wrong gate, child or transposed weight moves them by tens of percent.
    assert relative_error(jax.tree.leaves(got[0]), jax.tree.leaves(want[0])) < 2e-2
    assert relative_error(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])) < 3e-2
    assert relative_error(jax.tree.leaves(got[0]), jax.tree.leaves(want[0])) > 0, "bfloat16 must round something"
    # Padding rows and the dummy row stay exactly zero.
    real = np.concatenate([np.asarray(b["leaf_mask"]), np.asarray(b["internal_mask"]).ravel(), [0]]) > 0
    assert not real.all()
    chex.assert_trees_all_equal(got[0].h[~real], jnp.zeros(((~real).sum(), H)))


@pytest.mark.parametrize("name", list(CELLS))
def test_custom_vjp_equals_autodiff_in_mixed_precision(name):
    # Both paths round the same operands to bfloat16 (the custom path rounds the weights once, before its loop;
    # autodiff inside every step) and accumulate in float32 in different orders: they agree to float32 noise.
    _, arity, trees_, vocab, params, table, _ = setup(name)
    cell = CELLS[name](compute_dtype=jnp.bfloat16)
    b = random_layout(trees_, vocab, arity, 2, pad_trees=1, size=(40, 14, 9))
    x = table[b["leaf_tokens"]]
    cotangent = TreeCarry(*np.random.default_rng(6).standard_normal((2, len(b["label_mask"]), H)).astype(np.float32))
    run = jax.jit(pulled_back, static_argnums=(0, 5))
    custom, autodiff = run(cell, params, x, b, cotangent, True), run(cell, params, x, b, cotangent, False)
    chex.assert_trees_all_close(custom, autodiff, rtol=2e-5, atol=2e-5)


def test_bad_compute_dtype_is_a_type_error_naming_the_cell():
    with pytest.raises(TypeError, match="binary_tree_lstm: compute_dtype must be a floating dtype"):
        binary_tree_lstm_cell(4, compute_dtype="int8")
    with pytest.raises(TypeError, match="tree_rnn: compute_dtype must be a floating dtype"):
        tree_rnn_cell(4, compute_dtype="bfloat17")
    assert child_sum_tree_lstm_cell(4, compute_dtype="").compute_dtype is None
