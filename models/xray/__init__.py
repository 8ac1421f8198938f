"""Prohibited-item segmentation in X-ray scans with occluder-aware bilayer SAM decoding (SYSTEMS §4)."""
from amodal.models.xray.config import PIDRAY_CLASSES, XraySamConfig, tiny_config, vit_b_config
from amodal.models.xray.model import (
    AnchorPrompter,
    LoadedXray,
    SimpleFPN,
    XrayBatch,
    XrayDetections,
    XraySam,
    XrayTargets,
    XrayTrainOutputs,
    build_xray,
    frozen_sam_keys,
    load_xray,
    occlusion_levels,
    scanner_image_to_tensor,
    trained_state,
    xray_losses,
)
from amodal.models.xray.sam import DecoderOutput, add_lora, build_sam, load_sam_folder, run_mask_decoder, sam_config

__all__ = [
    "AnchorPrompter", "DecoderOutput", "LoadedXray", "PIDRAY_CLASSES", "SimpleFPN", "XrayBatch", "XrayDetections",
    "XraySam", "XraySamConfig", "XrayTargets", "XrayTrainOutputs", "add_lora", "build_sam", "build_xray", "frozen_sam_keys",
    "load_sam_folder", "load_xray", "occlusion_levels", "run_mask_decoder", "sam_config", "scanner_image_to_tensor",
    "tiny_config", "trained_state", "vit_b_config", "xray_losses",
]
