"""lstm_scan, the LSTM's whole-sequence path in rnn: values and every derivative against the scanned step.

The reference is the generic path of ``rnn``: ``lax.scan`` of ``lstm_cell(H).apply`` differentiated by
plain autodiff (the same cell with its ``scan`` removed), itself tested against a Python loop in
test_recurrent.py. Both derivatives are tested: the default custom VJP (reverse mode) and the
custom JVP of ``forward_mode=True`` (forward and reverse mode).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import funcnet as fn
from funcnet.layers.cells import LSTMCarry, gru_cell, lstm_cell, simple_rnn_cell
from funcnet.layers.lstm_scan import lstm_scan
from funcnet.layers.recurrent import rnn, stacked_rnn

# float32, <= 7 steps, O(1) values. The two paths compute the same function in a different order
# (the weight gradients as one matmul over all rows instead of a per-step sum; the sigmoid as
# (1 + tanh(z/2)) / 2): observed differences are <= 3e-7 on outputs and <= 1e-6 on gradients of
# size up to ~10, i.e. a few ulps. 1e-5 (relative and absolute) keeps a margin for rounding and
# still fails on any wrong term: a swapped gate, a missing mask or a carry off by one step moves
# the values by 1e-2 or more.
TOL = {"rtol": 1e-5, "atol": 1e-5}
B, T, F, H = 8, 7, 3, 5
LENGTHS = np.array([7, 3, 0, 1, 7, 5, 2, 6], np.int32)  # full, partial, empty


def normal(seed, shape, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def generic(cell):
    """The same cell without its whole-sequence path: rnn scans ``cell.apply``."""
    return cell._replace(scan=None)


def setup(seed=0, **cell_kwargs):
    """A cell, params with every entry moved off its initial value, inputs and an initial carry."""
    cell = lstm_cell(H, **cell_kwargs)
    xs = normal(seed, (B, T, F))
    params, _ = rnn(cell).init(jax.random.key(seed), xs)
    params = {k: v + 0.3 * normal(seed + 1 + i, v.shape) for i, (k, v) in enumerate(sorted(params.items()))}
    carry = LSTMCarry(normal(seed + 10, (B, H)), normal(seed + 11, (B, H)))
    return cell, params, xs, carry


def run(cell, *, reverse=False, lengths=None):
    """``(params, xs, carry) -> (ys, final carry)`` through rnn."""
    layer = rnn(cell, reverse=reverse, return_carry=True)

    def f(params, xs, carry):
        return layer.apply(params, {}, xs, lengths, carry)[0]

    return f


def loss_of(f):
    """A scalar that weighs every output position and both carry arrays differently."""

    def loss(params, xs, carry):
        ys, final = f(params, xs, carry)
        weights = jnp.arange(1, ys.size + 1, dtype=ys.dtype).reshape(ys.shape) / ys.size
        return jnp.sum(jnp.sin(ys) * weights) + jnp.sum(final.h**2) + jnp.sum(jnp.cos(final.c))

    return loss


def grads(f, params, xs, carry):
    return jax.grad(loss_of(f), argnums=(0, 1, 2))(params, xs, carry)


CASES = [(False, None), (True, None), (False, LENGTHS), (True, LENGTHS)]
IDS = ["forward", "reverse", "forward-lengths", "reverse-lengths"]
MODES = pytest.mark.parametrize("forward_mode", [False, True], ids=["vjp", "jvp"])
CUSTOM = {False: "custom_vjp_call", True: "custom_jvp_call"}  # the derivative each forward_mode takes


def test_rnn_of_an_lstm_takes_the_whole_sequence_path():
    cell, params, xs, carry = setup()
    assert cell.scan is not None
    assert all(make(H).scan is None for make in (gru_cell, simple_rnn_cell))  # other cells: the generic scan
    slow = str(jax.make_jaxpr(run(generic(cell)))(params, xs, carry))
    assert not any(name in slow for name in CUSTOM.values())
    for forward_mode, name in CUSTOM.items():
        fast = str(jax.make_jaxpr(run(lstm_cell(H, forward_mode=forward_mode)))(params, xs, carry))
        assert name in fast and CUSTOM[not forward_mode] not in fast


@MODES
@pytest.mark.parametrize(("reverse", "lengths"), CASES, ids=IDS)
def test_values_and_gradients_equal_the_scanned_cell(reverse, lengths, forward_mode):
    cell, params, xs, carry = setup(seed=1, forward_mode=forward_mode)
    lengths = None if lengths is None else jnp.asarray(lengths)
    fast, slow = run(cell, reverse=reverse, lengths=lengths), run(generic(cell), reverse=reverse, lengths=lengths)
    (ys, final) = jax.jit(fast)(params, xs, carry)
    assert isinstance(final, LSTMCarry)
    chex.assert_trees_all_close((ys, final), slow(params, xs, carry), **TOL)
    got = jax.jit(lambda *a: grads(fast, *a))(params, xs, carry)
    chex.assert_trees_all_close(got, grads(slow, params, xs, carry), **TOL)
    if lengths is not None:
        for b, n in enumerate(LENGTHS):  # exactly zero past the end, in the outputs and in d loss / d xs
            np.testing.assert_array_equal(ys[b, n:], 0.0)
            np.testing.assert_array_equal(got[1][b, n:], 0.0)
        empty = int(np.flatnonzero(LENGTHS == 0)[0])  # the empty sequence keeps its carry, and passes its gradient
        chex.assert_trees_all_equal(jax.tree.map(lambda c: c[empty], final), jax.tree.map(lambda c: c[empty], carry))


@pytest.mark.parametrize(("reverse", "lengths"), CASES, ids=IDS)
def test_forward_mode_equals_the_scanned_cell(reverse, lengths):
    cell, params, xs, carry = setup(seed=2, forward_mode=True)
    lengths = None if lengths is None else jnp.asarray(lengths)
    primals = (params, xs, carry)
    tangents = jax.tree.map(lambda a: normal(int(a.size), a.shape), primals)
    got = jax.jit(lambda p, t: jax.jvp(run(cell, reverse=reverse, lengths=lengths), p, t))(primals, tangents)
    want = jax.jvp(run(generic(cell), reverse=reverse, lengths=lengths), primals, tangents)
    chex.assert_trees_all_close(got, want, **TOL)


def test_the_default_is_reverse_mode_only_and_forward_mode_has_no_mixed_precision():
    cell, params, xs, carry = setup(seed=2)
    tangents = jax.tree.map(jnp.ones_like, (params, xs, carry))
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff \\(jvp\\) to a custom_vjp function"):
        jax.jvp(run(cell), (params, xs, carry), tangents)
    with pytest.raises(ValueError, match="lstm: forward_mode=True has no mixed precision \\(compute_dtype=bfloat16\\)"):
        lstm_cell(H, compute_dtype="bfloat16", forward_mode=True, dtype="float32")
    bad = lstm_cell(H, compute_dtype="bfloat16", forward_mode=True)  # the params' dtype is known at apply time
    with pytest.raises(ValueError, match="lstm: forward_mode=True has no mixed precision"):
        run(bad)(params, xs, carry)
    same = lstm_cell(H, compute_dtype="float32", forward_mode=True)  # the params' own dtype: no mixed precision
    chex.assert_trees_all_close(run(same)(params, xs, carry), run(generic(cell))(params, xs, carry), **TOL)


@MODES
def test_eight_devices_batch_sharded_under_jit(forward_mode):
    assert jax.device_count() == 8
    mesh = Mesh(jax.devices(), ("data",))
    rows, same = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    cell, params, xs, carry = setup(seed=3, forward_mode=forward_mode)
    lengths = jnp.asarray(LENGTHS)
    for reverse in (False, True):

        def values_and_grads(params, xs, carry, lengths, reverse=reverse):
            f = run(cell, reverse=reverse, lengths=lengths)
            return f(params, xs, carry), grads(f, params, xs, carry)

        step = jax.jit(values_and_grads, in_shardings=(same, rows, rows, rows))
        got = step(params, xs, carry, lengths)
        slow = run(generic(cell), reverse=reverse, lengths=lengths)
        chex.assert_trees_all_close(got, (slow(params, xs, carry), grads(slow, params, xs, carry)), **TOL)
        assert got[0][0].sharding.is_equivalent_to(rows, 3)  # the outputs stay split over the batch
        # The whole-sequence matmuls keep the batch split: no device gathers the others' rows, and
        # the weight gradients are summed across devices.
        hlo = step.lower(params, xs, carry, lengths).compile().as_text()
        assert "all-gather" not in hlo and "all-reduce" in hlo


@MODES
def test_tbptt_gradient_flows_through_the_handed_over_carry(forward_mode):
    """Two chunks, the second starting from the first's final carry; the loss sees only the last carry."""
    cell, params, xs, carry = setup(seed=4, forward_mode=forward_mode)

    def two_chunks(c):
        first, second = run(c, lengths=jnp.asarray(LENGTHS)), run(c)

        def loss(params, xs, carry):
            _, middle = first(params, xs[:, :4], carry)
            _, end = second(params, xs[:, 4:], middle)
            return jnp.sum(end.h * jnp.arange(H)[None]) + jnp.sum(jnp.tanh(end.c))

        return jax.grad(loss, argnums=(0, 1, 2))

    got = jax.jit(two_chunks(cell))(params, xs, carry)
    chex.assert_trees_all_close(got, two_chunks(generic(cell))(params, xs, carry), **TOL)
    assert float(jnp.abs(got[2].h).sum()) > 0 and float(jnp.abs(got[2].c).sum()) > 0  # reaches the initial carry


@MODES
def test_second_order_and_per_example_gradients_equal_the_scanned_cell(forward_mode):
    cell, params, xs, carry = setup(seed=5, forward_mode=forward_mode)
    lengths = jnp.asarray(LENGTHS)
    v = jax.tree.map(lambda p: normal(7, p.shape), params)

    def hvp(c, forward_over_reverse):  # a Hessian-vector product w.r.t. the params
        loss = loss_of(run(c, lengths=lengths))
        if forward_over_reverse:
            return jax.jvp(lambda p: jax.grad(loss)(p, xs, carry), (params,), (v,))[1]
        return jax.grad(lambda p: tree_vdot(jax.grad(loss)(p, xs, carry), v))(params)  # reverse over reverse

    for forward_over_reverse in {False, forward_mode}:  # the custom VJP: reverse over reverse only
        got = jax.jit(lambda f=forward_over_reverse: hvp(cell, f))()
        chex.assert_trees_all_close(got, hvp(generic(cell), forward_over_reverse), **TOL)

    def per_example(c):
        def one(x, n, h, cc):
            f = run(c, lengths=n[None])
            return jax.grad(loss_of(f))(params, x[None], LSTMCarry(h[None], cc[None]))

        return jax.vmap(one)(xs, lengths, carry.h, carry.c)

    chex.assert_trees_all_close(jax.jit(lambda: per_example(cell))(), per_example(generic(cell)), **TOL)


@MODES
@pytest.mark.parametrize("reverse", [False, True])
def test_check_grads_float64(reverse, forward_mode):
    with jax.enable_x64(True):
        cell = lstm_cell(2, forward_mode=forward_mode)
        xs = normal(8, (2, 3, 2), jnp.float64)
        params, _ = rnn(cell).init(jax.random.key(0), xs)
        carry = LSTMCarry(normal(9, (2, 2), jnp.float64), normal(10, (2, 2), jnp.float64))
        f = jax.jit(run(cell, reverse=reverse, lengths=jnp.array([3, 2])))
        assert CUSTOM[forward_mode] in str(jax.make_jaxpr(f)(params, xs, carry))
        # float64 central differences of a smooth function: check_grads' default tolerances hold.
        # Order 2 also differentiates the custom rule itself (the custom VJP: reverse over reverse).
        modes = ["fwd", "rev"] if forward_mode else ["rev"]
        check_grads(f, (params, xs, carry), order=2, modes=modes)


def test_the_recurrent_product_is_four_products_on_cpu_and_one_elsewhere():
    # The values of the CPU form are what every test above checks (they run on CPU). This checks the
    # other platforms' form lowers, and that the split is the CPU's only: four products per step instead
    # of one, forward and backward, so 3 + 3 more dot_generals in the CPU lowering of the gradient.
    _, params, xs, carry = setup(seed=7)
    grad = jax.jit(jax.grad(lambda p, x: lstm_scan(p, x, carry)[0].sum()))
    dots = {
        platform: grad.trace(params, xs).lower(lowering_platforms=(platform,)).as_text().count("dot_general")
        for platform in ("cpu", "cuda")
    }
    assert dots["cpu"] - dots["cuda"] == 6, dots


def test_without_bias_stacked_and_empty_time():
    cell, params, xs, carry = setup(seed=6, use_bias=False)
    assert sorted(params) == ["w_hh", "w_ih"]
    chex.assert_trees_all_close(
        grads(run(cell), params, xs, carry), grads(run(generic(cell)), params, xs, carry), **TOL
    )
    layers = stacked_rnn([lstm_cell(4), lstm_cell(H)], return_carry=True)
    stacked, _ = layers.init(jax.random.key(1), xs)
    (ys, finals), _ = layers.apply(stacked, {}, xs, jnp.asarray(LENGTHS))
    h = xs
    for name, c in zip(stacked, (lstm_cell(4), lstm_cell(H)), strict=True):
        (h, final), _ = rnn(generic(c), return_carry=True).apply(stacked[name], {}, h, jnp.asarray(LENGTHS))
        chex.assert_trees_all_close(finals[list(stacked).index(name)], final, **TOL)
    chex.assert_trees_all_close(ys, h, **TOL)
    (empty, final), _ = rnn(lstm_cell(H), return_carry=True).apply(setup()[1], {}, xs[:, :0], None, carry)
    assert empty.shape == (B, 0, H)
    chex.assert_trees_all_equal(final, carry)


def test_other_dtypes_take_the_generic_path_and_bfloat16_runs_whole():
    cell, params, xs, carry = setup(seed=7)
    half = LSTMCarry(*(c.astype(jnp.bfloat16) for c in carry))  # a carry of another dtype keeps its dtype per step
    assert "custom_vjp_call" not in str(jax.make_jaxpr(run(cell))(params, xs, half))
    chex.assert_trees_all_equal(run(cell)(params, xs, half), run(generic(cell))(params, xs, half))
    as16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), (params, xs, carry))
    assert "custom_vjp_call" in str(jax.make_jaxpr(run(cell))(*as16))
    ys, _ = run(cell)(*as16)
    want, _ = run(generic(cell))(*as16)
    assert ys.dtype == jnp.bfloat16
    # bfloat16 keeps 8 significant bits (ulp 2^-8 near 1): a few ulps of difference over 7 steps.
    np.testing.assert_allclose(np.asarray(ys, np.float32), np.asarray(want, np.float32), atol=2e-2)


def test_lstm_scan_directly_and_cell_scan_checks():
    cell, params, xs, carry = setup(seed=8)
    ys, (h, c) = lstm_scan(params, xs, tuple(carry), jnp.asarray(LENGTHS), reverse=True)
    want, final = run(generic(cell), reverse=True, lengths=jnp.asarray(LENGTHS))(params, xs, carry)
    chex.assert_trees_all_close((ys, h, c), (want, final.h, final.c), **TOL)
    (final2, ys2), state = cell.scan(params, {}, xs, carry)
    assert state == {} and isinstance(final2, LSTMCarry)
    chex.assert_trees_all_close((ys2, final2), run(generic(cell))(params, xs, carry), **TOL)
    with pytest.raises(fn.ParamsError, match="at lstm: lstm has no state"):
        cell.scan(params, {"x": 1}, xs, carry)
    with pytest.raises(fn.ShapeError, match=r"at lstm: expected carry arrays of shape \(8, 5\)"):
        cell.scan(params, {}, xs, LSTMCarry(carry.h[:2], carry.c[:2]))
    with pytest.raises(fn.ShapeError, match=r"at lstm: expected input of rank 3 \(\[batch, time, features\]\)"):
        cell.scan(params, {}, xs[0], carry)
    with pytest.raises(fn.ShapeError, match=r"at lstm: expected last axis 3, got \(8, 2\) float32"):
        cell.scan(params, {}, xs[..., :2], carry)


# ---------------------------------------------------------------- mixed precision (compute_dtype)


def tree_vdot(a, b) -> jax.Array:
    """The inner product of two pytrees of one structure."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def relative_error(got, want) -> float:
    """``|got - want| / |want|`` over all leaves together (Frobenius norms)."""
    got, want = (jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(t)]) for t in (got, want))
    return float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))


# Mixed against float32: bfloat16 keeps 8 significant bits, so each rounded operand is off by up to
# 2^-9 (0.2%) relative; a product sums F or H such terms whose errors partly cancel, and 7 steps of
# recurrence carry them on. Observed over 6 seeds x 4 cases: <= 3.1e-3 (values) and <= 3.3e-3
# (gradients) relative. 1e-2 keeps a 3x margin; a swapped gate, a missing mask or an unrounded
# operand is off by far more (or, for the last, by ~1e-7: hence the lower bound).
MIXED_VS_FLOAT32 = 1e-2
# Mixed fast path against autodiff of the mixed step (rnn scanning lstm_cell.apply, which calls
# funcnet.precision.matmul): both round the same operands (inputs, h, the weights, the cotangents
# dz), and the backward products run on the same bfloat16 values, so they differ by float32 rounding
# order only (and, for a value within a float32 ulp of a bfloat16 rounding boundary, by one bfloat16
# ulp: the sigmoid is computed as a tanh). Observed <= 3e-6 absolute on gradients up to ~10.
MIXED_TOL = {"rtol": 2e-5, "atol": 2e-5}


def mixed(**kwargs):
    return lstm_cell(H, compute_dtype="bfloat16", **kwargs)


@pytest.mark.parametrize(("reverse", "lengths"), CASES, ids=IDS)
def test_mixed_precision_equals_autodiff_of_the_mixed_step_and_stays_close_to_float32(reverse, lengths):
    cell, params, xs, carry = setup(seed=9)
    lengths = None if lengths is None else jnp.asarray(lengths)
    fast = run(mixed(), reverse=reverse, lengths=lengths)
    assert "custom_vjp_call" in str(jax.make_jaxpr(fast)(params, xs, carry))
    values = jax.jit(fast)(params, xs, carry)
    got = jax.jit(lambda *a: grads(fast, *a))(params, xs, carry)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(got)) and values[0].dtype == jnp.float32

    autodiff = run(generic(mixed()), reverse=reverse, lengths=lengths)
    chex.assert_trees_all_close(values, autodiff(params, xs, carry), **MIXED_TOL)
    chex.assert_trees_all_close(got, grads(autodiff, params, xs, carry), **MIXED_TOL)

    float32 = run(generic(cell), reverse=reverse, lengths=lengths)
    assert 1e-5 < relative_error(values, float32(params, xs, carry)) < MIXED_VS_FLOAT32
    assert 1e-5 < relative_error(got, grads(float32, params, xs, carry)) < MIXED_VS_FLOAT32
    if lengths is not None:  # exactly zero past the end, in the outputs and in d loss / d xs
        for b, n in enumerate(LENGTHS):
            np.testing.assert_array_equal(values[0][b, n:], 0.0)
            np.testing.assert_array_equal(got[1][b, n:], 0.0)
        empty = int(np.flatnonzero(LENGTHS == 0)[0])  # the empty sequence keeps its carry
        chex.assert_trees_all_equal(
            jax.tree.map(lambda c: c[empty], values[1]), jax.tree.map(lambda c: c[empty], carry)
        )


def test_compute_dtype_none_or_the_params_dtype_is_the_plain_path_bit_for_bit():
    cell, params, xs, carry = setup(seed=10)
    lengths = jnp.asarray(LENGTHS)
    want = jax.make_jaxpr(lambda *a: grads(run(cell, lengths=lengths), *a))(params, xs, carry)
    for compute_dtype in (None, "", "float32", jnp.float32):
        same = lstm_cell(H, compute_dtype=compute_dtype)
        got = jax.make_jaxpr(lambda *a, c=same: grads(run(c, lengths=lengths), *a))(params, xs, carry)
        assert str(got) == str(want), compute_dtype  # the very same program: the same bits
        value = str(jax.make_jaxpr(run(same))(params, xs, carry))
        assert "custom_vjp_call" in value and "custom_jvp_call" not in value
    step = jax.make_jaxpr(lambda p, c, x: lstm_cell(H).apply(p, {}, c, x))(params, carry, xs[:, 0])
    plain = jax.make_jaxpr(lambda p, c, x: lstm_cell(H, compute_dtype=None).apply(p, {}, c, x))(params, carry, xs[:, 0])
    assert str(step) == str(plain)


def test_mixed_precision_without_bias_and_on_eight_devices():
    _, params, xs, carry = setup(seed=11, use_bias=False)
    fast, autodiff = run(mixed(use_bias=False)), run(generic(mixed(use_bias=False)))
    chex.assert_trees_all_close(
        jax.jit(lambda *a: grads(fast, *a))(params, xs, carry), grads(autodiff, params, xs, carry), **MIXED_TOL
    )
    mesh = Mesh(jax.devices(), ("data",))
    rows, same = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    _, params, xs, carry = setup(seed=12)
    lengths = jnp.asarray(LENGTHS)

    def values_and_grads(params, xs, carry, lengths):
        f = run(mixed(), reverse=True, lengths=lengths)
        return f(params, xs, carry), grads(f, params, xs, carry)

    step = jax.jit(values_and_grads, in_shardings=(same, rows, rows, rows))
    got = step(params, xs, carry, lengths)
    chex.assert_trees_all_close(got, jax.jit(values_and_grads)(params, xs, carry, lengths), **MIXED_TOL)
    assert got[0][0].sharding.is_equivalent_to(rows, 3)  # the outputs stay split over the batch
    hlo = step.lower(params, xs, carry, lengths).compile().as_text()
    assert "all-gather" not in hlo and "all-reduce" in hlo  # weight gradients summed, no rows gathered


def test_mixed_precision_is_reverse_mode_only_and_bad_compute_dtypes_are_type_errors():
    _, params, xs, carry = setup(seed=13)
    tangents = jax.tree.map(jnp.ones_like, (params, xs, carry))
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(run(mixed()), (params, xs, carry), tangents)
    with pytest.raises(TypeError, match=r"lstm: compute_dtype must be a floating dtype such as 'bfloat16', got 'int8'"):
        lstm_cell(H, compute_dtype="int8")
    with pytest.raises(TypeError, match=r"lstm: compute_dtype must be a floating dtype .*got 'bfloat17'"):
        lstm_cell(H, compute_dtype="bfloat17")
    with pytest.raises(TypeError, match=r"lstm: compute_dtype must be a floating dtype .*got 'int32'"):
        lstm_scan(params, xs, tuple(carry), compute_dtype="int32")
