"""Official EoRaS checkpoints (amazon-science/efficient-object-centric-representation-amodal-segmentation,
``checkpoint-0050.pth.gz``: ``{"model": state_dict of Amodal_imgcrop_simplebevcrop_bid, ...}``, saved from DDP so
keys may start with ``module.``; gzipped or not) → our ``EoRaS`` weights.

Name map (official → ours)::

    feature_extractor.{conv1,bn1,layer1..4,latlayer1..3,toplayer1..2}.*  → backbone.*       (same inner names)
    bev_generator.conv.layers.{2k}.layer.{j}.*   (Conv: 1×1, BN, 3×3, BN) → bev.down.{k}.{j}.*
    bev_generator.conv.layers.{2k+1}.Down.{j}.*  (stride-2 conv, BN)      → bev.down.{k}.{6+j}.*
    fea_fc.* → front_proj.*        bev_fc.* → bev_proj.*        slot.weight → fusion.slots.weight
    slot_update_bev.* → fusion.slots_from_bev.*     slot_update_feature.* → fusion.slots_from_front.*
    feature_update.* → fusion.front_from_slots.*    (nn.MultiheadAttention names = ours)
    dec_fm.* → amodal_decoder.*    dec_vm.* → visible_decoder.*

Dropped on purpose (named in the report): ``feature_extractor.conv6/conv7`` (P6/P7, unused by EoRaS),
``feature_extractor.mean/std`` (unused normalisation buffers), ``slot_pos/fea_pos/bev_pos`` (fixed sin-cos
positions, recomputed by our model; their shapes and values are checked). Anything else that does not fit —
missing, unexpected or misshaped — is a ``CheckpointError`` naming every such key.

The converted model keeps the official camera handling (``bev_projection: image_normalised``: Kubric's normalised
K of the whole image, applied to the crop's features) and the BEV grid pitch of the dataset it was trained on
(MOVi-D: the grid rotated by atan(1.5 / |(8.48, −7.51)|) about x, as the official ``camera_position``).
"""
from __future__ import annotations

import gzip
import io
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from amodal.errors import CheckpointError
from amodal.models.eoras.config import EoRaSConfig
from amodal.models.eoras.model import build_eoras
from amodal.models.eoras.parts import sin_cos_positions

#: official ``args.camera_position`` per dataset (main_movi.py); None = no grid rotation
CAMERA_POSITIONS: dict[str, tuple[float, float, float] | None] = {
    "movib": None, "movid": (8.48113, -7.50764, 1.5), "kubasic": (8.48113, -7.50764, 2.5), "kitti": None}

_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^feature_extractor\.", "backbone."),
    (r"^fea_fc\.", "front_proj."),
    (r"^bev_fc\.", "bev_proj."),
    (r"^slot\.weight$", "fusion.slots.weight"),
    (r"^slot_update_bev\.", "fusion.slots_from_bev."),
    (r"^slot_update_feature\.", "fusion.slots_from_front."),
    (r"^feature_update\.", "fusion.front_from_slots."),
    (r"^dec_fm\.", "amodal_decoder."),
    (r"^dec_vm\.", "visible_decoder."),
)
_DROPPED = re.compile(r"^feature_extractor\.(conv6|conv7)\.|^feature_extractor\.(mean|std)$")
_POSITIONS = ("slot_pos", "fea_pos", "bev_pos")
_BEV = re.compile(r"^bev_generator\.conv\.layers\.(\d+)\.(layer|Down)\.(\d+)\.(.+)$")


def grid_pitch_rad(dataset: str) -> float:
    """The official BEV grid rotation about x for ``dataset`` (0 without a camera position)."""
    if dataset not in CAMERA_POSITIONS:
        raise CheckpointError(f"unknown dataset {dataset!r}; known: {', '.join(CAMERA_POSITIONS)}")
    pos = CAMERA_POSITIONS[dataset]
    return 0.0 if pos is None else math.atan(pos[2] / math.sqrt(pos[0] ** 2 + pos[1] ** 2))


def read_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of an official checkpoint (gzipped or plain torch file; ``weights_only`` loading),
    ``module.`` prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise CheckpointError(f"{path}: gzip data is truncated or corrupt: {exc}") from exc
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle content, …
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch checkpoint: {exc}") from exc
    state = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state dict of tensors (expected the official {{'model': state_dict}})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def official_config(state: dict[str, torch.Tensor], dataset: str = "movib") -> EoRaSConfig:
    """The paper config with the sizes the checkpoint declares (slots, d_model, layers, FFN width) and the official
    camera handling of ``dataset``."""
    slots = state.get("slot.weight")
    if slots is None or slots.ndim != 2:
        raise CheckpointError("official state dict has no 2-D 'slot.weight'; not an EoRaS checkpoint")
    layers = {int(m.group(1)) for k in state if (m := re.match(r"^feature_update\.layers\.(\d+)\.", k))}
    ffn = state.get("feature_update.layers.0.linear1.weight")
    base = EoRaSConfig()
    return replace(base, num_slots=int(slots.shape[0]), d_model=int(slots.shape[1]),
                   num_layers=max(layers) + 1 if layers else base.num_layers,
                   ffn_dim=int(ffn.shape[0]) if ffn is not None else base.ffn_dim,
                   bev_projection="image_normalised", bev_pitch_rad=grid_pitch_rad(dataset))


def _rename(key: str) -> str | None:
    m = _BEV.match(key)
    if m:
        layer, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        if (kind == "layer") != (layer % 2 == 0):
            return None
        return f"bev.down.{layer // 2}.{j if kind == 'layer' else 6 + j}.{rest}"
    for pattern, repl in _RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def convert_official_state(state: dict[str, torch.Tensor], config: EoRaSConfig
                           ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our state dict, the official keys dropped on purpose). CheckpointError naming every missing, unexpected
    and misshaped key."""
    with torch.device("meta"):  # names, shapes and dtypes only: no 70 M-parameter initialisation
        own = build_eoras(config=config).state_dict()
    out: dict[str, torch.Tensor] = {}
    dropped, unexpected, misshaped = [], [], []
    expected_pos = {"slot_pos": config.num_slots, "fea_pos": config.feature_size ** 2,
                    "bev_pos": config.bev_size[0] * config.bev_size[1]}
    for key, value in state.items():
        if _DROPPED.match(key):
            dropped.append(key)
            continue
        if key in _POSITIONS:
            want = sin_cos_positions(expected_pos[key], config.d_model)
            if tuple(value.shape) != tuple(want.shape):
                misshaped.append(f"{key}: checkpoint {tuple(value.shape)} vs expected {tuple(want.shape)}")
            elif not torch.allclose(value.float(), want, atol=1e-4):
                misshaped.append(f"{key}: not the sin-cos positions this model computes")
            else:
                dropped.append(key)
            continue
        ours = _rename(key)
        if ours is None or ours not in own:
            unexpected.append(key if ours is None else f"{key} (→ {ours})")
            continue
        if value.shape != own[ours].shape:
            misshaped.append(f"{key} → {ours}: checkpoint {tuple(value.shape)} vs model {tuple(own[ours].shape)}")
            continue
        out[ours] = value.to(own[ours].dtype)
    missing = sorted(k for k in own if k not in out)
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing in the checkpoint: {', '.join(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {', '.join(sorted(unexpected))}")
        if misshaped:
            parts.append(f"{len(misshaped)} misshaped: {'; '.join(misshaped)}")
        raise CheckpointError("official EoRaS checkpoint does not fit our model: " + " | ".join(parts))
    return out, sorted(dropped)


def convert_checkpoint(src: str | Path, dst: str | Path, *, dataset: str = "movib") -> dict[str, Any]:
    """Convert an official checkpoint file to our safetensors weights with a metadata record; returns the record."""
    from amodal.models.weights import save_weights

    state = read_official_checkpoint(src)
    config = official_config(state, dataset)
    try:
        converted, dropped = convert_official_state(state, config)
    except CheckpointError as exc:
        raise CheckpointError(f"{src}: {exc}") from None
    metadata = {
        "model": "eoras", "config": config.to_dict(),
        "classes": "agnostic (one amodal mask per given object track)",
        "input_size": {"height": config.input_size, "width": config.input_size,
                       "crop": f"{config.enlarge}x the visible box, clipped to the image, resized"},
        "mask_size": config.mask_size,
        "normalisation": {"input": "RGB float in [0, 1]", "mean": None, "std": None},
        "intrinsics": "Kubric-normalised K of the whole image (official bev_projection: image_normalised)",
        "training_data": f"official EoRaS checkpoint ({dataset}), converted from {Path(src).name}",
        "metric": "see the EoRaS paper (mIoU_full / mIoU_occ)", "dropped_official_keys": dropped,
    }
    save_weights(converted, dst, metadata)
    return metadata
