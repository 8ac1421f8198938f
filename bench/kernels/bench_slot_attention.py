"""Slot attention: ours vs the eager reference (and eager in the input dtype), side by side in one run.

GPU: bf16, B=32, S=8 slots, N = 256…4096 inputs, D = 64…512, forward and forward+backward; time, effective bandwidth
(minimal bytes: read q, k, v, write updates; the backward additionally reads k, v, dO and writes dq, dk, dv) and the
eager/ours ratio. CPU: the CPU path vs the eager reference at small sizes, fp32.

    amodal bench kernels --op slot_attention [--out DIR] [--inputs 256,1024] [--dims 64,512] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from amodal.bench.common import new_figure, save_figure, time_cpu_ms, time_gpu_ms, write_results
from amodal.kernels.slot_attention import slot_attention

HBM_PEAK_GBPS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0}
GPU_INPUTS = (256, 1024, 4096)
GPU_DIMS = (64, 128, 256, 512)
CPU_INPUTS = (256, 1024, 4096)
CPU_DIMS = (64,)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="amodal bench kernels --op slot_attention",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/bench/kernels", help="output folder for JSON + PNG")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--inputs", default=None, help="comma-separated input counts N")
    parser.add_argument("--dims", default=None, help="comma-separated feature dims D")
    parser.add_argument("--batch", type=int, default=None, help="default 32 on GPU, 4 on CPU")
    parser.add_argument("--slots", type=int, default=None, help="default 8 on GPU, 7 on CPU")
    parser.add_argument("--reps", type=int, default=15, help="CPU timing repetitions per point")
    return parser.parse_args(argv)


def _methods(device: str) -> dict[str, Callable]:
    ours = "triton" if device == "cuda" else "cpu"
    return {
        f"ours_{ours}": lambda q, k, v: slot_attention(q, k, v, backend=ours),
        "eager_reference": lambda q, k, v: slot_attention(q, k, v, backend="reference"),
        **({"eager_native_dtype": lambda q, k, v: slot_attention(q, k, v, backend="cpu")} if device == "cuda" else {}),
    }


def _bytes(batch: int, slots: int, inputs: int, dim: int, elem: int, with_backward: bool) -> float:
    forward = (2 * batch * slots * dim + 2 * batch * inputs * dim) * elem
    backward = (3 * batch * slots * dim + 4 * batch * inputs * dim) * elem
    return forward + (backward if with_backward else 0)


def _measure(device: str, batch: int, slots: int, inputs_list: list[int], dims: list[int], reps: int):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    elem = torch.finfo(dtype).bits // 8
    peak = None
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        peak = next((v for key, v in HBM_PEAK_GBPS.items() if key in name), None)
    rows: list[dict[str, Any]] = []
    for dim in dims:
        for num_inputs in inputs_list:
            gen = torch.Generator().manual_seed(0)
            q = torch.randn(batch, slots, dim, generator=gen).to(device, dtype).requires_grad_()
            k, v = (torch.randn(batch, num_inputs, dim, generator=gen).to(device, dtype).requires_grad_()
                    for _ in range(2))
            grad_out = torch.randn(batch, slots, dim, generator=gen).to(device, dtype)
            for with_backward in (False, True):
                steps = {}
                for name, fn in _methods(device).items():
                    if with_backward:
                        steps[name] = (lambda f=fn: torch.autograd.grad(f(q, k, v), (q, k, v), grad_out))
                    else:
                        steps[name] = (lambda f=fn: f(q, k, v))
                timings = time_gpu_ms(steps) if device == "cuda" else time_cpu_ms(steps, reps)
                for name, timing in timings.items():
                    row: dict[str, Any] = {"batch": batch, "slots": slots, "inputs": num_inputs, "dim": dim,
                                           "dtype": str(dtype).replace("torch.", ""),
                                           "pass": "fwd+bwd" if with_backward else "fwd", "method": name}
                    if isinstance(timing, str):
                        row.update(ms_p50=None, error=timing)
                    else:
                        p50, p20, p80 = timing
                        gbps = _bytes(batch, slots, num_inputs, dim, elem, with_backward) / (p50 * 1e-3) / 1e9
                        row.update(ms_p50=p50, ms_p20=p20, ms_p80=p80, effective_gbps=gbps,
                                   hbm_fraction=(gbps / peak) if peak else None)
                        print(f"D={dim:4d} N={num_inputs:5d} {row['pass']:>7} {name:>20}: {p50:9.3f} ms "
                              f"{gbps:9.1f} GB/s", flush=True)
                    rows.append(row)
    return rows


def _ratios(rows: list[dict[str, Any]], ours: str) -> list[dict[str, Any]]:
    """Per (dim, inputs, pass): each eager method's time / our time (> 1 = ours faster), at the median and at the
    20th percentile (the latter is steadier on a shared, busy CPU)."""
    out = []
    for key in dict.fromkeys((r["dim"], r["inputs"], r["pass"]) for r in rows):
        group = {r["method"]: r for r in rows if (r["dim"], r["inputs"], r["pass"]) == key}
        if ours not in group or group[ours].get("ms_p50") is None:
            continue
        for method, row in group.items():
            if method != ours and row.get("ms_p50") is not None:
                out.append({"dim": key[0], "inputs": key[1], "pass": key[2], "baseline": method,
                            "baseline_ms_over_ours_ms": row["ms_p50"] / group[ours]["ms_p50"],
                            "baseline_over_ours_p20": row["ms_p20"] / group[ours]["ms_p20"]})
    return out


def _plot(rows: list[dict[str, Any]], out_dir: str, name: str):
    fig, axes = new_figure(ncols=2)
    for ax, pass_ in zip(axes[0], ("fwd", "fwd+bwd")):
        for method in sorted({r["method"] for r in rows}):
            for dim in sorted({r["dim"] for r in rows}):
                pts = [(r["inputs"], r["ms_p50"]) for r in rows if r["pass"] == pass_ and r["method"] == method
                       and r["dim"] == dim and r["ms_p50"] is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=f"{method} D={dim}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("inputs N")
        ax.set_ylabel("time per call (ms, median)")
        ax.set_title(f"slot attention {pass_}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    return save_figure(fig, out_dir, name)


def main(argv: list[str]) -> int:
    args = _parse(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device")
        return 2
    gpu = device == "cuda"
    inputs_list = [int(x) for x in args.inputs.split(",")] if args.inputs else list(GPU_INPUTS if gpu else CPU_INPUTS)
    dims = [int(x) for x in args.dims.split(",")] if args.dims else list(GPU_DIMS if gpu else CPU_DIMS)
    batch = args.batch or (32 if gpu else 4)
    slots = args.slots or (8 if gpu else 7)
    rows = _measure(device, batch, slots, inputs_list, dims, args.reps)
    ours = "ours_triton" if gpu else "ours_cpu"
    ratios = _ratios(rows, ours)
    for r in ratios:
        print(f"D={r['dim']:4d} N={r['inputs']:5d} {r['pass']:>7}: {r['baseline']} / ours = "
              f"{r['baseline_ms_over_ours_ms']:.2f}x (p20 {r['baseline_over_ours_p20']:.2f}x)")
    name = f"slot_attention_{device}"
    config = {"device": device, "batch": batch, "slots": slots, "inputs": inputs_list, "dims": dims}
    path = write_results(args.out, name, {"op": "slot_attention", "config": config, "rows": rows, "ratios": ratios})
    plot = _plot(rows, args.out, name)
    print(f"wrote {path} and {plot}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
