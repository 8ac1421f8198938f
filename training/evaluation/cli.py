"""``amodal eval coco|vis|amodal|reid|layers``: run a standard evaluator, print a table, optionally write JSON."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from amodal.errors import ConfigError
from amodal.training.evaluation.common import load_json, table, write_json


def _coco(args: argparse.Namespace) -> dict[str, Any]:
    from amodal.training.evaluation.coco import evaluate_coco

    return evaluate_coco(str(args.gt), str(args.dt), iou_type=args.iou_type, occluded_key=args.occluded_key)


def _vis(args: argparse.Namespace) -> dict[str, Any]:
    from amodal.training.evaluation.vis import evaluate_vis

    gt = load_json(args.gt, "ground-truth")
    if not isinstance(gt, dict):
        raise ConfigError(f"{args.gt}: ground truth must be a YouTube-VIS/OVIS dict")
    return evaluate_vis(gt, load_json(args.pred, "predictions"))


def _amodal(args: argparse.Namespace) -> dict[str, Any]:
    from amodal.training.evaluation.amodal import evaluate_amodal_dirs

    return evaluate_amodal_dirs(args.gt_dir, args.pred_dir)


def _reid(args: argparse.Namespace) -> dict[str, Any]:
    from amodal.training.evaluation.reid import evaluate_reid_features, load_features_npz

    data = load_features_npz(args.features)
    return evaluate_reid_features(data["query_feats"], data["gallery_feats"], data["query_pids"],
                                  data["query_camids"], data["gallery_pids"], data["gallery_camids"],
                                  metric=args.metric)


def _layers(args: argparse.Namespace) -> dict[str, Any]:
    from amodal.training.evaluation.layers import evaluate_layers

    return evaluate_layers(load_json(args.gt, "ground-truth"), load_json(args.pred, "predictions"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amodal eval", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("coco", help="COCO box/mask AP, plus AP on occluded instances (pycocotools)")
    p.add_argument("gt", type=Path, help="COCO ground-truth JSON")
    p.add_argument("dt", type=Path, help="COCO results JSON")
    p.add_argument("--iou-type", choices=("segm", "bbox"), default="segm")
    p.add_argument("--occluded-key", default=None,
                   help="annotation field flagging occluded instances (default: non-empty bg_object_segmentation)")
    p.set_defaults(run=_coco)
    p = sub.add_parser("vis", help="YouTube-VIS/OVIS video AP with occlusion buckets")
    p.add_argument("gt", type=Path, help="YouTube-VIS/OVIS ground-truth JSON")
    p.add_argument("pred", type=Path, help="predictions JSON [{video_id, category_id, segmentations, score}]")
    p.set_defaults(run=_vis)
    p = sub.add_parser("amodal", help="EoRaS mIoU_full / mIoU_occ over MOVi-layout PNG folders")
    p.add_argument("gt_dir", type=Path, help="MOVi-layout GT folder (one video or one sub-folder per video)")
    p.add_argument("pred_dir", type=Path, help="predicted segmentation_{obj}_%%05d.png, same layout")
    p.set_defaults(run=_amodal)
    p = sub.add_parser("reid", help="ReID CMC Rank-1/5/10 and mAP (Market protocol)")
    p.add_argument("features", type=Path, help="npz: query_feats, gallery_feats, query/gallery pids and camids")
    p.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
    p.set_defaults(run=_reid)
    p = sub.add_parser("layers", help="per-layer amodal IoU and layer-order accuracy")
    p.add_argument("gt", type=Path, help="layers.json")
    p.add_argument("pred", type=Path, help="predictions JSON {images: [{file, layers: [RLE, ...]}]}")
    p.set_defaults(run=_layers)
    for name in ("coco", "vis", "amodal", "reid", "layers"):
        sub.choices[name].add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        result = args.run(args)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"amodal eval {args.command}: error: {exc}", file=sys.stderr)
        return 1
    print(table(list(result.items()), f"amodal eval {args.command}"))
    if args.out is not None:
        write_json(args.out, {"command": args.command, **result})
        print(f"wrote {args.out}")
    return 0
