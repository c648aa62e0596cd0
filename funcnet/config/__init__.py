"""Runs from config files: components registered by name, configs checked before anything is built, the CLI.

This package sits on top of the training engine (``funcnet.train``), which knows nothing of it.

- ``registry``: ``Registry`` and the global ``MODELS``, ``DATASETS``, ``LOSSES``, ``OPTIMIZERS``,
  ``SCHEDULES``; add your own with ``@MODELS.register("name")`` in a module a config ``imports``.
- ``catalogue``: the built-in components, registered in one table (imported here, once).
- ``components``: a section naming a registered factory, checked against its signature and built;
  ``DataSplits``, what a dataset factory returns.
- ``run_config``: read TOML/JSON, apply ``--override``s, validate a whole run config (``RunConfig``).
- ``optimizer``: ``make_optimizer``, an optax chain (schedule, clipping, weight decay, accumulation,
  freezing, per-parameter learning rates) from an ``optimizer`` table.
- ``runs``: ``load_run(RUN_DIR)``, a run reopened for inference with its model built from its config.
- ``cli``: ``funcnet train CONFIG -s RUN_DIR`` and ``funcnet evaluate RUN_DIR``.

>>> from funcnet.config import MODELS, validate_config
>>> "mlp" in MODELS.names()
True
"""

from ..validation import ConfigError as ConfigError
from . import catalogue as catalogue  # the built-in components: registered in its table, in one place
from .components import DataSplits as DataSplits
from .components import build_component as build_component
from .optimizer import Optimizer as Optimizer
from .optimizer import make_optimizer as make_optimizer
from .optimizer import make_schedule as make_schedule
from .registry import DATASETS as DATASETS
from .registry import LOSSES as LOSSES
from .registry import MODELS as MODELS
from .registry import OPTIMIZERS as OPTIMIZERS
from .registry import SCHEDULES as SCHEDULES
from .registry import Registry as Registry
from .run_config import RunConfig as RunConfig
from .run_config import apply_overrides as apply_overrides
from .run_config import load_config as load_config
from .run_config import merge_configs as merge_configs
from .run_config import validate_config as validate_config
from .runs import load_run as load_run
