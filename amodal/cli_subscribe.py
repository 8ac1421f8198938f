"""``amodal subscribe ENDPOINT [--stream ID] [--count N] [--json]``: print published results.

``ENDPOINT`` is an engine's ZeroMQ endpoint (``tcp://...``) or a cluster's NATS servers (``nats://HOST:PORT``,
comma-separated for several); with NATS, ``--durable NAME`` resumes where the last reader of that name stopped."""
from __future__ import annotations

import argparse
import io
import json
import sys
import time

from amodal.schema import AmendmentMessage, FrameMessage, Message, MetricsMessage, StatusMessage
from amodal.subscriber import Subscriber
from amodal.types import ObjectResult, RLEMask


# ------------------------------------------------------------------------------------------------- JSON
def _rle_to_json(mask: RLEMask | None) -> dict | None:
    """COCO RLE with string counts (the decoder guarantees they are ASCII)."""
    return None if mask is None else {"size": [mask.height, mask.width], "counts": mask.counts.decode("ascii")}


def _object_to_json(o: ObjectResult) -> dict:
    return {
        "class_id": o.class_id,
        "class_name": o.class_name,
        "score": round(o.score, 4),
        "box_xyxy": [round(v, 2) for v in o.box_xyxy],
        "mask": _rle_to_json(o.mask),
        "track_id": o.track_id,
        "amodal_mask": _rle_to_json(o.amodal_mask),
        "occluder_mask": _rle_to_json(o.occluder_mask),
        "occlusion_level": o.occlusion_level,
        "occlusion_layer": o.occlusion_layer,
        "embedding": None if o.embedding is None else [float(v) for v in o.embedding],
        "global_id": o.global_id,
    }


def message_to_json(message: Message) -> dict:
    """A message as JSON-able data (masks stay COCO RLE with string counts; embeddings as lists)."""
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
            "objects": [_object_to_json(o) for o in r.objects],
        }
    if isinstance(message, AmendmentMessage):
        a = message.amendment
        return {
            "type": "amendment",
            "topic": message.topic,
            "seq": message.seq,
            "stream_id": a.stream_id,
            "frame_index": a.frame_index,
            "stage": a.stage,
            "capture_time_ns": a.capture_time_ns,
            "publish_time_ns": message.publish_time_ns,
            "width": a.width,
            "height": a.height,
            "stage_ms": a.stage_ms,
            "objects": [_object_to_json(o) for o in a.objects],
            "refs": list(a.refs),
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


# ---------------------------------------------------------------------------------------------- console
def _printable(text: str) -> str:
    """``text`` safe for a terminal: control and other non-printable characters escaped (``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _latency_ms(capture_time_ns: int) -> float:
    return (time.time_ns() - capture_time_ns) / 1e6


def _frame_line(message: FrameMessage) -> str:
    r = message.result
    objs = ", ".join(
        f"{_printable(o.class_name)}{'#' + str(o.track_id) if o.track_id is not None else ''}"
        f"{' id' + str(o.global_id) if o.global_id is not None else ''} {o.score:.2f}" for o in r.objects[:6]
    )
    more = f" +{len(r.objects) - 6}" if len(r.objects) > 6 else ""
    return (f"{_printable(r.stream_id):<10} frame {r.frame_index:>6}  seq {message.seq:>6}  {len(r.objects):>2} obj  "
            f"{_latency_ms(r.capture_time_ns):7.1f} ms  {objs}{more}")


def _amendment_line(message: AmendmentMessage) -> str:
    """e.g. ``cam1       frame     41  +layers: 3 objects (layer 1..3, completes 2, adds 1)  amendment seq 7  210.4 ms``."""
    a = message.amendment
    layers = sorted({o.occlusion_layer for o in a.objects if o.occlusion_layer is not None})
    completes = sum(r is not None for r in a.refs)
    adds = len(a.refs) - completes
    details = []
    if layers:
        details.append(f"layer {layers[0]}" if len(layers) == 1 else f"layer {layers[0]}..{layers[-1]}")
    if completes:
        details.append(f"completes {completes}")
    if adds:
        details.append(f"adds {adds}")
    count = f"{len(a.objects)} object{'' if len(a.objects) == 1 else 's'}" + (f" ({', '.join(details)})" if details else "")
    return (f"{_printable(a.stream_id):<10} frame {a.frame_index:>6}  +{_printable(a.stage)}: {count}  "
            f"amendment seq {message.seq}  {_latency_ms(a.capture_time_ns):7.1f} ms")


def summary_line(message: Message) -> str:
    """One human line per message (the live console view)."""
    if isinstance(message, FrameMessage):
        return _frame_line(message)
    if isinstance(message, AmendmentMessage):
        return _amendment_line(message)
    if isinstance(message, StatusMessage):
        e = message.event
        return f"[status] {_printable(e.stream_id)}: {e.state.value}" + (f" ({_printable(e.reason)})" if e.reason else "")
    assert isinstance(message, MetricsMessage)
    return f"[metrics] {json.dumps(message.metrics)[:200]}"


# ------------------------------------------------------------------------------------------------- main
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amodal subscribe", description=__doc__)
    parser.add_argument("endpoint", help="the engine's publish endpoint, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--stream", action="append", help="only this stream (repeatable); default all")
    parser.add_argument("--count", type=int, default=None, help="exit after N frame messages")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--no-status", action="store_true", help="hide status events")
    parser.add_argument("--no-amendments", action="store_true", help="hide amendments (slow stages' additions to frames)")
    parser.add_argument("--metrics", action="store_true", help="also print engine metrics")
    parser.add_argument("--timeout", type=float, default=None, help="exit after this many seconds of silence")
    parser.add_argument("--server-key", help="CURVE: the engine's public certificate file")
    parser.add_argument("--client-cert", help="CURVE: this client's secret certificate file")
    parser.add_argument("--durable", help="nats:// only: a durable consumer name; a later run with the same name "
                                          "resumes after the last message this one printed")
    args = parser.parse_args(argv)
    nats = args.endpoint.startswith("nats://")
    if args.durable and not nats:
        parser.error("--durable needs a nats:// endpoint")
    if isinstance(sys.stdout, io.TextIOWrapper):  # a terminal that cannot show a character gets an escape, not a crash
        sys.stdout.reconfigure(errors="backslashreplace")
    frames = 0
    try:
        if nats:
            from amodal.subscriber_nats import NatsSubscriber

            opened = NatsSubscriber(args.endpoint, args.stream, durable=args.durable, status=not args.no_status,
                                    metrics=args.metrics, amendments=not args.no_amendments, timeout_s=args.timeout)
        else:
            opened = Subscriber(args.endpoint, args.stream, status=not args.no_status, metrics=args.metrics,
                                amendments=not args.no_amendments, timeout_s=args.timeout,
                                server_public_key=args.server_key, client_cert=args.client_cert)
        with opened as sub:
            for message in sub:
                line = json.dumps(message_to_json(message)) if args.json else summary_line(message)
                print(line, flush=True)
                if isinstance(message, FrameMessage):
                    frames += 1
                    if args.count is not None and frames >= args.count:
                        break
            if sub.stats.malformed:
                print(f"skipped {sub.stats.malformed} malformed message(s); last: {sub.stats.last_error}", file=sys.stderr)
            if sub.stats.unknown_types:
                print(f"skipped {sub.stats.unknown_types} message(s) of types this release does not know", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 0
