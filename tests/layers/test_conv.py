"""conv / conv1d / conv2d against a NumPy loop over output positions, plus grads, jit, vmap and errors."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from funcnet.combinators import serial
from funcnet.errors import DTypeError, ParamsError, ShapeError
from funcnet.layers.conv import conv, conv1d, conv2d

# float32 layer vs float64 reference; sums of at most ~50 products of O(1) values.
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _same_pads(sizes, windows, strides):
    """TensorFlow's SAME: output ceil(size / stride), the odd padding entry at the high end."""
    pads = []
    for size, window, stride in zip(sizes, windows, strides, strict=True):
        total = max((-(-size // stride) - 1) * stride + window - size, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def reference_conv(x, kernel, bias, strides, padding, dilation, groups):
    """Direct convolution: for each output position and kernel offset, add patch @ kernel slice, per group."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    n = kernel.ndim - 2
    sizes, ks = x.shape[1:-1], kernel.shape[:n]
    windows = [(k - 1) * d + 1 for k, d in zip(ks, dilation, strict=True)]
    if padding == "SAME":
        pads = _same_pads(sizes, windows, strides)
    elif padding == "VALID":
        pads = [(0, 0)] * n
    elif isinstance(padding, int):
        pads = [(padding, padding)] * n
    else:
        pads = padding
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    out = [(xp.shape[i + 1] - windows[i]) // strides[i] + 1 for i in range(n)]
    cin, features = kernel.shape[-2], kernel.shape[-1]
    fout = features // groups
    y = np.zeros((x.shape[0], *out, features))
    for pos in np.ndindex(*out):
        for offset in np.ndindex(*ks):
            idx = tuple(p * s + o * d for p, s, o, d in zip(pos, strides, offset, dilation, strict=True))
            patch = xp[(slice(None), *idx)]  # [batch, in_channels]
            for g in range(groups):
                w = kernel[(*offset, slice(None), slice(g * fout, (g + 1) * fout))]
                y[(slice(None), *pos, slice(g * fout, (g + 1) * fout))] += patch[:, g * cin : (g + 1) * cin] @ w
    return y + np.asarray(bias, np.float64)


def _setup(layer, shape, seed=0):
    """Random input and params (NumPy normals in the shapes init gives: no eager PRNG compiles, and a nonzero bias)."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    specs, state = jax.eval_shape(layer.init, jax.random.key(seed), x)
    params = {name: jnp.asarray(rng.normal(size=spec.shape), spec.dtype) for name, spec in specs.items()}
    return params, state, x


def _check_against_reference(layer, shape, kernel_size, strides, padding, dilation, groups):
    params, state, x = _setup(layer, shape)
    y, new_state = layer.apply(params, state, x)
    n = len(kernel_size)
    expected = reference_conv(
        x,
        params["kernel"],
        params["bias"],
        strides if isinstance(strides, tuple) else (strides,) * n,
        padding,
        dilation if isinstance(dilation, tuple) else (dilation,) * n,
        groups,
    )
    assert new_state == {}
    chex.assert_shape(y, expected.shape)
    chex.assert_trees_all_close(y, expected.astype(np.float32), **TOL)


CASES_1D = [
    # (in_channels, features, kernel, strides, padding, dilation, groups)
    (3, 4, 3, 1, "SAME", 1, 1),
    (3, 4, 4, 2, "SAME", 1, 1),  # even kernel: SAME pads more at the high end
    (3, 4, 3, 3, "SAME", 2, 1),
    (3, 4, 3, 2, "VALID", 2, 1),
    (4, 6, 2, 1, "VALID", 1, 2),
    (3, 2, 3, 2, ((2, 1),), 1, 1),
    (4, 8, 3, 1, 1, 3, 4),  # depthwise with channel multiplier 2, int padding
]


@pytest.mark.parametrize("cin,features,k,strides,padding,dilation,groups", CASES_1D)
def test_conv1d_matches_reference(cin, features, k, strides, padding, dilation, groups):
    layer = conv1d(features, k, strides=strides, padding=padding, dilation=dilation, feature_group_count=groups)
    _check_against_reference(layer, (2, 11, cin), (k,), strides, padding, dilation, groups)


CASES_2D = [
    ((3, 3), 1, "SAME", 1, 1),
    ((3, 2), (2, 1), "SAME", (1, 2), 1),
    ((2, 3), (1, 2), "VALID", (2, 1), 2),
    ((3, 3), 2, ((1, 0), (2, 2)), 1, 1),
    ((1, 1), 1, "VALID", 1, 2),
]


@pytest.mark.parametrize("kernel_size,strides,padding,dilation,groups", CASES_2D)
def test_conv2d_matches_reference(kernel_size, strides, padding, dilation, groups):
    layer = conv2d(4, kernel_size, strides=strides, padding=padding, dilation=dilation, feature_group_count=groups)
    _check_against_reference(layer, (2, 7, 6, 4), kernel_size, strides, padding, dilation, groups)


def test_conv3d_matches_reference():
    layer = conv(3, (2, 3, 2), strides=(1, 2, 1), padding="SAME", dilation=(2, 1, 1))
    _check_against_reference(layer, (1, 5, 5, 4, 2), (2, 3, 2), (1, 2, 1), "SAME", (2, 1, 1), 1)


def test_same_output_size_is_ceil_of_size_over_stride():
    for size, stride, dilation, k in itertools.product([1, 5, 6, 7], [1, 2, 3], [1, 2], [1, 2, 3]):
        layer = conv1d(2, k, strides=stride, dilation=dilation)
        spec = jax.ShapeDtypeStruct((1, size, 3), jnp.float32)
        params, state = jax.eval_shape(layer.init, jax.random.key(0), spec)
        out, _ = jax.eval_shape(layer.apply, params, state, spec)
        assert out.shape == (1, -(-size // stride), 2), (size, stride, dilation, k)


def test_init_shapes_dtypes_and_eval_shape():
    spec = jax.ShapeDtypeStruct((8, 9, 9, 6), jnp.float32)
    params, state = jax.eval_shape(conv2d(4, (3, 2), feature_group_count=2).init, jax.random.key(0), spec)
    assert (params["kernel"].shape, params["bias"].shape, state) == ((3, 2, 3, 4), (4,), {})
    layer = conv2d(4, 3, use_bias=False, dtype=jnp.bfloat16)
    params, _ = jax.jit(layer.init)(jax.random.key(0), jnp.ones((1, 5, 5, 2)))
    assert set(params) == {"kernel"} and params["kernel"].dtype == jnp.bfloat16
    # Glorot uniform over the [h, w, in, out] layout: fan_in = 3 * 3 * 2, fan_out = 3 * 3 * 4; the 72 draws
    # reach past half the bound; 2**-8 allows for bfloat16 rounding.
    bound = (6 / (18 + 36)) ** 0.5
    assert bound / 2 < float(jnp.abs(params["kernel"]).max()) <= bound * (1 + 2**-8)
    y, _ = layer.apply(params, {}, jnp.ones((1, 5, 5, 2)))
    assert y.dtype == jnp.float32  # bfloat16 params with float32 inputs compute in float32


def test_no_bias_matches_reference():
    layer = conv1d(3, 3, use_bias=False)
    params, state, x = _setup(layer, (2, 6, 2))
    expected = reference_conv(x, params["kernel"], 0.0, (1,), "SAME", (1,), 1)
    chex.assert_trees_all_close(layer.apply(params, state, x)[0], expected.astype(np.float32), **TOL)


def test_gradients():
    layer = conv2d(2, 2, strides=(2, 1), dilation=(1, 2), padding=((1, 0), (0, 1)), feature_group_count=2)
    params, state, x = _setup(layer, (1, 4, 4, 2))
    # check_grads' float32 default tolerances; a bilinear op, so order 2 also checks the Hessian-vector products.
    check_grads(jax.jit(lambda p, x: layer.apply(p, state, x)[0]), (params, x), order=2, modes=["rev"])


def test_jit_matches_eager_and_does_not_retrace():
    layer = conv2d(3, 3, strides=2)
    params, state, x = _setup(layer, (2, 6, 6, 2))
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(params, x):
        return layer.apply(params, state, x)[0]

    chex.assert_trees_all_close(forward(params, x), layer.apply(params, state, x)[0], **TOL)
    chex.assert_trees_all_close(forward(params, 2 * x), layer.apply(params, state, 2 * x)[0], **TOL)


def test_vmap_over_examples_equals_batched_apply():
    layer = conv1d(4, 3, strides=2, padding="VALID")
    params, state, x = _setup(layer, (5, 9, 3))
    per_example = jax.vmap(lambda xi: layer.apply(params, state, xi[None])[0][0])(x)
    chex.assert_trees_all_close(per_example, layer.apply(params, state, x)[0], **TOL)


def test_positional_names_in_serial():
    model = serial(conv2d(4, 3), conv2d(2, 3), conv(2, (3, 3)))
    spec = jax.ShapeDtypeStruct((1, 5, 5, 3), jnp.float32)
    params, _ = jax.eval_shape(model.init, jax.random.key(0), spec)
    assert list(params) == ["conv2d_0", "conv2d_1", "conv_0"]
    with pytest.raises(ShapeError, match=r"^at conv2d_0: expected 3 input channels \(last axis\), got \(1, 5, 5, 4\)"):
        jax.eval_shape(model.apply, params, {}, jax.ShapeDtypeStruct((1, 5, 5, 4), jnp.float32))


def test_input_errors():
    layer = conv2d(4, 3)
    params, state, _ = _setup(layer, (1, 5, 5, 3))
    rank = r"^at conv2d: expected input of rank 4 \(\[batch, height, width, channels\]\), got \(5, 5, 3\) float32\."
    with pytest.raises(ShapeError, match=rank + " Fix: add a batch axis"):
        layer.apply(params, state, jnp.ones((5, 5, 3)))
    with pytest.raises(ShapeError, match=r"expected input of rank 3 \(\[batch, length, channels\]\)"):
        conv1d(4, 3).init(jax.random.key(0), jnp.ones((1, 5, 5, 3)))
    with pytest.raises(ShapeError, match=r"expected 3 input channels \(last axis\), got \(1, 5, 5, 2\) float32"):
        layer.apply(params, state, jnp.ones((1, 5, 5, 2)))
    with pytest.raises(DTypeError, match=r"^at conv2d: expected a floating-point input, got \(1, 5, 5, 3\) int32"):
        layer.apply(params, state, jnp.ones((1, 5, 5, 3), jnp.int32))
    with pytest.raises(ShapeError, match=r"divisible by feature_group_count=2, got \(1, 5, 5, 3\) float32"):
        conv2d(4, 3, feature_group_count=2).init(jax.random.key(0), jnp.ones((1, 5, 5, 3)))
    with pytest.raises(ShapeError, match=r"smaller than the window \(5, 3\)"):
        conv2d(4, 3, padding="VALID", dilation=(2, 1)).init(jax.random.key(0), jnp.ones((1, 4, 4, 3)))


def test_params_from_another_model():
    params, state, _ = _setup(conv2d(4, 3), (1, 5, 5, 3))
    with pytest.raises(ParamsError, match=r"kernel should be \[3, 3, in, 8\], got \(3, 3, 3, 4\) float32"):
        conv2d(8, 3, use_bias=False).apply({"kernel": params["kernel"]}, state, jnp.ones((1, 5, 5, 3)))
    with pytest.raises(ParamsError, match=r"expected keys \['kernel'\], got \['bias', 'kernel'\]"):
        conv2d(4, 3, use_bias=False).apply(params, state, jnp.ones((1, 5, 5, 3)))
    with pytest.raises(ParamsError, match=r"'bias' should have shape \(8,\)"):
        conv2d(8, 3).apply(params, state, jnp.ones((1, 5, 5, 3)))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: conv2d(0, 3), "features must be a positive int"),
        (lambda: conv(4, 3), "kernel_size must be a sequence with one size per spatial axis"),
        (lambda: conv2d(4, (3, 3, 3)), "kernel_size must be a positive int or 2 positive ints"),
        (lambda: conv2d(4, 3, strides=(1, 2, 1)), "strides must be a positive int or 2 positive ints"),
        (lambda: conv1d(4, 3, dilation=0), "dilation must be a positive int or 1 positive ints"),
        (lambda: conv2d(4, 3, padding="FULL"), "padding must be 'SAME', 'VALID'"),
        (lambda: conv2d(4, 3, padding=((1, 1),)), r"2 \(low, high\) pairs"),
        (lambda: conv2d(4, 3, padding=-1), r"2 \(low, high\) pairs"),
        (lambda: conv2d(4, 3, feature_group_count=3), "feature_group_count must be a positive int that divides"),
        (lambda: conv2d(4, 3, unknown=1), r"conv2d\(\) got an unexpected keyword argument 'unknown'"),
    ],
)
def test_bad_hyper_parameters_fail_at_construction(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# --- compute_dtype: bfloat16 operands, float32 products -----------------------------------------

MIXED_CASES = [
    # (factory, features, kernel_size, strides, padding, dilation, groups, input shape): transposes differ with each
    (conv1d, 8, (3,), (1,), 1, (3,), 4, (2, 11, 4)),
    (conv1d, 4, (4,), (2,), "SAME", (1,), 1, (2, 11, 3)),
    (conv2d, 4, (3, 2), (2, 1), "SAME", (1, 2), 1, (2, 7, 6, 4)),
    (conv2d, 4, (3, 3), (3, 3), "VALID", (1, 1), 2, (2, 8, 7, 4)),  # strides skip the last rows: negative pads
    (conv2d, 4, (3, 3), (2, 2), ((1, 0), (2, 2)), (1, 1), 1, (2, 7, 6, 4)),
    (conv, 3, (2, 3, 2), (1, 2, 1), "SAME", (2, 1, 1), 1, (1, 5, 5, 4, 2)),
]
# float32 sums of products of bfloat16 operands: each product is exact in float32 (8 x 8 significant
# bits), so only the float32 accumulation of <= 36 terms differs from the float64 reference (~1e-6).
EXACT = {"rtol": 1e-5, "atol": 1e-5}
# Against the float32 layer: each operand is off by <= 2^-9 relative, each product by <= ~2^-8, and the
# random-sign errors partly cancel over the window: ~0.2-0.3% relative (the norm of the difference over the
# norm of the result). 1e-2 leaves room; above 1e-5 shows that something was rounded.
BF16 = 1e-2


def rounded(a):
    """``a`` rounded to bfloat16 by hand, back in float32 (exact: bfloat16 is a truncated float32)."""
    return jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32)


def relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("make,features,kernel_size,strides,padding,dilation,groups,shape", MIXED_CASES)
def test_bfloat16_compute_dtype_is_float32_products_of_rounded_operands(
    make, features, kernel_size, strides, padding, dilation, groups, shape
):
    hyper = {"strides": strides, "padding": padding, "dilation": dilation, "feature_group_count": groups}
    mixed, full = make(features, kernel_size, compute_dtype="bfloat16", **hyper), make(features, kernel_size, **hyper)
    params, state, x = _setup(full, shape)
    y, pull = jax.vjp(jax.jit(lambda p, x: mixed.apply(p, state, x)[0]), params, x)
    g = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), jnp.float32)
    d_params, d_x = pull(g)
    assert y.dtype == d_x.dtype == d_params["kernel"].dtype == d_params["bias"].dtype == jnp.float32

    # The output: the NumPy loop on the rounded operands, in float64.
    expected = reference_conv(rounded(x), rounded(params["kernel"]), params["bias"], strides, padding, dilation, groups)
    chex.assert_trees_all_close(y, expected.astype(np.float32), **EXACT)
    # The gradients: the float32 layer's, at the rounded operands, of the rounded cotangent (as precision.matmul
    # rounds it); the bias is added in float32 after the convolution, so its gradient sums the cotangent as is.
    with jax.default_matmul_precision("float32"):
        _, pull_rounded = jax.vjp(lambda p, x: full.apply(p, state, x)[0], jax.tree.map(rounded, params), rounded(x))
        want_params, want_x = pull_rounded(rounded(g))
    chex.assert_trees_all_close(d_x, want_x, **EXACT)
    chex.assert_trees_all_close(d_params["kernel"], want_params["kernel"], **EXACT)
    chex.assert_trees_all_close(d_params["bias"], g.sum(axis=tuple(range(g.ndim - 1))), **EXACT)
    # Close to the float32 layer's output and gradients, but not equal: something was rounded.
    y32, pull32 = jax.vjp(lambda p, x: full.apply(p, state, x)[0], params, x)
    d_params32, d_x32 = pull32(g)
    for got, want in ((y, y32), (d_x, d_x32), (d_params["kernel"], d_params32["kernel"])):
        assert 1e-5 < relative_error(got, want) < BF16


def _equations(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs nested in its equations' params."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def test_bfloat16_gradient_convolutions_run_on_bfloat16_operands():
    # Plain autodiff of conv(x.astype(bf16), w.astype(bf16), preferred_element_type=float32) would run both
    # gradient convolutions on float32 operands (the cotangent unrounded, the bfloat16 operand cast up) and
    # round the gradients to bfloat16 on the way back; the custom VJP runs them as the forward one.
    layer = conv2d(4, 3, strides=2, feature_group_count=2, compute_dtype="bfloat16")
    params, state, x = _setup(layer, (2, 7, 6, 4))
    grad = jax.grad(lambda p, x: layer.apply(p, state, x)[0].sum(), argnums=(0, 1))
    convs = [e for e in _equations(jax.make_jaxpr(grad)(params, x).jaxpr) if e.primitive.name == "conv_general_dilated"]
    assert len(convs) == 3  # forward, input gradient, kernel gradient
    for eqn in convs:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2
        assert [v.aval.dtype for v in eqn.outvars] == [jnp.float32]


def test_bfloat16_params_keep_their_dtype_in_gradients_and_float32_compute_dtype_is_plain():
    layer = conv1d(3, 3, dtype=jnp.bfloat16, compute_dtype="bfloat16")
    params, state = layer.init(jax.random.key(0), jnp.ones((2, 6, 2)))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 2)), jnp.float32)
    d_params, d_x = jax.grad(lambda p, x: layer.apply(p, state, x)[0].sum(), argnums=(0, 1))(params, x)
    assert layer.apply(params, state, x)[0].dtype == d_x.dtype == jnp.float32  # the input's dtype
    assert d_params["kernel"].dtype == d_params["bias"].dtype == jnp.bfloat16  # the params' dtype
    # compute_dtype equal to the operands' dtype: nothing to round, the plain convolution (forward mode too).
    full, same = conv1d(3, 3), conv1d(3, 3, compute_dtype="float32")
    params32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    chex.assert_trees_all_equal(same.apply(params32, state, x), full.apply(params32, state, x))
    jax.jvp(lambda x: same.apply(params32, state, x)[0], (x,), (x,))


@pytest.mark.parametrize("make", [conv, conv1d, conv2d], ids=lambda f: f.__name__)
def test_bad_compute_dtype_names_the_factory(make):
    kernel_size = (3,) if make is conv else 3
    expected = rf"^{make.__name__}: compute_dtype must be a floating dtype such as 'bfloat16', got 'int32'$"
    with pytest.raises(TypeError, match=expected):
        make(4, kernel_size, compute_dtype="int32")


@pytest.mark.parametrize("make", [conv, conv1d, conv2d], ids=lambda f: f.__name__)
def test_unknown_keyword_names_the_public_factory(make):
    with pytest.raises(TypeError, match=rf"^{make.__name__}\(\) got an unexpected keyword argument 'stride'") as e:
        make(4, (3,), stride=2)
    assert make is conv or "it takes ['strides', 'padding'" in str(e.value)
