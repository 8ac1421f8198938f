"""The generic hook-based trainer behind ``amodal train CONFIG.yaml`` (see ``amodal.training.task``)."""
from amodal.training.trainer.config import OptimizerConfig, ScheduleConfig, TrainConfig, load_train_config, train_config_from_dict
from amodal.training.trainer.distributed import DistContext, init_distributed
from amodal.training.trainer.hooks import HookBase
from amodal.training.trainer.trainer import Trainer, TrainSummary

__all__ = [
    "DistContext", "HookBase", "OptimizerConfig", "ScheduleConfig", "TrainConfig", "TrainSummary", "Trainer",
    "init_distributed", "load_train_config", "train_config_from_dict",
]
