"""``amodal bench xray``: images/s of the ``xray`` stage's model (``XraySam.detect``: encoder, FPN, RPN, box head,
prompter, occluder and item decoders) on 512×512 scans, for the tiny configuration and a ViT-B-sized SAM
(``vit_b_config``) with random weights, batch 1–8, with SAM's attention through our dispatcher (registered with
transformers' ``AttentionInterface``, ``models/xray/attention.py``) against torch SDPA in the same run.

Both variants share one set of weights and are timed round-robin (CPU: ``time_cpu_ms``; CUDA:
``triton.testing.do_bench``), so a busy shared CPU slows them alike.  On a CPU the dispatcher calls torch SDPA too
(the fused Triton kernel needs CUDA), on q and k widened by the folded relative-position bias; the figure there is
the cost of that folding, not a kernel comparison.  Random weights give near-uniform class scores, so every image
yields the configuration's maximum of detections and mask decodes (``detections`` in the results): the worst case
of the stage's per-image work.  Writes ``xray.json`` and ``xray.png`` (device, versions, commit).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from amodal.bench.common import new_figure, save_figure, time_cpu_ms, time_gpu_ms, write_results
from amodal.engine.device import select_device
from amodal.models.xray import XraySam, tiny_config, vit_b_config

ATTENTIONS = ("sdpa", "dispatcher")
PRESETS = {"tiny": tiny_config, "vit_b": vit_b_config}


def build_pair(preset: str, size: int, device: torch.device) -> dict[str, XraySam]:
    """The preset at ``size``² with SDPA and with the dispatcher, same random weights, eval mode on ``device``."""
    torch.manual_seed(0)
    base = PRESETS[preset](image_size=size)
    models = {}
    for attention in ATTENTIONS:
        model = XraySam(dataclasses.replace(base, attention=attention))  # SAM initialised from scratch
        if models:
            model.load_state_dict(next(iter(models.values())).state_dict())
        models[attention] = model.to(device).eval()
    return models


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="amodal bench xray", description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="tiny,vit_b")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batches", default="1,2,4,8")
    p.add_argument("--vit-b-batches", default=None, help="default: 1,2 on a CPU, --batches on CUDA")
    p.add_argument("--reps", type=int, default=3, help="timed calls per variant and batch (CPU)")
    p.add_argument("--vit-b-reps", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("out/bench/xray"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    batches = [int(b) for b in args.batches.split(",") if b]
    vit_b_batches = ([int(b) for b in args.vit_b_batches.split(",") if b] if args.vit_b_batches
                     else batches if device.type == "cuda" else [b for b in batches if b <= 2])
    rows = []
    configs = {}
    for preset in [c for c in args.configs.split(",") if c]:
        models = build_pair(preset, args.size, device)
        configs[preset] = dataclasses.asdict(models["sdpa"].config)
        for batch in vit_b_batches if preset == "vit_b" else batches:
            images = [torch.rand(3, args.size, args.size, generator=torch.Generator().manual_seed(i)).to(device)
                      for i in range(batch)]
            with torch.inference_mode():
                detections = [int(d.scores.shape[0]) for d in models["sdpa"].detect(images)]
                steps = {a: (lambda m=m: m.detect(images)) for a, m in models.items()}
                reps = args.vit_b_reps if preset == "vit_b" else args.reps
                timed = time_gpu_ms(steps) if device.type == "cuda" else time_cpu_ms(steps, reps)
            row = {"config": preset, "batch": batch, "detections": detections}
            for attention, value in timed.items():
                if isinstance(value, str):
                    row[attention] = {"error": value}
                    continue
                p50, p20, p80 = value
                row[attention] = {"ms_p50": p50, "ms_p20": p20, "ms_p80": p80, "images_per_s": batch * 1e3 / p50}
            if all(isinstance(row[a], dict) and "images_per_s" in row[a] for a in ATTENTIONS):
                row["dispatcher_over_sdpa"] = row["dispatcher"]["images_per_s"] / row["sdpa"]["images_per_s"]
            rows.append(row)
            print(f"{preset:5s} batch {batch}: " + ", ".join(
                f"{a} {row[a]['images_per_s']:.2f} img/s" if "images_per_s" in row[a] else f"{a} {row[a]['error']}"
                for a in ATTENTIONS) + (f" (ratio {row['dispatcher_over_sdpa']:.3f})" if "dispatcher_over_sdpa" in row
                                        else ""), flush=True)
        del models
    path = write_results(args.out, "xray", {"device": str(device), "image_size": args.size, "threads": args.threads,
                                            "configs": configs, "rows": rows})
    fig, axes = new_figure(2, width_in=5.5)
    for ax, preset in zip(axes[0], ("tiny", "vit_b")):
        for attention, label in (("sdpa", "torch SDPA"), ("dispatcher", "our dispatcher")):
            points = [(r["batch"], r[attention]["images_per_s"]) for r in rows
                      if r["config"] == preset and "images_per_s" in r[attention]]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        ax.set_xlabel("batch (images per detect call)")
        ax.set_ylabel("images/s")
        ax.set_title(f"xray model, {preset}, {args.size}² on {device}")
        ax.legend()
    save_figure(fig, args.out, "xray")
    print(f"wrote {path}")
    return 0
