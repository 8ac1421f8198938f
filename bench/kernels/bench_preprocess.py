"""Frame preprocessing: the torch chain (reference) vs the CPU path (CPU) or the fused Triton kernel (CUDA), same run.

``amodal bench kernels --op preprocess [--out DIR] [--device auto|cpu|cuda] [--repeats N] [--batch B]
[--out-size H W] [--threads N]`` writes ``preprocess.json`` and ``preprocess.png``: 720p and 1080p yuv420p / nv12 → 640×640 fp16.
"""
from __future__ import annotations

import argparse

import torch

from amodal.bench.common import environment, new_figure, save_figure, write_results
from amodal.bench.kernels.bench_correlation import bench_devices, hbm_roofline, time_ms
from amodal.kernels.preprocess import preprocess

SOURCES = ((720, 1280), (1080, 1920))
FORMATS = ("yuv420p", "nv12")


def make_planes(fmt: str, batch: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Random uint8 planes of one pixel format with a leading batch dim."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 256, (batch, h, w), generator=gen, dtype=torch.uint8)
    chroma = (batch, (h + 1) // 2, (w + 1) // 2)
    if fmt == "yuv420p":
        planes = (y, torch.randint(0, 256, chroma, generator=gen, dtype=torch.uint8),
                  torch.randint(0, 256, chroma, generator=gen, dtype=torch.uint8))
    else:
        planes = (y, torch.randint(0, 256, (*chroma, 2), generator=gen, dtype=torch.uint8))
    return tuple(p.to(device) for p in planes)


def bench_case(fmt: str, src_hw: tuple[int, int], out_hw: tuple[int, int], batch: int, device: torch.device,
               repeats: int) -> dict:
    planes = make_planes(fmt, batch, *src_hw, device)
    fast = "triton" if device.type == "cuda" else "cpu"
    ref, _ = preprocess(planes, fmt, out_hw, dtype=torch.float16, backend="reference")
    out, _ = preprocess(planes, fmt, out_hw, dtype=torch.float16, backend=fast)
    max_abs_err = float((out.float() - ref.float()).abs().max())
    in_bytes = sum(p.numel() * p.element_size() for p in planes)
    out_bytes = out.numel() * out.element_size()
    roof = hbm_roofline(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    times = time_ms({name: (lambda name=name: preprocess(planes, fmt, out_hw, dtype=torch.float16, backend=name))
                     for name in ("reference", fast)}, device, repeats)
    rows = {}
    for name, measured in times.items():
        ms = measured["ms"]
        row = {"ms": ms, "frames_per_s": batch / ms * 1e3}
        if "process_ms" in measured:
            row["process_ms"] = measured["process_ms"]
        if device.type == "cuda":
            row["gbps"] = (in_bytes + out_bytes) / ms / 1e6
            if roof is not None:
                row["fraction_of_hbm_roofline"] = ((in_bytes + out_bytes) / roof * 1e3) / ms
        rows[name] = row
    rows[fast]["speedup_vs_reference"] = rows["reference"]["ms"] / rows[fast]["ms"]
    if "process_ms" in rows[fast]:
        rows[fast]["process_speedup_vs_reference"] = rows["reference"]["process_ms"] / rows[fast]["process_ms"]
    return {"device": device.type, "pixel_format": fmt, "src_hw": list(src_hw), "out_hw": list(out_hw), "batch": batch,
            "dtype": "fp16", "fast_path": fast, "max_abs_err_vs_reference": max_abs_err,
            "bytes_moved": in_bytes + out_bytes, "results": rows}


def _plot(records: list[dict], out_dir: str, device_name: str):
    fig, axes = new_figure(ncols=1, width_in=8.0, height_in=4.0)
    ax = axes[0][0]
    labels = [f"{r['device']} {r['src_hw'][0]}p {r['pixel_format']} x{r['batch']}" for r in records]
    ax.bar([i for i in range(len(records))], [r["results"]["reference"]["ms"] for r in records], width=0.4,
           label="reference (torch chain)")
    ax.bar([i + 0.4 for i in range(len(records))], [r["results"][r["fast_path"]]["ms"] for r in records], width=0.4,
           label="fast path (cpu / triton)")
    ax.set_xticks([i + 0.2 for i in range(len(records))])
    ax.set_xticklabels(labels, rotation=15, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms per batch (log)")
    ax.set_title(f"preprocess → {records[0]['out_hw'][0]}x{records[0]['out_hw'][1]} fp16 — {device_name}", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "preprocess")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amodal bench kernels --op preprocess", description=__doc__)
    parser.add_argument("--out", default="out/bench/kernels")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--repeats", type=int, default=7, help="CPU timing rounds (median)")
    parser.add_argument("--batch", type=int, default=None, help="frames per call (default 8 on CUDA, 1 on CPU)")
    parser.add_argument("--out-size", type=int, nargs=2, default=(640, 640), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: leave as is)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    devices = bench_devices(args.device)
    if (args.batch is not None and args.batch < 1) or min(args.out_size) < 1:
        parser.error(f"--batch and --out-size must be >= 1, got {args.batch} and {args.out_size}")
    env = environment()
    records = []
    for device in devices:
        batch = args.batch if args.batch is not None else (8 if device.type == "cuda" else 1)
        for src_hw in SOURCES:
            for fmt in FORMATS:
                rec = bench_case(fmt, src_hw, tuple(args.out_size), batch, device, args.repeats)
                records.append(rec)
                ref, fast = rec["results"]["reference"], rec["results"][rec["fast_path"]]
                extra = f"  {fast['gbps']:.0f} GB/s" if "gbps" in fast else ""
                if "process_speedup_vs_reference" in fast:
                    extra += f"  process-time x{fast['process_speedup_vs_reference']:.2f}"
                if "fraction_of_hbm_roofline" in fast:
                    extra += f" ({fast['fraction_of_hbm_roofline']:.0%} of HBM)"
                print(f"{device.type}: {src_hw[0]}p {fmt:>8} x{batch}: reference {ref['ms']:8.2f} ms  "
                      f"{rec['fast_path']} {fast['ms']:8.2f} ms  x{fast['speedup_vs_reference']:.2f}{extra}  "
                      f"max|err| {rec['max_abs_err_vs_reference']:.3g}")
    path = write_results(args.out, "preprocess", {"devices": [d.type for d in devices], "records": records})
    png = _plot(records, args.out, env["device"])
    print(f"wrote {path} and {png}")
    return 0
