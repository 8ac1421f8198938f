"""EoRaS: front view + BEV encoders, slot-based multi-view fusion over time, visible and amodal mask decoders.

Per object track, every frame is a crop of ``enlarge`` × the visible box resized to S × S (RGB in [0, 1]) with the
crop's intrinsics K (``amodal.models.eoras.geometry.crop_intrinsics``).  Temporal modes (``EoRaS.forward``):

* ``offline`` — the paper: slots run forward over the whole clip and, from the learned slots again, backward; frame
  t decodes [forward_t ⊕ backward_t];
* ``windowed`` (W) — forward features as above; the backward pass of frame t starts at frame min(t + W − 1, T − 1):
  a stream emits frame t when frame t + W − 1 arrives (lag W − 1 frames);
* ``causal`` — ``windowed`` with W = 1: the backward half sees only the current frame, nothing from the future.

``offline`` equals ``windowed`` with W ≥ T.  Streaming (``step`` / ``flush``) runs the same maths one frame at a time
with a bounded per-track state (the forward slots and at most W − 1 pending frames); ``forward(mode)`` on a clip
equals its step-by-step run (tested).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from amodal.errors import ConfigError
from amodal.models.eoras.backbone import ResNetFPN
from amodal.models.eoras.config import EoRaSConfig
from amodal.models.eoras.parts import BEVTranslation, MaskDecoder, MultiViewFusion
from amodal.models.weights import load_model_record, load_state_strict

MODES = ("offline", "windowed", "causal")


@dataclass(frozen=True)
class EoRaSOutputs:
    """Mask logits float[B, T, M, M] in crop coordinates (M = ``config.mask_size``)."""

    amodal_logits: torch.Tensor
    visible_logits: torch.Tensor


@dataclass(frozen=True)
class EoRaSTargets:
    """Soft masks float[B, T, M, M] in [0, 1], crop coordinates (the crop boxes resized to M × M)."""

    amodal: torch.Tensor
    visible: torch.Tensor


@dataclass(frozen=True)
class FrameTokens:
    """Tokens of one frame of one track: front float[Nf, D], bev float[Nb, D] | None, and the forward-fused front
    view float[Nf, D] (None without slots)."""

    front: torch.Tensor
    bev: torch.Tensor | None
    forward: torch.Tensor | None


@dataclass(frozen=True)
class EoRaSTrackState:
    """Bounded streaming state of one track: forward slots float[S, D] after the last received frame (None
    without slots), the received but not yet emitted frames (≤ W − 1), and how many frames were received/emitted."""

    slots: torch.Tensor | None
    pending: tuple[FrameTokens, ...]
    received: int
    emitted: int


@dataclass(frozen=True)
class EoRaSFrameOutput:
    """One emitted frame of one track: ``frame`` = its index in the track (0-based; the step's frame minus the lag),
    mask logits float[M, M]."""

    frame: int
    amodal_logits: torch.Tensor
    visible_logits: torch.Tensor


class EoRaS(nn.Module):
    """``EoRaS(config, backbone=None, bev=None, fusion=None, amodal_decoder=None, visible_decoder=None)``;
    parts left None are built from ``config``.

    forward(crops float[B, T, 3, S, S], K float[B, T, 3, 3], mode="offline", window=None) → EoRaSOutputs."""

    def __init__(self, config: EoRaSConfig, *, backbone: nn.Module | None = None, bev: nn.Module | None = None,
                 fusion: MultiViewFusion | None = None, amodal_decoder: nn.Module | None = None,
                 visible_decoder: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else ResNetFPN(config)
        self.front_proj = nn.Linear(config.fpn_channels, config.d_model)
        if config.use_bev:
            self.bev = bev if bev is not None else BEVTranslation(config)
            self.bev_proj = nn.Linear(config.fpn_channels, config.d_model)
        self.fusion = fusion if fusion is not None else MultiViewFusion(config)
        self.amodal_decoder = amodal_decoder or MaskDecoder(config.decoder_in_channels, config.decoder_channels)
        self.visible_decoder = visible_decoder or MaskDecoder(config.decoder_in_channels, config.decoder_channels)

    # ------------------------------------------------------------------ per-frame encoding
    def encode(self, crops: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """crops float[N, 3, S, S], K float[N, 3, 3] → (front tokens float[N, f², D], BEV tokens float[N, Nb, D] or
        None without BEV)."""
        cfg = self.config
        if crops.shape[-2:] != (cfg.input_size, cfg.input_size):
            raise ConfigError(f"EoRaS: crops must be {cfg.input_size}x{cfg.input_size}, got "
                              f"{tuple(crops.shape[-2:])}")
        p3 = self.backbone(crops)
        front = self.front_proj(p3.flatten(2).transpose(1, 2))
        if not cfg.use_bev:
            return front, None
        bev = self.bev(p3, K.to(p3.dtype))
        return front, self.bev_proj(bev.flatten(2).transpose(1, 2))

    def decode(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fused tokens float[N, f², C] (C = decoder_in_channels) → (amodal, visible) logits float[N, M, M]."""
        f = self.config.feature_size
        grid = fused.transpose(1, 2).reshape(fused.shape[0], fused.shape[2], f, f)
        return self.amodal_decoder(grid)[:, 0], self.visible_decoder(grid)[:, 0]

    # ------------------------------------------------------------------ clip-level temporal passes
    def _run(self, slots: torch.Tensor, fronts: Sequence[torch.Tensor],
             bevs: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for front, bev in zip(fronts, bevs):
            slots, feat = self.fusion.step(slots, front, bev)
            feats.append(feat)
        return slots, feats

    def fuse(self, front: torch.Tensor, bev: torch.Tensor | None, mode: str = "offline",
             window: int | None = None) -> torch.Tensor:
        """Front tokens float[B, T, Nf, D] (+ BEV float[B, T, Nb, D]) → fused float[B, T, Nf, C] in ``mode``."""
        B, T = front.shape[:2]
        bevs: list[torch.Tensor | None] = [bev[:, t] for t in range(T)] if bev is not None else [None] * T
        if not self.config.use_slots:
            flat_bev = bev.flatten(0, 1) if bev is not None else None
            return self.fusion.front_only(front.flatten(0, 1), flat_bev).reshape(B, T, *front.shape[2:])
        fronts = [front[:, t] for t in range(T)]
        W = _window(mode, window, T)
        init = self.fusion.initial_slots(B)
        _, forward = self._run(init, fronts, bevs)
        if W >= T:
            _, backward_rev = self._run(init, fronts[::-1], bevs[::-1])
            backward = backward_rev[::-1]
        elif W == 1:  # every frame on its own: one batched step over B·T
            flat_bev = bev.flatten(0, 1) if bev is not None else None
            _, feat = self.fusion.step(self.fusion.initial_slots(B * T), front.flatten(0, 1), flat_bev)
            backward = list(feat.reshape(B, T, *feat.shape[1:]).unbind(1))
        else:
            backward = []
            for t in range(T):
                end = min(t + W, T)
                _, rev = self._run(init, fronts[t:end][::-1], bevs[t:end][::-1])
                backward.append(rev[-1])
        return torch.cat([torch.stack(forward, 1), torch.stack(backward, 1)], dim=-1)

    def forward(self, crops: torch.Tensor, K: torch.Tensor, mode: str = "offline",
                window: int | None = None) -> EoRaSOutputs:
        B, T = crops.shape[:2]
        front, bev = self.encode(crops.flatten(0, 1), K.flatten(0, 1))
        front = front.reshape(B, T, *front.shape[1:])
        bev = bev.reshape(B, T, *bev.shape[1:]) if bev is not None else None
        fused = self.fuse(front, bev, mode, window)
        amodal, visible = self.decode(fused.flatten(0, 1))
        M = amodal.shape[-1]
        return EoRaSOutputs(amodal.reshape(B, T, M, M), visible.reshape(B, T, M, M))

    # ------------------------------------------------------------------ streaming
    def _emit(self, tracks: list[EoRaSTrackState], frames: list[list[FrameTokens]]) -> list[EoRaSFrameOutput]:
        """Decode the first of ``frames[i]`` (its forward features + a backward pass over all of ``frames[i]``
        from the learned slots) for every i; all ``frames[i]`` have the same length."""
        n, length = len(frames), len(frames[0])
        if self.config.use_slots:
            init = self.fusion.initial_slots(n)
            fronts = [torch.stack([f[k].front for f in frames]) for k in range(length)]
            bevs = [torch.stack([f[k].bev for f in frames]) if frames[0][k].bev is not None else None
                    for k in range(length)]
            _, rev = self._run(init, fronts[::-1], bevs[::-1])
            fused = torch.cat([torch.stack([f[0].forward for f in frames]), rev[-1]], dim=-1)
        else:
            fused = torch.stack([f[0].forward for f in frames])
        amodal, visible = self.decode(fused)
        return [EoRaSFrameOutput(t.emitted, amodal[i], visible[i]) for i, t in enumerate(tracks)]

    def step(self, states: Sequence[EoRaSTrackState | None], crops: torch.Tensor, K: torch.Tensor,
             mode: str = "causal", window: int | None = None
             ) -> tuple[list[EoRaSFrameOutput | None], list[EoRaSTrackState]]:
        """One new frame for each of N tracks (batched): ``states[i]`` None starts track i afresh; crops
        float[N, 3, S, S], K float[N, 3, 3]. Returns (the frame each track emits now — None while its window fills —,
        the new states). ``mode``: ``causal`` (W = 1) or ``windowed`` (W = ``window``)."""
        if mode not in ("causal", "windowed"):
            raise ConfigError(f"EoRaS.step: mode must be causal or windowed (offline needs the whole clip), got "
                              f"{mode!r}")
        W = _window(mode, window, None)
        n = crops.shape[0]
        if len(states) != n:
            raise ConfigError(f"EoRaS.step: {len(states)} states for {n} crops")
        front, bev = self.encode(crops, K)
        tokens: list[FrameTokens]
        new_states: list[EoRaSTrackState] = []
        if self.config.use_slots:
            slots = torch.stack([s.slots if s is not None else self.fusion.slots.weight for s in states])
            slots, fwd = self.fusion.step(slots, front, bev)
            tokens = [FrameTokens(front[i], bev[i] if bev is not None else None, fwd[i]) for i in range(n)]
        else:
            fwd = self.fusion.front_only(front, bev)
            slots = None
            tokens = [FrameTokens(front[i], None, fwd[i]) for i in range(n)]
        for i, s in enumerate(states):
            pending = (s.pending if s is not None else ()) + (tokens[i],)
            new_states.append(EoRaSTrackState(slots[i] if slots is not None else None, pending,
                                              (s.received if s is not None else 0) + 1,
                                              s.emitted if s is not None else 0))
        ready = [i for i, s in enumerate(new_states) if len(s.pending) >= (W if self.config.use_slots else 1)]
        outputs: list[EoRaSFrameOutput | None] = [None] * n
        if ready:
            emitted = self._emit([new_states[i] for i in ready], [list(new_states[i].pending) for i in ready])
            for i, out in zip(ready, emitted):
                outputs[i] = out
                s = new_states[i]
                new_states[i] = replace(s, pending=s.pending[1:], emitted=s.emitted + 1)
        return outputs, new_states

    def flush(self, state: EoRaSTrackState | None) -> list[EoRaSFrameOutput]:
        """The frames a track still holds (end of track or stream), each with a backward pass over the frames
        after it; the state is then spent."""
        outputs: list[EoRaSFrameOutput] = []
        while state is not None and state.pending:
            outputs += self._emit([state], [list(state.pending)])
            state = replace(state, pending=state.pending[1:], emitted=state.emitted + 1)
        return outputs


def _window(mode: str, window: int | None, length: int | None) -> int:
    if mode == "offline":
        return length if length is not None else 1 << 30
    if mode == "causal":
        return 1
    if mode == "windowed":
        if not isinstance(window, int) or window < 1:
            raise ConfigError(f"EoRaS: windowed mode needs window ≥ 1, got {window!r}")
        return window
    raise ConfigError(f"EoRaS: mode must be one of {MODES}, got {mode!r}")


# ---------------------------------------------------------------------------------------------------- losses
def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean binary focal loss of mask logits against soft targets in [0, 1], the official form:
    p_t = p·g + (1 − p)(1 − g), loss = −(1 − p_t)^γ · log(p_t + 1e-6), p = sigmoid(logits)."""
    p = torch.sigmoid(logits.float())
    g = targets.float()
    p_t = p * g + (1 - p) * (1 - g)
    return (-(1 - p_t).pow(gamma) * torch.log(p_t + 1e-6)).mean()


def eoras_losses(outputs: EoRaSOutputs, targets: EoRaSTargets, config: EoRaSConfig) -> dict[str, torch.Tensor]:
    """``loss_amodal`` (focal) and ``loss_visible`` (visible_weight × focal)."""
    return {"loss_amodal": focal_loss(outputs.amodal_logits, targets.amodal, config.focal_gamma),
            "loss_visible": config.visible_weight * focal_loss(outputs.visible_logits, targets.visible,
                                                               config.focal_gamma)}


# ---------------------------------------------------------------------------------------------------- building
def build_eoras(*, config: EoRaSConfig) -> EoRaS:
    """A freshly initialised EoRaS."""
    return EoRaS(config)


@dataclass
class LoadedEoRaS:
    model: EoRaS
    config: EoRaSConfig
    metadata: dict[str, Any]


def load_eoras(path: str | Path) -> LoadedEoRaS:
    """Rebuild EoRaS (eval mode, fp32) from a safetensors file whose metadata record holds ``config``.
    Raises CheckpointError for a missing/truncated file, a missing or invalid config, or mismatched tensors."""
    state, metadata, config = load_model_record(path, EoRaSConfig, "EoRaS")
    model = build_eoras(config=config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_state_strict(model, state, path)
    return LoadedEoRaS(model.eval(), config, metadata)
