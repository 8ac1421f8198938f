"""``amodal run --source URI [--source URI ...] --analyzer NAME --publish ENDPOINT [--max-frames N] [--config FILE]``.

A source is ``URI`` or ``ID=URI`` (ids default to s0, s1, …).  Per-source settings beyond the flags
come from the YAML config (README, "Configuration").  SIGINT/SIGTERM stop cleanly: sources close,
queued frames are analysed and published, sockets flush.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import signal
import sys
import threading

from amodal.engine.analyzers import ANALYZER_NAMES
from amodal.engine.config import EngineConfig
from amodal.errors import EngineError
from amodal.streams.base import SourceConfig

_ID_PREFIX = re.compile(r"^([A-Za-z0-9_.\-]{1,64})=(.+)$")


def parse_source(text: str, index: int) -> tuple[str, str]:
    """``cam1=rtsp://…`` → (cam1, rtsp://…); a bare URI gets the id ``s<index>``."""
    match = _ID_PREFIX.match(text)
    if match and "://" not in match.group(1):
        return match.group(1), match.group(2)
    return f"s{index}", text


def build_config(args: argparse.Namespace) -> EngineConfig:
    base = EngineConfig.from_yaml(args.config) if args.config else EngineConfig()
    sources = list(base.sources)
    for i, text in enumerate(args.source or []):
        stream_id, uri = parse_source(text, len(sources) + i if args.config else i)
        sources.append(SourceConfig(uri=uri, stream_id=stream_id))
    if args.max_frames is not None or args.fast or args.realtime or args.loop:
        sources = [
            dataclasses.replace(
                s,
                max_frames=args.max_frames if args.max_frames is not None else s.max_frames,
                realtime=False if args.fast else (True if args.realtime else s.realtime),
                loop=args.loop or s.loop,
            )
            for s in sources
        ]
    analyzer = base.analyzer
    if args.analyzer or args.weights or args.score_threshold is not None:
        analyzer = dataclasses.replace(
            analyzer,
            name=args.analyzer or analyzer.name,
            weights=args.weights or analyzer.weights,
            score_threshold=analyzer.score_threshold if args.score_threshold is None else args.score_threshold,
        )
    reid_overrides = {"weights": args.reid_weights, "gallery_path": args.gallery, "query_endpoint": args.query_endpoint}
    if any(v is not None for v in reid_overrides.values()):
        analyzer = dataclasses.replace(analyzer, reid=dataclasses.replace(
            analyzer.reid, **{k: v for k, v in reid_overrides.items() if v is not None}))
    overrides = {
        "publish": args.publish,
        "max_batch_size": args.batch_size,
        "max_wait_ms": args.max_wait_ms,
        "device": args.device,
    }
    return dataclasses.replace(
        base, sources=tuple(sources), analyzer=analyzer, **{k: v for k, v in overrides.items() if v is not None}
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amodal run", description=__doc__.splitlines()[0])
    p.add_argument("--source", action="append", metavar="[ID=]URI", help="file, rtsp://, http(s)://, scanner://DIR, /dev/videoN, synthetic://")
    p.add_argument("--analyzer", choices=ANALYZER_NAMES, help="default: identity (or the config's)")
    p.add_argument("--weights", help="local weights file for the analyzer")
    p.add_argument("--score-threshold", type=float)
    p.add_argument("--reid-weights", help="reid: MBF weights file (default: the shipped ones)")
    p.add_argument("--gallery", help="reid: gallery file, restored at start and saved while running")
    p.add_argument("--query-endpoint", help="reid: ZeroMQ REP endpoint for gallery queries (amodal query)")
    p.add_argument("--publish", help="ZeroMQ PUB endpoint to bind (default tcp://127.0.0.1:5555)")
    p.add_argument("--max-frames", type=int, help="stop each source after N frames")
    p.add_argument("--config", help="YAML config (sources with per-source settings, analyzer, batching)")
    p.add_argument("--batch-size", type=int, help="max micro-batch size")
    p.add_argument("--max-wait-ms", type=float, help="max wait for a batch to fill")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--fast", action="store_true", help="decode files as fast as possible")
    pace.add_argument("--realtime", action="store_true", help="pace files at their frame rate")
    p.add_argument("--loop", action="store_true", help="restart files at the end")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from amodal.engine.engine import Engine

    try:
        config = build_config(args)
        if not config.sources:
            print("amodal run: no sources (give --source or a config with sources:)", file=sys.stderr)
            return 2
        engine = Engine(config)
        engine.start()
    except EngineError as exc:
        print(f"amodal run: error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum, _frame) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    print(f"amodal: {len(config.sources)} source(s) → {config.analyzer.name} on {engine.device} → {engine.publisher.bound_endpoint}", file=sys.stderr)
    while not stop.is_set() and not engine.wait(0.2):
        pass
    engine.stop()
    print(json.dumps(engine.snapshot()), file=sys.stderr)
    return 0
