"""MBF losses as plain functions: ID cross-entropy (label smoothing), soft-margin batch-hard triplet, patch parsing
cross-entropy, part separation, recovery MSE; ``mbf_losses`` combines them as the paper does (global terms and
the mean of the part terms weighted ½ each)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from amodal.models.mbf.config import MBFConfig
from amodal.models.mbf.parts import vote_patch_labels


@dataclass
class MBFTargets:
    """pids int64[N] (training labels 0…num_ids−1); parsing int64[N, H, W] (0 background … 4 shoes) of the images
    the model saw, occluded pixels already background."""

    pids: torch.Tensor
    parsing: torch.Tensor


def id_loss(logits: torch.Tensor, pids: torch.Tensor, label_smoothing: float = 0.1,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy with label smoothing: logits [N, C], pids [N]; ``weights`` [N] (e.g. part visible) average
    the per-sample losses (0 when every weight is 0)."""
    per_sample = F.cross_entropy(logits, pids, label_smoothing=label_smoothing, reduction="none")
    if weights is None:
        return per_sample.mean()
    weights = weights.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp_min(1.0)


def pairwise_distances(features: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [N, N] of features [N, D] (clamped before the square root, finite gradients)."""
    squared = features.pow(2).sum(1)
    dist2 = squared[:, None] + squared[None, :] - 2.0 * features @ features.T
    return dist2.clamp_min(1e-12).sqrt()


def batch_hard_triplet_loss(features: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """Soft-margin batch-hard triplet: mean over anchors of softplus(max d(a, p) − min d(a, n)); features [N, D],
    pids [N]. Anchors without a positive or a negative in the batch are skipped (0 when none is left)."""
    dist = pairwise_distances(features)
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(len(pids), dtype=torch.bool, device=pids.device)
    positive = same & ~eye
    hardest_positive = dist.masked_fill(~positive, float("-inf")).amax(1)
    hardest_negative = dist.masked_fill(same, float("inf")).amin(1)
    valid = positive.any(1) & (~same).any(1)
    if not valid.any():
        return features.sum() * 0.0
    return F.softplus(hardest_positive[valid] - hardest_negative[valid]).mean()


def parsing_loss(parsing_logits: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the patch part classifier: logits [N, L, C] against voted patch labels int64[N, L]."""
    return F.cross_entropy(parsing_logits.flatten(0, 1), patch_labels.flatten())


def separation_loss(part_features: torch.Tensor) -> torch.Tensor:
    """Keeps the K part features of an image apart: mean squared off-diagonal cosine similarity of [N, K, D]."""
    unit = F.normalize(part_features, dim=-1)
    gram = unit @ unit.transpose(1, 2)
    k = gram.shape[-1]
    off_diagonal = gram.masked_select(~torch.eye(k, dtype=torch.bool, device=gram.device).expand_as(gram))
    return off_diagonal.pow(2).mean() if k > 1 else part_features.sum() * 0.0


def recovery_loss(recovered_tokens: torch.Tensor, holistic_tokens: torch.Tensor) -> torch.Tensor:
    """MSE between recovered tokens [N, L, D] and the (detached) holistic tokens [N, L, D]."""
    return F.mse_loss(recovered_tokens, holistic_tokens.detach())


def mbf_losses(outputs, targets: MBFTargets, config: MBFConfig) -> dict[str, torch.Tensor]:
    """``loss_id``, ``loss_triplet``, ``loss_parsing``, ``loss_separation`` and (foreground recovery on)
    ``loss_recovery`` of ``MBFOutputs``, each already multiplied by its weight in ``config``.

    ID and triplet: ½ · mean over the global features (global, and recovered when present) + ½ · mean over the
    parts; a part's ID loss counts only the images where that part has at least one patch. Triplet and separation
    see the raw or the BN-necked features (``config.metric_features``)."""
    pids = targets.pids
    necked = config.metric_features == "necked"
    global_logits = [outputs.global_logits]
    global_feats = [outputs.global_necked if necked else outputs.global_feature]
    part_feats = outputs.part_necked if necked else outputs.part_features
    if outputs.recovered_feature is not None:
        global_logits.append(outputs.recovered_logits)
        global_feats.append(outputs.recovered_necked if necked else outputs.recovered_feature)
    k = outputs.part_features.shape[1]
    smoothing = config.label_smoothing
    id_global = torch.stack([id_loss(lg, pids, smoothing) for lg in global_logits]).mean()
    id_parts = torch.stack([id_loss(outputs.part_logits[:, j], pids, smoothing, outputs.part_present[:, j])
                            for j in range(k)]).mean()
    tri_global = torch.stack([batch_hard_triplet_loss(f, pids) for f in global_feats]).mean()
    tri_parts = torch.stack([batch_hard_triplet_loss(part_feats[:, j], pids) for j in range(k)]).mean()
    patch_labels = vote_patch_labels(targets.parsing, config.patch_size, config.stride, config.parsing_classes)
    losses = {
        "loss_id": config.id_weight * 0.5 * (id_global + id_parts),
        "loss_triplet": config.triplet_weight * 0.5 * (tri_global + tri_parts),
        "loss_parsing": config.parsing_weight * parsing_loss(outputs.parsing_logits, patch_labels),
        "loss_separation": config.separation_weight * separation_loss(part_feats),
    }
    if outputs.recovered_tokens is not None:
        if outputs.holistic_tokens is None:
            raise ValueError("mbf_losses: foreground recovery is on but the outputs carry no holistic tokens "
                             "(call the model with holistic_images)")
        losses["loss_recovery"] = config.recovery_weight * recovery_loss(outputs.recovered_tokens,
                                                                         outputs.holistic_tokens)
    return losses
