"""``amodal bench real``: the camera stages' models on real video frames labelled by eye.

Runs the models behind the ``maskrcnn`` and ``ovis`` stages (each frame at its own size, RGB in 0..1, as the
stages feed them; ``ovis`` through its online tracker, every frame a fresh stream) with one or more weight sets,
and scores their detections against ``bench/real_footage/labels.json`` (see the README there):

- person recall and vehicle recall (car, van, motorcycle) at IoU ≥ 0.5: a ground-truth box is found when a
  detection of its group (``person``; ``car``/``van``/``truck``/``bus``/``motorcycle`` for vehicles) overlaps it
  at IoU ≥ 0.5, each detection matching at most one box, highest scores first;
- false positives per frame: detections matched to no box of their group (other classes such as ``animal`` or
  ``disc`` are always false on these frames), except those lying mostly (≥ 50 % of their area) inside an ignore
  region (bicycles, unresolvable blur, people too uncertain to box);
- the same at every score threshold of a sweep (the plot), and at the stages' default threshold (0.5) in the
  summary.

Writes ``<out>/<name>.json`` and ``<out>/<name>.png``.  Weight sets: ``shipped`` (the stages' default weights),
``street`` (the shipped street-world weights, ``SHIPPED_SETS``), or ``NAME=DIR``, a directory holding the stages'
weight files under the default names (``maskrcnn_tiny_synthetic.safetensors``,
``cmasktrack_tiny_synthetic.safetensors``), as a training run's ``out_dir`` does.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amodal.errors import ConfigError

HERE = Path(__file__).resolve().parent
LABELS = HERE / "labels.json"
PERSON_CLASSES = frozenset({"person"})
VEHICLE_CLASSES = frozenset({"car", "van", "truck", "bus", "motorcycle"})
GROUP_OF_CATEGORY = {"person": "person", "car": "vehicle", "van": "vehicle", "motorcycle": "vehicle"}
WEIGHT_FILES = {"maskrcnn": "maskrcnn_tiny_synthetic.safetensors", "ovis": "cmasktrack_tiny_synthetic.safetensors"}
SHIPPED_SETS = {"shipped": WEIGHT_FILES,
                "street": {"maskrcnn": "maskrcnn_street_synthetic.safetensors",
                           "ovis": "cmasktrack_street_synthetic.safetensors"}}
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))
IOU_MATCH = 0.5
IGNORE_COVER = 0.5


@dataclass(frozen=True)
class LabelledFrame:
    """One labelled frame: pixels uint8[H, W, 3] RGB, boxes float[N, 4] x1y1x2y2 with their groups, ignore
    regions float[M, 4]."""

    file_name: str
    rgb: np.ndarray
    boxes_xyxy: np.ndarray
    groups: tuple[str, ...]
    ignore_xyxy: np.ndarray


@dataclass(frozen=True)
class Detections:
    """One frame's detections: boxes float[N, 4] x1y1x2y2 px, scores float[N], class names."""

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    classes: tuple[str, ...]


def group_of_class(name: str) -> str:
    if name in PERSON_CLASSES:
        return "person"
    if name in VEHICLE_CLASSES:
        return "vehicle"
    return "other"


def load_frames(labels: Path = LABELS) -> list[LabelledFrame]:
    """The labelled frames of a COCO-like ``labels`` file (``iscrowd`` boxes are ignore regions)."""
    from PIL import Image

    data = json.loads(Path(labels).read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    frames = []
    for image in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        rgb = np.asarray(Image.open(Path(labels).parent / "frames" / image["file_name"]).convert("RGB"))

        def xyxy(sel: list[dict]) -> np.ndarray:
            return np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                             for a in sel], np.float64).reshape(-1, 4)

        objects = [a for a in anns if not a.get("iscrowd")]
        unknown = {names.get(a["category_id"]) for a in objects} - set(GROUP_OF_CATEGORY)
        if unknown:
            raise ConfigError(f"{labels}: categories {sorted(map(str, unknown))} have no group (person/vehicle)")
        frames.append(LabelledFrame(image["file_name"], rgb, xyxy(objects),
                                    tuple(GROUP_OF_CATEGORY[names[a["category_id"]]] for a in objects),
                                    xyxy([a for a in anns if a.get("iscrowd")])))
    return frames


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU float[N, M] of x1y1x2y2 boxes a float[N, 4] and b float[M, 4]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def covered(a: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """bool[N]: the share of each box a float[N, 4] inside one of ``regions`` float[M, 4] is ≥ IGNORE_COVER."""
    if len(a) == 0 or len(regions) == 0:
        return np.zeros(len(a), bool)
    lt = np.maximum(a[:, None, :2], regions[None, :, :2])
    rb = np.minimum(a[:, None, 2:], regions[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = np.maximum(np.prod(a[:, 2:] - a[:, :2], axis=1), 1e-9)
    return (inter / area[:, None]).max(axis=1) >= IGNORE_COVER


def score_frame(frame: LabelledFrame, det: Detections, threshold: float) -> dict[str, int]:
    """Counts of one frame at ``threshold``: ``{person,vehicle}_{gt,found}``, ``fp``, ``ignored``."""
    keep = det.scores >= threshold
    boxes, scores = det.boxes_xyxy[keep], det.scores[keep]
    groups = [g for g, k in zip((group_of_class(c) for c in det.classes), keep) if k]
    matched = np.zeros(len(boxes), bool)
    counts = {}
    for group in ("person", "vehicle"):
        gt = frame.boxes_xyxy[[g == group for g in frame.groups]]
        cand = np.array([i for i, g in enumerate(groups) if g == group], int)
        found = np.zeros(len(gt), bool)
        if len(gt) and len(cand):
            iou = box_iou(boxes[cand], gt)
            for j in np.argsort(-scores[cand], kind="stable"):
                free = np.where(~found & (iou[j] >= IOU_MATCH), iou[j], -1.0)
                if free.max() >= IOU_MATCH:
                    found[int(free.argmax())] = True
                    matched[cand[j]] = True
        counts[f"{group}_gt"] = int(len(gt))
        counts[f"{group}_found"] = int(found.sum())
    ignored = ~matched & covered(boxes, frame.ignore_xyxy)
    counts["fp"] = int((~matched & ~ignored).sum())
    counts["ignored"] = int(ignored.sum())
    return counts


def summarise(frames: list[LabelledFrame], dets: list[Detections], threshold: float) -> dict[str, float]:
    rows = [score_frame(f, d, threshold) for f, d in zip(frames, dets)]
    total = {k: sum(r[k] for r in rows) for k in rows[0]}
    return {
        "score_threshold": threshold,
        "person_recall": total["person_found"] / max(total["person_gt"], 1),
        "vehicle_recall": total["vehicle_found"] / max(total["vehicle_gt"], 1),
        "fp_per_frame": total["fp"] / len(frames),
        **total,
    }


# ------------------------------------------------------------------------------------------ models


def _to_tensor(rgb: np.ndarray):
    import torch

    return torch.from_numpy(np.array(rgb, np.uint8)).permute(2, 0, 1).float().div_(255.0)


def run_maskrcnn(path: Path, frames: list[LabelledFrame]) -> list[Detections]:
    """The ``maskrcnn`` stage's model on each frame (lowest internal score threshold; the sweep cuts later)."""
    import torch

    from amodal.models.maskrcnn import load_maskrcnn

    loaded = load_maskrcnn(path)
    model = loaded.model.eval()
    names = loaded.config.class_names
    out = []
    with torch.inference_mode():
        for f in frames:
            o = model([_to_tensor(f.rgb)])[0]
            labels = o["labels"].tolist()
            out.append(Detections(o["boxes"].numpy().astype(np.float64), o["scores"].numpy().astype(np.float64),
                                  tuple(names[k - 1] if 0 < k <= len(names) else f"class_{k}" for k in labels)))
    return out


def run_ovis(path: Path, frames: list[LabelledFrame]) -> list[Detections]:
    """The ``ovis`` stage's model through its online tracker, each frame a fresh stream (no past frame)."""
    import torch

    from amodal.models.cmasktrack import OnlineTracker
    from amodal.models.cmasktrack.model import load_cmasktrack

    loaded = load_cmasktrack(path)
    tracker = OnlineTracker(loaded.model.eval(), score_threshold=min(THRESHOLDS), max_detections=100)
    names = loaded.config.class_names
    out = []
    with torch.inference_mode():
        for k, f in enumerate(frames):
            t = tracker.step([(k, _to_tensor(f.rgb))])[0]
            tracker.reset(k)
            out.append(Detections(t.boxes_xyxy.numpy().astype(np.float64), t.scores.numpy().astype(np.float64),
                                  tuple(names[int(c) - 1] if 0 < int(c) <= len(names) else f"class_{int(c)}"
                                        for c in t.labels)))
    return out


RUNNERS = {"maskrcnn": run_maskrcnn, "ovis": run_ovis}


# ------------------------------------------------------------------------------------------ entry point


def weight_sets(specs: list[str]) -> dict[str, dict[str, Path]]:
    """{set name: {stage: weights file}} of ``--weights`` specs: ``shipped``, ``street`` or ``NAME=DIR``."""
    from amodal.pretrained import WEIGHTS_DIR

    sets: dict[str, dict[str, Path]] = {}
    for spec in specs or ["shipped"]:
        name, _, folder = spec.partition("=")
        if not name or (not folder and name not in SHIPPED_SETS):
            raise ConfigError(f"--weights {spec!r}: expected NAME=DIR or one of {sorted(SHIPPED_SETS)}")
        files = WEIGHT_FILES if folder else SHIPPED_SETS[name]
        sets[name] = {stage: Path(folder or WEIGHTS_DIR) / file for stage, file in files.items()}
    return sets


def evaluate(weight_sets: dict[str, dict[str, Path]], stages: list[str], labels: Path = LABELS,
             threshold: float = 0.5) -> dict[str, Any]:
    """Per weight set and stage: the summary at ``threshold``, the sweep and per-frame counts."""
    frames = load_frames(labels)
    results: dict[str, Any] = {}
    skipped: list[str] = []
    for set_name, files in weight_sets.items():
        paths = {stage: files[stage] for stage in stages}
        if not any(p.is_file() for p in paths.values()):
            raise ConfigError(f"weights set {set_name!r}: none of {[str(p) for p in paths.values()]} exists")
        for stage, path in paths.items():
            if not path.is_file():  # a set may hold one stage's weights only (the others unchanged)
                skipped.append(f"{set_name}/{stage}: no {path}")
                continue
            dets = RUNNERS[stage](path, frames)
            results[f"{set_name}/{stage}"] = {
                "weights": str(path),
                "summary": summarise(frames, dets, threshold),
                "sweep": [summarise(frames, dets, t) for t in THRESHOLDS],
                "frames": {f.file_name: score_frame(f, d, threshold) for f, d in zip(frames, dets)},
                "detections_at_threshold": {
                    f.file_name: [{"class": c, "score": round(float(s), 3), "box_xyxy": [round(float(v), 1) for v in b]}
                                  for b, s, c in zip(d.boxes_xyxy, d.scores, d.classes) if s >= threshold]
                    for f, d in zip(frames, dets)},
            }
    n_person = sum(g == "person" for f in frames for g in f.groups)
    n_vehicle = sum(g == "vehicle" for f in frames for g in f.groups)
    return {"labels": str(labels), "frames": len(frames), "persons": n_person, "vehicles": n_vehicle,
            "iou_match": IOU_MATCH, "ignore_cover": IGNORE_COVER, "skipped": skipped, "results": results}


def plot(results: dict[str, Any], path: Path) -> None:
    from amodal.bench.common import new_figure

    fig, axes = new_figure(ncols=2, width_in=5.5, height_in=4.0)
    for key, r in results["results"].items():
        fp = [s["fp_per_frame"] for s in r["sweep"]]
        axes[0][0].plot(fp, [s["person_recall"] for s in r["sweep"]], marker=".", label=key)
        axes[0][1].plot(fp, [s["vehicle_recall"] for s in r["sweep"]], marker=".", label=key)
    for ax, what in zip(axes[0], ("person", "vehicle")):
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        if what == "person":
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("false positives per frame (score sweep 0.05..0.95)")
        ax.set_ylabel(f"{what} recall at IoU 0.5")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=0)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    axes[0][0].set_title(f"real footage: {results['persons']} persons, {results['frames']} frames")
    axes[0][1].set_title(f"{results['vehicles']} vehicles")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="amodal bench real", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", action="append", default=[],
                        help="NAME=DIR with the stages' weight files, or shipped / street (shipped sets); repeatable")
    parser.add_argument("--stages", default="maskrcnn,ovis", help="comma-separated: maskrcnn, ovis")
    parser.add_argument("--labels", default=str(LABELS))
    parser.add_argument("--score-threshold", type=float, default=0.5, help="the summary's threshold (stage default)")
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--name", default="real_footage")
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    bad = [s for s in stages if s not in RUNNERS]
    if bad:
        raise ConfigError(f"--stages: unknown {bad}; choose from {sorted(RUNNERS)}")
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    results = evaluate(weight_sets(args.weights), stages, Path(args.labels), args.score_threshold)
    from amodal.bench.common import write_results

    path = write_results(args.out, args.name, results)
    plot(results, Path(args.out) / f"{args.name}.png")
    for key, r in results["results"].items():
        s = r["summary"]
        print(f"{key}: person recall {s['person_recall']:.2f} ({s['person_found']}/{s['person_gt']}), vehicle recall "
              f"{s['vehicle_recall']:.2f} ({s['vehicle_found']}/{s['vehicle_gt']}), {s['fp_per_frame']:.2f} FP/frame "
              f"at score ≥ {s['score_threshold']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
