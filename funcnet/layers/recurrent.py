"""Recurrent layers: a cell (one step) run over ``[batch, time, features]`` with ``lax.scan``.

A recurrence is a loop whose state is the carry. The plain recurrence ``y_t = y_{t-1} + x_t W``
of the lecture is one ``lax.scan``: the step takes the carry and one time step's input and
returns the new carry and that step's output; scan stacks the outputs along a new leading axis.

>>> import jax.numpy as jnp
>>> from jax import lax
>>> W = jnp.array([[1.0], [2.0]])  # [features, hidden]
>>> xs = jnp.ones((4, 2))  # [time, features]
>>> def step(y, x):  # carry y: [hidden], x: [features]
...     y = y + x @ W
...     return y, y  # (next carry, this step's output)
>>> y_last, ys = lax.scan(step, jnp.zeros(1), xs)
>>> ys[:, 0]
Array([ 3.,  6.,  9., 12.], dtype=float32)

``rnn(cell)`` is the same loop with a learned cell (``lstm_cell``, ``gru_cell``,
``simple_rnn_cell`` from ``funcnet.layers.cells``), a batch axis, per-sequence lengths and
reversal; ``bidirectional`` and ``stacked_rnn`` build on it. Inside, the scan runs time-major::

    carry = initial_carry                         # [batch, hidden] arrays
    for t in range(time):                          # reversed if reverse=True
        new_carry, y = cell(carry, xs[:, t])       # xs[:, t]: [batch, features]
        valid = t < lengths                        # [batch]
        carry = where(valid, new_carry, carry)     # frozen past each sequence's end
        ys[:, t] = where(valid, y, 0)              # exactly zero past the end

A cell may also carry a whole-sequence implementation of that loop (``Cell.scan``); ``rnn`` then
uses it instead. ``lstm_cell`` has one (``funcnet.layers.lstm_scan``): the same function, with a
custom derivative whose backward loop computes no weight gradient per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ..children import apply_child, check_children, child_output_spec, init_child, put
from ..core import Model
from ..errors import DTypeError, ParamsError, ShapeError, check_floating, check_rank, describe
from ._scan import unroll_for
from ._sharding import reshard_like
from .cells import Cell
from .dropout import dropout as dropout_layer
from .embed import Embedded, rows_spec


def reverse_sequences(xs: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    """Reverses each sequence of ``xs: [batch, time, ...]`` within its length; padding stays in place.

    ``out[b, t] = xs[b, lengths[b] - 1 - t]`` for ``t < lengths[b]`` and ``xs[b, t]`` after it
    (lengths are clipped to ``[0, time]``). Without lengths it is ``jnp.flip(xs, 1)``. Applying it
    twice gives ``xs`` back. For ``Embedded`` rows (``embed(..., deferred=True)``) it reorders the ids.

    Example:
      >>> import jax.numpy as jnp
      >>> xs = jnp.array([[1, 2, 3, 0], [1, 2, 3, 4]])[..., None]
      >>> reverse_sequences(xs, jnp.array([3, 4]))[..., 0]
      Array([[3, 2, 1, 0],
             [4, 3, 2, 1]], dtype=int32)
    """
    if isinstance(xs, Embedded):  # the same rows, reordered: reorder the ids
        return Embedded(xs.table, reverse_sequences(xs.ids, lengths))
    if lengths is None:
        return jnp.flip(xs, 1)
    t = jnp.arange(xs.shape[1])[None, :]  # [1, time]
    n = jnp.clip(lengths, 0, xs.shape[1])[:, None]  # [batch, 1]
    index = jnp.where(t < n, n - 1 - t, t)  # [batch, time]
    return jax.vmap(lambda x, i: x[i])(xs, index)


def _check_sequences(layer: str, xs: Any, lengths: Any) -> None:
    xs = rows_spec(xs)
    check_rank(layer, xs, 3, 3, what="[batch, time, features]")
    check_floating(layer, xs)
    if lengths is None:
        return
    if not (hasattr(lengths, "shape") and hasattr(lengths, "dtype")) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise DTypeError(layer, f"expected integer lengths, got {describe(lengths)}. Fix: lengths.astype(jnp.int32).")
    if tuple(lengths.shape) != xs.shape[:1]:
        raise ShapeError(
            layer,
            f"expected lengths of shape {xs.shape[:1]} (one per sequence of xs {describe(xs)}), got "
            f"{describe(lengths)}.",
        )


def _step_spec(xs: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((xs.shape[0], xs.shape[2]), xs.dtype)


def _carry_spec(cell: Cell, batch: int) -> Any:
    return jax.eval_shape(lambda: cell.initial_carry((batch,)))


def _check_params_fit(cell: Cell, params: Any, xs: Any) -> None:
    """Raises unless ``params`` have the structure and shapes ``cell.init`` makes for this input."""
    want, _ = jax.eval_shape(
        lambda c, x: cell.init(jax.random.key(0), c, x), _carry_spec(cell, xs.shape[0]), _step_spec(xs)
    )
    want_leaves, want_tree = jax.tree_util.tree_flatten_with_path(want)
    got_leaves, got_tree = jax.tree_util.tree_flatten_with_path(params)
    if want_tree != got_tree:
        raise ParamsError(
            "rnn",
            f"params do not belong to this model: expected {jax.tree.map(describe, want)}, got "
            f"{jax.tree.map(describe, params)}. Fix: pass the params returned by this model's init.",
        )
    for (path, w), (_, g) in zip(want_leaves, got_leaves, strict=True):
        if tuple(w.shape) != tuple(getattr(g, "shape", ())):
            name = "/".join(str(getattr(p, "key", p)) for p in path)
            raise ShapeError(
                "rnn",
                f"input {describe(xs)} does not fit the params: {name!r} is {describe(g)}, this input "
                f"needs {tuple(w.shape)}. Fix: feed inputs with the feature size the {cell.name} cell was "
                "initialized with, or re-initialize it with this input.",
            )


def _check_carry(layer: str, cell: Cell, carry: Any, batch: int) -> Any:
    """Returns ``carry`` in the structure of ``cell.initial_carry((batch,))``, or raises ShapeError."""
    want = jax.eval_shape(lambda: cell.initial_carry((batch,)))
    want_leaves, want_tree = jax.tree.flatten(want)
    got_leaves = jax.tree.leaves(carry)
    shapes = [tuple(getattr(g, "shape", ())) for g in got_leaves]
    if shapes != [tuple(w.shape) for w in want_leaves]:
        raise ShapeError(
            layer,
            f"expected initial_carry like {jax.tree.map(lambda s: tuple(s.shape), want)} for batch {batch}, got "
            f"{jax.tree.map(describe, carry)}. Fix: start from cell.initial_carry(({batch},)).",
        )
    return jax.tree.unflatten(want_tree, got_leaves)


def _one_dtype(*trees: Any) -> bool:
    """Whether every array in ``trees`` has the same dtype (a cell's whole-sequence ``scan`` needs it)."""
    return len({jnp.dtype(leaf.dtype) for leaf in jax.tree.leaves(trees)}) == 1


def _expand(mask: jax.Array, like: jax.Array) -> jax.Array:
    """``mask: [batch]`` reshaped to broadcast explicitly against ``like: [batch, ...]``."""
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


def rnn(cell: Cell, *, reverse: bool = False, return_carry: bool = False, unroll: int = 1) -> Model:
    """Runs ``cell`` over the time axis of ``xs: [batch, time, features]`` with ``lax.scan``.

    The cell's params are shared by every step and are the rnn's params as they are (for an LSTM
    ``{"w_ih": [F, 4H], "w_hh": [H, 4H], "b": [4H]}``). ``apply(params, state, xs, lengths=None,
    initial_carry=None, *, key=None, train=False)`` returns ``ys: [batch, time, hidden]``, or
    ``(ys, final_carry)`` when ``return_carry``.

    - ``lengths: int [batch]`` (clipped to ``[0, time]``): past each sequence's end the carry is
      frozen and the outputs are exactly zero, so the final carry is the carry after each
      sequence's own last step and padding never leaks into gradients.
    - ``reverse=True`` reads each sequence backwards within its length (the padding is skipped,
      not read first); outputs stay aligned with the input positions.
    - ``initial_carry`` defaults to zeros (``cell.initial_carry((batch,))``) in the dtype of the
      computation; a given carry keeps its dtype across steps.
    - ``key``: step ``t`` gets ``fold_in(key, t)`` (for cells that use randomness).
    - ``unroll``: steps per scan iteration (2-4 can be faster on CPU; see ``lax.scan``).
    - A cell with a whole-sequence ``scan`` (``lstm_cell``) runs through it when ``xs``, the params
      and the carry share one dtype (the usual case); otherwise the step is scanned as above.
    - ``xs`` may be ``Embedded`` rows (``embed(..., deferred=True)``): ``lstm_cell``'s ``scan`` folds
      the table into its input projection; otherwise the rows are looked up first.

    Raises:
      ShapeError: ``xs`` is not rank 3, its features do not fit the params, or ``lengths`` /
        ``initial_carry`` have the wrong shapes.
      DTypeError: ``xs`` is not floating point, or ``lengths`` is not integer.

    Example:
      >>> import jax, jax.numpy as jnp, funcnet as fn
      >>> from funcnet.layers.cells import lstm_cell
      >>> layer = rnn(lstm_cell(8), return_carry=True)
      >>> xs, lengths = jnp.ones((2, 5, 3)), jnp.array([5, 2])
      >>> params, state = layer.init(jax.random.key(0), xs)
      >>> (ys, carry), state = layer.apply(params, state, xs, lengths)
      >>> ys.shape, carry.h.shape, bool((ys[1, 2:] == 0).all())
      ((2, 5, 8), (2, 8), True)
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"rnn: expected a Cell (e.g. lstm_cell(128)), got {type(cell).__name__}")
    if not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"rnn: unroll must be a positive int, got {unroll!r}")

    def init(key, xs, lengths=None, initial_carry=None):
        _check_sequences("rnn", xs, lengths)
        if initial_carry is not None:
            _check_carry("rnn", cell, initial_carry, xs.shape[0])
        return cell.init(key, _carry_spec(cell, xs.shape[0]), _step_spec(xs))

    def apply(params, state, xs, lengths=None, initial_carry=None, *, key=None, train=False):
        _check_sequences("rnn", xs, lengths)
        _check_params_fit(cell, params, xs)
        batch, time = xs.shape[:2]
        if initial_carry is None:
            dtype = jnp.result_type(xs.dtype, *(p.dtype for p in jax.tree.leaves(params)))
            initial_carry = cell.initial_carry((batch,), dtype)
        else:
            initial_carry = _check_carry("rnn", cell, initial_carry, batch)
        initial_carry = reshard_like(initial_carry, getattr(xs, "ids", xs), axes=1)  # the scan's carry: like xs
        if cell.scan is not None and _one_dtype(rows_spec(xs), params, initial_carry):
            (carry, ys), state = cell.scan(
                params, state, xs, initial_carry, lengths, reverse=reverse, unroll=unroll, key=key, train=train
            )
            return ((ys, carry) if return_carry else ys), state
        if isinstance(xs, Embedded):
            xs = xs.lookup()

        def step(loop, inputs):
            carry, cell_state = loop
            x, t = inputs
            step_key = None if key is None else jax.random.fold_in(key, t)
            (new_carry, y), cell_state = cell.apply(params, cell_state, carry, x, key=step_key, train=train)
            new_carry = jax.tree.map(lambda new, old: new.astype(old.dtype), new_carry, carry)
            if lengths is not None:
                valid = t < lengths  # [batch]
                new_carry = jax.tree.map(lambda new, old: jnp.where(_expand(valid, new), new, old), new_carry, carry)
                y = jnp.where(_expand(valid, y), y, jnp.zeros_like(y))
            return (new_carry, cell_state), y

        xs_time_major = jnp.swapaxes(xs, 0, 1)  # [time, batch, features]
        (carry, state), ys = lax.scan(
            step,
            (initial_carry, state),
            (xs_time_major, jnp.arange(time)),
            reverse=reverse,
            unroll=unroll_for(time, unroll),
        )
        ys = jnp.swapaxes(ys, 0, 1)  # [batch, time, hidden]
        return ((ys, carry) if return_carry else ys), state

    apply.reads_backward = reverse  # type: ignore[attr-defined]  (bidirectional refuses a reversed child)
    return Model(init, apply, "rnn")


def _sequence_inputs(xs: Any, lengths: Any) -> tuple[Any, ...]:
    return (xs,) if lengths is None else (xs, lengths)


def bidirectional(forward: Model, backward: Model, *, merge: str = "concat") -> Model:
    """Runs ``forward`` on the sequences and ``backward`` on each sequence reversed within its length.

    ``backward`` is an ordinary forward-reading model (``rnn(cell)``, ``reverse=False``): this
    layer reverses its input with ``reverse_sequences(xs, lengths)`` and reverses its outputs back,
    so both outputs are aligned with the input positions (an ``rnn(cell, reverse=True)`` child is
    refused: it would read forwards). Any model taking ``(xs, lengths)`` works, e.g. a ``stacked_rnn``.

    ``apply(params, state, xs, lengths=None, *, key=None, train=False)`` merges the two outputs on
    the feature axis: ``"concat"`` (``[batch, time, H_fwd + H_bwd]``) or ``"sum"``. If both
    children return ``(ys, carry)`` (``return_carry=True``) the output is
    ``(merged_ys, (forward_carry, backward_carry))``. Params are ``{"forward": ..., "backward": ...}``.

    Raises:
      ValueError: ``merge`` is not ``"concat"`` or ``"sum"``, or a child is ``rnn(..., reverse=True)``.
      ShapeError: the outputs cannot be merged, or the inputs are invalid (see ``rnn``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcnet.layers.cells import gru_cell
      >>> layer = bidirectional(rnn(gru_cell(4)), rnn(gru_cell(3)))
      >>> xs = jnp.ones((2, 5, 6))
      >>> params, state = layer.init(jax.random.key(0), xs)
      >>> layer.apply(params, state, xs, jnp.array([5, 3]))[0].shape
      (2, 5, 7)
    """
    if merge not in ("concat", "sum"):
        raise ValueError(f"bidirectional: merge must be 'concat' or 'sum', got {merge!r}")
    children = {"forward": forward, "backward": backward}
    for name, model in children.items():
        if not isinstance(model, Model):
            raise TypeError(f"bidirectional: {name} must be a Model such as rnn(lstm_cell(128)), got {model!r}")
    if getattr(backward.apply, "reads_backward", False):
        raise ValueError(
            "bidirectional: backward is rnn(..., reverse=True), but bidirectional reverses each sequence itself, "
            "so it would read the reversed sequences backwards, i.e. forwards. Fix: build it with reverse=False: "
            "bidirectional(rnn(cell_f), rnn(cell_b))."
        )
    if getattr(forward.apply, "reads_backward", False):
        raise ValueError(
            "bidirectional: forward is rnn(..., reverse=True), so both directions would read backwards. Fix: build "
            "both with reverse=False: bidirectional(rnn(cell_f), rnn(cell_b))."
        )

    def init(key, xs, lengths=None):
        _check_sequences("bidirectional", xs, lengths)
        params, state = {}, {}
        for name, model in children.items():
            p, s = init_child(name, model, key, *_sequence_inputs(xs, lengths))
            put(params, name, p)
            put(state, name, s)
        return params, state

    def apply(params, state, xs, lengths=None, *, key=None, train=False):
        _check_sequences("bidirectional", xs, lengths)
        check_children("bidirectional", params, list(children))
        check_children("bidirectional", state, list(children), "state")
        new_state = {}
        fwd, s = apply_child("forward", forward, params, state, *_sequence_inputs(xs, lengths), key=key, train=train)
        put(new_state, "forward", s)
        xs_reversed = reverse_sequences(xs, lengths)
        bwd, s = apply_child(
            "backward", backward, params, state, *_sequence_inputs(xs_reversed, lengths), key=key, train=train
        )
        put(new_state, "backward", s)
        carries = None
        if isinstance(fwd, tuple) and isinstance(bwd, tuple):
            (fwd, carry_f), (bwd, carry_b) = fwd, bwd
            carries = (carry_f, carry_b)
        if isinstance(fwd, tuple) or isinstance(bwd, tuple) or fwd.shape[:2] != bwd.shape[:2]:
            raise ShapeError(
                "bidirectional",
                f"cannot merge the outputs: forward gave {jax.tree.map(describe, fwd)}, backward "
                f"{jax.tree.map(describe, bwd)}. Fix: build both with the same return_carry.",
            )
        bwd = reverse_sequences(bwd, lengths)
        if merge == "sum":
            if fwd.shape != bwd.shape:
                raise ShapeError(
                    "bidirectional",
                    f"merge='sum' needs outputs of one shape, got forward {describe(fwd)} and backward "
                    f"{describe(bwd)}. Fix: give both the same hidden size, or merge='concat'.",
                )
            ys = fwd + bwd
        else:
            ys = jnp.concatenate([fwd, bwd], axis=-1)
        return ((ys, carries) if carries is not None else ys), new_state

    return Model(init, apply, "bidirectional")


def stacked_rnn(cells: Sequence[Cell], *, dropout: float = 0.0, return_carry: bool = False, unroll: int = 1) -> Model:
    """Layers of ``rnn(cell)``, each reading the previous layer's outputs, with dropout between them.

    Layers are named by cell type and position like ``serial``'s children (``lstm_0``,
    ``lstm_1``); params are ``{"lstm_0": {...}, "lstm_1": {...}}``. With ``train=True`` and
    ``dropout > 0`` (the drop probability), ``dropout_i`` drops entries of layer ``i``'s outputs
    before layer ``i + 1`` (never after the last layer); this needs a ``key``.

    ``apply(params, state, xs, lengths=None, initial_carry=None, *, key=None, train=False)``:
    ``initial_carry`` is a tuple with one carry per layer (zeros by default); returns
    ``ys: [batch, time, hidden_last]``, or ``(ys, final_carries)`` (a tuple, one per layer) when
    ``return_carry`` — what truncated backpropagation through time hands to the next batch.

    Raises:
      KeyMissingError: ``train=True`` with dropout and no ``key`` (the path names ``dropout_i``).
      ShapeError: ``initial_carry`` does not hold one carry per layer, or invalid inputs (see ``rnn``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcnet.layers.cells import lstm_cell
      >>> layers = stacked_rnn([lstm_cell(8), lstm_cell(4)], dropout=0.1, return_carry=True)
      >>> xs = jnp.ones((2, 5, 3))
      >>> params, state = layers.init(jax.random.key(0), xs)
      >>> (ys, carries), _ = layers.apply(params, state, xs, key=jax.random.key(1), train=True)
      >>> sorted(params), ys.shape, [c.h.shape for c in carries]
      (['lstm_0', 'lstm_1'], (2, 5, 4), [(2, 8), (2, 4)])
    """
    cells = list(cells)
    if not cells:
        raise ValueError("stacked_rnn needs at least one cell")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"stacked_rnn: dropout is the drop probability and must be in [0, 1), got {dropout!r}")
    layers: dict[str, Model] = {}
    counts: dict[str, int] = {}
    for cell in cells:
        if not isinstance(cell, Cell):
            raise TypeError(f"stacked_rnn: expected Cells (e.g. lstm_cell(128)), got {type(cell).__name__}")
        index = counts.get(cell.name, 0)
        counts[cell.name] = index + 1
        layers[f"{cell.name}_{index}"] = rnn(cell, return_carry=True, unroll=unroll)
    drop = dropout_layer(dropout)

    def carries_of(initial_carry):
        if initial_carry is None:
            return (None,) * len(layers)
        if not isinstance(initial_carry, (tuple, list)) or len(initial_carry) != len(layers):
            got = f"{len(initial_carry)} carries" if isinstance(initial_carry, (tuple, list)) else "one carry"
            raise ShapeError(
                "stacked_rnn",
                f"expected initial_carry as a tuple of {len(layers)} carries, one per layer {list(layers)}, got "
                f"{got}. Fix: pass a tuple such as the final carries this model returned with return_carry=True.",
            )
        return tuple(initial_carry)

    def init(key, xs, lengths=None, initial_carry=None):
        _check_sequences("stacked_rnn", xs, lengths)
        params, state = {}, {}
        for (name, layer), carry in zip(layers.items(), carries_of(initial_carry), strict=True):
            p, s = init_child(name, layer, key, xs, lengths, carry)
            put(params, name, p)
            put(state, name, s)
            xs = child_output_spec(name, layer, p, s, xs, lengths, carry)[0]
        return params, state

    def apply(params, state, xs, lengths=None, initial_carry=None, *, key=None, train=False):
        check_children("stacked_rnn", params, list(layers))
        check_children("stacked_rnn", state, list(layers), "state")
        _check_sequences("stacked_rnn", xs, lengths)
        new_state, finals = {}, []
        for i, ((name, layer), carry) in enumerate(zip(layers.items(), carries_of(initial_carry), strict=True)):
            if i > 0:
                xs, _ = apply_child(f"dropout_{i - 1}", drop, {}, {}, xs, key=key, train=train)
            (xs, final), s = apply_child(name, layer, params, state, xs, lengths, carry, key=key, train=train)
            put(new_state, name, s)
            finals.append(final)
        return ((xs, tuple(finals)) if return_carry else xs), new_state

    return Model(init, apply, "stacked_rnn")
