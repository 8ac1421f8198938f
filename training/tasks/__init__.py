"""Training tasks by name (``task:`` in a training config), imported only when used.

``task:`` is either a name below or an import path ``package.module:Class``.  A task class is constructed
with the config's ``task_config`` mapping and implements ``amodal.training.task.Task``.
"""
from __future__ import annotations

import importlib
from typing import Any

from amodal.errors import ConfigError

TASKS: dict[str, str] = {
    "cmasktrack": "amodal.training.tasks.cmasktrack:CMaskTrackTask",
    "mbf": "amodal.training.tasks.mbf:MBFTask",
    "xray": "amodal.training.tasks.xray:XrayTask",
    "eoras": "amodal.training.tasks.eoras:EoRaSTask",
    "sas": "amodal.training.tasks.sas:SASTask",
    "maskrcnn": "amodal.training.tasks.maskrcnn:MaskRCNNTask",
}


def resolve_task(name: str) -> type:
    """The task class for a registered name or a ``module:Class`` path."""
    spec = TASKS.get(name, name)
    if ":" not in spec:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))} (or give package.module:Class)")
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"task {name!r}: cannot import {module_name}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"task {name!r}: {module_name} has no class {class_name}")
    return cls


def build_task(name: str, task_config: dict[str, Any]) -> Any:
    """Construct the task from its config mapping."""
    return resolve_task(name)(dict(task_config))
