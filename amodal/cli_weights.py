"""``amodal weights``: a user's own weights.

``amodal weights import IN.pth OUT.safetensors`` converts a torchvision Mask R-CNN state dict
(``maskrcnn_resnet50_fpn`` or ``_v2``, as ``torch.save(model.state_dict(), ...)`` writes it; read weights-only, never
unpickled as code) into our weights with their metadata record, for ``amodal run --pipeline maskrcnn`` (the stage's
``weights`` setting) and for ``init_from`` in a ``cmasktrack`` training config.
``amodal weights show FILE`` prints a weights file's metadata record.
"""
from __future__ import annotations

import argparse
import json

from amodal.errors import ConfigError


def _classes(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise ConfigError(f"--classes: an empty name in {text!r}")
    return names


def _import(args: argparse.Namespace) -> int:
    from amodal.models.maskrcnn_import import import_torchvision_maskrcnn

    overrides = {k: v for k, v in (("min_size", args.min_size), ("max_size", args.max_size),
                                   ("rpn_post_nms_test", args.proposals)) if v is not None}
    if "min_size" in overrides and "max_size" not in overrides:
        overrides["max_size"] = max(overrides["min_size"], round(overrides["min_size"] * 1333 / 800))
    record = import_torchvision_maskrcnn(args.src, args.dst, class_names=_classes(args.classes), **overrides)
    classes = record["classes"]
    named = [c for c in classes if c != "N/A"]
    print(f"{args.dst}: {record['source_layout']} ({record['source']}), {len(classes) + 1} classes with background "
          f"({len(named)} named: {', '.join(named[:6])}{', ...' if len(named) > 6 else ''}), input "
          f"{record['input_size']['min_size']}/{record['input_size']['max_size']} px")
    print(f"run it:   amodal run --source URI --pipeline maskrcnn --weights {args.dst}   "
          f"(or weights: {args.dst} in the maskrcnn stage's settings of a --config file)")
    return 0


def _show(args: argparse.Namespace) -> int:
    from amodal.models.weights import load_weights

    _, metadata = load_weights(args.path)
    print(json.dumps({k: v for k, v in metadata.items() if k != "config" or args.config}, indent=1, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="amodal weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    imp = sub.add_parser("import", help="torchvision Mask R-CNN state dict (.pth) -> our weights (.safetensors)")
    imp.add_argument("src", help="torch.save'd state dict of maskrcnn_resnet50_fpn or maskrcnn_resnet50_fpn_v2")
    imp.add_argument("dst", help="output .safetensors")
    imp.add_argument("--classes", help="comma-separated class names without the background (needed when the head "
                                       "is not COCO's 91 classes)")
    imp.add_argument("--min-size", type=int, help="shorter side the model resizes frames to (default 800, "
                                                  "torchvision's; smaller is faster on a CPU)")
    imp.add_argument("--max-size", type=int, help="longest side at most (default 1333, or min-size x 1333/800)")
    imp.add_argument("--proposals", type=int, help="RPN proposals per frame kept for the heads (default 1000)")
    imp.set_defaults(func=_import)
    show = sub.add_parser("show", help="print a weights file's metadata record")
    show.add_argument("path")
    show.add_argument("--config", action="store_true", help="include the model config")
    show.set_defaults(func=_show)
    args = parser.parse_args(argv)
    return args.func(args)
