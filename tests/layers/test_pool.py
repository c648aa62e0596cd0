"""max_pool / avg_pool / global_avg_pool against NumPy loops over windows, plus gradients and errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from funcnet.combinators import serial
from funcnet.errors import DTypeError, ParamsError, ShapeError
from funcnet.layers.conv import conv2d
from funcnet.layers.pool import avg_pool, global_avg_pool, max_pool

# float32 layer vs float64 reference over windows of at most 9 entries.
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _pads(padding, sizes, window, strides):
    if padding == "VALID":
        return [(0, 0)] * len(sizes)
    if isinstance(padding, int):
        return [(padding, padding)] * len(sizes)
    if padding != "SAME":
        return list(padding)
    pads = []  # TensorFlow's SAME: output ceil(size / stride), the odd padding entry at the high end
    for size, w, s in zip(sizes, window, strides, strict=True):
        total = max((-(-size // s) - 1) * s + w - size, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _windows(x, window, strides, padding, fill):
    """Yields (output position, window slices into the padded input, padded input, real-entry mask)."""
    n = x.ndim - 2
    pads = _pads(padding, x.shape[1:-1], window, strides)
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=fill)
    mask = np.pad(np.ones(x.shape[1:-1]), pads)
    out = [(xp.shape[i + 1] - window[i]) // strides[i] + 1 for i in range(n)]
    for pos in np.ndindex(*out):
        yield pos, tuple(slice(p * s, p * s + w) for p, s, w in zip(pos, strides, window, strict=True)), xp, mask


def reference_pool(x, window, strides, padding, kind, count_include_pad=True):
    x = np.asarray(x, np.float64)
    n = x.ndim - 2
    results = {}
    for pos, sl, xp, mask in _windows(x, window, strides, padding, -np.inf if kind == "max" else 0.0):
        patch = xp[(slice(None), *sl, slice(None))]
        axes = tuple(range(1, n + 1))
        if kind == "max":
            results[pos] = patch.max(axis=axes)
        else:
            results[pos] = patch.sum(axis=axes) / (np.prod(window) if count_include_pad else mask[sl].sum())
    out = [max(p[i] for p in results) + 1 for i in range(n)]
    y = np.empty((x.shape[0], *out, x.shape[-1]))
    for pos, value in results.items():
        y[(slice(None), *pos)] = value
    return y


def _input(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


CASES = [
    # (input shape, window, strides, padding)
    ((2, 7, 3), 2, None, "VALID"),
    ((2, 7, 3), 3, 2, "SAME"),
    ((2, 6, 3), (4,), (1,), "SAME"),
    ((2, 7, 3), 3, 2, 1),
    ((2, 5, 6, 2), 2, None, "VALID"),
    ((2, 5, 6, 2), (3, 2), (2, 1), "SAME"),
    ((2, 5, 6, 2), (2, 3), 2, ((1, 0), (2, 1))),
    ((1, 4, 3, 3, 2), 2, 1, "SAME"),
]


@pytest.mark.parametrize("shape,window,strides,padding", CASES)
def test_max_pool_matches_reference(shape, window, strides, padding):
    n = len(shape) - 2
    x = _input(shape)
    y, state = max_pool(window, strides, padding).apply({}, {}, x)
    win = window if isinstance(window, tuple) else (window,) * n
    steps = win if strides is None else strides if isinstance(strides, tuple) else (strides,) * n
    expected = reference_pool(x, win, steps, padding, "max")
    assert state == {}
    chex.assert_shape(y, expected.shape)
    chex.assert_trees_all_close(y, expected.astype(np.float32), **TOL)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("shape,window,strides,padding", CASES)
def test_avg_pool_matches_reference(shape, window, strides, padding, count_include_pad):
    n = len(shape) - 2
    x = _input(shape)
    y, _ = avg_pool(window, strides, padding, count_include_pad=count_include_pad).apply({}, {}, x)
    win = window if isinstance(window, tuple) else (window,) * n
    steps = win if strides is None else strides if isinstance(strides, tuple) else (strides,) * n
    expected = reference_pool(x, win, steps, padding, "avg", count_include_pad)
    chex.assert_shape(y, expected.shape)
    chex.assert_trees_all_close(y, expected.astype(np.float32), **TOL)


def test_hand_computed_padding_counts():
    x = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1)
    y, _ = avg_pool(3, 1, "SAME").apply({}, {}, x)  # windows [0,1,2] [1,2,3] [2,3,4] [3,4,0]
    chex.assert_trees_all_close(y[0, :, 0], jnp.array([3.0, 6.0, 9.0, 7.0]) / 3, **TOL)
    y, _ = avg_pool(3, 1, "SAME", count_include_pad=False).apply({}, {}, x)
    chex.assert_trees_all_close(y[0, :, 0], jnp.array([3.0 / 2, 6.0 / 3, 9.0 / 3, 7.0 / 2]), **TOL)
    y, _ = max_pool(3, 1, "SAME").apply({}, {}, -x)  # padding (-inf) never wins, even over negative entries
    chex.assert_trees_all_close(y[0, :, 0], jnp.array([-1.0, -1.0, -2.0, -3.0]), **TOL)


def test_max_pool_on_integers():
    x = jnp.asarray(np.random.default_rng(1).integers(-50, 50, size=(2, 5, 5, 3)), jnp.int32)
    y, _ = max_pool(2, 1, "SAME").apply({}, {}, x)
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(y, reference_pool(x, (2, 2), (1, 1), "SAME", "max").astype(np.int32))


def test_global_avg_pool():
    x = _input((2, 3, 4, 5))
    y, state = global_avg_pool().apply({}, {}, x)
    assert state == {}
    chex.assert_trees_all_close(y, np.asarray(x, np.float64).mean(axis=(1, 2)).astype(np.float32), **TOL)
    assert global_avg_pool().init(jax.random.key(0), x) == ({}, {})


def test_max_pool_gradient_routes_to_the_argmax():
    # Distinct values 0.1 apart, so every window has one maximum and finite differences do not cross a tie.
    shape = (1, 5, 5, 2)
    x = jnp.asarray(np.random.default_rng(2).permutation(np.prod(shape)).reshape(shape) * 0.1, jnp.float32)
    pool = max_pool(3, 2, "SAME")  # overlapping windows: one entry may be the maximum of several
    f = jax.jit(lambda x: pool.apply({}, {}, x)[0])
    # check_grads' float32 default tolerances; max is piecewise linear, so first order only.
    check_grads(f, (x,), order=1, modes=["rev"])
    cotangent = _input(f(x).shape, seed=3)
    grad = jax.vjp(f, x)[1](cotangent)[0]
    (top, _), (left, _) = _pads("SAME", shape[1:3], (3, 3), (2, 2))
    expected = np.zeros(shape)  # each window's cotangent added at its argmax (unpadded coordinates)
    for pos, (rows, cols), xp, _ in _windows(np.asarray(x, np.float64), (3, 3), (2, 2), "SAME", -np.inf):
        for c in range(shape[-1]):
            i, j = np.unravel_index(np.argmax(xp[0, rows, cols, c]), (3, 3))
            expected[0, rows.start + i - top, cols.start + j - left, c] += float(cotangent[(0, *pos, c)])
    chex.assert_trees_all_close(grad, expected.astype(np.float32), **TOL)


def test_avg_pool_gradients():
    x = _input((1, 4, 5, 2))
    pool = avg_pool((2, 3), (1, 2), "SAME", count_include_pad=False)
    # check_grads' float32 default tolerances; avg pool is linear, so order 2 also checks its (zero) curvature.
    check_grads(jax.jit(lambda x: pool.apply({}, {}, x)[0]), (x,), order=2, modes=["rev"])


def test_jit_matches_eager_and_vmap_over_examples():
    x = _input((3, 6, 6, 2))
    pool = max_pool(2, 1, "SAME")
    y = pool.apply({}, {}, x)[0]
    chex.assert_trees_all_close(jax.jit(lambda x: pool.apply({}, {}, x)[0])(x), y, **TOL)
    chex.assert_trees_all_close(jax.vmap(lambda xi: pool.apply({}, {}, xi[None])[0][0])(x), y, **TOL)


def test_small_cnn_names_and_shapes():
    model = serial(conv2d(4, 3), max_pool(2), conv2d(6, 3), avg_pool(2), global_avg_pool())
    spec = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    params, state = jax.eval_shape(model.init, jax.random.key(0), spec)
    assert (list(params), state) == (["conv2d_0", "conv2d_1"], {})
    out, _ = jax.eval_shape(model.apply, params, state, spec)
    assert out.shape == (2, 6)
    with pytest.raises(ShapeError, match=r"^at max_pool_0: the spatial axes \(1, 1\) with padding"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((2, 1, 1, 1), jnp.float32))


def test_input_errors():
    rank3 = r"^at max_pool: expected input of rank >= 3 \(\[batch, \*spatial, channels\]\), got \(5, 3\) float32\."
    with pytest.raises(ShapeError, match=rank3 + " Fix: add a batch axis"):
        max_pool(2).apply({}, {}, jnp.ones((5, 3)))
    rank4 = r"^at avg_pool: expected input of rank 4 \(\[batch, height, width, channels\]\), got \(1, 5, 3\) float32"
    with pytest.raises(ShapeError, match=rank4):
        avg_pool((2, 2)).apply({}, {}, jnp.ones((1, 5, 3)))
    with pytest.raises(ShapeError, match=r"expected input of rank 3 \(\[batch, length, channels\]\)"):
        max_pool(2, padding=((1, 1),)).init(jax.random.key(0), jnp.ones((1, 5, 5, 3)))
    with pytest.raises(ShapeError, match=r"smaller than the window \(4, 4\), got \(1, 3, 5, 2\) float32"):
        max_pool(4).apply({}, {}, jnp.ones((1, 3, 5, 2)))
    with pytest.raises(DTypeError, match=r"^at avg_pool: expected a floating-point input, got \(1, 4, 2\) int32"):
        avg_pool(2).apply({}, {}, jnp.ones((1, 4, 2), jnp.int32))
    with pytest.raises(DTypeError, match=r"expected a floating-point or integer input, got \(1, 4, 2\) bool"):
        max_pool(2).apply({}, {}, jnp.ones((1, 4, 2), bool))
    with pytest.raises(ShapeError, match=r"^at global_avg_pool: expected input of rank >= 3 \(\[batch, \*spatial"):
        global_avg_pool().apply({}, {}, jnp.ones((2, 3)))
    for pool in (max_pool(2), avg_pool(2), global_avg_pool()):
        with pytest.raises(ParamsError, match="has no params or state"):
            pool.apply({"kernel": jnp.ones(1)}, {}, jnp.ones((1, 4, 2)))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: max_pool(0), "window must be a positive int"),
        (lambda: avg_pool((2, 0)), "window must be a positive int or 2 positive ints"),
        (lambda: max_pool((2, 2), (1,)), "give different numbers of spatial axes"),
        (lambda: max_pool(2, (1, 1), ((0, 0),)), "give different numbers of spatial axes"),
        (lambda: max_pool(2, padding="FULL"), "padding must be 'SAME', 'VALID'"),
        (lambda: avg_pool(2, padding=-1), r"\(low, high\) pairs"),
    ],
)
def test_bad_hyper_parameters_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_type_names():
    assert (max_pool(2).name, avg_pool(2).name, global_avg_pool().name) == ("max_pool", "avg_pool", "global_avg_pool")
