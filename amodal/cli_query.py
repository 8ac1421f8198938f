"""``amodal query --endpoint URL (--image PATH | --embedding-npy PATH | --stats) [--k N] [--retries N]``: ask an
engine's gallery.

Prints one JSON object: ``{"matches": [...]}`` (best first) or ``{"stats": {...}}``.  A "busy" or "rate
limited" reply is retried after the server's ``retry_after_s``, at most ``--retries`` times.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from amodal.engine.gallery.types import match_to_wire
from amodal.gallery_client import GalleryBusyError, GalleryClient, GalleryQueryError

T = TypeVar("T")
_MAX_RETRY_WAIT_S = 10.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amodal query", description=__doc__)
    parser.add_argument("--endpoint", required=True, help="the gallery query endpoint, e.g. tcp://127.0.0.1:5560")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", type=Path, help="a JPEG or PNG crop of a person")
    what.add_argument("--embedding-npy", type=Path, help="a .npy file holding one float[D] embedding")
    what.add_argument("--stats", action="store_true", help="print the gallery's counters instead")
    parser.add_argument("--k", type=int, default=5, help="identities to return (default 5)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")
    parser.add_argument("--server-key", type=Path, help="CURVE: the engine's public certificate file")
    parser.add_argument("--client-cert", type=Path, help="CURVE: this client's secret certificate file")
    parser.add_argument("--retries", type=int, default=3,
                        help="busy / rate-limited replies retried after the server's retry_after_s (default 3)")
    args = parser.parse_args(argv)
    if args.retries < 0:
        parser.error(f"--retries must be >= 0, got {args.retries}")
    try:
        with GalleryClient(args.endpoint, timeout_s=args.timeout, server_public_key=args.server_key,
                           client_cert=args.client_cert) as client:
            if args.stats:
                print(json.dumps({"stats": _retrying(client.stats, args.retries)}))
                return 0
            if args.image is not None:
                image = args.image.read_bytes()
                matches = _retrying(lambda: client.search(image=image, k=args.k), args.retries)
            else:
                embedding = np.asarray(np.load(args.embedding_npy, allow_pickle=False), dtype=np.float32).reshape(-1)
                matches = _retrying(lambda: client.search(embedding=embedding, k=args.k), args.retries)
    except (OSError, ValueError, GalleryQueryError) as exc:
        print(f"amodal query: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"matches": [match_to_wire(m) for m in matches]}))
    return 0


def _retrying(call: Callable[[], T], retries: int) -> T:
    """``call()``, again after the server's ``retry_after_s`` (at most 10 s) while it answers busy."""
    retried = 0
    while True:
        try:
            return call()
        except GalleryBusyError as exc:
            if retried >= retries:
                raise
            retried += 1
            time.sleep(min(exc.retry_after_s, _MAX_RETRY_WAIT_S))
