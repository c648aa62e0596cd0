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
  ``prefetch`` (next batches put on the devices while a step runs).
- ``make_optimizer``: optax optimizers, schedules, clipping, weight decay, accumulation and
  freezing from a config dict.
- ``Checkpointer``: Orbax, latest N and best by a metric.
- ``fit``: epochs or a step budget, evaluation, early stopping, NaN detection, logs, progress,
  callbacks, graceful stop, exact resume.
- ``funcnet train CONFIG -s RUN_DIR`` and ``funcnet evaluate RUN_DIR``: the same from config files,
  with components registered by name (``MODELS``, ``DATASETS``, ``LOSSES``, ``OPTIMIZERS``, ``SCHEDULES``).

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

from .builtins import DataSplits as DataSplits
from .checkpoint import Checkpointer as Checkpointer
from .components import ConfigError as ConfigError
from .config import TrainerConfig as TrainerConfig
from .config import load_config as load_config
from .config import validate_config as validate_config
from .data import ArrayDataset as ArrayDataset
from .data import Batches as Batches
from .data import GeneratorBatches as GeneratorBatches
from .data import Position as Position
from .devices import cpu_devices as cpu_devices
from .distributed import join as join
from .loop import Callback as Callback
from .loop import FitResult as FitResult
from .loop import StopTraining as StopTraining
from .loop import evaluate as evaluate
from .loop import fit as fit
from .optim import Optimizer as Optimizer
from .optim import make_optimizer as make_optimizer
from .prefetch import prefetch as prefetch
from .registry import DATASETS as DATASETS
from .registry import LOSSES as LOSSES
from .registry import MODELS as MODELS
from .registry import OPTIMIZERS as OPTIMIZERS
from .registry import SCHEDULES as SCHEDULES
from .state import TrainState as TrainState
from .state import create_train_state as create_train_state
from .state import data_mesh as data_mesh
from .step import eval_step_fn as eval_step_fn
from .step import make_eval_step as make_eval_step
from .step import make_train_step as make_train_step
from .step import train_step_fn as train_step_fn
from .stopping import exit_code as exit_code
