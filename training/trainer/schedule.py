"""Learning-rate schedule as a multiplier of the base lr: linear warm-up, then step / cosine / constant.

The factor is a pure function of the number of completed steps, so a ``LambdaLR`` rebuilt from the
config and loaded with its saved ``last_epoch`` continues exactly (the function itself is never saved).
"""
from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable

import torch

from amodal.training.trainer.config import ScheduleConfig


def lr_factor(config: ScheduleConfig, max_steps: int) -> Callable[[int], float]:
    """``factor(step)``: the lr multiplier after ``step`` completed optimiser steps."""
    milestones = config.milestone_steps(max_steps)

    def factor(step: int) -> float:
        if config.name == "step":
            base = config.gamma ** bisect_right(milestones, step)
        elif config.name == "cosine":
            progress = min(step, max_steps) / max_steps
            base = config.final_factor + (1.0 - config.final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            base = 1.0
        if step < config.warmup_steps:
            alpha = step / config.warmup_steps
            base *= config.warmup_factor * (1.0 - alpha) + alpha
        return base

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, config: ScheduleConfig, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping once per optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, max_steps))
