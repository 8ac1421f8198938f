"""``amodal subscribe ENDPOINT [--stream ID] [--count N] [--json]``: print published results."""
from __future__ import annotations

import argparse
import json
import sys
import time

from amodal.schema import FrameMessage, Message, MetricsMessage, StatusMessage
from amodal.subscriber import Subscriber


def message_to_json(message: Message) -> dict:
    """A message as JSON-able data (masks stay COCO RLE with string counts; embeddings as lists)."""

    def rle(m):
        return None if m is None else {"size": [m.height, m.width], "counts": m.counts.decode("ascii")}

    if isinstance(message, FrameMessage):
        r = message.result
        return {
            "type": "frame",
            "topic": message.topic,
            "seq": message.seq,
            "stream_id": r.stream_id,
            "frame_index": r.frame_index,
            "pts_s": r.pts_s,
            "capture_time_ns": r.capture_time_ns,
            "publish_time_ns": message.publish_time_ns,
            "width": r.width,
            "height": r.height,
            "analyzer": r.analyzer,
            "stage_ms": r.stage_ms,
            "objects": [
                {
                    "class_id": o.class_id,
                    "class_name": o.class_name,
                    "score": round(o.score, 4),
                    "box_xyxy": [round(v, 2) for v in o.box_xyxy],
                    "mask": rle(o.mask),
                    "track_id": o.track_id,
                    "amodal_mask": rle(o.amodal_mask),
                    "occluder_mask": rle(o.occluder_mask),
                    "occlusion_level": o.occlusion_level,
                    "occlusion_layer": o.occlusion_layer,
                    "embedding": None if o.embedding is None else [float(v) for v in o.embedding],
                    "global_id": o.global_id,
                }
                for o in r.objects
            ],
        }
    if isinstance(message, StatusMessage):
        e = message.event
        return {
            "type": "status",
            "seq": message.seq,
            "stream_id": e.stream_id,
            "state": e.state.value,
            "reason": e.reason,
            "time_ns": e.time_ns,
            "attempt": e.attempt,
            "fatal": e.fatal,
        }
    return {"type": "metrics", "seq": message.seq, "time_ns": message.time_ns, "metrics": message.metrics}


def summary_line(message: Message) -> str:
    """One human line per message (the live console view)."""
    if isinstance(message, FrameMessage):
        r = message.result
        latency_ms = (time.time_ns() - r.capture_time_ns) / 1e6
        objs = ", ".join(
            f"{o.class_name}{'#' + str(o.track_id) if o.track_id is not None else ''}"
            f"{' id' + str(o.global_id) if o.global_id is not None else ''} {o.score:.2f}" for o in r.objects[:6]
        )
        more = f" +{len(r.objects) - 6}" if len(r.objects) > 6 else ""
        return f"{r.stream_id:<10} frame {r.frame_index:>6}  seq {message.seq:>6}  {len(r.objects):>2} obj  {latency_ms:7.1f} ms  {objs}{more}"
    if isinstance(message, StatusMessage):
        e = message.event
        return f"[status] {e.stream_id}: {e.state.value}" + (f" ({e.reason})" if e.reason else "")
    assert isinstance(message, MetricsMessage)
    return f"[metrics] {json.dumps(message.metrics)[:200]}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amodal subscribe", description=__doc__)
    parser.add_argument("endpoint", help="the engine's publish endpoint, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--stream", action="append", help="only this stream (repeatable); default all")
    parser.add_argument("--count", type=int, default=None, help="exit after N frame messages")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--no-status", action="store_true", help="hide status events")
    parser.add_argument("--metrics", action="store_true", help="also print engine metrics")
    parser.add_argument("--timeout", type=float, default=None, help="exit after this many seconds of silence")
    args = parser.parse_args(argv)
    frames = 0
    try:
        with Subscriber(args.endpoint, args.stream, status=not args.no_status, metrics=args.metrics, timeout_s=args.timeout) as sub:
            for message in sub:
                line = json.dumps(message_to_json(message)) if args.json else summary_line(message)
                print(line, flush=True)
                if isinstance(message, FrameMessage):
                    frames += 1
                    if args.count is not None and frames >= args.count:
                        break
            if sub.stats.malformed:
                print(f"skipped {sub.stats.malformed} malformed message(s); last: {sub.stats.last_error}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 0
