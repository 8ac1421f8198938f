"""The wire format of published results (version 1): ZeroMQ multipart ``[topic, payload]``.

Topics (UTF-8):
  * ``frames/<stream_id>/`` — one ``frame`` message per analysed frame of that stream, and the
    ``amendment`` messages slow pipeline stages add to frames already published (since 0.2);
  * ``status/`` — stream state changes (connecting, up, reconnecting, error, ended, removed);
  * ``metrics/`` — periodic engine counters (fps, per-stage latency, drops).
The trailing ``/`` makes ZeroMQ's prefix subscription exact (``frames/cam1/`` never matches ``cam10``).

Payload: one msgpack map.  Every message has ``v`` (schema version, the int 1), ``type`` (``frame``,
``amendment``, ``status`` or ``metrics``) and ``seq`` (a sequence number from 0 per topic and message
type — a subscriber detects lost messages by gaps).  Version 1 grows additively: a reader skips message
types it does not know (``UnknownMessageTypeError``) and fields it does not know.

``decode`` type-checks every field it reads and raises ``SchemaError`` naming the field for anything
malformed — never another exception, whatever the input.  Field-by-field documentation: docs/schema.md.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack
import numpy as np

from amodal.errors import SchemaError
from amodal.types import Amendment, FrameResult, ObjectResult, RLEMask, ScanInfo, StreamEvent, StreamState

SCHEMA_VERSION = 1
FRAMES_PREFIX = "frames/"
STATUS_TOPIC = "status/"
METRICS_TOPIC = "metrics/"
#: a Subscriber also subscribes to ``~hello/<unique id>`` (never published on) so the engine can count subscribers;
#: on (re)connection a SUB socket sends its subscriptions in byte order, and ``~`` sorts after every topic above
HELLO_PREFIX = "~hello/"

# pycocotools' compressed RLE writes 6-bit groups as the characters 48..111 ('0'..'o')
_RLE_ALPHABET = bytes(range(48, 112))
_METRICS_MAX_DEPTH = 16
_BYTES_LIKE = (bytes, bytearray, memoryview)


class UnknownMessageTypeError(SchemaError):
    """A version-1 message of a type this reader does not know (a later additive type): skip it."""

    def __init__(self, topic: str, message_type: str) -> None:
        super().__init__(f"{topic}: unknown message type {message_type!r}")
        self.message_type = message_type


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


def _scan_to_wire(scan: ScanInfo) -> dict[str, Any]:
    return {"scanner_id": scan.scanner_id, "bag_id": scan.bag_id, "series_uid": scan.series_uid,
            "sop_instance_uid": scan.sop_instance_uid, "acquisition_time": scan.acquisition_time,
            "frame_number": scan.frame_number, "frame_count": scan.frame_count, "file_name": scan.file_name}


def _stage_ms_to_wire(stage_ms: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 3) for k, v in stage_ms.items()}


def encode_frame(result: FrameResult, seq: int, publish_time_ns: int) -> bytes:
    """A ``FrameResult`` → msgpack payload; ``seq`` counts the topic's frame messages.  ``scan`` (since 0.3) is
    written only for frames that carry scan identifiers (scanner feeds of DICOS / DICOM files)."""
    message = {
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
        "stage_ms": _stage_ms_to_wire(result.stage_ms),
        "objects": [_object_to_wire(o) for o in result.objects],
    }
    if result.scan is not None:
        message["scan"] = _scan_to_wire(result.scan)
    return msgpack.packb(message, use_bin_type=True)


def encode_amendment(amendment: Amendment, seq: int, publish_time_ns: int) -> bytes:
    """An ``Amendment`` → msgpack payload, published on its frame's topic ``frames/<stream_id>/``.

    ``seq`` counts the topic's amendment messages, separately from its frame messages: a reader that does
    not know amendments skips them and still sees its frame sequence without gaps.
    """
    return msgpack.packb(
        {
            "v": SCHEMA_VERSION,
            "type": "amendment",
            "seq": seq,
            "stream_id": amendment.stream_id,
            "frame_index": amendment.frame_index,
            "stage": amendment.stage,
            "capture_time_ns": amendment.capture_time_ns,
            "publish_time_ns": publish_time_ns,
            "width": amendment.width,
            "height": amendment.height,
            "stage_ms": _stage_ms_to_wire(amendment.stage_ms),
            "objects": [_object_to_wire(o) for o in amendment.objects],
            "refs": [None if r is None else operator.index(r) for r in amendment.refs],
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


# ---------------------------------------------------------------------------------------------- messages
@dataclass(frozen=True, slots=True)
class FrameMessage:
    """A decoded ``frame`` message (topic ``frames/<stream>/``)."""

    WIRE_TYPE: ClassVar[str] = "frame"
    topic: str
    seq: int
    publish_time_ns: int
    result: FrameResult


@dataclass(frozen=True, slots=True)
class AmendmentMessage:
    """A decoded ``amendment`` message (topic ``frames/<stream>/``): a slow stage's additions to a frame
    already published.  ``seq`` is the topic's amendment sequence, not its frame sequence."""

    WIRE_TYPE: ClassVar[str] = "amendment"
    topic: str
    seq: int
    publish_time_ns: int
    amendment: Amendment


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """A decoded ``status`` message (topic ``status/``)."""

    WIRE_TYPE: ClassVar[str] = "status"
    topic: str
    seq: int
    event: StreamEvent


@dataclass(frozen=True, slots=True)
class MetricsMessage:
    """A decoded ``metrics`` message (topic ``metrics/``): JSON-like data (str keys, finite numbers)."""

    WIRE_TYPE: ClassVar[str] = "metrics"
    topic: str
    seq: int
    time_ns: int
    metrics: dict[str, Any]


Message = FrameMessage | AmendmentMessage | StatusMessage | MetricsMessage


# ---------------------------------------------------------------------------------------------- decoding
_REQUIRED = object()  # ``absent=`` default: the field must be present


def _type_name(value: Any) -> str:
    return type(value).__name__


@dataclass(frozen=True, slots=True)
class _Fields:
    """Typed access to one msgpack map of a message; every error names the topic and the field's path."""

    d: dict
    topic: str
    path: str = ""

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, problem: str) -> SchemaError:
        return SchemaError(f"{self.topic}: field {self.name(key)!r} {problem}")

    def map(self, key: str) -> "_Fields":
        """The map in field ``key`` (required)."""
        value = self.value(key)
        if type(value) is not dict:
            raise self.error(key, f"has type {_type_name(value)}, expected a map")
        return _Fields(value, self.topic, self.name(key))

    def value(self, key: str, absent: Any = _REQUIRED) -> Any:
        """The raw value of ``key``; ``absent`` when it is missing (missing and required: an error)."""
        if key in self.d:
            return self.d[key]
        if absent is _REQUIRED:
            raise SchemaError(f"{self.topic}: missing field {self.name(key)!r}")
        return absent

    def integer(self, key: str, *, minimum: int | None = None, nullable: bool = False,
                absent: Any = _REQUIRED) -> int | None:
        """An int (not a bool) of at least ``minimum``; nil when ``nullable``; ``absent`` when missing (if given)."""
        if key not in self.d and absent is not _REQUIRED:
            return absent
        value = self.value(key)
        if value is None and nullable:
            return None
        return _check_int(value, minimum, self, key)

    def number(self, key: str, *, lo: float = -math.inf, hi: float = math.inf, nullable: bool = False,
               absent: Any = _REQUIRED) -> float | None:
        """A finite number in ``[lo, hi]`` as a float; nil when ``nullable``; ``absent`` when missing (if given)."""
        if key not in self.d and absent is not _REQUIRED:
            return absent
        value = self.value(key)
        if value is None and nullable:
            return None
        return _check_float(value, lo, hi, self, key)

    def string(self, key: str, *, nullable: bool = False, absent: Any = _REQUIRED) -> str | None:
        """A str; nil when ``nullable``; ``absent`` when missing (if given)."""
        value = self.value(key, absent)
        if (value is None and nullable) or type(value) is str:
            return value
        raise self.error(key, f"has type {_type_name(value)}, expected a string")

    def boolean(self, key: str, *, absent: Any = _REQUIRED) -> bool:
        """A bool (not an int); ``absent`` when missing (if given)."""
        value = self.value(key, absent)
        if type(value) is bool:
            return value
        raise self.error(key, f"has type {_type_name(value)}, expected a bool")

    def array(self, key: str) -> list:
        """A msgpack array (required)."""
        value = self.value(key)
        if type(value) is list:
            return value
        raise self.error(key, f"has type {_type_name(value)}, expected an array")


def _check_int(value: Any, minimum: int | None, fields: _Fields, key: str) -> int:
    """``value``, field ``key`` of ``fields``: an int (msgpack int; a bool or a float is not one) >= ``minimum``."""
    if type(value) is not int:
        raise fields.error(key, f"has type {_type_name(value)}, expected an int")
    if minimum is not None and value < minimum:
        raise fields.error(key, f"is {value}, expected at least {minimum}")
    return value


def _check_float(value: Any, lo: float, hi: float, fields: _Fields, key: str) -> float:
    """``value``, field ``key`` of ``fields``: a finite number (msgpack float or int; not a bool) in ``[lo, hi]``."""
    if type(value) not in (float, int):
        raise fields.error(key, f"has type {_type_name(value)}, expected a number")
    number = float(value)
    if not math.isfinite(number):
        raise fields.error(key, f"is {number}, expected a finite number")
    if not lo <= number <= hi:
        raise fields.error(key, f"is {number}, expected {lo} to {hi}")
    return number


def _stream_id(fields: _Fields) -> str:
    stream_id = fields.string("stream_id")
    try:
        return validate_stream_id(stream_id)
    except SchemaError as exc:
        raise fields.error("stream_id", str(exc)) from None


def _stage_ms(fields: _Fields, absent: Any = _REQUIRED) -> dict[str, float]:
    """``stage_ms``: a map of stage name → finite milliseconds."""
    stage = fields.value("stage_ms", absent)
    if type(stage) is not dict:
        raise fields.error("stage_ms", f"has type {_type_name(stage)}, expected a map")
    out: dict[str, float] = {}
    for key, ms in stage.items():
        if type(key) is not str:
            raise fields.error("stage_ms", f"key {key!r} is not a string")
        out[key] = _check_float(ms, -math.inf, math.inf, fields, f"stage_ms.{key}")
    return out


def _rle_from_wire(fields: _Fields, key: str) -> RLEMask | None:
    """A nullable COCO compressed RLE ``{"size": [height, width], "counts": bin}`` (absent = nil)."""
    if fields.value(key, None) is None:
        return None
    rle = fields.map(key)
    size = rle.array("size")
    if len(size) != 2:
        raise rle.error("size", f"has {len(size)} entries, expected [height, width]")
    height, width = (_check_int(s, 0, rle, "size") for s in size)
    counts = rle.value("counts")
    if type(counts) is str:
        if not counts.isascii():
            raise rle.error("counts", "is not ASCII (pycocotools writes RLE counts in ASCII)")
        counts = counts.encode("ascii")
    if type(counts) is not bytes:
        raise rle.error("counts", f"has type {_type_name(counts)}, expected bin (compressed RLE)")
    bad = counts.translate(None, _RLE_ALPHABET)
    if bad:
        raise rle.error("counts", f"has byte {bad[0]:#04x}, not a compressed RLE character ('0'..'o')")
    return RLEMask(height=height, width=width, counts=counts)


def _embedding_from_wire(fields: _Fields) -> np.ndarray | None:
    """A nullable non-empty little-endian float16 vector of finite values (absent = nil)."""
    emb = fields.value("embedding", None)
    if emb is None:
        return None
    if type(emb) is not bytes:
        raise fields.error("embedding", f"has type {_type_name(emb)}, expected bin (float16)")
    if not emb or len(emb) % 2:
        raise fields.error("embedding", f"has {len(emb)} bytes, expected a non-empty float16 vector")
    vector = np.frombuffer(emb, dtype="<f2")
    if not np.isfinite(vector).all():
        raise fields.error("embedding", "has non-finite values")
    return vector


def _box_from_wire(fields: _Fields) -> tuple[float, float, float, float]:
    box = fields.array("box_xyxy")
    if len(box) != 4:
        raise fields.error("box_xyxy", f"has {len(box)} entries, expected four numbers x1, y1, x2, y2")
    x1, y1, x2, y2 = (_check_float(v, -math.inf, math.inf, fields, "box_xyxy") for v in box)
    return x1, y1, x2, y2


def _object_from_wire(value: Any, topic: str, path: str) -> ObjectResult:
    """One object map; nil fields may be omitted."""
    if type(value) is not dict:
        raise SchemaError(f"{topic}: field {path!r} has type {_type_name(value)}, expected an object map")
    f = _Fields(value, topic, path)
    return ObjectResult(
        class_id=f.integer("class_id"),
        class_name=f.string("class_name"),
        score=f.number("score"),
        box_xyxy=_box_from_wire(f),
        mask=_rle_from_wire(f, "mask"),
        track_id=f.integer("track_id", nullable=True, absent=None),
        amodal_mask=_rle_from_wire(f, "amodal_mask"),
        occluder_mask=_rle_from_wire(f, "occluder_mask"),
        occlusion_level=f.number("occlusion_level", lo=0.0, hi=1.0, nullable=True, absent=None),
        occlusion_layer=f.integer("occlusion_layer", minimum=1, nullable=True, absent=None),
        embedding=_embedding_from_wire(f),
        global_id=f.integer("global_id", nullable=True, absent=None),
    )


def _objects_from_wire(fields: _Fields) -> tuple[ObjectResult, ...]:
    return tuple(_object_from_wire(o, fields.topic, f"objects[{i}]") for i, o in enumerate(fields.array("objects")))


def _frames_stream_id(fields: _Fields, kind: str) -> str:
    """The message's stream id, which must be the one its ``frames/<stream_id>/`` topic names."""
    stream_id = _stream_id(fields)
    if fields.topic != frames_topic(stream_id):
        raise SchemaError(f"{fields.topic}: {kind} of stream {stream_id!r} on the wrong topic "
                          f"(expected {frames_topic(stream_id)!r})")
    return stream_id


def _scan_from_wire(f: _Fields) -> ScanInfo | None:
    """The optional ``scan`` map of a frame message (absent or nil: None)."""
    if f.value("scan", None) is None:
        return None
    scan = f.map("scan")
    frame_number = scan.integer("frame_number", minimum=1)
    frame_count = scan.integer("frame_count", minimum=1)
    if frame_number > frame_count:
        raise scan.error("frame_number", f"is {frame_number}, more than frame_count {frame_count}")
    return ScanInfo(
        scanner_id=scan.string("scanner_id", nullable=True, absent=None),
        bag_id=scan.string("bag_id", nullable=True, absent=None),
        series_uid=scan.string("series_uid", nullable=True, absent=None),
        sop_instance_uid=scan.string("sop_instance_uid", nullable=True, absent=None),
        acquisition_time=scan.string("acquisition_time", nullable=True, absent=None),
        frame_number=frame_number,
        frame_count=frame_count,
        file_name=scan.string("file_name", nullable=True, absent=None),
    )


def _decode_frame(f: _Fields, seq: int) -> FrameMessage:
    result = FrameResult(
        stream_id=_frames_stream_id(f, "frame"),
        frame_index=f.integer("frame_index", minimum=0),
        pts_s=f.number("pts_s", nullable=True),
        capture_time_ns=f.integer("capture_time_ns", minimum=0),
        width=f.integer("width", minimum=0),
        height=f.integer("height", minimum=0),
        objects=_objects_from_wire(f),
        analyzer=f.string("analyzer", absent=""),
        stage_ms=_stage_ms(f, absent={}),
        scan=_scan_from_wire(f),
    )
    publish_time_ns = f.integer("publish_time_ns", minimum=0)
    return FrameMessage(topic=f.topic, seq=seq, publish_time_ns=publish_time_ns, result=result)


def _refs_from_wire(f: _Fields, n_objects: int) -> tuple[int | None, ...]:
    """``refs``: one entry per object, an index into the amended frame's objects or nil."""
    refs = f.array("refs")
    if len(refs) != n_objects:
        raise f.error("refs", f"has {len(refs)} entries for {n_objects} objects")
    return tuple(None if r is None else _check_int(r, 0, f, f"refs[{i}]") for i, r in enumerate(refs))


def _decode_amendment(f: _Fields, seq: int) -> AmendmentMessage:
    stream_id = _frames_stream_id(f, "amendment")
    stage = f.string("stage")
    if not stage:
        raise f.error("stage", "is empty, expected the stage's name")
    objects = _objects_from_wire(f)
    amendment = Amendment(
        stream_id=stream_id,
        frame_index=f.integer("frame_index", minimum=0),
        stage=stage,
        capture_time_ns=f.integer("capture_time_ns", minimum=0),
        width=f.integer("width", minimum=0),
        height=f.integer("height", minimum=0),
        objects=objects,
        refs=_refs_from_wire(f, len(objects)),
        stage_ms=_stage_ms(f),
    )
    publish_time_ns = f.integer("publish_time_ns", minimum=0)
    return AmendmentMessage(topic=f.topic, seq=seq, publish_time_ns=publish_time_ns, amendment=amendment)


def _decode_status(f: _Fields, seq: int) -> StatusMessage:
    if f.topic != STATUS_TOPIC:
        raise SchemaError(f"{f.topic}: status message on the wrong topic (expected {STATUS_TOPIC!r})")
    state_name = f.string("state")
    try:
        state = StreamState(state_name)
    except ValueError:
        raise SchemaError(f"{f.topic}: unknown stream state {state_name!r}") from None
    event = StreamEvent(
        stream_id=_stream_id(f),
        state=state,
        reason=f.string("reason", nullable=True),
        time_ns=f.integer("time_ns", minimum=0),
        attempt=f.integer("attempt", minimum=0, absent=0),
        fatal=f.boolean("fatal", absent=False),
    )
    return StatusMessage(topic=f.topic, seq=seq, event=event)


def _check_json_like(value: Any, path: str, topic: str, depth: int = 0) -> None:
    """Metrics are JSON-like: maps with string keys, arrays, strings, finite numbers, bools and nil."""
    if depth > _METRICS_MAX_DEPTH:
        raise SchemaError(f"{topic}: field {path!r} is nested deeper than {_METRICS_MAX_DEPTH} levels")
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise SchemaError(f"{topic}: field {path!r} key {key!r} is not a string")
            _check_json_like(item, f"{path}.{key}", topic, depth + 1)
    elif kind is list:
        for i, item in enumerate(value):
            _check_json_like(item, f"{path}[{i}]", topic, depth + 1)
    elif kind is float:
        if not math.isfinite(value):
            raise SchemaError(f"{topic}: field {path!r} is {value}, expected a finite number")
    elif value is not None and kind not in (str, int, bool):
        raise SchemaError(f"{topic}: field {path!r} has type {kind.__name__}, expected JSON-like data")


def _decode_metrics(f: _Fields, seq: int) -> MetricsMessage:
    if f.topic != METRICS_TOPIC:
        raise SchemaError(f"{f.topic}: metrics message on the wrong topic (expected {METRICS_TOPIC!r})")
    metrics = f.map("metrics").d
    _check_json_like(metrics, "metrics", f.topic)
    return MetricsMessage(topic=f.topic, seq=seq, time_ns=f.integer("time_ns", minimum=0), metrics=metrics)


_DECODERS = {"frame": _decode_frame, "amendment": _decode_amendment, "status": _decode_status,
             "metrics": _decode_metrics}


def _decode_map(topic: str, d: dict) -> Message:
    version = d.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:  # True == 1 and 1.0 == 1 are not version 1
        raise SchemaError(f"{topic}: schema version {version!r}, this subscriber reads {SCHEMA_VERSION}")
    f = _Fields(d, topic)
    kind = f.string("type")
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise UnknownMessageTypeError(topic, kind)
    return decoder(f, f.integer("seq", minimum=0))


def decode(topic_bytes: bytes, payload: bytes) -> Message:
    """Parse one multipart message ``[topic, payload]``.

    Raises ``SchemaError`` naming the field for anything malformed or foreign, and only ``SchemaError``
    (``UnknownMessageTypeError`` for a version-1 message of a type added after this reader).
    """
    try:
        if not isinstance(topic_bytes, _BYTES_LIKE) or not isinstance(payload, _BYTES_LIKE):
            raise SchemaError(f"expected bytes topic and payload, got {_type_name(topic_bytes)} "
                              f"and {_type_name(payload)}")
        try:
            topic = bytes(topic_bytes).decode("utf-8")
        except UnicodeDecodeError:
            raise SchemaError(f"topic is not UTF-8: {bytes(topic_bytes[:32])!r}") from None
        try:
            d = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            raise SchemaError(f"{topic}: payload is not msgpack ({_type_name(exc)}: {exc})") from None
        if type(d) is not dict:
            raise SchemaError(f"{topic}: payload is {_type_name(d)}, expected a map")
        return _decode_map(topic, d)
    except SchemaError:
        raise
    except Exception as exc:  # a last line of defence: every cause above is checked, none should get here
        raise SchemaError(f"malformed message ({_type_name(exc)}: {exc})") from exc
