"""``amodal bench eoras``: the ``eoras`` stage's model alone in tracks/s for 1–64 tracks per step, with its attention
through our dispatcher (``auto``: the fused Triton kernel on CUDA, torch SDPA on the CPU) against PyTorch SDPA
called directly (``cpu``) and the eager reference, in the same run.

One causal streaming step per call (what the stage runs per micro-batch): every track carries its slots from the
previous step.  Crops are random 128×128 images with the intrinsics of a 65° camera.  Writes ``eoras.json`` and
``eoras.png`` (device, versions, commit).  On a CPU ``auto`` and ``cpu`` are the same SDPA call; the comparison that
matters (Triton against SDPA) needs CUDA.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from amodal.bench.common import new_figure, save_figure, write_results
from amodal.engine.device import select_device
from amodal.engine.stages.eoras import EoRaSStage
from amodal.models.eoras import build_eoras, intrinsics_from_fov, load_eoras
from amodal.pretrained import shipped_weights

BACKENDS = ("auto", "cpu", "reference")


def tracks_per_s(model, tracks: int, device: torch.device, steps: int) -> float:
    size = model.config.input_size
    crops = torch.rand(tracks, 3, size, size, device=device)
    K = intrinsics_from_fov(size, size, 65.0).to(device).expand(tracks, 3, 3).contiguous()
    with torch.inference_mode():
        _, states = model.step([None] * tracks, crops, K)  # warm-up, and the slots every later step carries
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            _, states = model.step(states, crops, K)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return tracks * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="amodal bench eoras", description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=None, help="default: the shipped weights")
    p.add_argument("--tracks", default="1,2,4,8,16,32,64")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("out/bench/eoras"))
    args = p.parse_args(argv)
    device = select_device(args.device)
    loaded = load_eoras(args.weights or shipped_weights(EoRaSStage.shipped_weights))
    models = {}
    for backend in BACKENDS:
        model = build_eoras(config=dataclasses.replace(loaded.model.config, attention_backend=backend))
        model.load_state_dict(loaded.model.state_dict())
        models[backend] = model.to(device).eval()
    rows = []
    for tracks in [int(t) for t in args.tracks.split(",") if t]:
        row = {"tracks": tracks}
        for _ in range(2):  # round-robin, so a busy shared CPU slows every backend alike; the better of two
            for backend, model in models.items():
                row[backend] = max(row.get(backend, 0.0), tracks_per_s(model, tracks, device, args.steps))
        rows.append(row)
        print(f"{tracks:3d} tracks: " + ", ".join(f"{b} {row[b]:.1f}" for b in BACKENDS) + " tracks/s", flush=True)
    path = write_results(args.out, "eoras", {"device": str(device), "config": dataclasses.asdict(loaded.model.config),
                                            "rows": rows})
    fig, axes = new_figure(1)
    ax = axes[0][0]
    for backend in BACKENDS:
        ax.plot([r["tracks"] for r in rows], [r[backend] for r in rows], marker="o",
                label={"auto": "our dispatcher", "cpu": "torch SDPA", "reference": "eager reference"}[backend])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tracks per step")
    ax.set_ylabel("tracks/s")
    ax.set_title(f"eoras stage model on {device}")
    ax.legend()
    save_figure(fig, args.out, "eoras")
    print(f"wrote {path}")
    return 0
