"""The one stage registry: a stage name → its settings dataclass and its factory.

Adding a stage touches this table and the stage's own files, nothing else: the config loader, the command line
(``--pipeline a,b``), ``--help`` and the shipped-weights lookup all read it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from amodal.engine.stage import Stage
from amodal.engine.stages.eoras import EoRaSSettings, EoRaSStage
from amodal.engine.stages.identity import IdentitySettings, IdentityStage
from amodal.engine.stages.layers import LayersSettings, LayersStage
from amodal.engine.stages.maskrcnn import MaskRCNNSettings, MaskRCNNStage
from amodal.engine.stages.ovis import OvisSettings, OvisStage
from amodal.engine.stages.reid import ReidSettings, ReidStage
from amodal.engine.stages.xray import XraySettings, XrayStage
from amodal.errors import ConfigError
from amodal.settings import build_settings


@dataclass(frozen=True)
class StageEntry:
    settings: type
    factory: Callable[[Any], Stage]
    summary: str


STAGES: Mapping[str, StageEntry] = {
    "identity": StageEntry(IdentitySettings, IdentityStage, "passes objects through (the engine's own overhead)"),
    "maskrcnn": StageEntry(MaskRCNNSettings, MaskRCNNStage, "Mask R-CNN instance segmentation (primary)"),
    "ovis": StageEntry(OvisSettings, OvisStage, "CMaskTrack R-CNN: occluded instances with track ids (primary)"),
    "reid": StageEntry(ReidSettings, ReidStage, "MBF person ReID + faiss gallery: embeddings, global ids (after ovis)"),
    "eoras": StageEntry(EoRaSSettings, EoRaSStage, "EoRaS amodal masks and occlusion levels of tracked objects (after ovis)"),
    "layers": StageEntry(LayersSettings, LayersStage, "SAS diffusion: occlusion layers, one object per layer region (slow: newest frame)"),
    "xray": StageEntry(XraySettings, XrayStage, "bilayer SAM: prohibited items with occluder masks in X-ray scans (primary)"),
}


def stage_entry(name: str, where: str = "pipeline") -> StageEntry:
    """The registry entry of ``name``; ConfigError naming it and listing the known stages."""
    entry = STAGES.get(name)
    if entry is None:
        raise ConfigError(f"{where}: unknown stage {name!r}; known stages: {', '.join(STAGES)}")
    return entry


def stage_settings(name: str, raw: Mapping[str, Any] | None, where: str = "pipeline") -> Any:
    """The frozen settings of stage ``name`` from a mapping (unknown keys are errors that name them)."""
    return build_settings(stage_entry(name, where).settings, raw, f"{where} ({name})")


def build_stage(name: str, settings: Any = None) -> Stage:
    """A new stage ``name`` with ``settings`` (its settings dataclass, a mapping, or None for the defaults)."""
    entry = stage_entry(name)
    if not isinstance(settings, entry.settings):
        settings = stage_settings(name, settings)
    return entry.factory(settings)
