"""Pure training and evaluation steps, jit-compiled and data-parallel over a device mesh.

A loss function maps the model's outputs and the batch to PER-EXAMPLE values::

    loss_fn(outputs, batch) -> loss[B]                   # or
    loss_fn(outputs, batch) -> {"loss": loss[B], "accuracy": correct[B], ...}

Per-example means "of the mask's shape": usually ``[B]``; a batch made of groups (one per
device, e.g. tree batches scheduled per device) may use ``[G, B / G]``. The engine averages
them over the real examples (``batch["mask"] == 1``), so a batch padded
with masked examples gives the same gradient and metrics as the unpadded batch, and metrics
averaged over uneven batches are exact (each step reports its means and its ``count``).
A batch without ``"mask"`` holds only real examples, as many as the leading axis of the first
model input, and its values must be ``[B]``: the means divide by that constant, and the step has
no mask to reduce (one reduction and a division fewer). ``Batches`` always adds a mask.

Data parallelism, three ways, one pure step (each tested against one device on the same batch):

- ``make_train_step``: ``jax.jit`` over a batch sharded along its first axis over the mesh's ``"data"``
  axis (``NamedSharding``; Auto or Explicit axes), the state replicated. XLA inserts the all-reduce of
  the gradient. The batch size must be a multiple of the device count; ``funcnet.train.data.Batches``
  pads the last batch of an epoch with masked examples to keep every batch full.
- Your own ``jax.shard_map(train_step_fn(..., axis_name="data"), in_specs=(P(), P("data")),
  out_specs=(P(), P()))``, or your own ``jax.pmap(train_step_fn(..., axis_name="data"),
  axis_name="data")`` over a batch with a leading device axis: the step sums counts and metrics across
  the axis and reduces the gradient once (``_full_batch_gradient`` says how each transform differs).

Randomness: step ``i`` uses ``fold_in(base_key, i)``. Under ``jax.jit`` that one key draws the dropout
masks of the whole global batch, so the masks do not depend on the number of devices. Under
``shard_map``/``pmap`` each shard uses ``fold_in(step_key, axis_index)``: masks are independent across
shards, and depend on the device count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import Mesh

from ..core import Model, check_takes_key_and_train
from .sparse import SparseRows, gather_rows, scatter_rows, unwrap
from .state import TrainState, batch_sharded, check_divisible, data_mesh, replicated, step_key

LossFn = Callable[[Any, Mapping[str, jax.Array]], "jax.Array | Mapping[str, jax.Array]"]
Metrics = dict[str, jax.Array]


def _batch_size(batch: Mapping[str, Any], inputs: Sequence[str]) -> int:
    """The examples in ``batch``: the mask's leading axis, else the first model input's."""
    if "mask" in batch:
        return batch["mask"].shape[0]
    (first,) = _model_inputs(batch, inputs[:1])
    shape = getattr(first, "shape", None)  # an array, or an array-like such as Embedded rows
    leading = {shape[0]} if shape else {leaf.shape[0] if leaf.shape else None for leaf in jax.tree.leaves(first)}
    if len(leading) != 1 or None in leading:
        raise ValueError(
            f"a batch without 'mask' takes its size from the leading axis of {inputs[0]!r}, and it has "
            f"{'none' if not leading or None in leading else f'several: {sorted(leading)}'}. "
            "Fix: add batch['mask'] (1.0 for each real example)"
        )
    return leading.pop()


def _per_example(
    loss_fn: LossFn, outputs: Any, batch: Mapping[str, jax.Array], inputs: Sequence[str]
) -> dict[str, jax.Array]:
    values = loss_fn(outputs, batch)
    values = dict(values) if isinstance(values, Mapping) else {"loss": values}
    if "loss" not in values:
        raise ValueError(
            f"the loss function must return per-example losses or a dict with 'loss'; got keys {sorted(values)}"
        )
    reserved = sorted(set(values) & {"count", "finite", "grad_norm"})
    if reserved:
        raise ValueError(f"{reserved}: the engine's own metric names; rename these values of the loss function")
    if "mask" in batch:
        shape, of = batch["mask"].shape, "the mask's"
    else:
        shape, of = (_batch_size(batch, inputs),), "the batch's"
    for name, value in values.items():
        if value.shape != shape:
            raise ValueError(
                f"the loss function must return PER-EXAMPLE values of {of} shape {shape}; {name!r} has shape "
                f"{value.shape}. Fix: average over the other axes inside the loss; the engine takes the batch mean."
            )
    return values


def _masked_means(
    values: dict[str, jax.Array], mask: jax.Array | None, axis_name: str | None
) -> tuple[Metrics, jax.Array]:
    """Means over the real examples and their count; without a mask every example is real, and the
    count is a constant (no reduction of the mask, no division by a computed count)."""
    if mask is None:
        sums = {name: jnp.sum(v.astype(jnp.float32)) for name, v in values.items()}
        size = next(iter(values.values())).size
        if axis_name is not None:
            sums, count = lax.psum((sums, jnp.asarray(size, jnp.float32)), axis_name)
            return {name: s / jnp.maximum(count, 1.0) for name, s in sums.items()}, count
        return {name: s * (1.0 / max(size, 1)) for name, s in sums.items()}, jnp.asarray(size, jnp.float32)
    sums = {name: jnp.sum(v.astype(jnp.float32) * mask) for name, v in values.items()}
    count = jnp.sum(mask)
    if axis_name is not None:
        sums, count = lax.psum((sums, count), axis_name)
    return {name: s / jnp.maximum(count, 1.0) for name, s in sums.items()}, count


def _model_inputs(batch: Mapping[str, jax.Array], inputs: Sequence[str]) -> list[jax.Array]:
    missing = [name for name in inputs if name not in batch]
    if missing:
        raise KeyError(
            f"the batch has no {missing}; it holds {sorted(batch)}. Fix: set inputs= to the model's input keys"
        )
    return [batch[name] for name in inputs]


def _check_axis(axis_name: str | None) -> None:
    """Raises at trace time if the step runs under ``shard_map``/``pmap`` but was built without ``axis_name``:
    each shard would then average, and update the params on, its own examples only."""
    mapped = tuple(jax.sharding.get_abstract_mesh().manual_axes)
    if axis_name is None and mapped:
        raise ValueError(
            f"the step runs under shard_map/pmap over the axes {mapped}, but was built with axis_name=None, so each "
            f"shard would train on its own examples only. Fix: build it with axis_name={mapped[0]!r}, or use "
            "make_train_step / make_eval_step (jax.jit over a sharded batch) with no map around it."
        )


def _shard_key(key: jax.Array, axis_name: str) -> jax.Array:
    """Each shard's key: the step's key folded with the shard's index along ``axis_name``, so that shards draw
    independent dropout masks (the global view of ``jax.jit`` needs no such thing: one key draws the masks of
    the whole batch)."""
    return jax.random.fold_in(key, lax.axis_index(axis_name))


def _varying_axes(x: jax.Array) -> frozenset:
    """The manual mesh axes along which ``x`` is known to vary: tracked under ``shard_map`` (``check_vma=True``,
    its default), never under ``pmap``, which is a ``shard_map`` with ``check_vma=False``."""
    return getattr(getattr(jax.typeof(x), "mat", None), "varying", frozenset())


def _full_batch_gradient(grads: Any, axis_name: str | None) -> Any:
    """The gradient of the full-batch mean loss, the same on every shard: reduced across ``axis_name`` ONCE.

    The loss is already the full-batch mean (``_masked_means`` sums across the axis). Under ``shard_map``
    with ``check_vma=True`` the params do not vary along the axis, so autodiff itself sums their gradient
    across it (the transpose of the implicit broadcast): nothing is left to do. Under ``pmap`` (and
    ``shard_map(check_vma=False)``) every value counts as per-shard, and each shard's gradient is that of
    the SUM of the N shards' equal losses with respect to its own copy, N times its share of the
    full-batch gradient: their mean across the axis is the full-batch gradient.
    """
    if axis_name is None or axis_name in _varying_axes(lax.axis_index(axis_name)):
        return grads
    return lax.pmean(grads, axis_name)


def train_step_fn(
    model: Model,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    inputs: Sequence[str] = ("x",),
    skip_nan_updates: bool = False,
    log_grad_norm: bool = False,
    axis_name: str | None = None,
    sparse_rows: SparseRows | None = None,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, Metrics]]:
    """The pure (un-jitted) train step ``(state, batch) -> (state, metrics)``.

    Args:
      model: the model; it is applied to ``[batch[k] for k in inputs]`` with ``train=True``.
      loss_fn: ``(outputs, batch) -> loss[B]`` or a dict of per-example values with ``"loss"``.
      optimizer: an optax transformation.
      inputs: the batch keys passed to ``model.apply``, in order.
      skip_nan_updates: if the loss or gradient is not finite, keep the old params and
        optimizer state (the step counter still advances) instead of applying the update.
      log_grad_norm: also return ``grad_norm``, the global norm of the mean gradient. Off by default:
        on small models its extra reductions cost as much as the rest of the update (XLA on CPU).
      axis_name: the mapped axis when you run the step under your own ``jax.shard_map`` or ``jax.pmap``:
        counts, metrics and gradients are then reduced across it, and each shard folds its index into the
        step's key (``fold_in(step_key, axis_index)``: independent dropout masks per shard). Leave it None
        under ``jax.jit``.
      sparse_rows: ``{param path: batch key}``: update those embedding tables row-sparsely, only the
        rows whose ids are in ``batch[key]`` (``funcnet.train.sparse``; exact for SGD and Adagrad).

    Returns:
      The step. ``metrics`` holds the batch means of every per-example value, ``count`` (real
      examples), with ``skip_nan_updates`` ``finite`` (1.0 or 0.0: the loss and the gradient are
      finite, the condition for applying the update) and, with ``log_grad_norm``, ``grad_norm``.
      Without ``skip_nan_updates`` a NaN/Inf shows in ``loss`` itself, where ``fit`` checks it.

    Example:
      >>> import jax, jax.numpy as jnp, optax, funcnet as fn
      >>> from funcnet.train.state import create_train_state
      >>> model, opt = fn.dense(1), optax.sgd(0.1)
      >>> batch = {"x": jnp.ones((8, 2)), "y": jnp.zeros((8, 1))}  # no "mask": all 8 examples are real
      >>> state = create_train_state(model, opt, jax.random.key(0), batch["x"])
      >>> step = train_step_fn(model, lambda out, b: jnp.mean((out - b["y"]) ** 2, axis=-1), opt)
      >>> state, metrics = step(state, batch)
      >>> int(state.step), sorted(metrics), float(metrics["count"])
      (1, ['count', 'loss'], 8.0)
    """
    check_takes_key_and_train(model)
    if axis_name is not None and sparse_rows:
        raise ValueError(
            "sparse_rows needs the whole batch in one view (its compact tables hold the rows the batch uses), "
            "and under shard_map/pmap each shard sees only its own ids. Fix: use make_train_step (jax.jit over a "
            "sharded batch), or drop sparse_rows."
        )

    def step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, Metrics]:
        _check_axis(axis_name)
        key = step_key(state) if axis_name is None else _shard_key(step_key(state), axis_name)
        params, opt_state = state.params, state.opt_state
        if sparse_rows:  # differentiate and update compact tables: only the rows this batch uses
            params, opt_state, batch, used, tables = gather_rows(params, opt_state, batch, sparse_rows)

        def objective(params):
            outputs, model_state = model.apply(
                params, state.model_state, *_model_inputs(batch, inputs), key=key, train=True
            )
            means, count = _masked_means(_per_example(loss_fn, outputs, batch, inputs), batch.get("mask"), axis_name)
            return means["loss"], (means, count, model_state)

        (loss, (means, count, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        grads, params = _full_batch_gradient(unwrap(grads), axis_name), unwrap(params)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        grad_norm = optax.tree.norm(grads) if skip_nan_updates or log_grad_norm else None
        if skip_nan_updates:  # on the compact tree: a sparse table is never copied whole
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)  # the update is applied only if both are finite
            new_params, new_opt_state, model_state = jax.tree.map(
                lambda a, b: jnp.where(finite, a, b),
                (new_params, new_opt_state, model_state),
                (params, opt_state, state.model_state),
            )
        if sparse_rows:
            new_params = scatter_rows(state.params, new_params, used, tables)
            new_opt_state = scatter_rows(state.opt_state, new_opt_state, used, tables)
        new = TrainState(state.step + 1, new_params, model_state, new_opt_state, state.key)
        extra = {"grad_norm": grad_norm} if log_grad_norm else {}
        if skip_nan_updates:
            extra["finite"] = finite.astype(jnp.float32)
        return new, {**means, "count": count, **extra}

    return step


def eval_step_fn(
    model: Model, loss_fn: LossFn, *, inputs: Sequence[str] = ("x",), axis_name: str | None = None
) -> Callable[[TrainState, Mapping[str, jax.Array]], Metrics]:
    """The pure evaluation step ``(state, batch) -> metrics`` (``train=False``, no update).

    Example:
      >>> import jax, jax.numpy as jnp, optax, funcnet as fn
      >>> from funcnet.train.state import create_train_state
      >>> batch = {"x": jnp.ones((4, 2)), "mask": jnp.array([1.0, 1.0, 1.0, 0.0])}
      >>> state = create_train_state(fn.dense(1), optax.sgd(0.1), jax.random.key(0), batch["x"])
      >>> metrics = eval_step_fn(fn.dense(1), lambda out, b: jnp.zeros(4))(state, batch)
      >>> float(metrics["count"])
      3.0
    """
    check_takes_key_and_train(model)

    def step(state: TrainState, batch: Mapping[str, jax.Array]) -> Metrics:
        _check_axis(axis_name)
        outputs, _ = model.apply(state.params, state.model_state, *_model_inputs(batch, inputs), train=False)
        means, count = _masked_means(_per_example(loss_fn, outputs, batch, inputs), batch.get("mask"), axis_name)
        return {**means, "count": count}

    return step


def make_train_step(
    model: Model,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
    inputs: Sequence[str] = ("x",),
    skip_nan_updates: bool = False,
    log_grad_norm: bool = False,
    sparse_rows: SparseRows | None = None,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, Metrics]]:
    """The train step, jit-compiled with the state donated and data-parallel over ``mesh``.

    The batch is sharded along its first axis over the mesh's ``"data"`` axis; the state stays
    replicated. On one device this is a plain jitted step. See ``train_step_fn`` for the arguments.
    (``fit`` may run instead ``funcnet.train.device_data.make_resident_step``, the same step gathering
    its batch from training arrays kept on the devices: an option of ``fit``, ``device_data_mib``.)

    Raises:
      ValueError: the batch size is not a multiple of the number of devices.

    Example:
      >>> import jax, jax.numpy as jnp, optax, funcnet as fn
      >>> from funcnet.train.state import create_train_state
      >>> model, opt = fn.dense(1), optax.sgd(0.1)
      >>> batch = {"x": jnp.ones((8, 2)), "y": jnp.zeros((8, 1))}
      >>> state = create_train_state(model, opt, jax.random.key(0), batch["x"])
      >>> step = make_train_step(model, lambda out, b: jnp.mean((out - b["y"]) ** 2, axis=-1), opt)
      >>> state, metrics = step(state, batch)
      >>> int(state.step)
      1
    """
    mesh = mesh or data_mesh()
    pure = train_step_fn(
        model,
        loss_fn,
        optimizer,
        inputs=inputs,
        skip_nan_updates=skip_nan_updates,
        log_grad_norm=log_grad_norm,
        sparse_rows=sparse_rows,
    )
    shardings = (replicated(mesh), batch_sharded(mesh))
    step = jax.jit(pure, in_shardings=shardings, out_shardings=replicated(mesh), donate_argnums=0)

    def checked(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, Metrics]:
        try:
            return step(state, batch)
        except ValueError as error:  # only on failure: nothing is checked per step (each check costs)
            check_divisible(_batch_size(batch, inputs), mesh)  # the usual cause, said plainly
            explain_other_mesh(error, mesh)
            raise

    checked.jitted = step  # for inspection: .lower(), ._cache_size()
    return checked


def make_eval_step(
    model: Model, loss_fn: LossFn, *, mesh: Mesh | None = None, inputs: Sequence[str] = ("x",)
) -> Callable[[TrainState, Mapping[str, jax.Array]], Metrics]:
    """The evaluation step, jit-compiled and data-parallel like ``make_train_step``.

    It returns only the metrics: the state is unchanged by evaluation, and returning it would
    copy every parameter on each call.

    Example:
      >>> import jax, jax.numpy as jnp, optax, funcnet as fn
      >>> from funcnet.train.state import create_train_state
      >>> batch = {"x": jnp.ones((8, 2))}
      >>> state = create_train_state(fn.dense(1), optax.sgd(0.1), jax.random.key(0), batch["x"])
      >>> metrics = make_eval_step(fn.dense(1), lambda out, b: out[:, 0] ** 2)(state, batch)
      >>> float(metrics["count"])
      8.0
    """
    mesh = mesh or data_mesh()
    step = jax.jit(
        eval_step_fn(model, loss_fn, inputs=inputs),
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=replicated(mesh),
    )

    def checked(state: TrainState, batch: Mapping[str, jax.Array]) -> Metrics:
        check_divisible(_batch_size(batch, inputs), mesh)
        try:
            return step(state, batch)
        except ValueError as error:
            explain_other_mesh(error, mesh)
            raise

    checked.jitted = step
    return checked


def explain_other_mesh(error: ValueError, mesh: Mesh) -> None:
    """Raises a ValueError that says how to fix it when JAX refused arrays placed on another mesh than ``mesh``."""
    if "Mesh for all inputs should be equal" in str(error):
        raise ValueError(
            f"the state or batch lives on another mesh than the step's ({dict(mesh.shape)}, axis types "
            f"{tuple(t.name for t in mesh.axis_types)}). Fix: build the state and the step with the mesh your batch "
            "is placed on (create_train_state(..., mesh=mesh), make_train_step(..., mesh=mesh)), or pass NumPy arrays."
        ) from error
