"""The wire format of published results (version 1): ZeroMQ multipart ``[topic, payload]``.

Topics (UTF-8):
  * ``frames/<stream_id>/`` — one message per analysed frame of that stream;
  * ``status/`` — stream state changes (connecting, up, reconnecting, error, ended, removed);
  * ``metrics/`` — periodic engine counters (fps, per-stage latency, drops).
The trailing ``/`` makes ZeroMQ's prefix subscription exact (``frames/cam1/`` never matches ``cam10``).

Payload: one msgpack map.  Every message has ``v`` (schema version, 1), ``type`` (``frame``,
``status`` or ``metrics``) and ``seq`` (per-topic sequence number starting at 0 — a subscriber detects
lost messages by gaps).  Field-by-field documentation: docs/schema.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from amodal.errors import SchemaError
from amodal.types import FrameResult, ObjectResult, RLEMask, StreamEvent, StreamState

SCHEMA_VERSION = 1
FRAMES_PREFIX = "frames/"
STATUS_TOPIC = "status/"
METRICS_TOPIC = "metrics/"


def frames_topic(stream_id: str) -> str:
    return f"{FRAMES_PREFIX}{stream_id}/"


def validate_stream_id(stream_id: str) -> str:
    """Stream ids name topics: non-empty, no ``/``, no whitespace, at most 128 characters."""
    if not stream_id or len(stream_id) > 128 or "/" in stream_id or any(c.isspace() for c in stream_id):
        raise SchemaError(f"invalid stream id {stream_id!r}: 1-128 characters, no '/' and no whitespace")
    return stream_id


# ---------------------------------------------------------------------------------------------- encoding
def _rle_to_wire(mask: RLEMask | None) -> dict[str, Any] | None:
    if mask is None:
        return None
    return {"size": [mask.height, mask.width], "counts": mask.counts}


def _object_to_wire(obj: ObjectResult) -> dict[str, Any]:
    return {
        "class_id": obj.class_id,
        "class_name": obj.class_name,
        "score": float(obj.score),
        "box_xyxy": [float(v) for v in obj.box_xyxy],
        "mask": _rle_to_wire(obj.mask),
        "track_id": obj.track_id,
        "amodal_mask": _rle_to_wire(obj.amodal_mask),
        "occluder_mask": _rle_to_wire(obj.occluder_mask),
        "occlusion_level": None if obj.occlusion_level is None else float(obj.occlusion_level),
        "occlusion_layer": obj.occlusion_layer,
        "embedding": None if obj.embedding is None else np.ascontiguousarray(obj.embedding, dtype="<f2").tobytes(),
        "global_id": obj.global_id,
    }


def encode_frame(result: FrameResult, seq: int, publish_time_ns: int) -> bytes:
    """A ``FrameResult`` → msgpack payload."""
    return msgpack.packb(
        {
            "v": SCHEMA_VERSION,
            "type": "frame",
            "seq": seq,
            "stream_id": result.stream_id,
            "frame_index": result.frame_index,
            "pts_s": result.pts_s,
            "capture_time_ns": result.capture_time_ns,
            "publish_time_ns": publish_time_ns,
            "width": result.width,
            "height": result.height,
            "analyzer": result.analyzer,
            "stage_ms": {k: round(float(v), 3) for k, v in result.stage_ms.items()},
            "objects": [_object_to_wire(o) for o in result.objects],
        },
        use_bin_type=True,
    )


def encode_status(event: StreamEvent, seq: int) -> bytes:
    return msgpack.packb(
        {
            "v": SCHEMA_VERSION,
            "type": "status",
            "seq": seq,
            "stream_id": event.stream_id,
            "state": event.state.value,
            "reason": event.reason,
            "time_ns": event.time_ns,
            "attempt": event.attempt,
            "fatal": event.fatal,
        },
        use_bin_type=True,
    )


def encode_metrics(metrics: dict[str, Any], seq: int, time_ns: int) -> bytes:
    return msgpack.packb(
        {"v": SCHEMA_VERSION, "type": "metrics", "seq": seq, "time_ns": time_ns, "metrics": metrics},
        use_bin_type=True,
    )


# ---------------------------------------------------------------------------------------------- decoding
@dataclass(frozen=True, slots=True)
class FrameMessage:
    """A decoded ``frames/<stream>/`` message."""

    topic: str
    seq: int
    publish_time_ns: int
    result: FrameResult


@dataclass(frozen=True, slots=True)
class StatusMessage:
    topic: str
    seq: int
    event: StreamEvent


@dataclass(frozen=True, slots=True)
class MetricsMessage:
    topic: str
    seq: int
    time_ns: int
    metrics: dict[str, Any]


Message = FrameMessage | StatusMessage | MetricsMessage


def _req(d: dict, key: str, types: type | tuple[type, ...], where: str, nullable: bool = False) -> Any:
    if key not in d:
        raise SchemaError(f"{where}: missing field {key!r}")
    value = d[key]
    if value is None and nullable:
        return None
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise SchemaError(f"{where}: field {key!r} has type bool")
    if not isinstance(value, types):
        raise SchemaError(f"{where}: field {key!r} has type {type(value).__name__}")
    return value


def _rle_from_wire(value: Any, where: str) -> RLEMask | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SchemaError(f"{where}: mask is {type(value).__name__}, expected a map or nil")
    size = _req(value, "size", (list, tuple), where)
    counts = _req(value, "counts", (bytes, str), where)
    if len(size) != 2 or not all(isinstance(s, int) and s >= 0 for s in size):
        raise SchemaError(f"{where}: mask size {size!r} is not [height, width]")
    return RLEMask(height=size[0], width=size[1], counts=counts.encode() if isinstance(counts, str) else counts)


def _object_from_wire(d: Any, where: str) -> ObjectResult:
    if not isinstance(d, dict):
        raise SchemaError(f"{where}: object is {type(d).__name__}, expected a map")
    box = _req(d, "box_xyxy", (list, tuple), where)
    if len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
        raise SchemaError(f"{where}: box_xyxy {box!r} is not four numbers")
    emb = d.get("embedding")
    if emb is not None:
        if not isinstance(emb, bytes) or len(emb) % 2:
            raise SchemaError(f"{where}: embedding is not float16 bytes")
        emb = np.frombuffer(emb, dtype="<f2")
    level = d.get("occlusion_level")
    return ObjectResult(
        class_id=_req(d, "class_id", int, where),
        class_name=_req(d, "class_name", str, where),
        score=float(_req(d, "score", (int, float), where)),
        box_xyxy=tuple(float(v) for v in box),  # type: ignore[arg-type]
        mask=_rle_from_wire(d.get("mask"), f"{where}.mask"),
        track_id=_req(d, "track_id", int, where, nullable=True) if "track_id" in d else None,
        amodal_mask=_rle_from_wire(d.get("amodal_mask"), f"{where}.amodal_mask"),
        occluder_mask=_rle_from_wire(d.get("occluder_mask"), f"{where}.occluder_mask"),
        occlusion_level=None if level is None else float(level),
        occlusion_layer=d.get("occlusion_layer"),
        embedding=emb,
        global_id=d.get("global_id"),
    )


def decode(topic_bytes: bytes, payload: bytes) -> Message:
    """Parse one multipart message; raises ``SchemaError`` for anything malformed or foreign."""
    try:
        topic = topic_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"topic is not UTF-8: {topic_bytes[:32]!r}") from exc
    try:
        d = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise SchemaError(f"{topic}: payload is not msgpack ({type(exc).__name__}: {exc})") from exc
    if not isinstance(d, dict):
        raise SchemaError(f"{topic}: payload is {type(d).__name__}, expected a map")
    version = d.get("v")
    if version != SCHEMA_VERSION:
        raise SchemaError(f"{topic}: schema version {version!r}, this subscriber reads {SCHEMA_VERSION}")
    kind = d.get("type")
    seq = _req(d, "seq", int, topic)
    if kind == "frame":
        if not topic.startswith(FRAMES_PREFIX):
            raise SchemaError(f"{topic}: frame message on a non-frames topic")
        objects = _req(d, "objects", (list, tuple), topic)
        stage = d.get("stage_ms") or {}
        result = FrameResult(
            stream_id=_req(d, "stream_id", str, topic),
            frame_index=_req(d, "frame_index", int, topic),
            pts_s=_req(d, "pts_s", (int, float), topic, nullable=True),
            capture_time_ns=_req(d, "capture_time_ns", int, topic),
            width=_req(d, "width", int, topic),
            height=_req(d, "height", int, topic),
            objects=tuple(_object_from_wire(o, f"{topic} object {i}") for i, o in enumerate(objects)),
            analyzer=str(d.get("analyzer", "")),
            stage_ms={str(k): float(v) for k, v in stage.items()} if isinstance(stage, dict) else {},
        )
        return FrameMessage(topic=topic, seq=seq, publish_time_ns=_req(d, "publish_time_ns", int, topic), result=result)
    if kind == "status":
        state_name = _req(d, "state", str, topic)
        try:
            state = StreamState(state_name)
        except ValueError as exc:
            raise SchemaError(f"{topic}: unknown stream state {state_name!r}") from exc
        event = StreamEvent(
            stream_id=_req(d, "stream_id", str, topic),
            state=state,
            reason=_req(d, "reason", str, topic, nullable=True),
            time_ns=_req(d, "time_ns", int, topic),
            attempt=int(d.get("attempt", 0)),
            fatal=bool(d.get("fatal", False)),
        )
        return StatusMessage(topic=topic, seq=seq, event=event)
    if kind == "metrics":
        return MetricsMessage(topic=topic, seq=seq, time_ns=_req(d, "time_ns", int, topic), metrics=_req(d, "metrics", dict, topic))
    raise SchemaError(f"{topic}: unknown message type {kind!r}")
