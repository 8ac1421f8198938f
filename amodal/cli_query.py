"""``amodal query --endpoint URL (--image PATH | --embedding-npy PATH | --stats) [--k N]``: ask an engine's gallery.

Prints one JSON object: ``{"matches": [...]}`` (best first) or ``{"stats": {...}}``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from amodal.engine.gallery.types import match_to_wire
from amodal.gallery_client import GalleryClient, GalleryQueryError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amodal query", description=__doc__)
    parser.add_argument("--endpoint", required=True, help="the gallery query endpoint, e.g. tcp://127.0.0.1:5560")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", type=Path, help="a JPEG or PNG crop of a person")
    what.add_argument("--embedding-npy", type=Path, help="a .npy file holding one float[D] embedding")
    what.add_argument("--stats", action="store_true", help="print the gallery's counters instead")
    parser.add_argument("--k", type=int, default=5, help="identities to return (default 5)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")
    args = parser.parse_args(argv)
    try:
        with GalleryClient(args.endpoint, timeout_s=args.timeout) as client:
            if args.stats:
                print(json.dumps({"stats": client.stats()}))
                return 0
            if args.image is not None:
                matches = client.search(image=args.image.read_bytes(), k=args.k)
            else:
                embedding = np.load(args.embedding_npy, allow_pickle=False)
                matches = client.search(embedding=np.asarray(embedding, dtype=np.float32).reshape(-1), k=args.k)
    except (OSError, ValueError, GalleryQueryError) as exc:
        print(f"amodal query: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"matches": [match_to_wire(m) for m in matches]}))
    return 0
