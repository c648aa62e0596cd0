"""Writes ``config-reference.md`` at build time from the code that checks configs, so the page cannot drift.

Every task's sections with their keys and defaults (``Task.resolve({})``: what a config that sets nothing
becomes), the ``trainer`` keys with their meaning (``TrainerConfig``'s docstring), and every component a
config can name by ``type`` (the registries: models, datasets, losses, optimizers, learning-rate schedules)
with its parameters and defaults.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
from pathlib import Path

from funcnet.config.registry import DATASETS, LOSSES, MODELS, OPTIMIZERS, SCHEDULES
from funcnet.config.tasks import TASKS
from funcnet.train.options import TrainerConfig

EXPERIMENT_TASKS = ("funcnet.experiments.charlm_task", "funcnet.experiments.tree_sentiment",
                    "funcnet.experiments.nmn_task")  # fmt: skip


def _first_line(obj) -> str:
    return (inspect.getdoc(obj) or "").split("\n\n")[0].replace("\n", " ")


def _trainer_meanings() -> dict[str, str]:
    doc = inspect.getdoc(TrainerConfig) or ""
    attributes = doc.split("Attributes:", 1)[1].split("Example:", 1)[0]
    meanings, key = {}, None
    for line in attributes.splitlines():
        match = re.match(r"  (\w+): (.*)", line)
        if match:
            key, meanings[match.group(1)] = match.group(1), match.group(2)
        elif key and line.strip():
            meanings[key] += " " + line.strip()
    return meanings


def _value(value) -> str:
    return "`" + json.dumps(value) + "`"


def _section_table(section: str, values: dict, meanings: dict[str, str]) -> list[str]:
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, value in values.items():
        rows.append(f"| `{section}.{key}` | {_value(value)} | {meanings.get(key, '').replace('|', '/')} |")
    return [*rows, ""]


def _registry_table(registry) -> list[str]:
    rows = ["| `type` | parameters (defaults) | what |", "| --- | --- | --- |"]
    for name in registry.names():
        factory = registry.get(name)
        params = ", ".join(f"`{p.name}={p.default!r}`" if p.default is not p.empty else f"`{p.name}`"
                           for p in inspect.signature(factory).parameters.values()
                           if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))  # fmt: skip
        rows.append(f"| `{name}` | {params or '-'} | {_first_line(factory).replace('|', '/')} |")
    return [*rows, ""]


def _trainer_defaults() -> dict:
    return {field.name: field.default for field in dataclasses.fields(TrainerConfig)}


def write(path: Path) -> None:
    for module in EXPERIMENT_TASKS:
        importlib.import_module(module)  # registers its task
    trainer = _trainer_meanings()
    lines = ["# Config reference", "",
             "Generated from the code that checks configs when the docs are built: every key below is one a config",
             "may set, with the value it takes when the config does not. A config names its task (`task = ...`,",
             "`supervised` without the key) and the modules that register it (`imports = [...]`); anything else is",
             "an error naming the key path and the nearest allowed key.", "",
             "## `trainer`: every task", "", *_section_table("trainer", _trainer_defaults(), trainer)]  # fmt: skip
    for name in TASKS.names():
        if name == "supervised":
            continue
        task = TASKS.get(name)()
        defaults = task.resolve({})
        module = importlib.import_module(type(task).__module__)
        lines += [
            f"## Task `{name}`",
            "",
            _first_line(type(task)),
            "",
            f"`imports = {json.dumps(defaults['imports'])}`",
            "",
        ]
        for section, values in defaults.items():
            if section in ("task", "imports", "trainer") or not isinstance(values, dict):
                continue
            schema = getattr(module, f"{section.capitalize()}Section", None)
            about = _first_line(schema) if schema and dataclasses.is_dataclass(schema) else ""
            lines += [f"### `{section}`", "", about, "", *_section_table(section, values, {})]
        lines += ["Its `trainer` section starts from:", "", _value({k: v for k, v in defaults["trainer"].items()
                                                                 if v != _trainer_defaults()[k]}), ""]  # fmt: skip
    lines += ["## Task `supervised`: components by name", "",
              "A supervised config names a `model`, a `dataset`, a `loss` and an `optimizer` by `type`, with the",
              "factory's parameters beside it (`[model] type = \"mlp\"`, `hidden = [64]`).", ""]  # fmt: skip
    for title, registry in (("model", MODELS), ("dataset", DATASETS), ("loss", LOSSES),
                            ("optimizer", OPTIMIZERS), ("optimizer.learning_rate (schedules)", SCHEDULES)):  # fmt: skip
        lines += [f"### `{title}`", "", *_registry_table(registry)]
    path.write_text("\n".join(lines))
