"""ViT backbone of MBF (TransReID style): patch embedding (optionally overlapping), class token, position embedding,
side-information camera embedding, pre-norm transformer blocks whose attention runs ``amodal.kernels.attention``.

The last block is kept apart (``last_block``): MBF passes the global sequence and each part's masked sequence
through it as a shared block (``TransformerBlock.forward_queries``).
"""
from __future__ import annotations

import torch
from torch import nn

from amodal.kernels.attention import MultiheadAttention
from amodal.models.mbf.config import MBFConfig


class Mlp(nn.Module):
    """Linear → GELU → Linear on [..., D]."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then + mlp(LN(·)). Tokens [N, L, D]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, backend: str = "auto") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiheadAttention(dim, num_heads, batch_first=True, backend=backend)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, key_padding_mask=key_padding_mask)
        return x + self.mlp(self.norm2(x))

    def forward_queries(self, x: torch.Tensor, num_queries: int,
                        key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The block's output for the first ``num_queries`` tokens only (all tokens are keys): [N, num_queries, D].
        Equal to ``forward(x, mask)[:, :num_queries]`` at a fraction of the cost."""
        h = self.norm1(x)
        out = x[:, :num_queries] + self.attn(h[:, :num_queries], h, h, key_padding_mask=key_padding_mask)
        return out + self.mlp(self.norm2(out))


class PatchEmbed(nn.Module):
    """Conv(kernel ``patch_size``, stride ``stride``): images [N, 3, H, W] → tokens [N, rows·cols, D] (row-major)."""

    def __init__(self, patch_size: int, stride: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class ViTBackbone(nn.Module):
    """Normalised images [N, 3, H, W] and camera ids [N] (index ``num_cameras`` = unknown) → tokens after all but
    the last block [N, 1 + L, D] (class token first). ``last_block`` and ``norm`` are applied by the caller."""

    def __init__(self, config: MBFConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.config = config
        self.patch_embed = PatchEmbed(config.patch_size, config.stride, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.num_patches, dim))
        self.camera_embed = nn.Parameter(torch.zeros(config.num_cameras + 1, dim)) if config.camera_embedding else None
        self.blocks = nn.ModuleList(TransformerBlock(dim, config.num_heads, config.mlp_ratio, config.attention_backend)
                                    for _ in range(config.depth - 1))
        self.last_block = TransformerBlock(dim, config.num_heads, config.mlp_ratio, config.attention_backend)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.camera_embed is not None:
            nn.init.trunc_normal_(self.camera_embed, std=0.02)
        self.apply(_init_linear)

    def forward(self, images: torch.Tensor, camera_ids: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        if self.camera_embed is not None:
            x = x + self.config.camera_scale * self.camera_embed[camera_ids][:, None, :]
        for block in self.blocks:
            x = block(x)
        return x


def _init_linear(module: nn.Module) -> None:
    """ViT initialisation: truncated-normal linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
