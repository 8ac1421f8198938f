"""``amodal data synth|annotate-occlusion|show``.

Each generator is a module ``amodal.training.data.synth.<kind>`` exposing
``add_arguments(parser)`` (kind-specific options), ``generate(out_dir, n, seed, args) -> dict`` (writes the
dataset, returns a summary) and ``contact_sheet(dataset_dir, out_png, max_items) -> Path``.  Every
generated dataset has ``amodal_dataset.json`` (``{"kind": ..., ...}``) at its root so that ``show`` knows
how to draw it.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from amodal.errors import ConfigError

KINDS = ("video", "xray", "persons", "layers")
MARKER = "amodal_dataset.json"


def _synth_module(kind: str):
    return importlib.import_module(f"amodal.training.data.synth.{kind}")


def detect_kind(dataset_dir: Path) -> str:
    """The kind of a dataset folder: from its marker file, else from the real datasets' layouts."""
    marker = dataset_dir / MARKER
    if marker.is_file():
        kind = json.loads(marker.read_text()).get("kind")
        if kind in KINDS:
            return kind
        raise ConfigError(f"{marker}: unknown dataset kind {kind!r}; expected one of {KINDS}")
    if (dataset_dir / "bounding_box_train").is_dir() or (dataset_dir / "query").is_dir():
        return "persons"
    if (dataset_dir / "layers.json").is_file():
        return "layers"
    if any(dataset_dir.glob("**/metadata.json")) or any(dataset_dir.glob("annotations/*vis*.json")):
        return "video"
    if any(dataset_dir.glob("annotations/*.json")):
        return "xray"
    raise ConfigError(f"{dataset_dir}: cannot tell the dataset kind (no {MARKER} and no known layout)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amodal data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="generate a synthetic occlusion dataset in a real dataset's format")
    synth_kinds = synth.add_subparsers(dest="kind", required=True)
    for kind in KINDS:
        p = synth_kinds.add_parser(kind, help=(_synth_module(kind).__doc__ or kind).strip().splitlines()[0])
        p.add_argument("--out", required=True, type=Path, help="output folder")
        p.add_argument("--n", type=int, required=True, help="number of videos / images / identities")
        p.add_argument("--seed", type=int, default=0, help="random seed (output is deterministic per seed)")
        _synth_module(kind).add_arguments(p)
    ann = sub.add_parser("annotate-occlusion", help="add occluder polygons (bg_object_segmentation) to a COCO set")
    ann.add_argument("input", type=Path)
    ann.add_argument("output", type=Path)
    show = sub.add_parser("show", help="a contact sheet of a dataset: visible masks, amodal outlines, occluders")
    show.add_argument("dataset", type=Path)
    show.add_argument("--out", required=True, type=Path, help="PNG path")
    show.add_argument("--max-items", type=int, default=16)
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "synth":
            if args.n <= 0:
                raise ConfigError(f"--n must be > 0, got {args.n}")
            start = time.perf_counter()
            summary = _synth_module(args.kind).generate(args.out, args.n, args.seed, args)
            elapsed = time.perf_counter() - start
            print(json.dumps({"kind": args.kind, "out": str(args.out), "seconds": round(elapsed, 2), **summary}))
        elif args.command == "annotate-occlusion":
            from amodal.training.data.occlusion_annotation import annotate_file

            stats = annotate_file(args.input, args.output)
            print(json.dumps(stats))
        elif args.command == "show":
            kind = detect_kind(args.dataset)
            path = _synth_module(kind).contact_sheet(args.dataset, args.out, args.max_items)
            print(path)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"amodal data: error: {exc}", file=sys.stderr)
        return 1
    return 0
