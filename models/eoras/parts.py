"""EoRaS parts: BEV translation, the transformer decoder of the multi-view fusion, the mask decoders.

Every attention runs through ``amodal.kernels.attention.MultiheadAttention`` (the fused attention op)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from amodal.kernels.attention import MultiheadAttention
from amodal.models.eoras.config import EoRaSConfig
from amodal.models.eoras.geometry import bev_grid_points, project_to_grid


def sin_cos_positions(length: int, dim: int) -> torch.Tensor:
    """float32[1, length, dim] 1-D sinusoidal positions (sin on even, cos on odd channels)."""
    pos = torch.zeros(1, length, dim)
    angles = torch.arange(length, dtype=torch.float32)[:, None] / torch.pow(
        10000.0, torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    pos[:, :, 0::2] = torch.sin(angles)
    pos[:, :, 1::2] = torch.cos(angles[:, : dim // 2])
    return pos


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(min(groups, channels), channels)


class BEVDownBlock(nn.Sequential):
    """1×1 conv → norm → LeakyReLU → 3×3 conv → norm → LeakyReLU → 3×3 stride-2 conv → norm → LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, groups: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 1), _norm(norm, out_channels, groups), nn.LeakyReLU(),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1), _norm(norm, out_channels, groups), nn.LeakyReLU(),
            nn.Conv2d(out_channels, out_channels, 3, 2, 1), _norm(norm, out_channels, groups), nn.LeakyReLU())


class BEVTranslation(nn.Module):
    """Front view → bird's-eye view.

    forward(p3 float[N, C, f, f], K float[N, 3, 3]) → float[N, C, D/2^n, W/2^n]: the fixed 3-D grid
    (``bev_grid_points``) projected with K (``project_to_grid``), P3 bilinearly sampled at the projected points
    (zeros outside the crop), the height bins stacked as channels ([N, C·Hb, D, W]; depth rows, width columns),
    then ``bev_down`` stride-2 blocks."""

    def __init__(self, config: EoRaSConfig) -> None:
        super().__init__()
        self.config = config
        points = bev_grid_points(config.bev_width_m, config.bev_height_m, config.bev_depth_m, config.bev_width_bins,
                                 config.bev_height_bins, config.bev_depth_bins, config.bev_pitch_rad)
        self.register_buffer("points", points, persistent=False)
        c = config.fpn_channels
        channels = [c * config.bev_height_bins]
        for k in range(config.bev_down):
            channels.append(c if k == config.bev_down - 1 else channels[0] // 2 ** (k + 1))
        self.down = nn.Sequential(*(BEVDownBlock(channels[k], channels[k + 1], config.bev_norm, config.gn_groups)
                                    for k in range(config.bev_down)))

    def sample(self, p3: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        """float[N, C, Hb, Db, Wb]: P3 sampled at every grid cell (height, depth, width order)."""
        cfg = self.config
        n, c = p3.shape[:2]
        grid = project_to_grid(K, self.points, cfg.input_size, cfg.bev_projection).to(p3.dtype)
        grid = grid.reshape(n, cfg.bev_width_bins, cfg.bev_height_bins * cfg.bev_depth_bins, 2)
        feats = F.grid_sample(p3, grid, mode="bilinear", padding_mode="zeros",
                              align_corners=cfg.bev_projection == "image_normalised")
        feats = feats.reshape(n, c, cfg.bev_width_bins, cfg.bev_height_bins, cfg.bev_depth_bins)
        return feats.permute(0, 1, 3, 4, 2)

    def forward(self, p3: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        volume = self.sample(p3, K)
        n, c = volume.shape[:2]
        return self.down(volume.reshape(n, c * cfg.bev_height_bins, cfg.bev_depth_bins, cfg.bev_width_bins))


class DecoderLayer(nn.Module):
    """Post-norm transformer decoder layer (DETR's): self-attention, cross-attention, FFN, each residual + LayerNorm.

    forward(tgt float[B, Lq, D], memory float[B, Lk, D], pos float[1|B, Lk, D], query_pos float[1|B, Lq, D])
    → float[B, Lq, D]. Positions are added to queries and keys, never to values."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float, backend: str) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, num_heads, backend=backend)
        self.multihead_attn = MultiheadAttention(d_model, num_heads, backend=backend)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor) -> torch.Tensor:
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, q, tgt)))
        attended = self.multihead_attn(tgt + query_pos, memory + pos, memory)
        tgt = self.norm2(tgt + self.dropout(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout(ffn))


class TransformerDecoder(nn.Module):
    """``num_layers`` DecoderLayers applied in turn (same signature as one layer)."""

    def __init__(self, config: EoRaSConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(config.d_model, config.num_heads, config.ffn_dim, config.dropout, config.attention_backend)
            for _ in range(config.num_layers))

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos)
        return tgt


class MultiViewFusion(nn.Module):
    """Object slots fusing the BEV and front-view tokens of one frame.

    ``step(slots [B, S, D], front [B, Nf, D], bev [B, Nb, D] | None) → (slots', front')``:
    slots ← BEV tokens (when given), slots ← front-view tokens, front view ← slots. ``initial_slots(B)`` →
    [B, S, D], the learned slots a pass starts from. Without slots (the ablation, ``use_slots: false``)
    ``front_only(front, bev)`` → front': the front view attends to the BEV tokens (or to itself without BEV)."""

    def __init__(self, config: EoRaSConfig) -> None:
        super().__init__()
        self.config = config
        n_front = config.feature_size ** 2
        n_bev = config.bev_size[0] * config.bev_size[1]
        self.register_buffer("front_pos", sin_cos_positions(n_front, config.d_model), persistent=False)
        self.register_buffer("bev_pos", sin_cos_positions(n_bev, config.d_model), persistent=False)
        self.front_from_slots = TransformerDecoder(config)
        if config.use_slots:
            self.slots = nn.Embedding(config.num_slots, config.d_model)
            self.register_buffer("slot_pos", sin_cos_positions(config.num_slots, config.d_model), persistent=False)
            self.slots_from_front = TransformerDecoder(config)
            if config.use_bev:
                self.slots_from_bev = TransformerDecoder(config)

    def initial_slots(self, batch: int) -> torch.Tensor:
        return self.slots.weight[None].expand(batch, -1, -1)

    def step(self, slots: torch.Tensor, front: torch.Tensor,
             bev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if bev is not None:
            slots = self.slots_from_bev(slots, bev, self.bev_pos, self.slot_pos)
        slots = self.slots_from_front(slots, front, self.front_pos, self.slot_pos)
        return slots, self.front_from_slots(front, slots, self.slot_pos, self.front_pos)

    def front_only(self, front: torch.Tensor, bev: torch.Tensor | None) -> torch.Tensor:
        if bev is None:
            return self.front_from_slots(front, front, self.front_pos, self.front_pos)
        return self.front_from_slots(front, bev, self.bev_pos, self.front_pos)


class MaskDecoder(nn.Module):
    """forward(features float[N, C, f, f]) → mask logits float[N, 1, M, M], M = 8(f − 1) + 1: three (k3, s2, p1)
    transposed convolutions with LeakyReLU between them (the official decoder, before its sigmoid)."""

    def __init__(self, in_channels: int, channels: tuple[int, int]) -> None:
        super().__init__()
        self.deconv1 = nn.ConvTranspose2d(in_channels, channels[0], 3, 2, 1)
        self.deconv2 = nn.ConvTranspose2d(channels[0], channels[1], 3, 2, 1)
        self.deconv3 = nn.ConvTranspose2d(channels[1], 1, 3, 2, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.deconv1(features))
        x = F.leaky_relu(self.deconv2(x))
        return self.deconv3(x)
