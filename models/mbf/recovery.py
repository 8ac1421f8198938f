"""Foreground recovery (MBF's occluded branch).

``recovery_queries`` learned queries attend (``recovery_layers`` cross-attention layers) over the patch tokens
weighted by their body-part probability (Σ_k p_k = 1 − p_background, so occluders and background fade out); one
learned query per patch position then reads those part summaries back into a full grid of recovered tokens
[N, L, D], trained to match (MSE) the tokens of the same person without the occlusion (the holistic tokens).
"""
from __future__ import annotations

import torch
from torch import nn

from amodal.kernels.attention import MultiheadAttention
from amodal.models.mbf.backbone import Mlp


class CrossAttentionLayer(nn.Module):
    """queries [N, Q, D] ← memory [N, L, D]: q + attn(LN(q), LN(m)), then + mlp(LN(·))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, backend: str) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_m = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiheadAttention(dim, num_heads, batch_first=True, backend=backend)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        m = self.norm_m(memory)
        queries = queries + self.attn(self.norm_q(queries), m, m)
        return queries + self.mlp(self.norm2(queries))


class ForegroundRecovery(nn.Module):
    """patch tokens [N, L, D] and foreground weights [N, L] in [0, 1] → recovered tokens [N, L, D]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, num_patches: int, num_queries: int,
                 num_layers: int, backend: str = "auto") -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, num_heads, mlp_ratio, backend) for _ in range(num_layers))
        self.position_queries = nn.Parameter(torch.zeros(1, num_patches, dim))
        self.readout = CrossAttentionLayer(dim, num_heads, mlp_ratio, backend)
        nn.init.trunc_normal_(self.queries, std=0.02)
        nn.init.trunc_normal_(self.position_queries, std=0.02)

    def forward(self, patch_tokens: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
        memory = patch_tokens * foreground[..., None]
        parts = self.queries.expand(patch_tokens.shape[0], -1, -1)
        for layer in self.layers:
            parts = layer(parts, memory)
        return self.readout(self.position_queries.expand(patch_tokens.shape[0], -1, -1), parts)
