"""A user's own Mask R-CNN weights: torchvision state dicts → our weights, and detector initialisation from them.

torchvision's ``maskrcnn_resnet50_fpn`` (``v1``) and ``maskrcnn_resnet50_fpn_v2`` (``v2``) are our
``build_maskrcnn`` with ``backbone="resnet50"`` and ``variant`` = the layout, so the parameter names are the same;
the import only has to

- tell v1 from v2 by the keys (``roi_heads.box_head.fc6.weight`` vs ``roi_heads.box_head.0.0.weight``) and read the
  class count from ``roi_heads.box_predictor.cls_score.weight`` (91 = COCO, background and the N/A slots included);
- rename the pre-0.13 torchvision names still found in the published hub files (``rpn.head.conv.{weight,bias}`` →
  ``rpn.head.conv.0.0.*``, ``roi_heads.mask_head.mask_fcnK.*`` → ``roi_heads.mask_head.{K-1}.0.*``,
  ``backbone.fpn.{inner,layer}_blocks.I.*`` → ``backbone.fpn.{inner,layer}_blocks.I.0.*``: what torchvision's own
  versioned ``_load_from_state_dict`` hooks do);
- drop or fill BatchNorm's ``num_batches_tracked`` counters (bookkeeping, unused in eval mode): a model built with
  ``weights=None`` has ``BatchNorm2d`` in its ResNet trunk, the COCO-pretrained one and ours have frozen BatchNorm;
- check every other tensor against our model: a missing, unexpected or misshaped key is a ``CheckpointError`` that
  names it.

``transfer_detector_weights`` initialises another detector that shares the Mask R-CNN parts (``backbone``, ``rpn``,
``roi_heads``: a Mask R-CNN or CMaskTrack R-CNN) from such weights: everything is copied except the class-specific
rows of the classifier, box regressor and mask predictor, which are copied by a class map (COCO name → our
category; several COCO names for one category average their rows).
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amodal.errors import CheckpointError, ConfigError
from amodal.models.maskrcnn import COCO_CATEGORY_NAMES, MaskRCNNConfig, build_maskrcnn
from amodal.models.weights import load_weights, save_weights

SOURCE = "torchvision COCO"
LAYOUTS = {"v1": "maskrcnn_resnet50_fpn", "v2": "maskrcnn_resnet50_fpn_v2"}
#: COCO val2017 AP torchvision publishes for its own COCO_V1 weights of each layout (not measured here)
PUBLISHED_COCO_AP = {"v1": {"box_map": 37.9, "mask_map": 34.6}, "v2": {"box_map": 47.4, "mask_map": 41.8}}
#: the class-specific tensors of the heads and the rows each class owns in them
CLASS_ROWS = {
    "roi_heads.box_predictor.cls_score.weight": 1,
    "roi_heads.box_predictor.cls_score.bias": 1,
    "roi_heads.box_predictor.bbox_pred.weight": 4,
    "roi_heads.box_predictor.bbox_pred.bias": 4,
    "roi_heads.mask_predictor.mask_fcn_logits.weight": 1,
    "roi_heads.mask_predictor.mask_fcn_logits.bias": 1,
}
DETECTOR_PREFIXES = ("backbone.", "rpn.", "roi_heads.")
_V1_KEY = "roi_heads.box_head.fc6.weight"
_V2_KEY = "roi_heads.box_head.0.0.weight"
_CLS_KEY = "roi_heads.box_predictor.cls_score.weight"
_LEGACY_RPN = re.compile(r"^rpn\.head\.conv\.(weight|bias)$")
_LEGACY_MASK = re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$")
_LEGACY_FPN = re.compile(r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(weight|bias)$")
_COUNTER = "num_batches_tracked"
_LISTED = 8  # keys named per kind in an error message


def _rename_legacy(key: str) -> str:
    """torchvision < 0.13 names (still in the published hub files) → today's."""
    m = _LEGACY_RPN.match(key)
    if m:
        return f"rpn.head.conv.0.0.{m.group(1)}"
    m = _LEGACY_MASK.match(key)
    if m:
        return f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"
    m = _LEGACY_FPN.match(key)
    if m:
        return f"backbone.fpn.{m.group(1)}.{m.group(2)}.0.{m.group(3)}"
    return key


def _strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of a DistributedDataParallel save start with ``module.``; drop it when every key has it."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def detect_variant(state: Mapping[str, torch.Tensor], path: str | Path = "state dict") -> str:
    """``v1`` or ``v2`` from the box head's keys; CheckpointError when it is neither layout."""
    if _V1_KEY in state and _V2_KEY not in state:
        return "v1"
    if _V2_KEY in state and _V1_KEY not in state:
        return "v2"
    heads = sorted(k for k in state if k.startswith("roi_heads.box_head."))[:_LISTED]
    raise CheckpointError(f"{path}: not a torchvision Mask R-CNN layout: expected {_V1_KEY!r} (maskrcnn_resnet50_fpn) "
                          f"or {_V2_KEY!r} (maskrcnn_resnet50_fpn_v2); box head keys found: {heads or 'none'}")


def torchvision_config(state: Mapping[str, torch.Tensor], *, class_names: Sequence[str] | None = None,
                       path: str | Path = "state dict", **overrides: Any) -> MaskRCNNConfig:
    """Our config for a torchvision Mask R-CNN state dict: ResNet-50-FPN in the detected layout, torchvision's
    defaults (800/1333 resize, ImageNet normalisation, 1000 proposals, 100 detections), ``overrides`` on top.
    ``class_names`` (without the background) default to COCO's 90 (the N/A slots included) for a 91-row head."""
    variant = detect_variant(state, path)
    if _CLS_KEY not in state:
        raise CheckpointError(f"{path}: no {_CLS_KEY!r}: not a Mask R-CNN state dict")
    rows = int(state[_CLS_KEY].shape[0])
    if class_names is None:
        if rows != len(COCO_CATEGORY_NAMES) + 1:
            raise ConfigError(f"{path}: the classifier has {rows} rows ({rows - 1} classes + background), not COCO's "
                              f"91; give the {rows - 1} class names (--classes)")
        class_names = COCO_CATEGORY_NAMES
    if len(class_names) != rows - 1:
        raise ConfigError(f"{path}: {len(class_names)} class names given, the classifier has {rows - 1} classes "
                          f"(+ background)")
    try:
        return MaskRCNNConfig(class_names=tuple(class_names), backbone="resnet50", variant=variant, **overrides)
    except TypeError as exc:
        raise ConfigError(f"unknown Mask R-CNN setting: {exc}") from exc


def expected_state(config: MaskRCNNConfig) -> dict[str, torch.Size]:
    """Key → shape of ``build_maskrcnn(config)``'s state dict (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        model = build_maskrcnn(config=config)
    return {k: v.shape for k, v in model.state_dict().items()}


def layout_mismatch(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]) -> list[str]:
    """Human-readable differences of ``state`` from ``expected`` (empty when they match): every missing,
    unexpected and misshaped key is counted, the first few of each are named."""
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    misshaped = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k])}"
                 for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped)):
        if keys:
            more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
            parts.append(f"{len(keys)} {what}: {', '.join(keys[:_LISTED])}{more}")
    return parts


def convert_torchvision_state(state: Mapping[str, torch.Tensor], config: MaskRCNNConfig,
                              path: str | Path = "state dict") -> dict[str, torch.Tensor]:
    """``state`` (torchvision's names, legacy names allowed) as the state dict of ``build_maskrcnn(config)``:
    legacy names renamed, BatchNorm counters dropped or filled with 0; CheckpointError naming every other
    difference."""
    renamed = {_rename_legacy(k): v for k, v in _strip_module_prefix(state).items()}
    expected = expected_state(config)
    out: dict[str, torch.Tensor] = {}
    for key, value in renamed.items():
        if key.endswith(_COUNTER) and key not in expected:
            continue
        out[key] = value
    for key in expected:
        if key.endswith(_COUNTER) and key not in out:
            out[key] = torch.zeros((), dtype=torch.long)
    problems = layout_mismatch(out, expected)
    if problems:
        raise CheckpointError(f"{path} does not match the model (torchvision {LAYOUTS[config.variant]}, "
                              f"{config.num_classes} classes): " + "; ".join(problems))
    return {k: out[k].detach().to(torch.float32) if out[k].is_floating_point() else out[k].detach() for k in expected}


def torchvision_to_amodal(state: Mapping[str, torch.Tensor], path: str | Path = "state dict", *,
                          class_names: Sequence[str] | None = None,
                          **overrides: Any) -> tuple[dict[str, torch.Tensor], MaskRCNNConfig]:
    """(our state dict, our config) of a torchvision Mask R-CNN state dict (see ``torchvision_config``)."""
    config = torchvision_config(state, class_names=class_names, path=path, **overrides)
    return convert_torchvision_state(state, config, path), config


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_torchvision_maskrcnn(src: str | Path, dst: str | Path, *, class_names: Sequence[str] | None = None,
                                **overrides: Any) -> dict[str, Any]:
    """Convert a ``torch.save``d torchvision Mask R-CNN state dict (``.pth``/``.pt``, read ``weights_only``) to a
    safetensors file with our metadata record for the ``maskrcnn`` stage; returns the record.  ``overrides``:
    ``MaskRCNNConfig`` fields such as ``min_size``, ``max_size``, ``rpn_post_nms_test``."""
    src, dst = Path(src), Path(dst)
    if src.suffix not in (".pth", ".pt"):
        raise ConfigError(f"{src}: expected a torch.save'd state dict (.pth or .pt)")
    if dst.suffix != ".safetensors":
        raise ConfigError(f"{dst}: the output must be a .safetensors file")
    try:
        state, _ = load_weights(src)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} (truncated? compare the file's size and sha256 with the original)") from exc
    converted, config = torchvision_to_amodal(state, src, class_names=class_names, **overrides)
    coco = tuple(config.class_names) == tuple(COCO_CATEGORY_NAMES)
    record: dict[str, Any] = {
        "model": "maskrcnn",
        "config": config.to_dict(),
        "classes": list(config.class_names),
        "num_classes_with_background": config.num_classes,
        "input_size": {"min_size": config.min_size, "max_size": config.max_size,
                       "rule": "shorter side scaled to min_size, longer side at most max_size"},
        "normalisation": {"scale": "rgb/255", "mean": list(config.image_mean), "std": list(config.image_std)},
        "source": SOURCE if coco else "torchvision",
        "source_layout": LAYOUTS[config.variant],
        "source_file": src.name,
        "source_sha256": _sha256(src),
        "training_data": "COCO train2017 by the weights' provider (not verified here)" if coco
                         else "unknown (the weights' provider's)",
        "metric": "COCO val2017 box / mask AP as published by the provider; not measured by amodal",
    }
    if coco:
        record["published_score"] = {"torchvision_COCO_V1": PUBLISHED_COCO_AP[config.variant]}
    save_weights(converted, dst, record)
    return record


def read_detector_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], MaskRCNNConfig, dict[str, Any]]:
    """(state, config, metadata) of Mask R-CNN weights: our safetensors (``config`` in the record) or a torchvision
    state dict (converted on the fly, COCO names for a 91-row head, ``class_i`` otherwise)."""
    state, metadata = load_weights(path)
    if "config" in metadata:
        try:
            config = MaskRCNNConfig.from_dict(metadata["config"])
        except (TypeError, ConfigError) as exc:
            raise CheckpointError(f"{path}: metadata config is invalid: {exc}") from exc
        return state, config, metadata
    if _CLS_KEY not in state:
        raise CheckpointError(f"{path}: no {_CLS_KEY!r}: not a Mask R-CNN state dict and no amodal metadata")
    rows = int(state[_CLS_KEY].shape[0])
    names = None if rows == len(COCO_CATEGORY_NAMES) + 1 else tuple(f"class_{i}" for i in range(1, rows))
    converted, config = torchvision_to_amodal(state, path, class_names=names)
    metadata = {"source": SOURCE if names is None else "torchvision", "source_layout": LAYOUTS[config.variant]}
    return converted, config, metadata


# ---------------------------------------------------------------------------------------------- initialisation


def _normalise_name(name: str) -> str:
    return name.strip().replace(" ", "_")


def resolve_class_map(class_map: Mapping[str, str] | None, source_classes: Sequence[str],
                      target_classes: Sequence[str]) -> dict[int, list[int]]:
    """{target label (1…K): [source labels]} of ``class_map`` {source name: target name}; source names are matched
    with spaces or underscores ("traffic light" = "traffic_light").  ConfigError naming every unknown name."""
    class_map = dict(class_map or {})
    source_index = {_normalise_name(n): i + 1 for i, n in enumerate(source_classes) if n != "N/A"}
    target_index = {n: i + 1 for i, n in enumerate(target_classes)}
    bad_types = [f"{k!r}: {v!r}" for k, v in class_map.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad_types:
        raise ConfigError(f"class_map must map source class names to category names (strings); got {bad_types}")
    unknown_source = sorted(k for k in class_map if _normalise_name(k) not in source_index)
    unknown_target = sorted({v for v in class_map.values() if v not in target_index})
    problems = []
    if unknown_source:
        problems.append(f"unknown source classes {unknown_source} (the weights' classes: {', '.join(source_index)})")
    if unknown_target:
        problems.append(f"unknown categories {unknown_target} (the training data's: {', '.join(target_classes)})")
    if problems:
        raise ConfigError("class_map: " + "; ".join(problems))
    rows: dict[int, list[int]] = {}
    for source_name, target_name in class_map.items():
        rows.setdefault(target_index[target_name], []).append(source_index[_normalise_name(source_name)])
    return rows


@dataclass(frozen=True)
class TransferReport:
    """What ``transfer_detector_weights`` did: tensors copied whole, class rows copied ({target: [source]} names),
    target categories left at their fresh initialisation, target tensors outside the detector (not touched)."""

    copied_tensors: int
    mapped: dict[str, list[str]]
    unmapped: tuple[str, ...]
    untouched: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"copied_tensors": self.copied_tensors, "mapped": self.mapped, "unmapped": list(self.unmapped),
                "untouched_prefixes": sorted({k.split(".")[0] for k in self.untouched})}


@torch.no_grad()
def transfer_detector_weights(model: nn.Module, source_state: Mapping[str, torch.Tensor],
                              source_classes: Sequence[str], target_classes: Sequence[str],
                              class_map: Mapping[str, str] | None) -> TransferReport:
    """Initialise ``model``'s Mask R-CNN parts (``backbone.``, ``rpn.``, ``roi_heads.``) from ``source_state``
    (our Mask R-CNN names): every tensor copied except the class-specific rows of the classifier, box regressor
    and mask predictor, where the background row is copied and category ``c`` gets the source rows of the classes
    ``class_map`` sends to it (their mean when several).  Other parts of ``model`` (calibration, track head) keep
    their initialisation.  CheckpointError naming every key of the two detectors that does not correspond."""
    rows = resolve_class_map(class_map, source_classes, target_classes)
    own = model.state_dict()
    detector = {k: v for k, v in own.items() if k.startswith(DETECTOR_PREFIXES)}
    expected = {k: v.shape for k, v in detector.items() if k not in CLASS_ROWS}
    shared = {k: v for k, v in source_state.items() if k not in CLASS_ROWS}
    problems = layout_mismatch(shared, expected)
    missing_heads = sorted(k for k in CLASS_ROWS if k not in source_state or k not in detector)
    if missing_heads:
        problems.append(f"class-specific tensors missing: {', '.join(missing_heads)}")
    for key in CLASS_ROWS:
        if key in source_state and key in detector and source_state[key].shape[1:] != detector[key].shape[1:]:
            problems.append(f"{key}: rows of {tuple(source_state[key].shape[1:])} in the source vs "
                            f"{tuple(detector[key].shape[1:])} in the model")
    if problems:
        raise CheckpointError("the init_from weights do not fit the model's detector (set the architecture keys to "
                              "the weights' backbone, variant and head sizes): " + "; ".join(problems))
    new = dict(own)
    for key in expected:
        new[key] = source_state[key].to(dtype=own[key].dtype)
    for key, per_class in CLASS_ROWS.items():
        src, dst = source_state[key].to(own[key].dtype), own[key].clone()
        dst[:per_class] = src[:per_class]  # background
        for target, sources in rows.items():
            block = torch.stack([src[s * per_class:(s + 1) * per_class] for s in sources]).mean(dim=0)
            dst[target * per_class:(target + 1) * per_class] = block
        new[key] = dst
    model.load_state_dict(new)
    mapped = {target_classes[t - 1]: [source_classes[s - 1] for s in sources] for t, sources in sorted(rows.items())}
    unmapped = tuple(n for i, n in enumerate(target_classes) if i + 1 not in rows)
    untouched = tuple(sorted(k for k in own if not k.startswith(DETECTOR_PREFIXES)))
    return TransferReport(len(expected), mapped, unmapped, untouched)


def with_source_normalisation(config: MaskRCNNConfig, source: MaskRCNNConfig) -> MaskRCNNConfig:
    """``config`` with the input normalisation of ``source`` (a model initialised from weights sees inputs as they
    did)."""
    return replace(config, image_mean=source.image_mean, image_std=source.image_std)
