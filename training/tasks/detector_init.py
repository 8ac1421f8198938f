"""Starting a detector's training from existing Mask R-CNN weights (``task_config.init_from``): ours (any shipped
or trained ``maskrcnn`` file) or a torchvision COCO state dict, with ``class_map`` sending the weights' classes to
the training data's categories.  Shared by the ``maskrcnn`` and ``cmasktrack`` tasks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from amodal.errors import ConfigError
from amodal.models.maskrcnn import MaskRCNNConfig
from amodal.models.maskrcnn_import import (
    read_detector_weights,
    resolve_class_map,
    transfer_detector_weights,
    with_source_normalisation,
)

_ARCHITECTURE_KEYS = ("backbone", "variant", "box_head_dim", "mask_head_channels")
_TINY_KEYS = ("fpn_channels", "tiny_widths")


def check_init_keys(init_from: Any, class_map: Any) -> None:
    """ConfigError for an ``init_from`` that is not a path, or a ``class_map`` that is not a mapping or has no
    ``init_from``."""
    if init_from is not None and (not isinstance(init_from, str) or not init_from):
        raise ConfigError(f"task_config.init_from must name a weights file, got {init_from!r}")
    if class_map is not None:
        if init_from is None:
            raise ConfigError("task_config.class_map needs init_from (the weights whose classes it maps)")
        if not isinstance(class_map, Mapping):
            raise ConfigError(f"task_config.class_map must map source class names to category names, "
                              f"got {type(class_map).__name__}")


@dataclass(frozen=True)
class DetectorInit:
    """Weights to start from: ``state`` (our Mask R-CNN names), their ``source`` config and metadata record."""

    path: str
    class_map: Mapping[str, str] | None
    state: Mapping[str, torch.Tensor]
    source: MaskRCNNConfig
    metadata: Mapping[str, Any]

    def apply(self, model: nn.Module, target_classes: Sequence[str]) -> dict[str, Any]:
        """Copy the weights into ``model``'s detector (class rows through ``class_map``); what was done."""
        report = transfer_detector_weights(model, self.state, self.source.class_names, target_classes, self.class_map)
        return {"init_from": self.path, "source": self.metadata.get("source"),
                "source_layout": self.metadata.get("source_layout"), **report.to_dict()}


def read_detector_init(path: str, class_map: Mapping[str, str] | None, own: MaskRCNNConfig,
                       target_classes: Sequence[str]) -> tuple[DetectorInit, MaskRCNNConfig]:
    """The weights at ``path`` checked against the detector config ``own`` (ConfigError naming the keys to
    change, and every unknown ``class_map`` name), and ``own`` with the weights' input normalisation."""
    state, source, metadata = read_detector_weights(path)
    keys = _ARCHITECTURE_KEYS + (_TINY_KEYS if source.backbone == "tiny" else ())
    wrong = [k for k in keys if getattr(own, k) != getattr(source, k)]
    if wrong:
        settings = ", ".join(f"{k}: {getattr(source, k)!r} (not {getattr(own, k)!r})" for k in wrong)
        raise ConfigError(f"task_config does not fit init_from {path}: set {settings}")
    resolve_class_map(class_map, source.class_names, target_classes)
    return DetectorInit(path, class_map, state, source, metadata), with_source_normalisation(own, source)



