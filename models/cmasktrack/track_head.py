"""MaskTrack tracking head, its training loss, and the online matching of detections to a track memory.

Training: embeddings of the current frame's positive proposals are scored against the reference frame's ground-truth
instance embeddings, ``x · memᵀ`` with a zero "new object" column prepended; cross-entropy over the ``n + 1``
columns with target = (index of the same instance in the reference) + 1, or 0 when it is not there.

Inference (``match_tracks``): for detection ``i`` and memory entry ``j``::

    s[i, 0]     = log_softmax(score)[i, 0]     + w_s·log(det_score_i) + 0              + w_l·1
    s[i, j + 1] = log_softmax(score)[i, j + 1] + w_s·log(det_score_i) + w_iou·IoU(i, j) + w_l·[label_i == label_j]

argmax per row; column 0 opens a new id.  When several detections pick the same id, the one with the highest
``s`` keeps it and each other one opens a new id.  ``update_memory`` keeps, per id, the latest embedding, box,
label, the frame it was last seen and its largest visible area so far (for the occlusion estimate).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MultiScaleRoIAlign, box_iou

FEATURE_LEVELS = ("0", "1", "2", "3")


class TrackHead(nn.Module):
    """RoIAlign 7×7×C → FC ``dim`` → ReLU → FC ``dim``: one embedding per box.

    Args:
        in_channels: C (the FPN width).
        dim: embedding width (1024 in the paper).
        roi_pool: a ``MultiScaleRoIAlign``; default: levels "0"–"3", 7×7, sampling ratio 2.
        normalize: L2-normalise the embeddings (not in the paper; see ``CMaskTrackConfig.track_normalize``).
    """

    def __init__(self, in_channels: int, dim: int = 1024, roi_pool: MultiScaleRoIAlign | None = None,
                 normalize: bool = False) -> None:
        super().__init__()
        self.normalize = normalize
        self.roi_pool = roi_pool if roi_pool is not None else MultiScaleRoIAlign(list(FEATURE_LEVELS), 7, 2)
        resolution = self.roi_pool.output_size[0]
        self.fc1 = nn.Linear(in_channels * resolution * resolution, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, features: dict[str, torch.Tensor], boxes_xyxy: list[torch.Tensor],
                image_sizes: list[tuple[int, int]]) -> torch.Tensor:
        """Embeddings float[ΣNᵢ, dim] for per-image boxes float[Nᵢ, 4] (x1y1x2y2 in input-image pixels)."""
        x = self.roi_pool(features, boxes_xyxy, image_sizes).flatten(1)
        x = self.fc2(F.relu(self.fc1(x)))
        return F.normalize(x, dim=1) if self.normalize else x


def track_scores(embeddings: torch.Tensor, memory_embeddings: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Logits float[N, M + 1]: a zero "new object" column, then ``scale · embeddings [N, D] · memory_embeddingsᵀ``."""
    dots = (embeddings @ memory_embeddings.t()) * scale
    return torch.cat([dots.new_zeros(dots.shape[0], 1), dots], dim=1)


def track_targets(instance_ids: torch.Tensor, reference_ids: torch.Tensor) -> torch.Tensor:
    """int64[N]: for each id in ``instance_ids [N]`` its index in ``reference_ids [M]`` + 1, or 0 when absent."""
    if reference_ids.numel() == 0 or instance_ids.numel() == 0:
        return torch.zeros_like(instance_ids, dtype=torch.int64)
    eq = instance_ids[:, None] == reference_ids[None, :]
    return torch.where(eq.any(dim=1), eq.float().argmax(dim=1) + 1, 0).to(torch.int64)


def track_loss(scores: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over all positive proposals of per-image logits [Pᵢ, Mᵢ + 1] and targets int64[Pᵢ]."""
    total = sum(s.sum() * 0.0 for s in scores) if scores else torch.zeros(())
    count = 0
    for s, t in zip(scores, targets):
        if t.numel():
            total = total + F.cross_entropy(s, t, reduction="sum")
            count += t.numel()
    return total / max(count, 1)


@dataclass(frozen=True)
class MatchWeights:
    """Weights of the matching score (the paper's: 1.0, 2.0, 10.0)."""

    det_score: float = 1.0
    iou: float = 2.0
    label: float = 10.0
    logit_scale: float = 1.0  # factor on the appearance logits (``CMaskTrackConfig.track_logit_scale``)


@dataclass(frozen=True)
class TrackMemory:
    """Per-stream track memory (M entries): ids int64[M], embeddings float[M, D], boxes float[M, 4] (x1y1x2y2),
    labels int64[M], last_seen int64[M] (frame counter), max_area float[M] (largest visible mask area, px)."""

    ids: torch.Tensor
    embeddings: torch.Tensor
    boxes_xyxy: torch.Tensor
    labels: torch.Tensor
    last_seen: torch.Tensor
    max_area: torch.Tensor
    next_id: int = 1

    @classmethod
    def empty(cls, dim: int, device: torch.device | str = "cpu", next_id: int = 1) -> "TrackMemory":
        z = torch.zeros
        return cls(z(0, dtype=torch.int64, device=device), z(0, dim, device=device), z(0, 4, device=device),
                   z(0, dtype=torch.int64, device=device), z(0, dtype=torch.int64, device=device),
                   z(0, device=device), next_id)

    def __len__(self) -> int:
        return int(self.ids.numel())


@dataclass(frozen=True)
class MatchResult:
    """ids int64[N] (track id per detection); is_new bool[N]; scores float[N, M + 1] (the matching scores)."""

    ids: torch.Tensor
    is_new: torch.Tensor
    scores: torch.Tensor
    next_id: int


def matching_scores(embeddings: torch.Tensor, boxes_xyxy: torch.Tensor, labels: torch.Tensor,
                    det_scores: torch.Tensor, memory: TrackMemory, weights: MatchWeights) -> torch.Tensor:
    """float[N, M + 1] combined scores of N detections against M memory entries (column 0 = new object)."""
    n = embeddings.shape[0]
    log_p = F.log_softmax(track_scores(embeddings, memory.embeddings, weights.logit_scale), dim=1)
    ious = box_iou(boxes_xyxy, memory.boxes_xyxy) if len(memory) else boxes_xyxy.new_zeros(n, 0)
    same = (labels[:, None] == memory.labels[None, :]).to(log_p.dtype)
    ious = torch.cat([ious.new_zeros(n, 1), ious.to(log_p.dtype)], dim=1)
    same = torch.cat([same.new_ones(n, 1), same], dim=1)
    det_term = weights.det_score * torch.log(det_scores.clamp_min(1e-12)).to(log_p.dtype)[:, None]
    return log_p + det_term + weights.iou * ious + weights.label * same


def match_tracks(embeddings: torch.Tensor, boxes_xyxy: torch.Tensor, labels: torch.Tensor, det_scores: torch.Tensor,
                 memory: TrackMemory, weights: MatchWeights = MatchWeights()) -> MatchResult:
    """Track ids for N detections (embeddings [N, D], boxes [N, 4], labels int64[N], det_scores [N]).

    argmax of ``matching_scores`` per detection; column 0 and conflict losers get fresh ids, numbered from
    ``memory.next_id`` in detection order."""
    n = embeddings.shape[0]
    scores = matching_scores(embeddings, boxes_xyxy, labels, det_scores, memory, weights)
    best_val, best_col = scores.max(dim=1) if n else (scores.new_zeros(0), torch.zeros(0, dtype=torch.int64))
    best_col, best_val = best_col.cpu().tolist(), best_val.cpu().tolist()
    winner: dict[int, int] = {}
    for i, col in enumerate(best_col):
        if col > 0 and (col not in winner or best_val[i] > best_val[winner[col]]):
            winner[col] = i
    mem_ids = memory.ids.cpu().tolist()
    ids, is_new, next_id = [], [], memory.next_id
    for i, col in enumerate(best_col):
        if col > 0 and winner[col] == i:
            ids.append(mem_ids[col - 1])
            is_new.append(False)
        else:
            ids.append(next_id)
            is_new.append(True)
            next_id += 1
    device = embeddings.device
    return MatchResult(torch.tensor(ids, dtype=torch.int64, device=device),
                       torch.tensor(is_new, dtype=torch.bool, device=device), scores, next_id)


def update_memory(memory: TrackMemory, match: MatchResult, embeddings: torch.Tensor, boxes_xyxy: torch.Tensor,
                  labels: torch.Tensor, areas: torch.Tensor, frame: int, max_age_frames: int = 0) -> TrackMemory:
    """Memory after frame ``frame``: matched ids take the detection's embedding, box, label; new ids are appended;
    ``max_area`` keeps the running maximum of visible areas float[N]; entries unseen for more than
    ``max_age_frames`` frames are dropped (0 = keep all)."""
    ids, emb, boxes = memory.ids.clone(), memory.embeddings.clone(), memory.boxes_xyxy.clone()
    labs, seen, area = memory.labels.clone(), memory.last_seen.clone(), memory.max_area.clone()
    position = {int(t): j for j, t in enumerate(ids.tolist())}
    new_rows = [i for i, new in enumerate(match.is_new.tolist()) if new]
    old_rows = [i for i, new in enumerate(match.is_new.tolist()) if not new]
    if old_rows:
        rows = torch.tensor(old_rows, dtype=torch.int64, device=embeddings.device)
        cols = torch.tensor([position[int(match.ids[i])] for i in old_rows], dtype=torch.int64, device=ids.device)
        emb[cols] = embeddings[rows].to(emb.dtype)
        boxes[cols] = boxes_xyxy[rows].to(boxes.dtype)
        labs[cols] = labels[rows]
        seen[cols] = frame
        area[cols] = torch.maximum(area[cols], areas[rows].to(area.dtype))
    if new_rows:
        rows = torch.tensor(new_rows, dtype=torch.int64, device=embeddings.device)
        ids = torch.cat([ids, match.ids[rows]])
        emb = torch.cat([emb, embeddings[rows].to(emb.dtype)])
        boxes = torch.cat([boxes, boxes_xyxy[rows].to(boxes.dtype)])
        labs = torch.cat([labs, labels[rows]])
        seen = torch.cat([seen, torch.full((len(new_rows),), frame, dtype=torch.int64, device=seen.device)])
        area = torch.cat([area, areas[rows].to(area.dtype)])
    out = replace(memory, ids=ids, embeddings=emb, boxes_xyxy=boxes, labels=labs, last_seen=seen, max_area=area,
                  next_id=match.next_id)
    if max_age_frames > 0:
        keep = seen >= frame - max_age_frames
        if not bool(keep.all()):
            out = replace(out, ids=ids[keep], embeddings=emb[keep], boxes_xyxy=boxes[keep], labels=labs[keep],
                          last_seen=seen[keep], max_area=area[keep])
    return out


def occlusion_levels(areas: torch.Tensor, ids: torch.Tensor, memory: TrackMemory) -> torch.Tensor:
    """Estimated hidden fraction float[N] in [0, 1] of each detection: ``1 − visible area / largest visible area
    its track has shown`` (``memory`` already updated with this frame); 0 for a track's largest view."""
    if ids.numel() == 0:
        return areas.new_zeros(0)
    position = {int(t): j for j, t in enumerate(memory.ids.tolist())}
    peak = memory.max_area[[position[int(t)] for t in ids.tolist()]].to(areas.dtype)
    return (1.0 - areas / peak.clamp_min(1.0)).clamp(0.0, 1.0)
