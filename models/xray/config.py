"""Configuration of the bilayer X-ray segmenter (SYSTEMS §4): SAM ViT encoder + LoRA, simple FPN, RPN + box head,
anchor prompter and the occluder → target mask decoders.  ``tiny_config()`` is the CPU configuration trained here,
``vit_b_config()`` the paper's (SAM ViT-B, 512 × 512 input, 256 × 32 × 32 embedding, LoRA r 16 on qkv)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from amodal.errors import ConfigError
from amodal.settings import build_settings

PIDRAY_CLASSES: tuple[str, ...] = ("Baton", "Pliers", "Hammer", "Powerbank", "Scissors", "Wrench", "Gun", "Bullet",
                                   "Sprayer", "HandCuffs", "Knife", "Lighter")

ATTENTION_IMPLEMENTATIONS: tuple[str, ...] = ("sdpa", "eager", "dispatcher")


@dataclass(frozen=True)
class XraySamConfig:
    """Architecture and input handling (``class_names`` excludes the background).

    ``image_size``: the square network input S (the longer image side is resized to S, the rest zero-padded after
    normalisation, as SAM does); the SAM encoder gives an ``embed_dim × S/patch × S/patch`` map.
    ``encoder_*`` mirror transformers' ``SamVisionConfig`` and ``decoder_*`` its ``SamMaskDecoderConfig``; they are
    ignored in favour of the folder's ``config.json`` when a real SAM is loaded from ``sam_path``
    (``save_pretrained`` layout).  ``lora_targets``: the encoder's attention projections that get LoRA adapters
    (``qkv`` in the paper, also ``proj`` in the tiny config); ``encoder_trainable``: encoder parts trained in full
    besides LoRA — none for a real SAM (the paper); all of them in the tiny config, which has no pretrained SAM
    behind it (with its random ViT frozen and only LoRA, patch embedding and neck trained, 800 CPU steps reached
    mask AP 0.0007: the boxes were found but hardly ever classified).
    ``attention``: how SAM's attention layers compute (transformers' ``attn_implementation``): ``sdpa`` (torch),
    ``eager``, or ``dispatcher`` — our ``amodal.kernels.attention`` dispatcher registered with transformers'
    ``AttentionInterface`` (``models/xray/attention.py``; the fused Triton kernel on CUDA).  It changes no weight.
    ``bilayer`` False is the single-decoder ablation (no occluder branch).  ``mask_loss_region``: ``image`` scores
    each RoI's mask over the whole input (the paper); ``box`` scores it inside the RoI's box only (28 × 28 RoIAlign
    of logits and target, as Mask R-CNN does) and cuts predicted masks to their boxes — the tiny configuration's
    choice, since a from-scratch decoder trained for minutes on whole-image BCE predicts background everywhere.
    """

    class_names: tuple[str, ...] = PIDRAY_CLASSES
    image_size: int = 512
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    sam_path: str | None = None
    encoder_hidden: int = 768
    encoder_layers: int = 12
    encoder_heads: int = 12
    encoder_mlp_dim: int = 3072
    encoder_window: int = 14
    encoder_global_layers: tuple[int, ...] = (2, 5, 8, 11)
    patch_size: int = 16
    embed_dim: int = 256
    decoder_layers: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    decoder_iou_hidden: int = 256
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("qkv",)
    encoder_trainable: tuple[str, ...] = ()
    fpn_channels: int = 256
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 1000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    box_head_dim: int = 1024
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    prompt_tokens: int = 5
    prompt_roi_size: int = 14
    prompt_hidden: int = 1024
    max_mask_rois: int = 64
    mask_loss_region: str = "image"
    bilayer: bool = True
    occluder_loss_weight: float = 0.25
    mask_threshold: float = 0.5
    attention: str = "sdpa"

    def __post_init__(self) -> None:
        if not self.class_names:
            raise ConfigError("XraySamConfig.class_names is empty")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if len(self.anchor_sizes) != 5:
            raise ConfigError(f"anchor_sizes needs 5 sizes (one per FPN level), got {self.anchor_sizes}")
        for name in ("encoder_hidden", "encoder_layers", "encoder_heads", "embed_dim", "decoder_layers",
                     "decoder_heads", "lora_rank", "fpn_channels", "prompt_tokens", "prompt_roi_size",
                     "max_mask_rois"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"XraySamConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.embed_dim % 2:
            raise ConfigError(f"embed_dim must be even (SAM's sin/cos positional encoding), got {self.embed_dim}")
        if any(not 0 <= i < self.encoder_layers for i in self.encoder_global_layers):
            raise ConfigError(f"encoder_global_layers {self.encoder_global_layers} outside 0…{self.encoder_layers - 1}")
        if not self.lora_targets:
            raise ConfigError("lora_targets is empty; name the attention projections to adapt (qkv, proj)")
        if unknown := sorted(set(self.lora_targets) - {"qkv", "proj"}):
            raise ConfigError(f"lora_targets {unknown} are not attention projections of the SAM encoder (qkv, proj)")
        if unknown := sorted(set(self.encoder_trainable) - {"patch_embed", "neck", "pos_embed", "layers"}):
            raise ConfigError(f"encoder_trainable {unknown} unknown; known: layers, neck, patch_embed, pos_embed")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.mask_loss_region not in ("image", "box"):
            raise ConfigError(f"mask_loss_region must be image or box, got {self.mask_loss_region!r}")
        if self.occluder_loss_weight < 0.0:
            raise ConfigError(f"occluder_loss_weight must be ≥ 0, got {self.occluder_loss_weight}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(f"attention must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attention!r}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ConfigError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names) + 1

    @property
    def embed_size(self) -> int:
        """Side of the encoder's map: image_size / patch_size."""
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "XraySamConfig":
        return build_settings(cls, d, "XraySamConfig")


def tiny_config(*, bilayer: bool = True, image_size: int = 256, **overrides: Any) -> XraySamConfig:
    """The CPU configuration: a 4-layer, 96-wide ViT (patch 16 → 16 × 16 map of 64 channels), narrow decoders."""
    values: dict[str, Any] = dict(
        image_size=image_size, encoder_hidden=96, encoder_layers=4, encoder_heads=4, encoder_mlp_dim=256,
        encoder_window=4, encoder_global_layers=(1, 3), embed_dim=64, decoder_layers=2, decoder_heads=4,
        decoder_mlp_dim=128, decoder_iou_hidden=64, lora_rank=8, lora_alpha=16, lora_dropout=0.0,
        lora_targets=("qkv", "proj"), encoder_trainable=("patch_embed", "pos_embed", "layers", "neck"), fpn_channels=64,
        anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_train=600, rpn_post_nms_train=300, rpn_pre_nms_test=300,
        rpn_post_nms_test=150, box_head_dim=256, box_batch_size_per_image=128, box_detections_per_img=30,
        prompt_hidden=256, max_mask_rois=32, mask_loss_region="box", bilayer=bilayer)
    values.update(overrides)
    return XraySamConfig(**values)


def vit_b_config(*, bilayer: bool = True, sam_path: str | None = None, **overrides: Any) -> XraySamConfig:
    """The paper's configuration on SAM ViT-B (facebook/sam-vit-base via ``sam_path``), 512 × 512 input."""
    return XraySamConfig(bilayer=bilayer, sam_path=sam_path, **overrides)
