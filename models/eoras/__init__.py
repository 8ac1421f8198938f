"""EoRaS (video amodal segmentation of object tracks): model, geometry, losses, loading, official checkpoints."""
from amodal.models.eoras.config import EoRaSConfig, tiny_config
from amodal.models.eoras.geometry import (
    crop_images,
    crop_intrinsics,
    enlarged_crop_boxes,
    intrinsics_from_fov,
    kubric_to_pixel_intrinsics,
    paste_masks,
)
from amodal.models.eoras.model import (
    EoRaS,
    EoRaSFrameOutput,
    EoRaSOutputs,
    EoRaSTargets,
    EoRaSTrackState,
    LoadedEoRaS,
    build_eoras,
    eoras_losses,
    focal_loss,
    load_eoras,
)

__all__ = [
    "EoRaS", "EoRaSConfig", "EoRaSFrameOutput", "EoRaSOutputs", "EoRaSTargets", "EoRaSTrackState", "LoadedEoRaS",
    "build_eoras", "crop_images", "crop_intrinsics", "enlarged_crop_boxes", "eoras_losses", "focal_loss",
    "intrinsics_from_fov", "kubric_to_pixel_intrinsics", "load_eoras", "paste_masks", "tiny_config",
]
