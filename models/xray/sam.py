"""The SAM pieces of the X-ray segmenter, all from transformers (``SamModel`` / ``SamConfig``) and peft (LoRA).

``build_sam`` makes a ``SamModel`` from the architecture fields of an ``XraySamConfig`` (initialised from scratch)
or loads a real SAM folder written by ``SamModel.save_pretrained`` (facebook/sam-vit-base|large|huge as downloaded
elsewhere; nothing is fetched from a hub), adapting its absolute and relative position tables to the configured
input size.  ``add_lora`` injects LoRA adapters into the encoder's attention projections and freezes the rest of
the encoder.  ``run_mask_decoder`` runs one SAM mask decoder with the bilayer residuals of SYSTEMS §4: the
occluder decoder's updated tokens and image embedding added to the target decoder's inputs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from amodal.errors import CheckpointError
from amodal.models.xray.config import XraySamConfig


def sam_config(config: XraySamConfig):
    """A transformers ``SamConfig`` with the encoder / prompt / decoder sizes of ``config``."""
    from transformers import SamConfig
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision = SamVisionConfig(
        hidden_size=config.encoder_hidden, output_channels=config.embed_dim, num_hidden_layers=config.encoder_layers,
        num_attention_heads=config.encoder_heads, image_size=config.image_size, patch_size=config.patch_size,
        window_size=config.encoder_window, global_attn_indexes=list(config.encoder_global_layers),
        num_pos_feats=config.embed_dim // 2, mlp_dim=config.encoder_mlp_dim)
    prompt = SamPromptEncoderConfig(hidden_size=config.embed_dim, image_size=config.image_size,
                                    patch_size=config.patch_size)
    decoder = SamMaskDecoderConfig(hidden_size=config.embed_dim, mlp_dim=config.decoder_mlp_dim,
                                   num_hidden_layers=config.decoder_layers, num_attention_heads=config.decoder_heads,
                                   iou_head_hidden_dim=config.decoder_iou_hidden)
    sam = SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                    mask_decoder_config=decoder.to_dict())
    sam._attn_implementation = attn_implementation(config.attention)
    return sam


def attn_implementation(attention: str) -> str:
    """transformers' ``attn_implementation`` for ``XraySamConfig.attention`` (registering our dispatcher first)."""
    if attention == "dispatcher":
        from amodal.models.xray.attention import register_dispatcher_attention

        return register_dispatcher_attention()
    return attention


def config_with_sam_architecture(config: XraySamConfig) -> XraySamConfig:
    """``config`` with its encoder / decoder fields read from ``config.sam_path``'s ``config.json`` (unchanged when
    there is no ``sam_path``), so that the record in an exported weights file rebuilds the same network."""
    if config.sam_path is None:
        return config
    from transformers import SamConfig

    path = Path(config.sam_path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"sam_path {path}: no config.json; expected a folder written by SamModel.save_pretrained")
    sam = SamConfig.from_pretrained(str(path), local_files_only=True)
    v, d = sam.vision_config, sam.mask_decoder_config
    return dataclasses.replace(
        config, encoder_hidden=v.hidden_size, encoder_layers=v.num_hidden_layers, encoder_heads=v.num_attention_heads,
        encoder_mlp_dim=v.mlp_dim, encoder_window=v.window_size, encoder_global_layers=tuple(v.global_attn_indexes),
        patch_size=int(v.patch_size if isinstance(v.patch_size, int) else v.patch_size[0]),
        embed_dim=v.output_channels, decoder_layers=d.num_hidden_layers, decoder_heads=d.num_attention_heads,
        decoder_mlp_dim=d.mlp_dim, decoder_iou_hidden=d.iou_head_hidden_dim)


@torch.no_grad()
def init_from_scratch(sam: nn.Module, std: float = 0.02) -> None:
    """Usable random weights for a SAM with no pretrained checkpoint behind it (transformers initialises the vision
    tower with std 1e-10 and zero LayerNorm gains, which only make sense before loading a checkpoint):
    truncated-normal linear / conv weights, zero biases, unit LayerNorm gains, a random absolute position table."""
    for module in sam.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
    pos = getattr(sam.vision_encoder, "pos_embed", None)
    if pos is not None:
        nn.init.trunc_normal_(pos, std=std)


def _resize_position_tables(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Interpolate ``pos_embed`` (bicubic, float[1, h, w, C]) and ``rel_pos_h/w`` (linear, float[2s−1, C]) of a
    pretrained state to the shapes of ``target`` (a SAM built for another input size)."""
    out = dict(state)
    for key, value in state.items():
        if key not in target or target[key].shape == value.shape:
            continue
        want = target[key].shape
        if key.endswith("pos_embed") and value.dim() == 4:
            grid = F.interpolate(value.permute(0, 3, 1, 2).float(), size=(want[1], want[2]), mode="bicubic",
                                 align_corners=False)
            out[key] = grid.permute(0, 2, 3, 1).to(value.dtype)
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.dim() == 2:
            table = F.interpolate(value.t()[None].float(), size=want[0], mode="linear", align_corners=False)
            out[key] = table[0].t().to(value.dtype)
    return out


def load_sam_folder(path: str | Path, image_size: int, attention: str = "sdpa"):
    """A ``SamModel`` from a local ``save_pretrained`` folder, adapted to ``image_size`` × ``image_size`` input.

    Raises CheckpointError when the folder is missing or is not a SAM checkpoint."""
    from transformers import SamConfig, SamModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"sam_path {path}: no config.json; expected a folder written by SamModel.save_pretrained")
    try:
        pretrained = SamModel.from_pretrained(str(path), local_files_only=True,
                                              attn_implementation=attn_implementation(attention))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"sam_path {path}: cannot load a SamModel: {exc}") from exc
    v = pretrained.config.vision_config
    if v.image_size == image_size:
        return pretrained
    config = SamConfig.from_pretrained(str(path), local_files_only=True)
    patch = v.patch_size if isinstance(v.patch_size, int) else v.patch_size[0]
    if image_size % patch:
        raise CheckpointError(f"image_size {image_size} is not a multiple of the SAM patch size {patch}")
    config._attn_implementation = attn_implementation(attention)
    config.vision_config.image_size = image_size
    config.prompt_encoder_config.image_size = image_size
    config.prompt_encoder_config.image_embedding_size = image_size // patch
    model = SamModel(config)
    state = _resize_position_tables(pretrained.state_dict(), model.state_dict())
    model.load_state_dict(state)
    return model


def build_sam(config: XraySamConfig):
    """A ``SamModel``: the real one in ``config.sam_path``, else ``sam_config(config)`` initialised from scratch."""
    from transformers import SamModel

    if config.sam_path is not None:
        return load_sam_folder(config.sam_path, config.image_size, config.attention)
    model = SamModel(sam_config(config))
    init_from_scratch(model)
    return model


def add_lora(encoder: nn.Module, config: XraySamConfig) -> nn.Module:
    """Inject peft LoRA adapters (rank ``lora_rank``) into the encoder's ``lora_targets`` and freeze everything else
    in the encoder except the ``encoder_trainable`` parts.  Returns the same module, adapted in place."""
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_targets), bias="none")
    encoder = inject_adapter_in_model(lora, encoder)
    for name, param in encoder.named_parameters():
        param.requires_grad = "lora_" in name or name.split(".")[0] in config.encoder_trainable
    return encoder


@dataclass
class DecoderOutput:
    """One mask decoder's results for R prompts on an h × w embedding (E channels):
    mask_logits float[R, 4h, 4w] (the whole padded input at a quarter of its resolution), iou float[R],
    tokens float[R, 1, T, E] and image_embeddings float[R, E, h, w] after the two-way transformer (the residuals
    the occluder decoder hands to the target decoder)."""

    mask_logits: torch.Tensor
    iou: torch.Tensor
    tokens: torch.Tensor
    image_embeddings: torch.Tensor


def run_mask_decoder(decoder: nn.Module, image_embeddings: torch.Tensor, positional: torch.Tensor,
                     sparse: torch.Tensor, dense: torch.Tensor, residual: DecoderOutput | None = None) -> DecoderOutput:
    """One transformers ``SamMaskDecoder`` (single-mask output) on per-prompt inputs, with optional residuals.

    image_embeddings, positional, dense: float[R, E, h, w]; sparse: float[R, 1, T, E].  With ``residual`` (the
    occluder decoder's output) its tokens are added to this decoder's input tokens and its image embedding to
    this decoder's image embedding before the two-way transformer.  This re-states ``SamMaskDecoder.forward``
    because transformers does not return the transformer's outputs, which the bilayer coupling needs."""
    r, channels, h, w = image_embeddings.shape
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.expand(r, 1, -1, -1), sparse.to(output_tokens.dtype)], dim=2)
    image = image_embeddings + dense
    if residual is not None:
        tokens = tokens + residual.tokens
        image = image + residual.image_embeddings
    tokens_out, keys = decoder.transformer(point_embeddings=tokens, image_embeddings=image,
                                           image_positional_embeddings=positional, attention_similarity=None)
    image_out = keys.transpose(2, 3).reshape(r, channels, h, w)
    upscaled = decoder.activation(decoder.upscale_layer_norm(decoder.upscale_conv1(image_out)))
    upscaled = decoder.activation(decoder.upscale_conv2(upscaled))  # [R, E/8, 4h, 4w]
    hyper = decoder.output_hypernetworks_mlps[0](tokens_out[:, 0, 1, :])  # [R, E/8]
    mask_logits = torch.einsum("rc,rchw->rhw", hyper, upscaled)
    iou = decoder.iou_prediction_head(tokens_out[:, 0, 0, :])[:, 0]
    return DecoderOutput(mask_logits, iou, tokens_out, image_out)


def image_positional_embedding(positional: nn.Module, size: int) -> torch.Tensor:
    """SAM's dense positional encoding of a size × size grid of cell centres: float[1, E, size, size]
    (``positional`` is ``SamModel.shared_image_embedding``)."""
    weight = positional.positional_embedding
    centres = (torch.arange(size, device=weight.device, dtype=weight.dtype) + 0.5) / size
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return positional(torch.stack([x, y], dim=-1)).permute(2, 0, 1).unsqueeze(0)
