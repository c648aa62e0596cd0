"""Recurrent cells: one step of a recurrence, ``((carry, y), state) = cell.apply(params, state, carry, x)``.

A cell maps one time step's input ``x: [*batch, features]`` and the carry (``[*batch, hidden]``
arrays) to the next carry and an output ``y: [*batch, hidden]``. ``rnn(cell)`` in
``funcnet.layers.recurrent`` runs it over ``[batch, time, features]`` with ``lax.scan``.

Params are dicts with one block per gate along the last axis: ``w_ih: [features, gates * hidden]``
(input kernel), ``w_hh: [hidden, gates * hidden]`` (recurrent kernel), ``b: [gates * hidden]``.
Each gate block is initialized on its own: the input kernel with ``kernel_init`` (Glorot uniform by
default) on ``[features, hidden]``, the recurrent kernel with ``recurrent_init`` (orthogonal by
default) on ``[hidden, hidden]``, so every gate starts with an orthogonal recurrent map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .. import initializers
from ..errors import ParamsError, ShapeError, check_floating, check_last_axis, check_params, check_rank, describe
from ..initializers import Initializer
from ..precision import compute_dtype_of, matmul
from .embed import rows_spec
from .lstm_scan import check_forward_mode, lstm_scan


class LSTMCarry(NamedTuple):
    """The LSTM's carry: hidden output ``h`` and memory cell ``c``.

    Example:
      >>> import jax.numpy as jnp
      >>> carry = LSTMCarry(h=jnp.zeros((2, 8)), c=jnp.zeros((2, 8)))
      >>> carry.h.shape
      (2, 8)
    """

    h: jax.Array  # [*batch, hidden]
    c: jax.Array  # [*batch, hidden]


class Cell(NamedTuple):
    """One step of a recurrence: a model over the inputs ``(carry, x)`` with outputs ``(carry, y)``.

    A cell keeps the model contract (``funcnet.core``: ``init`` and ``apply`` take and return what
    a ``Model``'s do, so ``summary``, ``init_child`` and ``apply_child`` work on it), plus
    ``initial_carry``, as Haiku's ``RNNCore`` and Flax's ``RNNCellBase`` are modules with an initial
    state. ``rnn(cell)`` runs it over sequences.

    Attributes:
      init: ``(key, carry, x) -> (params, state)``; ``x`` is one step's input ``[*batch, features]``,
        ``carry`` like ``initial_carry(x.shape[:-1])`` (arrays or ``jax.ShapeDtypeStruct``).
      apply: ``(params, state, carry, x, *, key=None, train=False) -> ((carry, y), state)``.
      initial_carry: ``(batch_shape, dtype=jnp.float32) -> carry`` of zeros.
      name: type name used for positional child names (``"lstm"`` -> ``"lstm_0"``).
      scan: optional whole-sequence implementation, ``(params, state, xs, carry, lengths=None, *,
        reverse=False, unroll=1, key=None, train=False) -> ((carry, ys), state)`` with ``xs: [batch,
        time, features]`` and ``ys: [batch, time, hidden]``: the same function as scanning ``apply``
        with ``rnn``'s rules for ``lengths`` and ``reverse``, computed faster. ``rnn`` uses it when
        the inputs, params and carry share one dtype; ``lstm_cell`` has one (``lstm_scan``). ``xs``
        may be ``Embedded`` rows (``funcnet.layers.embed``), which it must accept.

    Example (the ``lax.scan`` that ``rnn`` runs, time-major):
      >>> import jax, jax.numpy as jnp
      >>> cell = lstm_cell(8)
      >>> xs = jnp.ones((5, 2, 3))  # [time, batch, features]
      >>> params, state = cell.init(jax.random.key(0), cell.initial_carry((2,)), xs[0])
      >>> def step(carry, x):
      ...     (carry, y), _ = cell.apply(params, state, carry, x)
      ...     return carry, y
      >>> carry, ys = jax.lax.scan(step, cell.initial_carry((2,)), xs)
      >>> ys.shape, carry.c.shape
      ((5, 2, 8), (2, 8))
    """

    init: Callable[..., Any]
    apply: Callable[..., Any]
    initial_carry: Callable[..., Any]
    name: str = "cell"
    scan: Callable[..., Any] | None = None


def _check_hidden(layer: str, hidden: int) -> None:
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
        raise ValueError(f"{layer}: hidden must be a positive int, got {hidden!r}")


def _bias(b: jax.Array, like: jax.Array) -> jax.Array:
    """``b: [n]`` reshaped to broadcast explicitly against ``like: [*batch, n]``."""
    return b.reshape((1,) * (like.ndim - 1) + (-1,))


def _gated_cell(
    name: str,
    hidden: int,
    gates: int,
    step: Callable[..., Any],
    make_carry: Callable[[jax.Array], Any],
    carry_arrays: Callable[[Any], tuple[jax.Array, ...]],
    bias_init: Callable[[Any], dict[str, jax.Array]] | None,
    bias_shapes: dict[str, tuple[int, ...]],
    kernel_init: Initializer | None,
    recurrent_init: Initializer | None,
    dtype: Any,
    sequence: Callable[..., Any] | None = None,
) -> Cell:
    """A cell with params ``w_ih [F, gates*H]``, ``w_hh [H, gates*H]`` plus biases from ``bias_init``.

    ``step(params, carry, x) -> (carry, y)`` is the cell's equation on validated inputs;
    ``bias_init(dtype)`` makes the biases, of shapes ``bias_shapes``; ``carry_arrays(carry)`` lists
    the carry's arrays (raising ShapeError if the carry has the wrong structure).
    ``sequence(params, xs, carry, lengths, reverse, unroll) -> (carry, ys)``, if given, is the same
    equation over ``xs: [batch, time, features]`` on validated inputs (the cell's ``scan``).
    """
    _check_hidden(name, hidden)
    kernel_init = kernel_init or initializers.glorot_uniform()
    recurrent_init = recurrent_init or initializers.orthogonal()

    def init(key, carry, x):
        check_rank(name, x, 1, what="[*batch, features]")
        check_floating(name, x)
        check_carry(carry, x)
        param_dtype = dtype or x.dtype
        input_keys = jax.random.split(jax.random.fold_in(key, 0), gates)
        recurrent_keys = jax.random.split(jax.random.fold_in(key, 1), gates)
        # Drawn in at least float32, then cast: the orthogonal init's QR has no bfloat16 kernel on CPU.
        draw_dtype = jnp.promote_types(param_dtype, jnp.float32)

        def blocks(initializer, keys, rows):
            return jnp.concatenate([initializer(k, (rows, hidden), draw_dtype) for k in keys], -1).astype(param_dtype)

        params = {
            "w_ih": blocks(kernel_init, input_keys, x.shape[-1]),
            "w_hh": blocks(recurrent_init, recurrent_keys, hidden),
        }
        if bias_init is not None:
            params.update(bias_init(param_dtype))
        return params, {}

    def check(params, state, carry, x):
        """Raises unless ``params``, ``state`` and ``carry`` fit one step's input ``x: [*batch, features]``."""
        if state:
            raise ParamsError(name, f"{name} has no state, got {sorted(state)}. Fix: pass the state init returned.")
        expected: dict[str, Any] = {"w_ih": None, "w_hh": (hidden, gates * hidden)}
        if bias_init is not None:
            expected.update(bias_shapes)
        check_params(name, params, expected)
        w_ih = params["w_ih"]
        if w_ih.ndim != 2 or w_ih.shape[1] != gates * hidden:
            raise ParamsError(
                name,
                f"params do not belong to this model: w_ih should be [in, {gates * hidden}], got {describe(w_ih)}.",
            )
        check_floating(name, x)
        check_last_axis(name, x, w_ih.shape[0])
        check_carry(carry, x)

    def check_carry(carry, x):
        want = (*x.shape[:-1], hidden)
        for h in carry_arrays(carry):
            if getattr(h, "shape", None) != want:
                raise ShapeError(
                    name,
                    f"expected carry arrays of shape {want} ([*batch, hidden] for input {describe(x)}), got "
                    f"{describe(h)}. Fix: start from cell.initial_carry({x.shape[:-1]}).",
                )

    def apply(params, state, carry, x, *, key=None, train=False):
        del key, train
        check(params, state, carry, x)
        return step(params, carry, x), state

    def scan(params, state, xs, carry, lengths=None, *, reverse=False, unroll=1, key=None, train=False):
        del key, train
        check_rank(name, rows_spec(xs), 3, 3, what="[batch, time, features]")
        check(params, state, carry, jax.ShapeDtypeStruct((xs.shape[0], xs.shape[2]), xs.dtype))
        return sequence(params, xs, carry, lengths, reverse, unroll), state

    def initial_carry(batch_shape, dtype=jnp.float32):
        return make_carry(jnp.zeros((*tuple(batch_shape), hidden), dtype))

    return Cell(init, apply, initial_carry, name, None if sequence is None else scan)


def simple_rnn_cell(
    hidden: int,
    *,
    activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
    use_bias: bool = True,
    kernel_init: Initializer | None = None,
    recurrent_init: Initializer | None = None,
    dtype: Any = None,
) -> Cell:
    """The Elman cell: ``h' = activation(x @ w_ih + h @ w_hh + b)``, ``y = h'``; the carry is ``h``.

    Args:
      hidden: size of the carry and of the output.
      activation: the nonlinearity (``tanh`` by default).
      use_bias: add the learned bias ``b: [hidden]`` (initialized to zeros).
      kernel_init: initializer of ``w_ih: [features, hidden]`` (Glorot uniform by default).
      recurrent_init: initializer of ``w_hh: [hidden, hidden]`` (orthogonal by default).
      dtype: params dtype; defaults to the input's dtype.

    Returns:
      A Cell named ``"simple_rnn"`` whose carry is the array ``h: [*batch, hidden]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> cell = simple_rnn_cell(4)
      >>> params, state = cell.init(jax.random.key(0), cell.initial_carry((2,)), jnp.ones((2, 3)))
      >>> (h, y), state = cell.apply(params, state, cell.initial_carry((2,)), jnp.ones((2, 3)))
      >>> h.shape, bool((h == y).all())
      ((2, 4), True)
    """

    def step(params, h, x):
        z = x @ params["w_ih"] + h @ params["w_hh"]
        if use_bias:
            z = z + _bias(params["b"], z)
        h = activation(z)
        return h, h

    def bias_init(dt):
        return {"b": jnp.zeros((hidden,), dt)}

    return _gated_cell(
        "simple_rnn",
        hidden,
        1,
        step,
        lambda h: h,
        lambda h: (h,),
        bias_init if use_bias else None,
        {"b": (hidden,)},
        kernel_init,
        recurrent_init,
        dtype,
    )


def lstm_cell(
    hidden: int,
    *,
    forget_bias: float = 1.0,
    use_bias: bool = True,
    kernel_init: Initializer | None = None,
    recurrent_init: Initializer | None = None,
    dtype: Any = None,
    compute_dtype: Any = None,
    forward_mode: bool = False,
) -> Cell:
    """The LSTM cell (Hochreiter & Schmidhuber 1997, with a forget gate), gates in the order i, f, g, o.

    With ``z = x @ w_ih + h @ w_hh + b`` split into four ``[*batch, hidden]`` blocks ``z_i, z_f,
    z_g, z_o`` (PyTorch's order)::

        i = sigmoid(z_i)   f = sigmoid(z_f)   g = tanh(z_g)   o = sigmoid(z_o)
        c' = f * c + i * g
        h' = o * tanh(c')           y = h'

    ``forget_bias`` is the INITIAL value of the forget gate's block of ``b`` (the other blocks start
    at zero), like Keras' ``unit_forget_bias``: it is learned afterwards, and nothing is added at
    apply time. With ``use_bias=False`` there is no bias and ``forget_bias`` is unused.

    Args:
      hidden: size of ``h``, ``c`` and of the output.
      forget_bias: initial forget-gate bias (1.0 keeps memory flowing early in training).
      use_bias: learn ``b: [4 * hidden]``.
      kernel_init: initializer of each gate's ``[features, hidden]`` block of ``w_ih`` (Glorot uniform).
      recurrent_init: initializer of each gate's ``[hidden, hidden]`` block of ``w_hh`` (orthogonal).
      dtype: params dtype; defaults to the input's dtype.
      compute_dtype: the matmuls' operand dtype, e.g. ``"bfloat16"``: mixed precision, products,
        states, params and gradients in the params' dtype (``funcnet.precision``; reverse-mode
        derivatives only). ``None``: plain matmuls in the params' dtype.
      forward_mode: the whole-sequence path's derivative (see ``funcnet.layers.lstm_scan``). False:
        a custom VJP, the fastest gradient, for reverse mode only (``jax.grad``, ``jax.vjp``, grad of
        grad); ``jax.jvp`` through it raises JAX's "can't apply forward-mode autodiff (jvp) to a
        custom_vjp function". True: a custom JVP that ``jax.jvp``, ``jax.jacfwd`` and
        ``jax.hessian`` also differentiate, with a slower gradient on CPU (``funcnet_jvp`` in
        ``experiments/bench/charlstm.py``); no ``compute_dtype``.

    Returns:
      A Cell named ``"lstm"`` with params ``w_ih: [features, 4H]``, ``w_hh: [H, 4H]``, ``b: [4H]``
      and carry ``LSTMCarry(h, c)``. Its ``scan`` is ``funcnet.layers.lstm_scan.lstm_scan``: ``rnn``
      runs the whole sequence with it, whose gradient is much cheaper than autodiff of the scanned step.

    Raises:
      TypeError: ``compute_dtype`` is not a floating dtype.
      ValueError: ``forward_mode`` with a ``compute_dtype`` other than ``dtype``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> cell = lstm_cell(3)
      >>> params, state = cell.init(jax.random.key(0), cell.initial_carry((2,)), jnp.ones((2, 5)))
      >>> params["w_ih"].shape, params["w_hh"].shape, params["b"].tolist()
      ((5, 12), (3, 12), [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    """

    cd = compute_dtype_of("lstm", compute_dtype)
    if dtype is not None:
        check_forward_mode(cd, forward_mode, jnp.dtype(dtype))

    def step(params, carry, x):
        h, c = carry
        z = matmul(x, params["w_ih"], cd) + matmul(h, params["w_hh"], cd)
        if use_bias:
            z = z + _bias(params["b"], z)
        z_i, z_f, z_g, z_o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(z_f) * c + jax.nn.sigmoid(z_i) * jnp.tanh(z_g)
        h = jax.nn.sigmoid(z_o) * jnp.tanh(c)
        return LSTMCarry(h, c), h

    def bias_init(dt):
        zeros = jnp.zeros((hidden,), dt)
        return {"b": jnp.concatenate([zeros, jnp.full((hidden,), forget_bias, dt), zeros, zeros])}

    def sequence(params, xs, carry, lengths, reverse, unroll):
        ys, (h, c) = lstm_scan(
            params,
            xs,
            tuple(carry),
            lengths,
            reverse=reverse,
            unroll=unroll,
            compute_dtype=cd,
            forward_mode=forward_mode,
        )
        return LSTMCarry(h, c), ys

    return _gated_cell(
        "lstm",
        hidden,
        4,
        step,
        lambda h: LSTMCarry(h, h),
        _lstm_carry_arrays,
        bias_init if use_bias else None,
        {"b": (4 * hidden,)},
        kernel_init,
        recurrent_init,
        dtype,
        sequence,
    )


def _lstm_carry_arrays(carry: Any) -> tuple[jax.Array, ...]:
    if not (isinstance(carry, tuple) and len(carry) == 2):
        raise ShapeError(
            "lstm", f"expected the carry LSTMCarry(h, c), got {describe(carry)}. Fix: start from cell.initial_carry."
        )
    return tuple(carry)


def gru_cell(
    hidden: int,
    *,
    use_bias: bool = True,
    kernel_init: Initializer | None = None,
    recurrent_init: Initializer | None = None,
    dtype: Any = None,
) -> Cell:
    """The GRU cell as in PyTorch and cuDNN (Cho et al. 2014; reset gate applied after the matmul).

    Gates in the order r, z, n. With ``a = x @ w_ih + b`` and ``u = h @ w_hh``, each split into
    three ``[*batch, hidden]`` blocks::

        r = sigmoid(a_r + u_r)            z = sigmoid(a_z + u_z)
        n = tanh(a_n + r * (u_n + b_hn))
        h' = (1 - z) * n + z * h           y = h'

    ``b: [3H]`` holds the input-side biases of all gates (PyTorch's ``b_ih``; the recurrent
    biases of r and z would only add to it) and ``b_hn: [H]`` the recurrent bias of the candidate,
    which sits inside the reset gate (PyTorch's ``b_hh[2H:]``). Both start at zero. Converting
    PyTorch weights: ``w_ih = weight_ih.T``, ``w_hh = weight_hh.T``, ``b = b_ih + [b_hr, b_hz, 0]``.

    Args:
      hidden: size of the carry and of the output.
      use_bias: learn ``b`` and ``b_hn``.
      kernel_init: initializer of each gate's ``[features, hidden]`` block of ``w_ih`` (Glorot uniform).
      recurrent_init: initializer of each gate's ``[hidden, hidden]`` block of ``w_hh`` (orthogonal).
      dtype: params dtype; defaults to the input's dtype.

    Returns:
      A Cell named ``"gru"`` with params ``w_ih: [features, 3H]``, ``w_hh: [H, 3H]``, ``b: [3H]``,
      ``b_hn: [H]`` and carry the array ``h: [*batch, hidden]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> cell = gru_cell(4)
      >>> params, state = cell.init(jax.random.key(0), cell.initial_carry((2,)), jnp.ones((2, 3)))
      >>> sorted(params), params["w_hh"].shape
      (['b', 'b_hn', 'w_hh', 'w_ih'], (4, 12))
    """

    def step(params, h, x):
        a = x @ params["w_ih"]
        u = h @ params["w_hh"]
        if use_bias:
            a = a + _bias(params["b"], a)
        a_r, a_z, a_n = jnp.split(a, 3, axis=-1)
        u_r, u_z, u_n = jnp.split(u, 3, axis=-1)
        if use_bias:
            u_n = u_n + _bias(params["b_hn"], u_n)
        r = jax.nn.sigmoid(a_r + u_r)
        z = jax.nn.sigmoid(a_z + u_z)
        n = jnp.tanh(a_n + r * u_n)
        h = (1 - z) * n + z * h
        return h, h

    def bias_init(dt):
        return {"b": jnp.zeros((3 * hidden,), dt), "b_hn": jnp.zeros((hidden,), dt)}

    return _gated_cell(
        "gru",
        hidden,
        3,
        step,
        lambda h: h,
        lambda h: (h,),
        bias_init if use_bias else None,
        {"b": (3 * hidden,), "b_hn": (hidden,)},
        kernel_init,
        recurrent_init,
        dtype,
    )
