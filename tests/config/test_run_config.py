"""Run configs: loading, overrides, and validation that names the key path before anything is built."""

from __future__ import annotations

import json
import sys
import uuid

import pytest

from funcnet.config import ConfigError, build_component
from funcnet.config import run_config as cfg
from funcnet.config.registry import MODELS, Registry
from funcnet.train import TrainerConfig


def toy_model(features: int, rate: float = 0.1):
    return features, rate


class ToyDataset:
    def __init__(self, size: int, seed: int = 0):
        self.size, self.seed = size, seed


def toy_loss(**options):
    return options


@pytest.fixture
def registries():
    models, datasets, losses = Registry("model"), Registry("dataset"), Registry("loss")
    models.register("toy")(toy_model)
    datasets.register("toy_data")(ToyDataset)
    losses.register("toy_loss")(toy_loss)
    return {"model": models, "dataset": datasets, "loss": losses}


def run_config(**changes):
    config = {
        "model": {"type": "toy", "features": 4},
        "dataset": {"type": "toy_data", "size": 10},
        "loss": {"type": "toy_loss"},
        "optimizer": {"type": "adam", "learning_rate": 1e-3},
        "trainer": {"epochs": 2},
    }
    config.update(changes)
    return config


def check_error(error: pytest.ExceptionInfo, path: str, *fragments: str):
    assert error.value.path == path, str(error.value)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)


# Loading -------------------------------------------------------------------------------------

TOML = """
imports = ["my_models"]

[model]
type = "mlp"
hidden = [64, 32]
rate = 0.5

[trainer]
epochs = 3
shuffle = false
"""

EXPECTED = {
    "imports": ["my_models"],
    "model": {"type": "mlp", "hidden": [64, 32], "rate": 0.5},
    "trainer": {"epochs": 3, "shuffle": False},
}


def test_toml_and_json_load_to_the_same_dict(tmp_path):
    (tmp_path / "run.toml").write_text(TOML)
    (tmp_path / "run.json").write_text(json.dumps(EXPECTED, indent=2))
    (tmp_path / "upper.JSON").write_text(json.dumps(EXPECTED))
    assert cfg.load_config(tmp_path / "run.toml") == EXPECTED
    assert cfg.load_config(str(tmp_path / "run.json")) == EXPECTED
    assert cfg.load_config(tmp_path / "upper.JSON") == EXPECTED


def test_toml_parse_error_names_file_line_and_column(tmp_path):
    file = tmp_path / "bad.toml"
    file.write_text('[model]\ntype = "mlp"\nhidden = [64, 32\nrate = 0.5\n')
    with pytest.raises(ConfigError) as error:
        cfg.load_config(file)
    check_error(error, "", str(file), "invalid TOML", "line 4", "column")


def test_json_parse_error_names_file_line_and_column(tmp_path):
    file = tmp_path / "bad.json"
    file.write_text('{\n  "model": {"type": "mlp",}\n}\n')
    with pytest.raises(ConfigError) as error:
        cfg.load_config(file)
    check_error(error, "", str(file), "invalid JSON at line 2, column 27")


def test_missing_file_wrong_extension_wrong_top_level(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config file .*nope\.toml' does not exist"):
        cfg.load_config(tmp_path / "nope.toml")
    (tmp_path / "run.yaml").write_text("model: {}\n")
    with pytest.raises(ConfigError, match=r"expected a \.toml or \.json config file, got extension '\.yaml'"):
        cfg.load_config(tmp_path / "run.yaml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"expected a table of sections at the top level, got \[1, 2\] \(a list\)"):
        cfg.load_config(tmp_path / "list.json")


def test_duplicate_json_keys_and_toml_dates_are_rejected(tmp_path):
    (tmp_path / "dup.json").write_text('{"trainer": {"epochs": 1, "epochs": 2}}')
    with pytest.raises(ConfigError, match="key 'epochs' appears twice"):
        cfg.load_config(tmp_path / "dup.json")
    (tmp_path / "date.toml").write_text("[model]\ntype = 'mlp'\nstarted = 2024-01-02\n")
    with pytest.raises(ConfigError) as error:
        cfg.load_config(tmp_path / "date.toml")
    check_error(error, "model.started", "TOML dates and times are not supported")


# Overrides -----------------------------------------------------------------------------------


def test_overrides_parse_json_values_and_fall_back_to_strings():
    config = {"trainer": {"epochs": 2}, "model": {"type": "mlp", "hidden": [8]}}
    overrides = [
        "trainer.epochs=5",
        "trainer.shuffle=false",
        "model.rate=1e-3",
        "model.hidden=[64, 64]",
        "model.activation=gelu",
        'model.name="3"',
        "model.note=a=b",
        "trainer.patience=null",
        "model.encoder.layers=2",
    ]
    result = cfg.apply_overrides(config, overrides)
    assert result["trainer"] == {"epochs": 5, "shuffle": False, "patience": None}
    assert result["model"] == {
        "type": "mlp",
        "hidden": [64, 64],
        "rate": 0.001,
        "activation": "gelu",
        "name": "3",
        "note": "a=b",
        "encoder": {"layers": 2},
    }
    assert config == {"trainer": {"epochs": 2}, "model": {"type": "mlp", "hidden": [8]}}  # not mutated


def test_later_overrides_win():
    assert cfg.apply_overrides({}, ["a.b=1", "a.b=2"]) == {"a": {"b": 2}}


@pytest.mark.parametrize("override", ["trainer.epochs", "=3", "trainer..epochs=3", "trainer.=3"])
def test_malformed_overrides_are_rejected(override):
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE with a dotted KEY"):
        cfg.apply_overrides({}, [override])


def test_override_through_a_value_that_is_not_a_table():
    with pytest.raises(ConfigError) as error:
        cfg.apply_overrides({"trainer": {"epochs": 2}}, ["trainer.epochs.max=3"])
    check_error(error, "trainer.epochs", "trainer.epochs is 2 (an int), not a table")


def test_override_of_an_unknown_key_is_caught_by_validation(registries):
    config = cfg.apply_overrides(run_config(), ["trainer.epoch=3"])
    with pytest.raises(ConfigError) as error:
        cfg.validate_config(config, registries=registries)
    check_error(error, "trainer.epoch", "Did you mean 'epochs'?")


# Sections and trainer ------------------------------------------------------------------------


def test_valid_config(registries):
    run = cfg.validate_config(run_config(), registries=registries)
    assert run.model == {"type": "toy", "features": 4}
    assert run.optimizer == {"type": "adam", "learning_rate": 1e-3}
    assert run.trainer == TrainerConfig(epochs=2)
    assert run.imports == ()


def test_unknown_section_with_suggestion(registries):
    with pytest.raises(ConfigError) as error:
        cfg.validate_config(run_config(modle={"type": "toy"}), registries=registries)
    check_error(error, "modle", "unknown section. Did you mean 'model'?", "Allowed: dataset, imports")


def test_missing_model_section(registries):
    config = run_config()
    del config["model"]
    with pytest.raises(ConfigError) as error:
        cfg.validate_config(config, registries=registries)
    check_error(error, "model", "missing section")


def test_unknown_trainer_key_with_suggestion():
    with pytest.raises(ConfigError) as error:
        TrainerConfig.from_dict({"epoch": 3})
    check_error(error, "trainer.epoch", "unknown trainer setting. Did you mean 'epochs'?", "batch_size")


@pytest.mark.parametrize(
    ("values", "path", "message"),
    [
        ({"epochs": 2, "batch_size": True}, "trainer.batch_size", "expected an int, got true (a boolean)"),
        ({"epochs": 2, "batch_size": -5}, "trainer.batch_size", "expected an int >= 1, got -5"),
        ({"epochs": 2, "batch_size": 0}, "trainer.batch_size", "expected an int >= 1, got 0"),
        ({"epochs": 2.0}, "trainer.epochs", "expected an int or null, got 2.0 (a float)"),
        ({"epochs": 2, "patience": -1}, "trainer.patience", "expected an int >= 0, got -1"),
        ({"epochs": 2, "shuffle": 1}, "trainer.shuffle", "expected true or false, got 1 (an int)"),
        ({"epochs": 2, "mode": "maximize"}, "trainer.mode", 'expected "min" or "max", got "maximize" (a string)'),
        ({"epochs": 2, "metric": ""}, "trainer.metric", "expected the name of a validation metric"),
        ({"batch_size": 8}, "trainer", "expected epochs or max_steps (or both), got neither"),
    ],
)
def test_trainer_values_are_checked(values, path, message):
    with pytest.raises(ConfigError) as error:
        TrainerConfig.from_dict(values)
    check_error(error, path, message)


def test_trainer_defaults_nulls_and_paths():
    trainer = TrainerConfig.from_dict({"max_steps": 100, "patience": 0, "mode": "max", "eval_every": None})
    assert (trainer.epochs, trainer.max_steps, trainer.patience, trainer.mode) == (None, 100, 0, "max")
    assert (trainer.batch_size, trainer.keep_checkpoints, trainer.keep_best, trainer.shuffle) == (32, 3, 1, True)
    with pytest.raises(ConfigError) as error:
        TrainerConfig.from_dict({"epochs": 1, "seed": -1}, path="stages.pretrain.trainer")
    check_error(error, "stages.pretrain.trainer.seed", "expected an int >= 0, got -1")
    with pytest.raises(ConfigError, match="trainer: expected a table of trainer settings, got 3 "):
        TrainerConfig.from_dict(3)


def test_trainer_config_checks_direct_construction_and_is_frozen():
    with pytest.raises(ConfigError, match=r"trainer\.log_every: expected an int >= 1, got 0"):
        TrainerConfig(epochs=1, log_every=0)
    trainer = TrainerConfig(epochs=1)
    with pytest.raises(AttributeError):
        trainer.epochs = 2


# Components ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "path", "message"),
    [
        ({"model": {"type": "tyo", "features": 4}}, "model.type", "unknown model 'tyo'. Did you mean 'toy'?"),
        ({"model": {"type": "toy", "features": 4, "rate": "0.1"}}, "model.rate", "expected a number, got"),
        ({"dataset": {"type": "toy_data"}}, "dataset.size", "missing; dataset 'toy_data' requires 'size'"),
        ({"loss": {"type": "toy_los"}}, "loss.type", "unknown loss 'toy_los'. Did you mean 'toy_loss'?"),
    ],
)
def test_model_dataset_and_loss_sections_are_checked_against_their_factories(registries, changes, path, message):
    with pytest.raises(ConfigError) as error:
        cfg.validate_config(run_config(**changes), registries=registries)
    check_error(error, path, message)


def test_optimizer_section_needs_a_type_only(registries):
    with pytest.raises(ConfigError) as error:
        cfg.validate_config(run_config(optimizer={"learning_rate": 0.1}), registries=registries)
    check_error(error, "optimizer.type", "missing")
    with pytest.raises(ConfigError) as error:
        cfg.validate_config(run_config(optimizer="adam"), registries=registries)
    check_error(error, "optimizer", 'expected a table with a "type" key, got "adam" (a string)')


# Imports -------------------------------------------------------------------------------------


@pytest.fixture
def module_name():
    name = f"funcnet_test_user_{uuid.uuid4().hex}"
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def fresh_models(monkeypatch):
    """The global MODELS registry, restored after the test (user modules register into it)."""
    monkeypatch.setattr(MODELS, "_factories", dict(MODELS._factories))
    return MODELS


USER_MODULE = """
from funcnet.config.registry import MODELS

@MODELS.register("{name}")
def my_model(width: int, depth: int = 2):
    return ("my_model", width, depth)
"""


def test_user_module_registers_a_model_through_imports(tmp_path, monkeypatch, module_name, fresh_models, registries):
    (tmp_path / f"{module_name}.py").write_text(USER_MODULE.format(name=module_name))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = run_config(imports=[module_name], model={"type": module_name, "width": 16})
    registries.pop("model")  # the global MODELS, where the user module registers
    run = cfg.validate_config(config, registries=registries, search_dirs=[])
    assert run.imports == (module_name,)
    assert build_component(fresh_models, run.model, "model") == ("my_model", 16, 2)
    with pytest.raises(ConfigError) as error:
        cfg.validate_config(run_config(imports=[module_name], model={"type": module_name, "width": "16"}))
    check_error(error, "model.width", 'expected an int, got "16"')


def test_imports_search_the_working_directory_and_restore_sys_path(tmp_path, monkeypatch, module_name, fresh_models):
    (tmp_path / f"{module_name}.py").write_text(USER_MODULE.format(name=module_name))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    before = list(sys.path)
    assert cfg.import_modules({"imports": [module_name]}) == [module_name]
    assert sys.path == before
    assert module_name in fresh_models.names()


def test_import_of_a_missing_module(registries):
    with pytest.raises(ConfigError) as error:
        cfg.validate_config(run_config(imports=["json", "no_such_module_xyz"]), registries=registries)
    check_error(error, "imports[1]", "no module named 'no_such_module_xyz'", "PYTHONPATH")


def test_import_of_a_module_that_fails(tmp_path, monkeypatch, module_name):
    (tmp_path / f"{module_name}.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as error:
        cfg.import_modules({"imports": [module_name]}, search_dirs=[])
    check_error(error, "imports[0]", f"importing '{module_name}' failed: ModuleNotFoundError", "no_such_dependency")
    (tmp_path / f"{module_name}.py").write_text("raise RuntimeError('broken on purpose')\n")
    sys.modules.pop(module_name, None)
    with pytest.raises(ConfigError, match="RuntimeError: broken on purpose"):
        cfg.import_modules({"imports": [module_name]}, search_dirs=[])


@pytest.mark.parametrize("imports", ["my_models", [1], {"a": 1}])
def test_imports_must_be_a_list_of_names(imports):
    with pytest.raises(ConfigError) as error:
        cfg.import_modules({"imports": imports})
    check_error(error, "imports", "expected a list of module names")


# Resolved config -----------------------------------------------------------------------------


def test_resolved_config_fills_trainer_defaults_and_round_trips(tmp_path, registries):
    config = run_config()
    resolved = cfg.resolved_config(config)
    assert resolved["trainer"]["epochs"] == 2 and resolved["trainer"]["batch_size"] == 32
    assert resolved["trainer"]["max_steps"] is None
    assert set(resolved["trainer"]) == {f for f in TrainerConfig.__dataclass_fields__}
    assert config["trainer"] == {"epochs": 2}  # not mutated
    run = cfg.validate_config(config, registries=registries)
    assert cfg.resolved_config(run) == {**resolved, "imports": []}
    (tmp_path / "config.json").write_text(json.dumps(resolved))
    again = cfg.validate_config(cfg.load_config(tmp_path / "config.json"), registries=registries)
    assert again == run


def test_trainer_grad_norm_is_opt_in_and_prefetch_0_means_no_thread():
    trainer = TrainerConfig.from_dict({"epochs": 1})
    assert (trainer.log_grad_norm, trainer.prefetch) == (False, None)  # None: fit picks (see its docs)
    assert TrainerConfig.from_dict({"epochs": 1, "prefetch": 0, "log_grad_norm": True}).prefetch == 0
    with pytest.raises(ConfigError, match=r"trainer\.prefetch: expected an int >= 0, got -1"):
        TrainerConfig.from_dict({"epochs": 1, "prefetch": -1})
    with pytest.raises(ConfigError, match=r"trainer\.log_grad_norm: expected"):
        TrainerConfig.from_dict({"epochs": 1, "log_grad_norm": "yes"})
