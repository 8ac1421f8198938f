"""``amodal bench layers-samplers``: which sampler the ``layers`` stage should use — layer quality against time.

On held-out layered images (``--data``, SAS folders or ``layers.json``) the trained denoiser (``--weights``)
decomposes every image layer by layer (ensemble ``--ensemble``, layer limit ``--layer-limit``, one seed for all)
with DDIM and DPM-Solver++ at ``--steps`` (default 5, 10, 25, 50) and, as the reference, the full 1000-step DDPM
schedule (learned-range variance) on the first ``--ddpm-images`` images (too slow on a CPU for more; the few-step
samplers are scored on that subset too, so the comparison with the reference is like for like).  Each row: per-layer
IoU, mIoU over (image, layer) pairs, layer count and layer-order accuracy (``amodal eval layers`` semantics) and
wall seconds per image.  The pick: the fastest configuration whose mIoU is within ``--tolerance`` (relative) of the
best few-step mIoU.  Writes ``layers_samplers.json`` and ``layers_samplers.png`` (quality vs seconds per image) under
``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from amodal.bench.common import new_figure, save_figure, write_results
from amodal.models.sas import LayerInference, load_sas
from amodal.training.data.layers import open_layers_dataset
from amodal.training.tasks.sas import evaluate_layers_model

KEYS = ("miou_layers", "layer_iou/1", "layer_iou/2", "layer_iou/3", "count_accuracy", "object_layer_accuracy",
        "order_accuracy", "mean_layers", "stopped_at_limit", "seconds_per_image")


def _row(sampler: str, steps: int, images: int, metrics: dict[str, float]) -> dict[str, Any]:
    return {"sampler": sampler, "steps": steps, "images": images, **{k: metrics.get(k) for k in KEYS}}


def choose(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The fastest row whose mIoU is at least (1 − ``tolerance``) × the best."""
    best = max(r["miou_layers"] for r in rows)
    near = [r for r in rows if r["miou_layers"] >= (1.0 - tolerance) * best]
    return min(near, key=lambda r: r["seconds_per_image"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    loaded = load_sas(args.weights)
    ds = open_layers_dataset(Path(args.data))
    items = [ds[i] for i in range(min(args.images, len(ds)))]
    device = torch.device("cpu")

    def measure(sampler: str, steps: int, subset: list) -> dict[str, float]:
        settings = LayerInference(sampler=sampler, steps=steps, ensemble_size=args.ensemble,
                                  layer_limit=args.layer_limit)
        metrics = evaluate_layers_model(loaded.model, subset, settings, device, seed=args.seed,
                                        batch_size=args.batch_size)
        print(json.dumps(_row(sampler, steps, len(subset), metrics)), flush=True)
        return metrics

    few: list[dict[str, Any]] = []
    reference: list[dict[str, Any]] = []

    def results(complete: bool) -> dict[str, Any]:
        pick = choose(few, args.tolerance) if few else None
        return {"weights": str(args.weights), "weights_metadata_model": loaded.metadata.get("model"),
                "data": str(args.data), "ensemble_size": args.ensemble, "layer_limit": args.layer_limit,
                "seed": args.seed, "tolerance": args.tolerance, "complete": complete, "rows": few,
                "ddpm_subset": reference, "choice": pick and {"sampler": pick["sampler"], "steps": pick["steps"]}}

    for sampler in ("ddim", "dpm"):
        for steps in args.steps:
            few.append(_row(sampler, steps, len(items), measure(sampler, steps, items)))
            write_results(args.out, "layers_samplers", results(False))  # partial results survive an interruption
    if args.ddpm_images > 0:
        subset = items[: args.ddpm_images]
        for sampler in ("ddim", "dpm"):
            for steps in args.steps:
                reference.append(_row(sampler, steps, len(subset), measure(sampler, steps, subset)))
        write_results(args.out, "layers_samplers", results(False))
        reference.insert(0, _row("ddpm", 1000, len(subset), measure("ddpm", 1000, subset)))
    return results(True)


def plot(results: dict[str, Any], out_dir: Path) -> Path:
    fig, axes = new_figure(ncols=2, width_in=5.5)
    for ax, key, label in ((axes[0][0], "miou_layers", "mIoU over (image, layer)"),
                           (axes[0][1], "order_accuracy", "layer-order accuracy")):
        for sampler, marker in (("ddim", "o-"), ("dpm", "s-")):
            rows = [r for r in results["rows"] if r["sampler"] == sampler]
            if not rows:
                continue
            ax.plot([r["seconds_per_image"] for r in rows], [r[key] for r in rows], marker,
                    label=f"{sampler} ({rows[0]['images']} images)")
            for r in rows:
                ax.annotate(str(r["steps"]), (r["seconds_per_image"], r[key]), fontsize=7)
        for r in results["ddpm_subset"]:
            if r["sampler"] == "ddpm":
                ax.plot([r["seconds_per_image"]], [r[key]], "k*", markersize=10,
                        label=f"ddpm 1000 ({r['images']} images)")
        ax.set_xscale("log")
        ax.set_xlabel("seconds per image (CPU)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    choice = results["choice"]
    fig.suptitle(f"SAS samplers, ensemble {results['ensemble_size']}: pick {choice['sampler']} {choice['steps']}",
                 fontsize=9)
    return save_figure(fig, out_dir, "layers_samplers")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amodal bench layers-samplers", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=Path(__file__).resolve().parents[1] / "amodal" / "_weights"
                        / "sas_tiny_synthetic.safetensors")
    parser.add_argument("--data", type=Path, default=Path("data/layers_sas/val"))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--ddpm-images", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 25, 50])
    parser.add_argument("--ensemble", type=int, default=3)
    parser.add_argument("--layer-limit", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.05, help="relative mIoU loss accepted for speed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("out/bench/layers_samplers"))
    args = parser.parse_args(argv)
    results = run(args)
    path = write_results(args.out, "layers_samplers", results)
    figure = plot(results, args.out)
    print(f"{path}\n{figure}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
