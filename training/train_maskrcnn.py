"""Train the small Mask R-CNN the ``maskrcnn`` analyzer ships with, on ``synthetic://`` scenes.

    python -m amodal.training.train_maskrcnn --out amodal/_weights/maskrcnn_tiny_synthetic.safetensors

Every training image is a frame of a random synthetic scene (discs, boxes and person-like shapes that
cross and occlude each other) with exact visible masks; held-out scenes (other seeds) are evaluated with
COCO segm AP through pycocotools.  The weights file records classes, input size, normalisation, training
data, metric and score, and the commit.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from amodal.engine.postprocess import encode_masks
from amodal.models.maskrcnn import MaskRCNNConfig, build_maskrcnn
from amodal.models.weights import save_weights
from amodal.streams.synthetic import SHAPE_KINDS, SyntheticScene, SyntheticSpec
from amodal.training.evaluation.coco import evaluate_coco

MIN_VISIBLE_PX = 40


def sample(seed: int, index: int, size: tuple[int, int], objects: int) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """One frame of scene ``seed`` and its Mask R-CNN targets (visible masks and their boxes)."""
    h, w = size
    scene = SyntheticScene(SyntheticSpec(width=w, height=h, objects=objects, seed=seed))
    truth = scene.truth(index)
    keep = [i for i in range(len(truth.object_ids)) if truth.visible_masks[i].sum() >= MIN_VISIBLE_PX]
    masks = truth.visible_masks[keep]
    boxes = np.zeros((len(keep), 4), dtype=np.float32)
    for j, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        boxes[j] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    labels = [SHAPE_KINDS.index(truth.class_names[i]) + 1 for i in keep]
    target = {
        "boxes": torch.from_numpy(boxes),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
    }
    return scene.render(index), target


def to_input(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)


def evaluate(model, config: MaskRCNNConfig, seeds: list[int], size: tuple[int, int], objects: int) -> dict:
    """COCO segm/bbox AP of ``model`` on one frame of each held-out scene."""
    images, annotations, predictions = [], [], []
    model.eval()
    with torch.inference_mode():
        for image_id, seed in enumerate(seeds, start=1):
            image, target = sample(seed, 37 * image_id % 200, size, objects)
            images.append({"id": image_id, "width": size[1], "height": size[0], "file_name": f"{seed}.png"})
            for mask, box, label in zip(encode_masks(target["masks"].bool()), target["boxes"].tolist(), target["labels"].tolist()):
                x1, y1, x2, y2 = box
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": label, "iscrowd": 0,
                    "segmentation": {"size": [mask.height, mask.width], "counts": mask.counts.decode()},
                    "area": float(mask.area()), "bbox": [x1, y1, x2 - x1, y2 - y1],
                })
            out = model([to_input(image)])[0]
            for mask, box, label, score in zip(encode_masks(out["masks"][:, 0]), out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist()):
                x1, y1, x2, y2 = box
                predictions.append({
                    "image_id": image_id, "category_id": label, "score": score, "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "segmentation": {"size": [mask.height, mask.width], "counts": mask.counts.decode()},
                })
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(config.class_names)]}
    segm = evaluate_coco(gt, predictions, iou_type="segm") if predictions else {"AP": 0.0}
    bbox = evaluate_coco(gt, predictions, iou_type="bbox") if predictions else {"AP": 0.0}
    return {"segm": segm, "bbox": bbox}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m amodal.training.train_maskrcnn", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="weights file (.safetensors)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--objects", type=int, default=5)
    p.add_argument("--eval-scenes", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    size = (args.height, args.width)
    config = MaskRCNNConfig(
        class_names=SHAPE_KINDS, backbone="tiny", fpn_channels=64, min_size=args.height, max_size=args.width,
        anchor_sizes=(16, 32, 64, 128, 256), box_detections_per_img=20, box_head_dim=256, mask_head_channels=64,
        rpn_post_nms_train=300, rpn_post_nms_test=200, box_batch_size_per_image=128,
    )
    model = build_maskrcnn(config=config)
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    warmup = max(1, min(200, args.steps // 5))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.1 if s >= int(0.8 * args.steps) else 1.0)
    )
    start = time.perf_counter()
    model.train()
    for step in range(args.steps):
        batch = [sample(int(rng.integers(0, 1_000_000)), int(rng.integers(0, 400)), size, args.objects) for _ in range(args.batch_size)]
        losses = model([to_input(img) for img, _ in batch], [t for _, t in batch])
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == args.steps - 1:
            parts = " ".join(f"{k[5:]}={v.item():.3f}" for k, v in losses.items())
            print(f"step {step:5d} loss {loss.item():.3f} ({parts}) {time.perf_counter() - start:.0f}s", flush=True)
    held_out = list(range(10_000_000, 10_000_000 + args.eval_scenes))
    metrics = evaluate(model, config, held_out, size, args.objects)
    print(json.dumps({"segm_AP": metrics["segm"]["AP"], "bbox_AP": metrics["bbox"]["AP"], "segm_AP50": metrics["segm"].get("AP50")}))
    from amodal.bench.common import git_commit

    metadata = {
        "model": "maskrcnn",
        "config": config.to_dict(),
        "classes": list(config.class_names),
        "input_size": list(size),
        "normalisation": {"mean": list(config.image_mean), "std": list(config.image_std), "scale": "rgb/255"},
        "training_data": f"synthetic://shapes {args.width}x{args.height} objects={args.objects}, {args.steps} steps x batch {args.batch_size}, random seeds",
        "metric": "COCO segm AP (pycocotools) on held-out synthetic scenes",
        "score": {"segm": metrics["segm"], "bbox": metrics["bbox"]},
        "commit": git_commit(),
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    path = save_weights(model.state_dict(), args.out, metadata)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
