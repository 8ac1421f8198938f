"""MBF (occluded person ReID): ViT backbone, parsing-guided parts, foreground recovery, losses, loading."""
from amodal.models.mbf.config import MBFConfig, tiny_config
from amodal.models.mbf.losses import (
    MBFTargets,
    batch_hard_triplet_loss,
    id_loss,
    mbf_losses,
    parsing_loss,
    recovery_loss,
    separation_loss,
)
from amodal.models.mbf.model import MBF, LoadedMBF, MBFOutputs, build_mbf, load_mbf
from amodal.models.mbf.parts import vote_patch_labels

__all__ = [
    "LoadedMBF", "MBF", "MBFConfig", "MBFOutputs", "MBFTargets", "batch_hard_triplet_loss", "build_mbf", "id_loss",
    "load_mbf", "mbf_losses", "parsing_loss", "recovery_loss", "separation_loss", "tiny_config", "vote_patch_labels",
]
