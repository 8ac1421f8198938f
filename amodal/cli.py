"""The ``amodal`` command: ``run``, ``subscribe``, ``bench``, ``data``, ``eval``, ``train`` (each in its own module)."""
from __future__ import annotations

import importlib
import sys

# subcommand → module whose ``main(argv) -> int`` handles it; imported only when used
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("amodal.cli_run", "run attached sources through an analyzer and publish results"),
    "subscribe": ("amodal.cli_subscribe", "print published results, one JSON line per message"),
    "view": ("amodal.cli_view", "the live view (page, video, state) of a remote engine's published results"),
    "query": ("amodal.cli_query", "search an engine's person gallery by embedding or image"),
    "keys": ("amodal.cli_keys", "generate CURVE key pairs for engines and clients"),
    "bench": ("amodal.bench.cli", "benchmarks: latency, kernels"),
    "data": ("amodal.training.data.cli", "synthetic occlusion datasets and dataset tools"),
    "eval": ("amodal.training.evaluation.cli", "standard evaluators (coco, vis, amodal, reid, layers)"),
    "train": ("amodal.training.cli", "train a model from a training YAML (torchrun for several GPUs)"),
    "convert": ("amodal.cli_convert", "convert a published checkpoint to our weights (eoras)"),
    "cluster": ("amodal.cli_cluster", "streams on a Ray cluster, results in NATS JetStream (up, run, status, down)"),
    "weights": ("amodal.cli_weights", "import a user's own weights (torchvision Mask R-CNN .pth -> safetensors)"),
}


def _usage() -> str:
    lines = ["usage: amodal COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "amodal COMMAND --help shows the arguments of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from amodal import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"amodal: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    from amodal.errors import EngineError

    try:
        return int(module.main(rest) or 0)
    except EngineError as exc:  # a bad flag, file or key: one clear line, no traceback
        print(f"amodal {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
