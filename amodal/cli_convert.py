"""``amodal convert MODEL IN OUT``: published checkpoints → our safetensors weights (``eoras`` for now)."""
from __future__ import annotations

import argparse
import sys

from amodal.errors import CheckpointError

CONVERTERS = ("eoras",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="amodal convert", description=__doc__)
    parser.add_argument("model", choices=CONVERTERS, help="which model's published checkpoint")
    parser.add_argument("src", help="the published checkpoint (EoRaS: checkpoint-0050.pth.gz, gzipped or not)")
    parser.add_argument("dst", help="output .safetensors")
    parser.add_argument("--dataset", default="movib", choices=("movib", "movid", "kubasic", "kitti"),
                        help="EoRaS: the dataset the checkpoint was trained on (sets the official BEV grid pitch)")
    args = parser.parse_args(argv)
    from amodal.models.eoras.convert import convert_checkpoint

    try:
        record = convert_checkpoint(args.src, args.dst, dataset=args.dataset)
    except CheckpointError as exc:
        print(f"amodal convert: {exc}", file=sys.stderr)
        return 1
    print(f"{args.dst}: EoRaS ({record['config']['num_slots']} slots, d_model {record['config']['d_model']}); "
          f"dropped on purpose: {', '.join(record['dropped_official_keys']) or 'nothing'}")
    return 0
