"""Correlation forward/backward: shift-multiply-sum reference vs CPU path (CPU) or Triton kernel (CUDA), same run.

``amodal bench kernels --op correlation [--out DIR] [--device auto|cpu|cuda] [--repeats N]
[--threads N] [--config B C H W PATCH DILATION_PATCH DTYPE]`` writes ``correlation.json`` and ``correlation.png``.
On CUDA it also times the public ``spatial_correlation_sampler`` when that package happens to be importable.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from amodal.bench.common import environment, new_figure, save_figure, write_results
from amodal.kernels.correlation import (
    CorrelationParams,
    correlation_cpu_bwd,
    correlation_cpu_fwd,
    correlation_reference,
    correlation_triton_bwd,
    correlation_triton_fwd,
)

HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12}
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Config:
    name: str
    batch: int
    channels: int
    height: int
    width: int
    patch: int
    dilation_patch: int
    dtype: str

    def __post_init__(self) -> None:
        if min(self.batch, self.channels, self.height, self.width, self.patch, self.dilation_patch) < 1:
            raise ValueError(f"bench config {self.name}: sizes must be >= 1, got {self}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"bench config {self.name}: dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")


GPU_CONFIGS = (
    Config("flownetc", 4, 256, 48, 64, 21, 2, "fp32"),
    Config("target-bf16", 8, 256, 64, 64, 9, 1, "bf16"),
    Config("cmasktrack-bf16", 2, 256, 48, 80, 16, 2, "bf16"),
)
CPU_CONFIGS = (
    Config("small-p9", 2, 64, 32, 32, 9, 1, "fp32"),
    Config("cmasktrack-small", 1, 64, 24, 40, 16, 2, "fp32"),
)


def hbm_roofline(device_name: str) -> float | None:
    """Peak HBM bandwidth (bytes/s) of a known GPU, by name."""
    for key, value in HBM_BYTES_PER_S.items():
        if key in device_name:
            return value
    return None


def time_ms(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, dict[str, float]]:
    """Median time of each function: ``ms`` (wall) from triton.testing.do_bench on CUDA; on CPU a perf_counter loop
    that interleaves the functions round by round (so load from other processes hits all alike), plus
    ``process_ms``, the median CPU time of this process (robust to waiting for a busy core)."""
    if device.type == "cuda":
        import triton.testing

        return {name: {"ms": float(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])[0])}
                for name, fn in fns.items()}
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append((time.perf_counter() - start) * 1e3)
            cpu[name].append((time.process_time() - start_cpu) * 1e3)
    return {name: {"ms": statistics.median(wall[name]), "process_ms": statistics.median(cpu[name])} for name in fns}


def _public_sampler() -> Callable | None:
    try:
        from spatial_correlation_sampler import spatial_correlation_sample
    except ImportError:
        return None
    return spatial_correlation_sample


def bench_config(cfg: Config, device: torch.device, repeats: int) -> dict:
    """Forward and backward times of every available implementation for one config."""
    dtype = _DTYPES[cfg.dtype]
    gen = torch.Generator(device="cpu").manual_seed(0)
    shape = (cfg.batch, cfg.channels, cfg.height, cfg.width)
    a = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    prm = CorrelationParams.make(1, cfg.patch, 1, 0, 1, cfg.dilation_patch)
    ref_args = (prm.kernel_size, prm.patch_size, prm.stride, prm.padding, prm.dilation, prm.dilation_patch)
    grad_out = torch.randn((cfg.batch, cfg.patch, cfg.patch, cfg.height, cfg.width), generator=gen).to(device, dtype)

    a_req, b_req = a.clone().requires_grad_(), b.clone().requires_grad_()
    ref_out = correlation_reference(a_req, b_req, *ref_args)
    impls: dict[str, tuple[Callable, Callable]] = {
        "reference": (
            lambda: correlation_reference(a, b, *ref_args),
            lambda: torch.autograd.grad(ref_out, (a_req, b_req), grad_out, retain_graph=True),
        )
    }
    if device.type == "cuda":
        impls["triton"] = (lambda: correlation_triton_fwd(a, b, prm),
                           lambda: correlation_triton_bwd(grad_out, a, b, prm))
        public = _public_sampler()
        if public is not None:
            pa, pb = a.clone().requires_grad_(), b.clone().requires_grad_()
            pub_out = public(pa, pb, kernel_size=1, patch_size=cfg.patch, stride=1, padding=0,
                             dilation_patch=cfg.dilation_patch)
            impls["spatial_correlation_sampler"] = (
                lambda: public(a, b, kernel_size=1, patch_size=cfg.patch, stride=1, padding=0,
                               dilation_patch=cfg.dilation_patch),
                lambda: torch.autograd.grad(pub_out, (pa, pb), grad_out, retain_graph=True),
            )
    else:
        impls["cpu"] = (lambda: correlation_cpu_fwd(a, b, prm), lambda: correlation_cpu_bwd(grad_out, a, b, prm))

    fast = "triton" if device.type == "cuda" else "cpu"
    fast_out = impls[fast][0]()
    max_abs_err = float((fast_out.float() - ref_out.detach().float()).abs().max())

    es = a.element_size()
    n_in = a.numel()
    n_out = ref_out.numel()
    fwd_bytes = (2 * n_in + n_out) * es  # read a, b; write out
    bwd_bytes = (n_out + 4 * n_in) * es  # read g, a, b; write grad_a, grad_b
    flops = 2 * n_out * cfg.channels
    roof = hbm_roofline(torch.cuda.get_device_name(device)) if device.type == "cuda" else None

    fwd_times = time_ms({name: fns[0] for name, fns in impls.items()}, device, repeats)
    bwd_times = time_ms({name: fns[1] for name, fns in impls.items()}, device, repeats)
    rows = {}
    for name in impls:
        fwd_ms, bwd_ms = fwd_times[name]["ms"], bwd_times[name]["ms"]
        row = {"fwd_ms": fwd_ms, "bwd_ms": bwd_ms, "bwd_over_fwd": bwd_ms / fwd_ms,
               "fwd_gflops": flops / fwd_ms / 1e6, "bwd_gflops": 2 * flops / bwd_ms / 1e6}
        if "process_ms" in fwd_times[name]:
            row["fwd_process_ms"] = fwd_times[name]["process_ms"]
            row["bwd_process_ms"] = bwd_times[name]["process_ms"]
        if device.type == "cuda":
            row["fwd_gbps"] = fwd_bytes / fwd_ms / 1e6
            row["bwd_gbps"] = bwd_bytes / bwd_ms / 1e6
            if roof is not None:
                row["fwd_fraction_of_hbm_roofline"] = (fwd_bytes / roof * 1e3) / fwd_ms
                row["bwd_fraction_of_hbm_roofline"] = (bwd_bytes / roof * 1e3) / bwd_ms
        rows[name] = row
    for name, row in rows.items():
        if name != "reference":
            row["fwd_speedup_vs_reference"] = rows["reference"]["fwd_ms"] / row["fwd_ms"]
            row["bwd_speedup_vs_reference"] = rows["reference"]["bwd_ms"] / row["bwd_ms"]
            if "fwd_process_ms" in row:
                row["fwd_process_speedup_vs_reference"] = rows["reference"]["fwd_process_ms"] / row["fwd_process_ms"]
                row["bwd_process_speedup_vs_reference"] = rows["reference"]["bwd_process_ms"] / row["bwd_process_ms"]
    return {"device": device.type, "config": asdict(cfg), "fast_path": fast, "max_abs_err_vs_reference": max_abs_err,
            "fwd_bytes": fwd_bytes, "bwd_bytes": bwd_bytes, "flops_fwd": flops, "results": rows}


def _plot(records: list[dict], out_dir: str, device_name: str):
    fig, axes = new_figure(ncols=2, width_in=6.0, height_in=4.0)
    names = sorted({impl for rec in records for impl in rec["results"]}, key=lambda n: n != "reference")
    width = 0.8 / max(1, len(names))
    for ax, key in zip(axes[0], ("fwd_ms", "bwd_ms")):
        for k, impl in enumerate(names):
            xs = [i + k * width for i, rec in enumerate(records) if impl in rec["results"]]
            ys = [rec["results"][impl][key] for rec in records if impl in rec["results"]]
            ax.bar(xs, ys, width=width, label=impl)
        ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(records))])
        ax.set_xticklabels([f"{rec['device']}:{rec['config']['name']}" for rec in records], rotation=15, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        ax.set_title(f"correlation {key[:3]} — {device_name}", fontsize=9)
        ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "correlation")


def bench_devices(choice: str) -> list[torch.device]:
    """"auto": the CPU configs on CPU, plus the GPU configs on CUDA when a GPU is present."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if choice == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [torch.device(choice)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amodal bench kernels --op correlation", description=__doc__)
    parser.add_argument("--out", default="out/bench/kernels")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--repeats", type=int, default=7, help="CPU timing rounds (median)")
    parser.add_argument("--config", nargs=7, action="append", metavar=("B", "C", "H", "W", "PATCH", "DP", "DTYPE"),
                        help="replace the default configs (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: leave as is)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    devices = bench_devices(args.device)
    env = environment()
    records = []
    for device in devices:
        if args.config:
            configs = [Config(f"custom{i}", *map(int, c[:6]), c[6]) for i, c in enumerate(args.config)]
        else:
            configs = list(GPU_CONFIGS if device.type == "cuda" else CPU_CONFIGS)
        for cfg in configs:
            rec = bench_config(cfg, device, args.repeats)
            records.append(rec)
            for impl, row in rec["results"].items():
                keys = ("fwd_speedup_vs_reference", "bwd_speedup_vs_reference", "fwd_process_speedup_vs_reference",
                        "bwd_process_speedup_vs_reference", "fwd_gbps", "fwd_fraction_of_hbm_roofline")
                extra = "".join(f" {k}={row[k]:.2f}" for k in keys if k in row)
                print(f"{device.type}:{cfg.name:>16} {impl:>28}: fwd {row['fwd_ms']:9.3f} ms  bwd {row['bwd_ms']:9.3f}"
                      f" ms  bwd/fwd {row['bwd_over_fwd']:.2f}{extra}")
    path = write_results(args.out, "correlation", {"devices": [d.type for d in devices], "records": records})
    png = _plot(records, args.out, env["device"])
    print(f"wrote {path} and {png}")
    return 0
