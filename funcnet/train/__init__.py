"""The training engine: pure steps you can call yourself, and ``fit``, which does the rest.

- ``TrainState`` (step, params, model state, optimizer state, base key) is what is stepped,
  checkpointed and restored; ``create_train_state`` makes it replicated over a device mesh.
- ``cpu_devices``: one JAX device per CPU core (call it first), so that the data-parallel steps split
  each batch across the cores.
- ``make_train_step`` / ``make_eval_step``: jit-compiled, data-parallel steps
  ``(state, batch) -> (state, metrics)``; ``train_step_fn`` is the un-jitted pure step for your own
  ``shard_map``.
- Per-example losses for the engine: ``funcnet.losses.per_example(fn.losses.mse)`` etc. (``target=``, metrics).
- ``Batches`` (seeded shuffling, padding with masked examples, restorable position) and
  ``prefetch`` (next batches put on the devices while a step runs); ``TreeBatches`` (parse trees
  list-scheduled into grouped batches) and ``tbptt_dataset`` (a token stream cut for truncated BPTT).
- ``TrainerConfig``: the options of ``fit`` (budgets, batch size, evaluation, checkpoints, logging).
- ``Checkpointer``: Orbax, latest N and best by a metric.
- ``load_run(RUN_DIR, model)``: a trained run reopened for inference (params, state, ``predict``).
- ``fit_arrays(model, x, y, loss=...)``: Keras's ``model.fit`` for NumPy arrays (validation split,
  shuffling, early stopping, the best parameters in ``result.best_params``).
- ``fit``: epochs or a step budget, evaluation, early stopping, NaN detection, logs, progress,
  callbacks, graceful stop, exact resume.

The engine knows nothing of config files: ``funcnet.config`` (registries, ``make_optimizer`` from a
config table, ``funcnet train CONFIG -s RUN_DIR``) is built on top of it.

>>> import jax, jax.numpy as jnp, numpy as np, optax, funcnet as fn
>>> from funcnet import train
>>> data = train.Batches(train.ArrayDataset(x=np.ones((16, 3), np.float32), y=np.zeros((16, 1), np.float32)), 8)
>>> model = fn.dense(1)
>>> state = train.create_train_state(model, optax.sgd(0.1), jax.random.key(0), jnp.ones((8, 3)))
>>> step = train.make_train_step(model, fn.losses.per_example(fn.losses.mse), optax.sgd(0.1))
>>> state, metrics = step(state, next(data.iterate()))
>>> int(state.step)
1
"""

from .arrays import fit_arrays as fit_arrays
from .callbacks import Callback as Callback
from .callbacks import StopTraining as StopTraining
from .checkpoint import Checkpointer as Checkpointer
from .data import ArrayDataset as ArrayDataset
from .data import Batches as Batches
from .data import GeneratorBatches as GeneratorBatches
from .data import Position as Position
from .devices import cpu_devices as cpu_devices
from .distributed import join as join
from .evaluation import evaluate as evaluate
from .loop import fit as fit
from .options import TrainerConfig as TrainerConfig
from .prefetch import prefetch as prefetch
from .result import FitResult as FitResult
from .run import LoadedRun as LoadedRun
from .run import load_run as load_run
from .sequences import tbptt_dataset as tbptt_dataset
from .state import TrainState as TrainState
from .state import create_train_state as create_train_state
from .state import data_mesh as data_mesh
from .step import eval_step_fn as eval_step_fn
from .step import make_eval_step as make_eval_step
from .step import make_train_step as make_train_step
from .step import train_step_fn as train_step_fn
from .stopping import exit_code as exit_code
from .tree_batches import TreeBatches as TreeBatches
