"""SAM's attention through our dispatcher (``amodal.kernels.attention.attention``), selected the transformers way.

``register_dispatcher_attention()`` registers ``dispatcher_attention`` with ``transformers.AttentionInterface`` under
``DISPATCHER`` (``"amodal_dispatcher"``); a ``SamModel`` built with ``attn_implementation="amodal_dispatcher"``
(``XraySamConfig.attention = "dispatcher"``) then runs every attention of SAM's own modules through it.

How transformers 5.x SAM picks its attention: the mask decoder's ``SamAttention`` asks
``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager)``, so the registration alone reaches it.
The ViT image encoder does not consult the interface: each ``SamVisionLayer`` instantiates
``SAM_VISION_ATTENTION_CLASSES[config._attn_implementation]``, a dict with ``eager`` and ``sdpa`` only.  So
``register_dispatcher_attention`` also adds ``DISPATCHER`` to that dict, mapped to ``SamVisionDispatcherAttention``,
which computes q, k, v like SAM's SDPA class and then calls the function registered in the interface — the encoder's
attention runs through ``AttentionInterface`` like the decoder's.

The encoder's attention carries SAM's decomposed relative-position bias (MViTv2):
``S[i, j] = scale · q_i·k_j + Rh[i, h(j)] + Rw[i, w(j)]`` with ``Rh = q · rel_pos_h`` [L, Kh] and
``Rw = q · rel_pos_w`` [L, Kw].  Our fused kernel takes no additive bias, so the bias is folded into the dot product
exactly: ``q' = [scale·q, Rh, Rw]`` and ``k' = [k, onehot(h(j)), onehot(w(j))]`` give ``q'·k'_j = S[i, j]`` (scale 1),
with ``v`` zero-padded to the same head dim and the output cut back.  Head dims: ViT-B at 512² gives
64 + 32 + 32 = 128 in the global layers (the kernel's maximum), 64 + 14 + 14 = 92 in the windowed ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from amodal.kernels.attention import attention

DISPATCHER = "amodal_dispatcher"


def fold_relative_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q', k', v') for attention with scale 1 whose scores are ``scale·q·k + rel_h[i, h(j)] + rel_w[i, w(j)]``.

    q, k, v: [B, H, L, D] with L = Kh·Kw keys in row-major (h, w) order; rel_h [B, H, L, Kh], rel_w [B, H, L, Kw].
    Returns q', k', v' of head dim D + Kh + Kw (v zero-padded)."""
    kh, kw = rel_h.shape[-1], rel_w.shape[-1]
    b, h, length, _ = k.shape
    rows = torch.arange(kh, device=k.device).repeat_interleave(kw)
    cols = torch.arange(kw, device=k.device).repeat(kh)
    onehot = torch.cat([F.one_hot(rows, kh), F.one_hot(cols, kw)], dim=-1).to(k.dtype)  # [L, Kh + Kw]
    q2 = torch.cat([q * scale, rel_h.to(q.dtype), rel_w.to(q.dtype)], dim=-1)
    k2 = torch.cat([k, onehot.expand(b, h, length, kh + kw)], dim=-1)
    v2 = F.pad(v, (0, kh + kw))
    return q2, k2, v2


def dispatcher_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                         rel_pos: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs
                         ) -> tuple[torch.Tensor, None]:
    """The ``AttentionInterface`` function: q, k, v [B, H, L, D] → ([B, L, H, D], None), the attention itself from
    ``amodal.kernels.attention.attention(backend="auto")`` (the fused Triton kernel on CUDA, torch SDPA on the
    CPU).  ``rel_pos`` (the encoder's decomposed relative bias ``(rel_h, rel_w)``) is folded into q and k.  An
    additive ``attention_mask`` (SAM's decoder never passes one) or dropout during training go to torch SDPA."""
    scale = query.shape[-1] ** -0.5 if scaling is None else float(scaling)
    p = dropout if module.training else 0.0
    if attention_mask is not None or p > 0.0:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=p, scale=scale)
    elif rel_pos is not None:
        d = value.shape[-1]
        q2, k2, v2 = fold_relative_bias(query, key, value, rel_pos[0], rel_pos[1], scale)
        out = attention(q2, k2, v2, scale=1.0)[..., :d]
    else:
        out = attention(query, key, value, scale=scale)
    return out.transpose(1, 2).contiguous(), None


def _vision_attention_class():
    from transformers.models.sam.modeling_sam import SamVisionAttention

    class SamVisionDispatcherAttention(SamVisionAttention):
        """SAM's ViT attention (same parameters: ``qkv``, ``proj``, ``rel_pos_h/w``) calling the function registered
        in ``AttentionInterface`` under ``config._attn_implementation``, with the relative bias as ``rel_pos``."""

        def __init__(self, config, window_size):
            super().__init__(config, window_size)
            self.implementation = config._attn_implementation

        def forward(self, hidden_states: torch.Tensor, output_attentions=False):
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            batch, height, width, _ = hidden_states.shape
            heads = self.num_attention_heads
            qkv = self.qkv(hidden_states).reshape(batch, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
            query, key, value = qkv.unbind(0)  # [B, H, L, D]
            rel_pos = None
            if self.use_rel_pos:
                flat = query.reshape(batch * heads, height * width, -1)
                rh = self.get_rel_pos(height, height, self.rel_pos_h)  # [h, kh, D]
                rw = self.get_rel_pos(width, width, self.rel_pos_w)
                grid = flat.reshape(batch * heads, height, width, -1)
                rel_h = torch.einsum("bhwc,hkc->bhwk", grid, rh).reshape(batch, heads, height * width, -1)
                rel_w = torch.einsum("bhwc,wkc->bhwk", grid, rw).reshape(batch, heads, height * width, -1)
                rel_pos = (rel_h, rel_w)
            function = ALL_ATTENTION_FUNCTIONS[self.implementation]
            out, _ = function(self, query, key, value, None, scaling=self.scale, dropout=self.dropout,
                              rel_pos=rel_pos)
            out = out.reshape(batch, height, width, -1)  # [B, L, H, D] → [B, h, w, H·D]
            return self.proj(out), None

    return SamVisionDispatcherAttention


def register_dispatcher_attention() -> str:
    """Register ``dispatcher_attention`` as ``DISPATCHER`` with transformers (idempotent); returns the name to pass
    as ``attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.models.sam import modeling_sam

    AttentionInterface.register(DISPATCHER, dispatcher_attention)
    if DISPATCHER not in modeling_sam.SAM_VISION_ATTENTION_CLASSES:
        modeling_sam.SAM_VISION_ATTENTION_CLASSES[DISPATCHER] = _vision_attention_class()
    return DISPATCHER
