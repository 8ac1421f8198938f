"""Training task for MBF (occluded person ReID) on Market-1501-layout data with parsing masks (our synthetic sets:
``amodal data synth persons``; Occluded-Duke with parsing maps in ``parsing/`` reads the same way).

Batches are P identities × K images (``ids_per_batch`` × ``images_per_id`` = the trainer's ``batch_size``), each
image flipped at random, then background-augmented (another identity's foreground or a region occluder on half
the image, ``amodal.training.data.reid_augment``) and randomly erased; the un-augmented flipped image is the
holistic target of foreground recovery. Evaluation: CMC Rank-1/5 and mAP of ``query`` against
``bounding_box_test`` (same pid and camera excluded), with camera ids (the paper's protocol) and without
(``*_nocam``: how an engine without camera calibration uses the model); score = mAP with camera ids.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from amodal.errors import ConfigError
from amodal.models.mbf import MBF, MBFConfig, MBFTargets, build_mbf, mbf_losses
from amodal.training.data.market import ReIDImage, load_parsing, load_reid_dataset
from amodal.training.data.reid_augment import ReIDAugmentConfig, background_augment
from amodal.training.evaluation.reid import cross_camera_pairs, equal_error_threshold, evaluate_reid_features


@dataclass(frozen=True)
class MBFTaskConfig:
    """``task_config:`` of an MBF training run.

    ``background_augmentation`` / ``foreground_recovery`` switch the paper's two contributions (the ablations);
    ``camera_dropout``: probability that a training image is shown with the unknown-camera embedding, so the model
    also works when the camera is not known; model keys mirror ``MBFConfig``."""

    data_root: str
    ids_per_batch: int = 16
    images_per_id: int = 4
    background_augmentation: bool = True
    foreground_recovery: bool = True
    augment_prob: float = 0.5
    foreground_prob: float = 0.8
    erase_prob: float = 0.5
    hflip_prob: float = 0.5
    camera_embedding: bool = True
    camera_dropout: float = 0.2
    input_height: int = 128
    input_width: int = 64
    patch_size: int = 8
    stride: int = 8
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    part_threshold: float = 0.4
    recovery_queries: int = 4
    recovery_layers: int = 3
    metric_features: str = "raw"
    label_smoothing: float = 0.1
    separation_weight: float = 0.1
    recovery_weight: float = 1.0
    eval_batch: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.data_root, str) or not self.data_root:
            raise ConfigError("task_config.data_root must name a dataset directory")
        for name in ("ids_per_batch", "images_per_id", "eval_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"task_config.{name} must be an integer ≥ 1, got {value!r}")
        if self.ids_per_batch < 2 or self.images_per_id < 2:
            raise ConfigError(f"task_config: the triplet loss needs ≥ 2 ids × ≥ 2 images per batch, got "
                              f"{self.ids_per_batch} × {self.images_per_id}")
        for name in ("augment_prob", "foreground_prob", "erase_prob", "hflip_prob", "camera_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"task_config.{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("background_augmentation", "foreground_recovery", "camera_embedding"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"task_config.{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MBFTaskConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"task_config: unknown keys {unknown}; known: {sorted(known)}")
        if "data_root" not in d:
            raise ConfigError("task_config.data_root is required")
        return cls(**d)

    def model_config(self, num_ids: int, num_cameras: int) -> MBFConfig:
        return MBFConfig(
            num_ids=num_ids, num_cameras=num_cameras, input_height=self.input_height, input_width=self.input_width,
            patch_size=self.patch_size, stride=self.stride, embed_dim=self.embed_dim, depth=self.depth,
            num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, camera_embedding=self.camera_embedding,
            part_threshold=self.part_threshold, foreground_recovery=self.foreground_recovery,
            recovery_queries=self.recovery_queries, recovery_layers=self.recovery_layers,
            metric_features=self.metric_features, label_smoothing=self.label_smoothing,
            separation_weight=self.separation_weight,
            recovery_weight=self.recovery_weight)

    def augment_config(self) -> ReIDAugmentConfig:
        return ReIDAugmentConfig(apply_prob=self.augment_prob, foreground_prob=self.foreground_prob,
                                 erase_prob=self.erase_prob)


@dataclass
class MBFBatch:
    """P×K training images: images / holistic_images float[N, 3, H, W] RGB in [0, 1] (augmented / not),
    camera_ids int64[N] (``num_cameras`` = unknown), pids int64[N] (0…num_ids−1), parsing int64[N, H, W] of
    ``images`` (occluded pixels 0)."""

    images: torch.Tensor
    holistic_images: torch.Tensor
    camera_ids: torch.Tensor
    pids: torch.Tensor
    parsing: torch.Tensor

    def to(self, device: torch.device) -> "MBFBatch":
        return MBFBatch(self.images.to(device), self.holistic_images.to(device), self.camera_ids.to(device),
                        self.pids.to(device), self.parsing.to(device))


def load_image(path: Path, height: int, width: int) -> np.ndarray:
    """uint8[height, width, 3] RGB (bilinear resize when the file has another size)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8).copy()


def load_parsing_resized(item: ReIDImage, height: int, width: int) -> np.ndarray:
    """uint8[height, width] parsing labels of ``item`` (nearest resize); ConfigError when it has none."""
    if item.parsing_path is None:
        raise ConfigError(f"{item.path}: no parsing mask (parsing/{item.path.stem}.png); MBF training needs them")
    labels = load_parsing(item.parsing_path)
    if labels.shape != (height, width):
        labels = np.asarray(Image.fromarray(labels).resize((width, height), Image.Resampling.NEAREST))
    return labels


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8[N, H, W, 3] → float[N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


class MBFTask:
    """``task: mbf`` — see the module docstring."""

    name = "mbf"

    def __init__(self, task_config: dict[str, Any]) -> None:
        self.config = cfg = MBFTaskConfig.from_dict(dict(task_config))
        self.dataset = load_reid_dataset(Path(cfg.data_root))
        self.model_config = cfg.model_config(self.dataset.num_train_pids, self.dataset.num_cameras)
        self.augment = cfg.augment_config()
        size = (cfg.input_height, cfg.input_width)
        train = self.dataset.train
        self._images = np.stack([load_image(item.path, *size) for item in train])
        self._parsing = np.stack([load_parsing_resized(item, *size) for item in train])
        self._pids = np.array([item.pid for item in train], dtype=np.int64)
        self._cams = np.array([item.camid for item in train], dtype=np.int64)
        self._by_pid = {int(p): np.flatnonzero(self._pids == p) for p in np.unique(self._pids)}
        if len(self._by_pid) < cfg.ids_per_batch:
            raise ConfigError(f"{cfg.data_root}: {len(self._by_pid)} training ids, fewer than ids_per_batch "
                              f"{cfg.ids_per_batch}")
        self._eval_cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def build_model(self) -> nn.Module:
        return build_mbf(config=self.model_config)

    # ------------------------------------------------------------------ data

    def _sample(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(augmented image, its parsing, holistic image, camera id) of training image ``index``."""
        cfg = self.config
        image, parsing = self._images[index], self._parsing[index]
        if rng.random() < cfg.hflip_prob:
            image, parsing = image[:, ::-1], parsing[:, ::-1]
        others = np.flatnonzero(self._pids != self._pids[index])
        donor = int(others[int(rng.integers(len(others)))])
        augmented, aug_parsing, _ = background_augment(
            np.ascontiguousarray(image), np.ascontiguousarray(parsing), self._images[donor], self._parsing[donor],
            rng, self.augment, occlusion=cfg.background_augmentation)
        camera = int(self._cams[index])
        if cfg.camera_dropout and rng.random() < cfg.camera_dropout:
            camera = self.model_config.num_cameras
        return augmented, aug_parsing, np.ascontiguousarray(image), camera

    def make_batch(self, rng: np.random.Generator) -> MBFBatch:
        """One P×K batch drawn with ``rng``."""
        cfg = self.config
        pids = rng.choice(np.array(sorted(self._by_pid)), size=cfg.ids_per_batch, replace=False)
        indices = []
        for pid in pids.tolist():
            pool = self._by_pid[pid]
            indices.extend(rng.choice(pool, size=cfg.images_per_id, replace=len(pool) < cfg.images_per_id).tolist())
        samples = [self._sample(i, rng) for i in indices]
        images, parsing, holistic, cams = zip(*samples)
        return MBFBatch(to_tensor(np.stack(images)), to_tensor(np.stack(holistic)),
                        torch.tensor(cams, dtype=torch.int64), torch.from_numpy(self._pids[indices]),
                        torch.from_numpy(np.stack(parsing).astype(np.int64)))

    def train_batches(self, *, batch_size: int, seed: int, rank: int, world_size: int,
                      start_batch: int = 0) -> Iterator[MBFBatch]:
        """Endless P×K batches; batch b of rank r is drawn from Generator([seed, r, b]) (exact resume by index)."""
        cfg = self.config
        if batch_size != cfg.ids_per_batch * cfg.images_per_id:
            raise ConfigError(f"batch_size {batch_size} must equal ids_per_batch × images_per_id = "
                              f"{cfg.ids_per_batch} × {cfg.images_per_id}")
        batch = start_batch
        while True:
            yield self.make_batch(np.random.default_rng([seed, rank, batch]))
            batch += 1

    def batch_to_device(self, batch: MBFBatch, device: torch.device) -> MBFBatch:
        return batch.to(device)

    def losses(self, model: nn.Module, batch: MBFBatch) -> dict[str, torch.Tensor]:
        holistic = batch.holistic_images if self.config.foreground_recovery else None
        outputs = model(batch.images, batch.camera_ids, holistic_images=holistic)
        return mbf_losses(outputs, MBFTargets(batch.pids, batch.parsing), self.model_config)

    # ------------------------------------------------------------------ evaluation

    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images uint8[N, H, W, 3], pids, camids) of ``query`` or ``gallery``, loaded once."""
        if split not in self._eval_cache:
            items = self.dataset.query if split == "query" else self.dataset.gallery
            size = (self.config.input_height, self.config.input_width)
            self._eval_cache[split] = (np.stack([load_image(i.path, *size) for i in items]),
                                       np.array([i.pid for i in items]), np.array([i.camid for i in items]))
        return self._eval_cache[split]

    def _embed(self, model: MBF, images: np.ndarray, camids: np.ndarray | None, device: torch.device) -> np.ndarray:
        feats = []
        for start in range(0, len(images), self.config.eval_batch):
            chunk = to_tensor(images[start:start + self.config.eval_batch]).to(device)
            cams = None if camids is None else torch.from_numpy(camids[start:start + len(chunk)]).to(device)
            feats.append(model.embed(chunk, cams).cpu().numpy())
        return np.concatenate(feats)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Rank-1/5 and mAP on query vs bounding_box_test with and without camera ids (score = mAP with them), and
        the equal-error cosine threshold of cross-camera same-person pairs in the gallery (the gallery's match_threshold)."""
        q_img, q_pid, q_cam = self._split("query")
        g_img, g_pid, g_cam = self._split("gallery")
        out: dict[str, float] = {}
        for suffix, use_cams in (("", True), ("_nocam", False)):
            qf = self._embed(model, q_img, q_cam if use_cams else None, device)
            gf = self._embed(model, g_img, g_cam if use_cams else None, device)
            result = evaluate_reid_features(qf, gf, q_pid, q_cam, g_pid, g_cam)
            out.update({f"rank1{suffix}": result["rank1"], f"rank5{suffix}": result["rank5"],
                        f"mAP{suffix}": result["mAP"]})
            out["num_valid_queries"] = float(result["num_valid_queries"])
            if suffix == "":
                eer = equal_error_threshold(*cross_camera_pairs(gf, g_pid, g_cam))
                out.update({"match_threshold_eer": eer["threshold"], "eer_false_accept": eer["false_accept"],
                            "eer_false_reject": eer["false_reject"]})
        out["num_gallery"] = float(len(g_pid))
        out["score"] = out["mAP"]
        return out

    def export_metadata(self) -> dict[str, Any]:
        cfg, mc = self.config, self.model_config
        return {
            "model": "mbf",
            "config": mc.to_dict(),
            "input_size": {"height": mc.input_height, "width": mc.input_width},
            "normalisation": {"input": "RGB float in [0, 1]", "mean": list(mc.image_mean), "std": list(mc.image_std)},
            "embedding": {"dim": mc.embedding_dim, "layout": "global, head, upper, lower, shoes"
                          + (", recovered" if mc.foreground_recovery else ""),
                          "normalised": "L2 (compare with Euclidean or cosine distance)",
                          "camera_ids": (f"0..{mc.num_cameras - 1} or None (unknown camera)" if mc.camera_embedding
                                         else "ignored (no camera embedding)")},
            "training_data": {"data_root": cfg.data_root, "summary": self.dataset.summary(),
                              "task_config": asdict(cfg)},
            "metric": "mAP, query vs bounding_box_test (Market/Occluded-Duke protocol, same pid+camera excluded)",
        }
