"""Ahead-of-time compilation of Triton kernels for sm_90 (H100/H200) without a GPU.

The interpreter accepts things the GPU compiler rejects (tl.dot dims < 16, shared memory beyond the SM's
limit), so kernel tests also compile the kernels with the launchers' own configs using the wheel's
ptxas, in a subprocess because TRITON_INTERPRET is fixed at import.
"""
from __future__ import annotations

import pytest

AOT_SCRIPT = r"""
import json, sys, importlib, triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
FP32_PTRS = {"lse_ptr", "delta_ptr", "part_u_ptr", "part_den_ptr", "part_dq_ptr", "out_ptr", "den_ptr"}
for job in json.loads(sys.argv[1]):
    fn = getattr(importlib.import_module(job["module"]), job["kernel"])
    consts = job["constexprs"]
    sig = {}
    for name in fn.arg_names:
        if name in consts: sig[name] = "constexpr"
        elif name == "mask_ptr": sig[name] = "*u8"
        elif name in FP32_PTRS: sig[name] = "*fp32"
        elif name.endswith("_ptr"): sig[name] = "*" + job["dtype"]
        elif name.startswith("scale"): sig[name] = "fp32"
        else: sig[name] = "i32"
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": job["num_warps"], "num_stages": job["num_stages"]})
    print(json.dumps({"kernel": job["kernel"], "dtype": job["dtype"], "shared": compiled.metadata.shared}), flush=True)
"""
SM90_MAX_SHARED_BYTES = 232448  # 227 KiB per block on H100/H200


def aot_compile(jobs: list[dict], cache_dir) -> list[dict]:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("triton's bundled ptxas is missing")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(cache_dir)
    proc = subprocess.run([sys.executable, "-c", AOT_SCRIPT, json.dumps(jobs)], env=env, capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


