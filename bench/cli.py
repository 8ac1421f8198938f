"""``amodal bench latency|kernels`` — each benchmark module exposes ``main(argv) -> int``."""
from __future__ import annotations

import importlib
import sys

BENCHES: dict[str, list[str]] = {
    "latency": ["amodal.bench.latency"],
    "analyzer": ["amodal.bench.analyzer_fps"],
    "gallery": ["amodal.bench.gallery"],
    "query": ["amodal.bench.query_load"],
    "pipeline": ["amodal.bench.pipeline"],
    "cluster": ["amodal.bench.cluster"],
    "decode": ["amodal.bench.decode_workers"],
    "eoras": ["amodal.bench.eoras"],
    "xray": ["amodal.bench.xray"],
    "layers-samplers": ["amodal.bench.layers_samplers"],
    "reliability": ["amodal.bench.reliability"],
    "web": ["amodal.bench.web_viewers"],
    "real": ["amodal.bench.real_footage.evaluate"],
    "kernels": [
        "amodal.bench.kernels.bench_correlation",
        "amodal.bench.kernels.bench_attention",
        "amodal.bench.kernels.bench_slot_attention",
        "amodal.bench.kernels.bench_preprocess",
    ],
}
KERNEL_OPS = {m.rsplit("bench_", 1)[1]: m for m in BENCHES["kernels"]}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHES:
        print("usage: amodal bench latency [ARGS] | amodal bench analyzer --analyzer NAME [ARGS] | amodal bench gallery [ARGS] | amodal bench query [ARGS] | amodal bench pipeline [--part NAME] | amodal bench decode [ARGS] | amodal bench eoras [ARGS] | amodal bench xray [ARGS] | amodal bench reliability [--part fuzz-media|fuzz-messages|rtsp-restarts|soak] [--out DIR] [SIZES] | amodal bench real [--weights NAME=DIR] | amodal bench web [--seconds S] [--rounds N] | amodal bench kernels [--op NAME] [--out DIR] [ARGS]")
        print(f"kernel ops: {', '.join(KERNEL_OPS)}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    modules = BENCHES[name]
    if name == "kernels" and "--op" in rest:
        i = rest.index("--op")
        op = rest[i + 1] if i + 1 < len(rest) else ""
        if op not in KERNEL_OPS:
            print(f"unknown kernel op {op!r}; choose from {', '.join(KERNEL_OPS)}", file=sys.stderr)
            return 2
        modules, rest = [KERNEL_OPS[op]], rest[:i] + rest[i + 2 :]
    status = 0
    for module in modules:
        status |= int(importlib.import_module(module).main(rest) or 0)
    return status
