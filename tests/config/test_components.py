"""Registered components: sections checked against their factory's signature, then built."""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Literal

import pytest

from funcnet.config.components import build_component, validate_component
from funcnet.config.registry import Registry
from funcnet.validation import ConfigError, check_arguments, require

if TYPE_CHECKING:
    from some_module_that_does_not_exist import Widget


# Annotations here are strings (``from __future__ import annotations``): the checks must resolve them.
def toy_model(
    features: int,
    hidden: list[int] | None = None,
    rate: float = 0.1,
    activation: Literal["relu", "tanh"] = "relu",
    sizes: tuple[int, int] = (1, 2),
    options: dict[str, bool] | None = None,
    *,
    name: str = "toy",
):
    return {"features": features, "hidden": hidden, "rate": rate, "activation": activation, "sizes": sizes,
            "options": options, "name": name}  # fmt: skip


class ToyDataset:
    def __init__(self, size: int, seed: int = 0):
        self.size, self.seed = size, seed


def toy_loss(**options):
    return options


def widget_model(widget: Widget | None = None, depth: int = 1):
    return widget, depth


def strict_model(units: int):
    if units > 100:
        raise ValueError(f"units must be <= 100, got {units}")
    return units


def ranged_model(units: int, rate: float = 0.0):
    require(0 <= rate < 1, "rate", "a number in [0, 1)", rate)
    return units, rate


@pytest.fixture
def registries():
    models, datasets, losses = Registry("model"), Registry("dataset"), Registry("loss")
    models.register("toy")(toy_model)
    models.register("widget")(widget_model)
    models.register("strict")(strict_model)
    models.register("ranged")(ranged_model)
    datasets.register("toy_data")(ToyDataset)
    losses.register("toy_loss")(toy_loss)
    return {"model": models, "dataset": datasets, "loss": losses}


def check_error(error: pytest.ExceptionInfo, path: str, *fragments: str):
    assert error.value.path == path, str(error.value)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)


def test_config_error_pickles():
    error = pickle.loads(pickle.dumps(ConfigError("trainer.epochs", "expected an int")))
    assert (error.path, str(error)) == ("trainer.epochs", "trainer.epochs: expected an int")


def test_unknown_type_with_suggestion(registries):
    with pytest.raises(ConfigError) as error:
        validate_component(registries["model"], {"type": "tyo", "features": 4}, "model")
    check_error(error, "model.type", "unknown model 'tyo'. Did you mean 'toy'?", "Allowed: ranged, strict, toy, widget")


@pytest.mark.parametrize(
    ("section", "path", "message"),
    [
        (3, "model", 'expected a table with a "type" key, got 3 (an int)'),
        ({"features": 4}, "model.type", "missing; name the component to use. Registered: ranged, strict, toy, widget"),
        ({"type": ["toy"]}, "model.type", 'expected a string, got ["toy"] (a list)'),
        ({"type": "toy"}, "model.features", "missing; model 'toy' requires 'features'"),
        ({"type": "toy", "features": 4, "featurs": 2}, "model.featurs", "Did you mean 'features'?"),
        ({"type": "toy", "features": 4, "dropout": 0.1}, "model.dropout", "Allowed: activation, features, hidden,"),
        ({"type": "toy", "features": "4"}, "model.features", 'expected an int, got "4" (a string)'),
        ({"type": "toy", "features": True}, "model.features", "expected an int, got true (a boolean)"),
        ({"type": "toy", "features": 4, "hidden": [8, "x"]}, "model.hidden[1]", 'expected an int, got "x"'),
        ({"type": "toy", "features": 4, "hidden": 8}, "model.hidden", "expected a list or null, got 8 (an int)"),
        ({"type": "toy", "features": 4, "rate": "0.1"}, "model.rate", '"0.1" (a string); write numbers without quotes'),
        ({"type": "toy", "features": 4, "activation": "gelu"}, "model.activation", 'expected "relu" or "tanh"'),
        ({"type": "toy", "features": 4, "sizes": [1, 2, 3]}, "model.sizes", "expected a list of 2 items"),
        ({"type": "toy", "features": 4, "options": {"a": 1}}, "model.options.a", "expected true or false"),
        ({"type": "toy", "features": 4, "name": 5}, "model.name", "expected a string, got 5 (an int)"),
        ({"type": "widget", "depth": "deep"}, "model.depth", "expected an int"),
    ],
)
def test_component_sections_are_checked_against_the_factory(registries, section, path, message):
    with pytest.raises(ConfigError) as error:
        validate_component(registries["model"], section, "model")
    check_error(error, path, message)


def test_build_component_calls_the_factory_with_checked_values(registries):
    section = {"type": "toy", "features": 4, "hidden": [8], "rate": 1, "sizes": [3, 4], "options": {"a": True}}
    built = build_component(registries["model"], section, "model")
    assert built == {"features": 4, "hidden": [8], "rate": 1.0, "activation": "relu", "sizes": (3, 4),
                     "options": {"a": True}, "name": "toy"}  # fmt: skip
    assert type(built["rate"]) is float and type(built["sizes"]) is tuple
    assert section["sizes"] == [3, 4]  # the section itself is not changed


def test_class_factories_kwargs_factories_and_unresolvable_annotations(registries):
    dataset = build_component(registries["dataset"], {"type": "toy_data", "size": 5}, "dataset")
    assert (dataset.size, dataset.seed) == (5, 0)
    with pytest.raises(ConfigError, match=r"dataset\.size: expected an int"):
        validate_component(registries["dataset"], {"type": "toy_data", "size": 5.5}, "dataset")
    assert build_component(registries["loss"], {"type": "toy_loss", "anything": [1]}, "loss") == {"anything": [1]}
    # Widget is only imported under TYPE_CHECKING: that annotation is not checked, the others are.
    assert build_component(registries["model"], {"type": "widget", "widget": "w"}, "model") == ("w", 1)


def test_extra_arguments_from_the_caller(registries):
    dataset = build_component(registries["dataset"], {"type": "toy_data", "size": 5}, "dataset", seed=7)
    assert dataset.seed == 7
    validate_component(registries["model"], {"type": "toy"}, "model", provided=["features"])
    with pytest.raises(ConfigError) as error:
        build_component(registries["dataset"], {"type": "toy_data", "size": 5, "seed": 1}, "dataset", seed=7)
    check_error(error, "dataset.seed", "set by funcnet")
    with pytest.raises(ConfigError) as error:
        build_component(registries["model"], {"type": "strict", "units": 1}, "model", seed=7)
    check_error(error, "model.type", "does not take 'seed'")


def test_factory_errors_are_reported_with_the_section_path(registries):
    with pytest.raises(ConfigError) as error:
        build_component(registries["model"], {"type": "strict", "units": 101}, "model")
    check_error(error, "model", "model 'strict' rejected its config: units must be <= 100, got 101")
    assert isinstance(error.value.__cause__, ValueError)


def test_config_errors_raised_by_the_factory_get_the_section_path(registries):
    assert build_component(registries["model"], {"type": "ranged", "units": 2, "rate": 0.5}, "model") == (2, 0.5)
    with pytest.raises(ConfigError) as error:
        build_component(registries["model"], {"type": "ranged", "units": 2, "rate": 1.5}, "optimizer.model")
    check_error(error, "optimizer.model.rate", "optimizer.model.rate: expected a number in [0, 1), got 1.5")


def test_also_allowed_keys_are_accepted_suggested_and_not_passed(registries):
    section = {"type": "strict", "units": 3, "schedule": {"type": "x"}, "learning_rate": 0.1}
    extra = {"also_allowed": ["schedule", "learning_rate"]}
    assert build_component(registries["model"], section, "model", **extra) == 3
    with pytest.raises(ConfigError) as error:
        validate_component(registries["model"], {"type": "strict", "units": 3, "schedul": {}}, "model", **extra)
    check_error(error, "model.schedul", "Did you mean 'schedule'?", "Allowed: learning_rate, schedule, units.")
    with pytest.raises(ConfigError) as error:  # without also_allowed, the caller's keys are unknown to the factory
        validate_component(registries["model"], section, "model")
    check_error(error, "model.schedule", "unknown key for model 'strict'. Allowed: units.")
    # a key the caller passes may still be read by the caller from the section when it is also allowed
    validate_component(registries["model"], section, "model", provided=["units"], also_allowed=[*section])


def test_check_arguments_without_a_registry():
    def options(learning_rate: float, accumulate: int = 1):
        del learning_rate, accumulate

    assert check_arguments(options, {"learning_rate": 1, "type": "x"}, "optimizer", "an optimizer",
                           also_allowed=["type"]) == {"learning_rate": 1.0}  # fmt: skip
    with pytest.raises(ConfigError) as error:
        check_arguments(options, {"accumulate": 2}, "optimizer", "an optimizer")
    check_error(error, "optimizer.learning_rate", "missing; an optimizer requires 'learning_rate'.")
