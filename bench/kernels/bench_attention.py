"""Fused attention: ours vs torch SDPA (each backend forced) and the eager reference, side by side in one run.

GPU: bf16, head dim 64, sequence 128…4096 at a fixed token budget (B·L = ``--tokens``, H = ``--heads``), forward and
forward+backward; TFLOP/s, fraction of the dense bf16 peak, and SDPA-best time / our time. Also the model shapes
(MBF ViT self-attention at 129/243 tokens, 4-query cross-attention over 128 tokens).
CPU: the CPU path (torch SDPA) vs the eager reference at small sizes, fp32.

    amodal bench kernels --op attention [--out DIR] [--seq-lens 128,256,...] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from amodal.bench.common import new_figure, save_figure, time_cpu_ms, time_gpu_ms, write_results
from amodal.kernels.attention import attention

DENSE_BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}
GPU_SEQ_LENS = (128, 256, 512, 1024, 2048, 4096)
CPU_SEQ_LENS = (64, 128, 256, 512)
MODEL_SHAPES = (  # (name, B, H, Lq, Lk, D)
    ("mbf_vit_self_129", 64, 12, 129, 129, 64),
    ("mbf_vit_self_243", 64, 12, 243, 243, 64),
    ("mbf_cross_4x128", 64, 8, 4, 128, 64),
    ("eoras_slots_x_bev_8x1024", 16, 8, 8, 1024, 64),
)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="amodal bench kernels --op attention", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/bench/kernels", help="output folder for JSON + PNG")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seq-lens", default=None, help="comma-separated sequence lengths")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16384, help="GPU: batch × sequence length per point")
    parser.add_argument("--cpu-batch", type=int, default=2)
    parser.add_argument("--cpu-heads", type=int, default=4)
    parser.add_argument("--reps", type=int, default=15, help="CPU timing repetitions per point")
    return parser.parse_args(argv)


def _flops(batch: int, heads: int, len_q: int, len_k: int, dim: int, with_backward: bool) -> float:
    """Two matmuls forward (4·B·H·Lq·Lk·D); the backward does 2.5× the forward's work."""
    forward = 4.0 * batch * heads * len_q * len_k * dim
    return forward * (3.5 if with_backward else 1.0)


def _peak_tflops(device_name: str) -> float | None:
    for key, peak in DENSE_BF16_PEAK_TFLOPS.items():
        if key in device_name:
            return peak
    return None


def _methods(device: str) -> dict[str, Callable]:
    """name → fn(q, k, v) for this device."""
    if device == "cpu":
        return {
            "ours_cpu_path": lambda q, k, v: attention(q, k, v, backend="cpu"),
            "eager_reference": lambda q, k, v: attention(q, k, v, backend="reference"),
        }
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def forced(backend):
        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)
        return run

    return {
        "ours_triton": lambda q, k, v: attention(q, k, v, backend="triton"),
        "sdpa_flash": forced(SDPBackend.FLASH_ATTENTION),
        "sdpa_efficient": forced(SDPBackend.EFFICIENT_ATTENTION),
        "eager_reference": lambda q, k, v: attention(q, k, v, backend="reference"),
    }


def _step(fn: Callable, q, k, v, grad_out, with_backward: bool) -> Callable[[], Any]:
    if not with_backward:
        return lambda: fn(q, k, v)
    return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad_out)


def _measure(device: str, shapes: list[tuple[str, int, int, int, int, int]], reps: int) -> list[dict[str, Any]]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    peak = _peak_tflops(torch.cuda.get_device_name(0)) if device == "cuda" else None
    rows: list[dict[str, Any]] = []
    for label, batch, heads, len_q, len_k, dim in shapes:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(batch, heads, length, dim, generator=gen).to(device, dtype).requires_grad_()
                   for length in (len_q, len_k, len_k))
        grad_out = torch.randn(batch, heads, len_q, dim, generator=gen).to(device, dtype)
        for with_backward in (False, True):
            steps = {name: _step(fn, q, k, v, grad_out, with_backward) for name, fn in _methods(device).items()}
            timings = time_gpu_ms(steps) if device == "cuda" else time_cpu_ms(steps, reps)
            for name, timing in timings.items():
                row: dict[str, Any] = {"shape": label, "batch": batch, "heads": heads, "len_q": len_q,
                                       "len_k": len_k, "head_dim": dim, "dtype": str(dtype).replace("torch.", ""),
                                       "pass": "fwd+bwd" if with_backward else "fwd", "method": name}
                if isinstance(timing, str):
                    row.update(ms_p50=None, error=timing)
                    rows.append(row)
                    print(f"{label:>26} {row['pass']:>7} {name:>16}: error {timing}", flush=True)
                    continue
                p50, p20, p80 = timing
                tflops = _flops(batch, heads, len_q, len_k, dim, with_backward) / (p50 * 1e-3) / 1e12
                row.update(ms_p50=p50, ms_p20=p20, ms_p80=p80, tflops=tflops,
                           peak_fraction=(tflops / peak) if peak else None)
                rows.append(row)
                print(f"{label:>26} {row['pass']:>7} {name:>16}: {p50:9.3f} ms  {tflops * 1e3:10.1f} GFLOP/s",
                      flush=True)
    return rows


def _ratios(rows: list[dict[str, Any]], ours: str, baselines: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per (shape, pass): best baseline time / our time (> 1 = ours faster), at the median and at the 20th percentile
    (the latter is steadier on a shared, busy CPU)."""
    out = []
    for shape, pass_ in dict.fromkeys((r["shape"], r["pass"]) for r in rows):  # measurement order
        group = {r["method"]: r for r in rows if r["shape"] == shape and r["pass"] == pass_}
        base = {m: group[m] for m in baselines if m in group and group[m].get("ms_p50") is not None}
        if ours not in group or group[ours].get("ms_p50") is None or not base:
            continue
        best = min(base, key=lambda m: base[m]["ms_p50"])
        out.append({"shape": shape, "pass": pass_, "best_baseline": best,
                    "baseline_ms_over_ours_ms": base[best]["ms_p50"] / group[ours]["ms_p50"],
                    "baseline_over_ours_p20": base[best]["ms_p20"] / group[ours]["ms_p20"]})
    return out


def _plot(rows: list[dict[str, Any]], seq_shapes: list[str], y_key: str, y_label: str, out_dir: str, name: str):
    fig, axes = new_figure(ncols=2)
    for ax, pass_ in zip(axes[0], ("fwd", "fwd+bwd")):
        methods = sorted({r["method"] for r in rows})
        for method in methods:
            pts = [(r["len_q"], r[y_key]) for r in rows if r["shape"] in seq_shapes and r["pass"] == pass_
                   and r["method"] == method and r.get(y_key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.set_ylabel(y_label)
        ax.set_title(f"attention {pass_}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    return save_figure(fig, out_dir, name)


def main(argv: list[str]) -> int:
    args = _parse(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device")
        return 2
    dim = args.head_dim
    if device == "cuda":
        seq_lens = [int(s) for s in args.seq_lens.split(",")] if args.seq_lens else list(GPU_SEQ_LENS)
        seq_shapes = [(f"seq_{n}", max(1, args.tokens // n), args.heads, n, n, dim) for n in seq_lens]
        shapes = seq_shapes + list(MODEL_SHAPES)
        ours, baselines = "ours_triton", ("sdpa_flash", "sdpa_efficient")
    else:
        seq_lens = [int(s) for s in args.seq_lens.split(",")] if args.seq_lens else list(CPU_SEQ_LENS)
        seq_shapes = [(f"seq_{n}", args.cpu_batch, args.cpu_heads, n, n, dim) for n in seq_lens]
        shapes = seq_shapes
        ours, baselines = "ours_cpu_path", ("eager_reference",)
    rows = _measure(device, shapes, args.reps)
    ratios = _ratios(rows, ours, baselines)
    if device == "cuda":
        ratios += _ratios(rows, ours, ("eager_reference",))
    for r in ratios:
        print(f"{r['shape']:>26} {r['pass']:>7}: {r['best_baseline']} / ours = {r['baseline_ms_over_ours_ms']:.2f}x "
              f"(p20 {r['baseline_over_ours_p20']:.2f}x)")
    name = f"attention_{device}"
    config = {"device": device, "head_dim": dim, "tokens": args.tokens, "heads": args.heads,
              "flops_model": "fwd 4·B·H·Lq·Lk·D, fwd+bwd 3.5× fwd"}
    path = write_results(args.out, name, {"op": "attention", "config": config, "rows": rows, "ratios": ratios})
    seq_names = [s[0] for s in seq_shapes]
    if device == "cuda":
        plot = _plot(rows, seq_names, "tflops", "TFLOP/s (bf16)", args.out, name)
    else:
        plot = _plot(rows, seq_names, "ms_p50", "time per call (ms, median)", args.out, name)
    print(f"wrote {path} and {plot}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
