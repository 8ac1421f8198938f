"""``TrainConfig``: the trainer's part of a training YAML, one frozen dataclass validated on construction.

    task: cmasktrack                 # a name in amodal.training.tasks.TASKS, or "package.module:Class"
    task_config: {...}               # handed to the task's constructor as a dict (the task validates it)
    out_dir: runs/cmasktrack
    seed: 0
    max_steps: 20000
    batch_size: 4                    # per rank
    optimizer: {name: sgd, lr: 0.02, momentum: 0.9, weight_decay: 1.0e-4}
    schedule: {name: step, warmup_steps: 500, warmup_factor: 0.001, milestones: [0.75, 0.9], gamma: 0.1}
    grad_clip_norm: 10.0             # null: no clipping
    amp: auto                        # auto (bf16 on CUDA, none on CPU) | bf16 | fp16 | none
    checkpoint_every: 1000
    keep_checkpoints: 3
    eval_every: 2000                 # 0: evaluate only at the end
    log_every: 20
    export: model.safetensors        # relative paths are inside out_dir
    export_weights: final            # final | best (the weights of the best evaluation)
    device: auto                     # auto | cpu | cuda
    find_unused_parameters: false    # DistributedDataParallel option
    dist_timeout_s: 1800             # collective timeout (ranks wait at a barrier while rank 0 evaluates)

Unknown keys and bad values raise ``ConfigError`` naming the key (``optimizer.lr``, ``schedule.milestones``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amodal.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "none")
DEVICES = ("auto", "cpu", "cuda")
EXPORT_WEIGHTS = ("final", "best")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _need_int(key: str, value: Any, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")


def _need_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class OptimizerConfig:
    """``optimizer:`` — SGD (momentum) or AdamW; ``weight_decay`` applies to every parameter."""

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        _need_choice("optimizer.name", self.name, OPTIMIZERS)
        if not _is_number(self.lr) or self.lr <= 0:
            raise ConfigError(f"optimizer.lr must be a number > 0, got {self.lr!r}")
        if not _is_number(self.momentum) or not 0 <= self.momentum < 1:
            raise ConfigError(f"optimizer.momentum must be in [0, 1), got {self.momentum!r}")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"optimizer.weight_decay must be a number >= 0, got {self.weight_decay!r}")
        betas = self.betas
        if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas):
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {betas!r}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))


@dataclass(frozen=True)
class ScheduleConfig:
    """``schedule:`` — linear warm-up from ``warmup_factor`` × lr to lr over ``warmup_steps``, then
    ``step`` (× ``gamma`` at each milestone), ``cosine`` (to ``final_factor`` × lr at ``max_steps``) or
    ``constant``.  ``milestones`` are all fractions of ``max_steps`` in (0, 1) or all step numbers (ints)."""

    name: str = "constant"
    warmup_steps: int = 0
    warmup_factor: float = 0.001
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    final_factor: float = 0.0

    def __post_init__(self) -> None:
        _need_choice("schedule.name", self.name, SCHEDULES)
        _need_int("schedule.warmup_steps", self.warmup_steps, 0)
        if not _is_number(self.warmup_factor) or not 0 < self.warmup_factor <= 1:
            raise ConfigError(f"schedule.warmup_factor must be in (0, 1], got {self.warmup_factor!r}")
        if not _is_number(self.gamma) or not 0 < self.gamma <= 1:
            raise ConfigError(f"schedule.gamma must be in (0, 1], got {self.gamma!r}")
        if not _is_number(self.final_factor) or not 0 <= self.final_factor <= 1:
            raise ConfigError(f"schedule.final_factor must be in [0, 1], got {self.final_factor!r}")
        ms = self.milestones
        if not isinstance(ms, (list, tuple)) or not all(_is_number(m) for m in ms):
            raise ConfigError(f"schedule.milestones must be a list of numbers, got {ms!r}")
        fractions = all(isinstance(m, float) and 0 < m < 1 for m in ms)
        steps = all(_is_int(m) and m >= 1 for m in ms)
        if ms and not (fractions or steps):
            raise ConfigError(
                f"schedule.milestones must be all fractions of max_steps in (0, 1) or all step numbers >= 1, got {list(ms)!r}"
            )
        if list(ms) != sorted(ms):
            raise ConfigError(f"schedule.milestones must be increasing, got {list(ms)!r}")
        object.__setattr__(self, "milestones", tuple(ms))

    def milestone_steps(self, max_steps: int) -> tuple[int, ...]:
        """Milestones as step numbers (fractions are scaled by ``max_steps``)."""
        return tuple(int(round(m * max_steps)) if isinstance(m, float) else int(m) for m in self.milestones)


@dataclass(frozen=True)
class TrainConfig:
    """Everything the trainer needs; the task's own settings travel untouched in ``task_config``."""

    task: str
    max_steps: int
    batch_size: int
    task_config: dict[str, Any] = field(default_factory=dict)
    out_dir: str = ""
    seed: int = 0
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad_clip_norm: float | None = None
    amp: str = "auto"
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 1000
    log_every: int = 20
    export: str = "model.safetensors"
    export_weights: str = "final"
    device: str = "auto"
    find_unused_parameters: bool = False
    dist_timeout_s: int = 1800

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ConfigError(f"task must be a non-empty string, got {self.task!r}")
        if not isinstance(self.task_config, dict):
            raise ConfigError(f"task_config must be a mapping, got {type(self.task_config).__name__}")
        if not isinstance(self.out_dir, str):
            raise ConfigError(f"out_dir must be a path string, got {self.out_dir!r}")
        if not self.out_dir:
            object.__setattr__(self, "out_dir", f"runs/{self.task.replace(':', '_')}")
        _need_int("seed", self.seed, 0)
        _need_int("max_steps", self.max_steps, 1)
        _need_int("batch_size", self.batch_size, 1)
        if not isinstance(self.optimizer, OptimizerConfig):
            raise ConfigError(f"optimizer must be a mapping, got {self.optimizer!r}")
        if not isinstance(self.schedule, ScheduleConfig):
            raise ConfigError(f"schedule must be a mapping, got {self.schedule!r}")
        if self.schedule.warmup_steps > self.max_steps:
            raise ConfigError(f"schedule.warmup_steps ({self.schedule.warmup_steps}) exceeds max_steps ({self.max_steps})")
        bad = [m for m in self.schedule.milestone_steps(self.max_steps) if m > self.max_steps]
        if bad:
            raise ConfigError(f"schedule.milestones {bad} lie beyond max_steps ({self.max_steps})")
        if self.grad_clip_norm is not None and (not _is_number(self.grad_clip_norm) or self.grad_clip_norm <= 0):
            raise ConfigError(f"grad_clip_norm must be a number > 0 or null, got {self.grad_clip_norm!r}")
        _need_choice("amp", self.amp, AMP_MODES)
        _need_int("checkpoint_every", self.checkpoint_every, 1)
        _need_int("keep_checkpoints", self.keep_checkpoints, 1)
        _need_int("eval_every", self.eval_every, 0)
        _need_int("log_every", self.log_every, 1)
        if not isinstance(self.export, str) or not self.export.endswith(".safetensors"):
            raise ConfigError(f"export must be a path ending in .safetensors, got {self.export!r}")
        _need_choice("export_weights", self.export_weights, EXPORT_WEIGHTS)
        _need_choice("device", self.device, DEVICES)
        if not isinstance(self.find_unused_parameters, bool):
            raise ConfigError(f"find_unused_parameters must be true or false, got {self.find_unused_parameters!r}")
        _need_int("dist_timeout_s", self.dist_timeout_s, 1)

    @property
    def out_path(self) -> Path:
        return Path(self.out_dir)

    @property
    def export_path(self) -> Path:
        path = Path(self.export)
        return path if path.is_absolute() else self.out_path / path

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists) that ``train_config_from_dict`` reads back."""
        out = dataclasses.asdict(self)
        out["optimizer"]["betas"] = list(self.optimizer.betas)
        out["schedule"]["milestones"] = list(self.schedule.milestones)
        return out


def _section(cls: type, key: str, raw: Any) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} must be a mapping, got {raw!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{key}.{u}' for u in unknown)}; known: {', '.join(sorted(names))}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def train_config_from_dict(raw: Any, **overrides: Any) -> TrainConfig:
    """``TrainConfig`` from a parsed YAML mapping; ``overrides`` (non-None values) replace top-level keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a training config must be a mapping at the top level, got {type(raw).__name__}")
    raw = dict(raw)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in the training config; known: {', '.join(sorted(names))}")
    missing = [k for k in ("task", "max_steps", "batch_size") if k not in raw]
    if missing:
        raise ConfigError(f"the training config lacks required key(s) {', '.join(missing)}")
    raw["optimizer"] = _section(OptimizerConfig, "optimizer", raw.get("optimizer"))
    raw["schedule"] = _section(ScheduleConfig, "schedule", raw.get("schedule"))
    if raw.get("task_config") is None:
        raw["task_config"] = {}
    return TrainConfig(**raw)


def load_train_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a training YAML (``yaml.safe_load``) into a validated ``TrainConfig``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return train_config_from_dict(raw, **overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
