"""MBF: ViT backbone + parsing-guided part features + foreground recovery, with a BNNeck ID classifier per feature.

Data flow (images RGB [0, 1] → normalised)::

    tokens    = backbone(images, cameras)                 [N, 1+L, D]   (all blocks but the last)
    parsing   = part_classifier(tokens[:, 1:])            [N, L, C]     (C = 5: background, head, upper, lower, shoes)
    global    = norm(last_block(tokens))[:, 0]            [N, D]
    parts     = norm(last_block on cls + part-k patches)  [N, K, D]     (patches with p_k > part_threshold)
    recovered = recovery(tokens[:, 1:], 1 − p_background) [N, L, D]  → norm(last_block(cls + recovered))[:, 0]

``forward`` returns ``MBFOutputs`` (raw features and logits); ``mbf_losses`` scores them; ``embed`` is the test
feature: BN-necked global, part and recovered features, each L2-normalised, concatenated, L2-normalised.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from amodal.errors import ConfigError
from amodal.models.mbf.backbone import ViTBackbone
from amodal.models.mbf.config import MBFConfig
from amodal.models.mbf.parts import PatchPartClassifier, pool_parts
from amodal.models.mbf.recovery import ForegroundRecovery
from amodal.models.weights import load_model_record, load_state_strict


@dataclass
class MBFOutputs:
    """Raw outputs for N images, L patches, K parts, D channels, C ids.

    global_feature [N, D], its BNNeck output global_necked [N, D] and global_logits [N, C]; part_features,
    part_necked [N, K, D], part_logits [N, K, C], part_present bool [N, K] (the part has ≥ 1 patch above the
    threshold); parsing_logits [N, L, 5]; with foreground recovery: recovered_tokens [N, L, D], recovered_feature,
    recovered_necked [N, D], recovered_logits [N, C] and, when holistic images were given, holistic_tokens
    [N, L, D] (no gradient); otherwise those are None."""

    global_feature: torch.Tensor
    global_necked: torch.Tensor
    global_logits: torch.Tensor
    part_features: torch.Tensor
    part_necked: torch.Tensor
    part_logits: torch.Tensor
    part_present: torch.Tensor
    parsing_logits: torch.Tensor
    recovered_tokens: torch.Tensor | None = None
    recovered_feature: torch.Tensor | None = None
    recovered_necked: torch.Tensor | None = None
    recovered_logits: torch.Tensor | None = None
    holistic_tokens: torch.Tensor | None = None


class BNNeck(nn.Module):
    """BatchNorm (bias frozen at 0) then a bias-free ID classifier: feature [N, D] → (necked [N, D], logits [N, C])."""

    def __init__(self, dim: int, num_ids: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_ids, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        necked = self.bn(feature)
        return necked, self.classifier(necked)


class MBF(nn.Module):
    """See the module docstring. ``forward(images, camera_ids=None, holistic_images=None) -> MBFOutputs``."""

    def __init__(self, config: MBFConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ViTBackbone(config)
        self.part_classifier = PatchPartClassifier(config.embed_dim, config.parsing_classes)
        self.global_neck = BNNeck(config.embed_dim, config.num_ids)
        self.part_necks = nn.ModuleList(BNNeck(config.embed_dim, config.num_ids) for _ in range(config.num_parts))
        self.recovery: ForegroundRecovery | None = None
        self.recovered_neck: BNNeck | None = None
        if config.foreground_recovery:
            self.recovery = ForegroundRecovery(config.embed_dim, config.num_heads, config.mlp_ratio,
                                               config.num_patches, config.recovery_queries, config.recovery_layers,
                                               config.attention_backend)
            self.recovered_neck = BNNeck(config.embed_dim, config.num_ids)
        self.register_buffer("image_mean", torch.tensor(config.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(config.image_std).view(1, 3, 1, 1), persistent=False)

    @property
    def embedding_dim(self) -> int:
        """Length of ``embed``'s vectors."""
        return self.config.embedding_dim

    def _check_images(self, images: torch.Tensor, camera_ids: torch.Tensor | None) -> None:
        cfg = self.config
        expected = (3, cfg.input_height, cfg.input_width)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ConfigError(f"MBF: images must be [N, {expected[0]}, {expected[1]}, {expected[2]}] (RGB in [0, 1] "
                              f"at the model's input size), got {tuple(images.shape)}")
        if camera_ids is not None:
            if camera_ids.shape != (images.shape[0],):
                raise ConfigError(f"MBF: camera_ids must be [N] = [{images.shape[0]}], got {tuple(camera_ids.shape)}")
            if camera_ids.numel() and (int(camera_ids.min()) < 0 or int(camera_ids.max()) > cfg.num_cameras):
                raise ConfigError(f"MBF: camera ids must be in 0..{cfg.num_cameras - 1} ({cfg.num_cameras} = unknown), "
                                  f"got {int(camera_ids.min())}..{int(camera_ids.max())}")

    def _tokens(self, images: torch.Tensor, camera_ids: torch.Tensor | None) -> torch.Tensor:
        if camera_ids is None:
            camera_ids = torch.full((images.shape[0],), self.config.num_cameras, dtype=torch.long,
                                    device=images.device)
        normalised = (images - self.image_mean) / self.image_std
        return self.backbone(normalised, camera_ids.long())

    def forward(self, images: torch.Tensor, camera_ids: torch.Tensor | None = None,
                holistic_images: torch.Tensor | None = None) -> MBFOutputs:
        """images float[N, 3, H, W] RGB in [0, 1]; camera_ids int64[N] 0-based (None = unknown camera);
        holistic_images: the same people without occlusion, for the recovery target (training)."""
        cfg = self.config
        self._check_images(images, camera_ids)
        backbone = self.backbone
        tokens = self._tokens(images, camera_ids)
        parsing_logits = self.part_classifier(tokens[:, 1:])
        probs = parsing_logits.softmax(-1)
        part_probs = probs[..., 1:]
        global_feature = backbone.norm(backbone.last_block.forward_queries(tokens, 1)[:, 0])
        part_features = backbone.norm(pool_parts(tokens, part_probs, backbone.last_block, cfg.part_threshold))
        global_necked, global_logits = self.global_neck(global_feature)
        part_necked, part_logits = (torch.stack(t, dim=1) for t in zip(*(neck(part_features[:, j])
                                                                         for j, neck in enumerate(self.part_necks))))
        out = MBFOutputs(global_feature, global_necked, global_logits, part_features, part_necked, part_logits,
                         (part_probs > cfg.part_threshold).any(dim=1), parsing_logits)
        if self.recovery is not None:
            recovered = self.recovery(tokens[:, 1:], 1.0 - probs[..., 0])
            seq = torch.cat([tokens[:, :1], recovered], dim=1)
            out.recovered_tokens = recovered
            out.recovered_feature = backbone.norm(backbone.last_block.forward_queries(seq, 1)[:, 0])
            out.recovered_necked, out.recovered_logits = self.recovered_neck(out.recovered_feature)
            if holistic_images is not None:
                self._check_images(holistic_images, camera_ids)
                with torch.no_grad():
                    out.holistic_tokens = self._tokens(holistic_images, camera_ids)[:, 1:]
        return out

    @staticmethod
    def features(outputs: MBFOutputs) -> torch.Tensor:
        """Test features of ``outputs`` (eval mode): the BNNeck outputs (global, parts, recovered), each
        L2-normalised, concatenated, L2-normalised: [N, embedding_dim]."""
        feats = [outputs.global_necked, *outputs.part_necked.unbind(1)]
        if outputs.recovered_necked is not None:
            feats.append(outputs.recovered_necked)
        return F.normalize(torch.cat([F.normalize(f, dim=-1) for f in feats], dim=-1), dim=-1)

    def embed(self, images: torch.Tensor, camera_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings float32[N, embedding_dim], L2-normalised (squared Euclidean = 2 − 2·cosine), computed in eval
        mode without gradients; images float[N, 3, input_height, input_width] RGB in [0, 1]; camera_ids int64[N]
        0-based or None (unknown camera). The module's training mode is restored afterwards."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self.features(self(images.float(), camera_ids)).float()
        finally:
            self.train(was_training)


def build_mbf(*, config: MBFConfig) -> MBF:
    """A freshly initialised MBF."""
    return MBF(config)


@dataclass
class LoadedMBF:
    model: MBF
    config: MBFConfig
    metadata: dict[str, Any]


def load_mbf(path: str | Path) -> LoadedMBF:
    """Rebuild MBF (eval mode) from a safetensors file whose metadata record holds ``config`` (``to_dict``).
    Raises CheckpointError for a missing/truncated file, a missing or invalid config, or mismatched tensors."""
    state, metadata, config = load_model_record(path, MBFConfig, "MBF")
    model = build_mbf(config=config)
    load_state_strict(model, state, path)
    return LoadedMBF(model.eval(), config, metadata)
