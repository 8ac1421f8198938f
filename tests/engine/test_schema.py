"""The wire schema round-trips every field and rejects malformed or foreign payloads with SchemaError."""
from __future__ import annotations

import copy
import json
import random
import re

import msgpack
import numpy as np
import pytest

from amodal import schema
from amodal.cli_subscribe import message_to_json, summary_line
from amodal.errors import SchemaError
from amodal.types import Amendment, FrameResult, ObjectResult, RLEMask, StreamEvent, StreamState


def _result() -> FrameResult:
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:9, 4:17] = True
    amodal = mask.copy()
    amodal[3:12, 4:20] = True
    emb = np.linspace(-1, 1, 8).astype(np.float16)
    objects = (
        ObjectResult(1, "person", 0.9, (4.0, 3.0, 17.0, 9.0), RLEMask.encode(mask), 7, RLEMask.encode(amodal),
                     RLEMask.encode(amodal & ~mask), 0.33, 2, emb, 12),
        ObjectResult(3, "car", 0.25, (0.0, 0.0, 1.5, 2.5)),
    )
    return FrameResult("cam1", 41, 1.64, 1_700_000_000_123_456_789, 30, 20, objects, "maskrcnn", stage_ms={"model": 3.5})


def test_frame_round_trip_keeps_every_field():
    result = _result()
    payload = schema.encode_frame(result, seq=5, publish_time_ns=1_700_000_000_200_000_000)
    msg = schema.decode(schema.frames_topic("cam1").encode(), payload)
    assert isinstance(msg, schema.FrameMessage)
    assert (msg.seq, msg.publish_time_ns, msg.topic) == (5, 1_700_000_000_200_000_000, "frames/cam1/")
    got = msg.result
    assert (got.stream_id, got.frame_index, got.pts_s, got.capture_time_ns, got.width, got.height, got.analyzer) == (
        "cam1", 41, 1.64, 1_700_000_000_123_456_789, 30, 20, "maskrcnn")
    assert got.stage_ms == {"model": 3.5}
    a, b = got.objects
    want = result.objects[0]
    assert (a.class_id, a.class_name, a.track_id, a.occlusion_layer, a.global_id) == (1, "person", 7, 2, 12)
    assert a.score == pytest.approx(0.9) and a.occlusion_level == pytest.approx(0.33)
    assert a.box_xyxy == want.box_xyxy
    np.testing.assert_array_equal(a.mask.decode(), want.mask.decode())
    np.testing.assert_array_equal(a.amodal_mask.decode(), want.amodal_mask.decode())
    np.testing.assert_array_equal(a.occluder_mask.decode(), want.occluder_mask.decode())
    assert a.embedding.dtype == np.float16
    np.testing.assert_array_equal(a.embedding, want.embedding)
    assert b.mask is None and b.track_id is None and b.embedding is None and b.global_id is None


def test_status_round_trip():
    event = StreamEvent("cam2", StreamState.RECONNECTING, "connection refused", 123, attempt=3, fatal=False)
    msg = schema.decode(schema.STATUS_TOPIC.encode(), schema.encode_status(event, 9))
    assert isinstance(msg, schema.StatusMessage) and msg.seq == 9 and msg.event == event


def test_metrics_round_trip():
    msg = schema.decode(schema.METRICS_TOPIC.encode(), schema.encode_metrics({"fps": 25.0}, 2, 77))
    assert isinstance(msg, schema.MetricsMessage) and msg.metrics == {"fps": 25.0} and msg.time_ns == 77


def test_topic_prefix_is_exact():
    assert not schema.frames_topic("cam10").startswith(schema.frames_topic("cam1"))


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"\xc1\xff garbage", "not msgpack"),
        (msgpack.packb([1, 2, 3]), "expected a map"),
        (msgpack.packb({"v": 99, "type": "frame", "seq": 0}), "schema version 99"),
        (msgpack.packb({"v": 1, "type": "video", "seq": 0}), "unknown message type"),
        (msgpack.packb({"v": 1, "type": "frame"}), "missing field 'seq'"),
        (msgpack.packb({"v": 1, "type": "frame", "seq": 0, "stream_id": "a"}), "missing field"),
    ],
)
def test_malformed_payloads_raise_schema_error(payload, fragment):
    with pytest.raises(SchemaError, match=fragment):
        schema.decode(b"frames/a/", payload)


def test_unknown_stream_state():
    payload = msgpack.packb({"v": 1, "type": "status", "seq": 0, "stream_id": "a", "state": "exploded", "time_ns": 1})
    with pytest.raises(SchemaError, match="unknown stream state"):
        schema.decode(b"status/", payload)


def test_malformed_object_fields():
    d = msgpack.unpackb(schema.encode_frame(_result(), 0, 0))
    d["objects"][0]["box_xyxy"] = [1, 2, 3]
    with pytest.raises(SchemaError, match="box_xyxy"):
        schema.decode(b"frames/cam1/", msgpack.packb(d, use_bin_type=True))
    d["objects"][0]["box_xyxy"] = [1, 2, 3, 4]
    d["objects"][0]["mask"] = {"size": [2], "counts": b""}
    with pytest.raises(SchemaError, match="size"):
        schema.decode(b"frames/cam1/", msgpack.packb(d, use_bin_type=True))


@pytest.mark.parametrize("bad", ["", "a/b", "has space", "x" * 129])
def test_invalid_stream_ids(bad):
    with pytest.raises(SchemaError):
        schema.validate_stream_id(bad)


# ------------------------------------------------------------------------------------ malformed payloads
class _Delete:
    """A mutation that removes the field."""

    def __repr__(self) -> str:
        return "DELETE"


_DELETE = _Delete()


def _frame_map() -> dict:
    return msgpack.unpackb(schema.encode_frame(_result(), 3, 1_700_000_000_200_000_000), raw=False)


def _status_map() -> dict:
    event = StreamEvent("cam1", StreamState.RECONNECTING, "connection refused", 123, attempt=3)
    return msgpack.unpackb(schema.encode_status(event, 4), raw=False)


def _metrics_map() -> dict:
    return msgpack.unpackb(schema.encode_metrics({"fps": 25.0, "latency": {"model": {"p50_ms": 3.5}}}, 2, 77), raw=False)


_VALID = {
    "frame": (b"frames/cam1/", _frame_map),
    "status": (b"status/", _status_map),
    "metrics": (b"metrics/", _metrics_map),
}


def _mutate(d: dict, path: tuple, value) -> dict:
    """``d`` with the field at ``path`` (map keys and list indexes) replaced by ``value`` (or deleted)."""
    node = d
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return d


NAN, INF = float("nan"), float("inf")
_F16_NAN, _F16_INF = np.array([np.nan, 1], "<f2").tobytes(), np.array([np.inf, 1], "<f2").tobytes()
_O = ("objects", 0)  # the first object: every field set

# (message kind, path, bad value, fragment the error must contain: it names the field)
BAD_FIELDS = [
    ("frame", ("v",), True, "schema version"),
    ("frame", ("v",), 1.0, "schema version"),
    ("frame", ("v",), "1", "schema version"),
    ("frame", ("v",), _DELETE, "schema version"),
    ("status", ("v",), True, "schema version"),
    ("metrics", ("v",), 1.0, "schema version"),
    ("frame", ("type",), 7, "'type'"),
    ("frame", ("type",), b"frame", "'type'"),
    ("frame", ("type",), _DELETE, "'type'"),
    ("frame", ("seq",), "3", "'seq'"),
    ("frame", ("seq",), -1, "'seq'"),
    ("frame", ("seq",), 1.0, "'seq'"),
    ("frame", ("seq",), True, "'seq'"),
    ("frame", ("seq",), None, "'seq'"),
    ("frame", ("stream_id",), 5, "'stream_id'"),
    ("frame", ("stream_id",), "cam2", "topic"),
    ("frame", ("stream_id",), "has space", "stream id"),
    ("frame", ("frame_index",), -1, "'frame_index'"),
    ("frame", ("frame_index",), "41", "'frame_index'"),
    ("frame", ("frame_index",), False, "'frame_index'"),
    ("frame", ("frame_index",), 41.0, "'frame_index'"),
    ("frame", ("pts_s",), "1.64", "'pts_s'"),
    ("frame", ("pts_s",), NAN, "'pts_s'"),
    ("frame", ("pts_s",), INF, "'pts_s'"),
    ("frame", ("pts_s",), -INF, "'pts_s'"),
    ("frame", ("pts_s",), True, "'pts_s'"),
    ("frame", ("pts_s",), [1.0], "'pts_s'"),
    ("frame", ("capture_time_ns",), -5, "'capture_time_ns'"),
    ("frame", ("capture_time_ns",), 1.5, "'capture_time_ns'"),
    ("frame", ("capture_time_ns",), None, "'capture_time_ns'"),
    ("frame", ("publish_time_ns",), "now", "'publish_time_ns'"),
    ("frame", ("publish_time_ns",), _DELETE, "'publish_time_ns'"),
    ("frame", ("width",), -1, "'width'"),
    ("frame", ("width",), "30", "'width'"),
    ("frame", ("height",), True, "'height'"),
    ("frame", ("analyzer",), 5, "'analyzer'"),
    ("frame", ("analyzer",), b"maskrcnn", "'analyzer'"),
    ("frame", ("stage_ms",), [1.0], "'stage_ms'"),
    ("frame", ("stage_ms", "model"), "fast", "stage_ms.model"),
    ("frame", ("stage_ms", "model"), NAN, "stage_ms.model"),
    ("frame", ("stage_ms", "model"), INF, "stage_ms.model"),
    ("frame", ("stage_ms", "model"), None, "stage_ms.model"),
    ("frame", ("stage_ms", "model"), True, "stage_ms.model"),
    ("frame", ("stage_ms",), {b"model": 1.0}, "'stage_ms' key"),
    ("frame", ("objects",), "none", "'objects'"),
    ("frame", ("objects",), None, "'objects'"),
    ("frame", ("objects", 1), None, "objects[1]"),
    ("frame", ("objects", 1), [1, 2], "objects[1]"),
    ("frame", (*_O, "class_id"), "1", "objects[0].class_id"),
    ("frame", (*_O, "class_id"), True, "objects[0].class_id"),
    ("frame", (*_O, "class_id"), 1.0, "objects[0].class_id"),
    ("frame", (*_O, "class_id"), _DELETE, "objects[0].class_id"),
    ("frame", (*_O, "class_name"), 5, "objects[0].class_name"),
    ("frame", (*_O, "class_name"), b"person", "objects[0].class_name"),
    ("frame", (*_O, "score"), "0.9", "objects[0].score"),
    ("frame", (*_O, "score"), NAN, "objects[0].score"),
    ("frame", (*_O, "score"), INF, "objects[0].score"),
    ("frame", (*_O, "score"), None, "objects[0].score"),
    ("frame", (*_O, "score"), True, "objects[0].score"),
    ("frame", (*_O, "box_xyxy"), [1.0, 2.0, 3.0], "objects[0].box_xyxy"),
    ("frame", (*_O, "box_xyxy"), [1.0, 2.0, 3.0, "4"], "objects[0].box_xyxy"),
    ("frame", (*_O, "box_xyxy"), [1.0, 2.0, 3.0, NAN], "objects[0].box_xyxy"),
    ("frame", (*_O, "box_xyxy"), [-INF, 2.0, 3.0, 4.0], "objects[0].box_xyxy"),
    ("frame", (*_O, "box_xyxy"), [True, 2.0, 3.0, 4.0], "objects[0].box_xyxy"),
    ("frame", (*_O, "box_xyxy"), "1234", "objects[0].box_xyxy"),
    ("frame", (*_O, "mask"), "rle", "objects[0].mask"),
    ("frame", (*_O, "mask", "size"), [20], "objects[0].mask.size"),
    ("frame", (*_O, "mask", "size"), [20, "30"], "objects[0].mask.size"),
    ("frame", (*_O, "mask", "size"), [-1, 30], "objects[0].mask.size"),
    ("frame", (*_O, "mask", "size"), [True, 30], "objects[0].mask.size"),
    ("frame", (*_O, "mask", "size"), [20.0, 30], "objects[0].mask.size"),
    ("frame", (*_O, "mask", "size"), _DELETE, "objects[0].mask.size"),
    ("frame", (*_O, "mask", "counts"), "caf\u00e9", "objects[0].mask.counts"),
    ("frame", (*_O, "mask", "counts"), b"caf\xc3\xa9", "objects[0].mask.counts"),
    ("frame", (*_O, "mask", "counts"), b"\x00\x01", "objects[0].mask.counts"),
    ("frame", (*_O, "mask", "counts"), [1, 2, 3], "objects[0].mask.counts"),
    ("frame", (*_O, "mask", "counts"), 5, "objects[0].mask.counts"),
    ("frame", (*_O, "mask", "counts"), _DELETE, "objects[0].mask.counts"),
    ("frame", (*_O, "amodal_mask", "counts"), b"\xff\xfe", "objects[0].amodal_mask.counts"),
    ("frame", (*_O, "occluder_mask"), 5, "objects[0].occluder_mask"),
    ("frame", (*_O, "track_id"), "7", "objects[0].track_id"),
    ("frame", (*_O, "track_id"), 7.0, "objects[0].track_id"),
    ("frame", (*_O, "track_id"), True, "objects[0].track_id"),
    ("frame", (*_O, "occlusion_level"), "0.33", "objects[0].occlusion_level"),
    ("frame", (*_O, "occlusion_level"), NAN, "objects[0].occlusion_level"),
    ("frame", (*_O, "occlusion_level"), INF, "objects[0].occlusion_level"),
    ("frame", (*_O, "occlusion_level"), 1.5, "objects[0].occlusion_level"),
    ("frame", (*_O, "occlusion_level"), -0.1, "objects[0].occlusion_level"),
    ("frame", (*_O, "occlusion_level"), True, "objects[0].occlusion_level"),
    ("frame", (*_O, "occlusion_layer"), 0, "objects[0].occlusion_layer"),
    ("frame", (*_O, "occlusion_layer"), -2, "objects[0].occlusion_layer"),
    ("frame", (*_O, "occlusion_layer"), "2", "objects[0].occlusion_layer"),
    ("frame", (*_O, "occlusion_layer"), b"\x02", "objects[0].occlusion_layer"),
    ("frame", (*_O, "occlusion_layer"), 2.0, "objects[0].occlusion_layer"),
    ("frame", (*_O, "occlusion_layer"), True, "objects[0].occlusion_layer"),
    ("frame", (*_O, "embedding"), b"\x00", "objects[0].embedding"),
    ("frame", (*_O, "embedding"), b"", "objects[0].embedding"),
    ("frame", (*_O, "embedding"), "\x00\x3c", "objects[0].embedding"),
    ("frame", (*_O, "embedding"), [0.5, 0.5], "objects[0].embedding"),
    ("frame", (*_O, "embedding"), _F16_NAN, "objects[0].embedding"),
    ("frame", (*_O, "embedding"), _F16_INF, "objects[0].embedding"),
    ("frame", (*_O, "global_id"), "12", "objects[0].global_id"),
    ("frame", (*_O, "global_id"), b"\x0c", "objects[0].global_id"),
    ("frame", (*_O, "global_id"), 12.5, "objects[0].global_id"),
    ("frame", (*_O, "global_id"), True, "objects[0].global_id"),
    ("status", ("attempt",), "3", "'attempt'"),
    ("status", ("attempt",), [3], "'attempt'"),
    ("status", ("attempt",), INF, "'attempt'"),
    ("status", ("attempt",), NAN, "'attempt'"),
    ("status", ("attempt",), 3.0, "'attempt'"),
    ("status", ("attempt",), -1, "'attempt'"),
    ("status", ("attempt",), True, "'attempt'"),
    ("status", ("attempt",), None, "'attempt'"),
    ("status", ("fatal",), "yes", "'fatal'"),
    ("status", ("fatal",), 1, "'fatal'"),
    ("status", ("fatal",), None, "'fatal'"),
    ("status", ("reason",), 5, "'reason'"),
    ("status", ("reason",), b"refused", "'reason'"),
    ("status", ("time_ns",), "123", "'time_ns'"),
    ("status", ("time_ns",), -1, "'time_ns'"),
    ("status", ("state",), 5, "'state'"),
    ("status", ("state",), "exploded", "unknown stream state"),
    ("status", ("stream_id",), "a b", "stream id"),
    ("status", ("stream_id",), None, "'stream_id'"),
    ("metrics", ("time_ns",), "77", "'time_ns'"),
    ("metrics", ("time_ns",), INF, "'time_ns'"),
    ("metrics", ("metrics",), [1, 2], "'metrics'"),
    ("metrics", ("metrics", "fps"), b"\xff", "metrics.fps"),
    ("metrics", ("metrics", "fps"), NAN, "metrics.fps"),
    ("metrics", ("metrics", "latency", "model", "p50_ms"), INF, "metrics.latency.model.p50_ms"),
    ("metrics", ("metrics", "latency", "model", "ext"), msgpack.ExtType(5, b"x"), "metrics.latency.model.ext"),
    ("metrics", ("metrics",), {b"fps": 1.0}, "'metrics' key"),
]


@pytest.mark.parametrize("kind, path, value, fragment", BAD_FIELDS,
                         ids=[f"{k}-{'.'.join(map(str, p))}={v!r}"[:80] for k, p, v, _ in BAD_FIELDS])
def test_every_field_is_type_checked(kind, path, value, fragment):
    topic, valid = _VALID[kind]
    payload = msgpack.packb(_mutate(valid(), path, value), use_bin_type=True)
    with pytest.raises(SchemaError, match=re.escape(fragment)):
        schema.decode(topic, payload)


def test_deep_metrics_nesting_is_malformed_not_a_crash():
    nested: dict = {"x": 1}
    for _ in range(500):
        nested = {"x": nested}
    payload = msgpack.packb({"v": 1, "type": "metrics", "seq": 0, "time_ns": 1, "metrics": nested})
    with pytest.raises(SchemaError, match="nested deeper"):
        schema.decode(b"metrics/", payload)


@pytest.mark.parametrize("topic, kind", [(b"status/", "frame"), (b"frames/cam1/", "status"), (b"frames/cam1/", "metrics"),
                                         (b"\xff\xfe", "frame")])
def test_messages_on_the_wrong_topic_are_malformed(topic, kind):
    with pytest.raises(SchemaError, match="topic"):
        schema.decode(topic, msgpack.packb(_VALID[kind][1](), use_bin_type=True))


@pytest.mark.parametrize("topic, payload", [("frames/cam1/", b"\x80"), (b"frames/cam1/", "not bytes"), (None, None), (b"status/", 17)])
def test_non_bytes_arguments_raise_schema_error(topic, payload):
    with pytest.raises(SchemaError):
        schema.decode(topic, payload)


def test_omitted_nil_fields_and_defaults_still_decode():
    """Nil object fields may be omitted; a frame without ``analyzer``/``stage_ms`` and a status without
    ``attempt``/``fatal`` read as the defaults (what the first release's reader accepted)."""
    d = _frame_map()
    for key in ("mask", "track_id", "amodal_mask", "occluder_mask", "occlusion_level", "occlusion_layer", "embedding", "global_id"):
        del d["objects"][1][key]
    del d["analyzer"], d["stage_ms"]
    got = schema.decode(b"frames/cam1/", msgpack.packb(d, use_bin_type=True)).result
    assert (got.analyzer, got.stage_ms, got.objects[1].mask, got.objects[1].global_id) == ("", {}, None, None)
    s = _status_map()
    del s["attempt"], s["fatal"]
    event = schema.decode(b"status/", msgpack.packb(s, use_bin_type=True)).event
    assert (event.attempt, event.fatal) == (0, False)


# ------------------------------------------------------------------------------------------------- fuzz
_WEIRD_VALUES = [None, True, False, 0, -1, 1, 2**63, -(2**63), 2**64 - 1, 0.5, -0.0, NAN, INF, -INF, "", "x", "caf\u00e9",
                 "a/b", "\x1b[2J", b"", b"\xff\xfe", b"0", _F16_NAN, [], [1, 2, 3], [None] * 4, {}, {"size": [1, 1]},
                 {"size": [1, 1], "counts": b"\xc3\xa9"}, {"size": [2, 2], "counts": b"04"}, {1.5: 2}, {b"k": b"v"},
                 msgpack.ExtType(3, b"x"), "frame", "amendment", "status", 1.0]


def _paths(node, prefix=()):
    """Every (map key / list index) path in a decoded payload."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _random_mutation(rng: random.Random, d: dict) -> dict:
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        path = rng.choice([p for p in _paths(d) if p])
        op = rng.random()
        parent = d
        for key in path[:-1]:
            parent = parent[key]
        if op < 0.15 and isinstance(parent, dict):
            del parent[path[-1]]
        elif op < 0.25 and isinstance(parent, dict):
            parent[rng.choice(["junk", "v", "type", "refs", "seq"])] = copy.deepcopy(rng.choice(_WEIRD_VALUES))
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(_WEIRD_VALUES))
    return d


def _packed_or_none(d) -> bytes | None:
    try:
        return msgpack.packb(d, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError):
        return None


def _assert_decodes_or_schema_error(topic: bytes, payload: bytes) -> int:
    """1 when it decoded (and then the CLI's JSON and console lines render it), 0 on SchemaError."""
    try:
        message = schema.decode(topic, payload)
    except SchemaError:
        return 0
    json.dumps(message_to_json(message), allow_nan=False)
    summary_line(message)
    return 1


def test_fuzz_decode_raises_only_schema_error():
    rng = random.Random(20261130)
    valid = [(topic, make) for topic, make in _VALID.values()]
    decoded = tried = 0
    for i in range(2000):
        topic, make = valid[i % len(valid)]
        if rng.random() < 0.15:  # byte-level damage of a valid payload
            payload = bytearray(msgpack.packb(make(), use_bin_type=True))
            for _ in range(rng.randint(1, 4)):
                payload[rng.randrange(len(payload))] = rng.randrange(256)
            payload = bytes(payload[: rng.randint(1, len(payload))] if rng.random() < 0.3 else payload)
        else:
            payload = _packed_or_none(_random_mutation(rng, make()))
            if payload is None:
                continue
        tried += 1
        decoded += _assert_decodes_or_schema_error(topic, payload)
    assert tried > 1500 and 0 < decoded < tried  # the mutations hit both outcomes


# --------------------------------------------------------------------------------------------- amendments
def _amendment() -> Amendment:
    """A layers-stage amendment of ``_result()``: completes both objects and adds one layer region."""
    mask = np.zeros((20, 30), dtype=bool)
    mask[0:4, 0:30] = True
    full = _result().objects[0]
    region = ObjectResult(0, "layer", 1.0, (0.0, 0.0, 30.0, 4.0), RLEMask.encode(mask), None, RLEMask.encode(mask),
                          None, 0.0, 3, None, None)
    objects = (full, ObjectResult(3, "car", 0.25, (0.0, 0.0, 1.5, 2.5), occlusion_layer=1), region)
    return Amendment("cam1", 41, "layers", 1_700_000_000_123_456_789, 30, 20, objects, (0, 1, None),
                     stage_ms={"layers": 12.25})


def _amendment_map() -> dict:
    return msgpack.unpackb(schema.encode_amendment(_amendment(), 2, 1_700_000_000_300_000_000), raw=False)


_VALID["amendment"] = (b"frames/cam1/", _amendment_map)


def _assert_objects_equal(got: tuple[ObjectResult, ...], want: tuple[ObjectResult, ...]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        for name in ObjectResult.__slots__:
            x, y = getattr(a, name), getattr(b, name)
            if isinstance(y, np.ndarray):
                assert x.dtype == np.float16 and np.array_equal(x, y), name
            elif isinstance(y, float):
                assert x == pytest.approx(y), name
            else:
                assert x == y, name


def test_amendment_round_trip_keeps_every_field():
    want = _amendment()
    payload = schema.encode_amendment(want, seq=2, publish_time_ns=1_700_000_000_300_000_000)
    msg = schema.decode(schema.frames_topic("cam1").encode(), payload)
    assert isinstance(msg, schema.AmendmentMessage)
    assert (msg.topic, msg.seq, msg.publish_time_ns) == ("frames/cam1/", 2, 1_700_000_000_300_000_000)
    got = msg.amendment
    assert (got.stream_id, got.frame_index, got.stage, got.capture_time_ns, got.width, got.height) == (
        "cam1", 41, "layers", 1_700_000_000_123_456_789, 30, 20)
    assert got.refs == (0, 1, None) and got.stage_ms == {"layers": 12.25}
    _assert_objects_equal(got.objects, want.objects)
    assert got.objects[0].embedding is not None and got.objects[2].track_id is None


def test_amendment_wire_map_is_the_documented_one():
    d = msgpack.unpackb(schema.encode_amendment(_amendment(), 7, 99), raw=False)
    assert set(d) == {"v", "type", "seq", "stream_id", "frame_index", "stage", "capture_time_ns", "publish_time_ns",
                      "width", "height", "stage_ms", "objects", "refs"}
    assert (d["v"], d["type"], d["seq"], d["refs"]) == (1, "amendment", 7, [0, 1, None])
    frame_objects = msgpack.unpackb(schema.encode_frame(_result(), 0, 0), raw=False)["objects"]
    assert d["objects"][0] == frame_objects[0], "amendment objects are the frame message's object maps"


def test_amendment_refs_may_be_numpy_ints_and_an_empty_amendment_round_trips():
    amendment = Amendment("cam1", 0, "layers", 0, 2, 2, (ObjectResult(1, "a", 0.5, (0, 0, 1, 1)),), (np.int64(4),))
    msg = schema.decode(b"frames/cam1/", schema.encode_amendment(amendment, 0, 0))
    assert msg.amendment.refs == (4,) and type(msg.amendment.refs[0]) is int
    empty = schema.decode(b"frames/cam1/", schema.encode_amendment(Amendment("cam1", 3, "reid", 0, 2, 2), 1, 0))
    assert empty.amendment.objects == () and empty.amendment.refs == ()


BAD_AMENDMENTS = [
    (("refs",), [0, 1], "'refs' has 2 entries for 3 objects"),
    (("refs",), [0, 1, None, None], "'refs' has 4 entries"),
    (("refs",), None, "'refs'"),
    (("refs",), "012", "'refs'"),
    (("refs",), _DELETE, "missing field 'refs'"),
    (("refs", 0), -1, "refs[0]"),
    (("refs", 1), "1", "refs[1]"),
    (("refs", 1), 1.0, "refs[1]"),
    (("refs", 0), True, "refs[0]"),
    (("refs", 2), INF, "refs[2]"),
    (("stage",), 5, "'stage'"),
    (("stage",), "", "'stage'"),
    (("stage",), None, "'stage'"),
    (("stage",), _DELETE, "'stage'"),
    (("stream_id",), "cam2", "topic"),
    (("frame_index",), -1, "'frame_index'"),
    (("frame_index",), 41.0, "'frame_index'"),
    (("capture_time_ns",), "x", "'capture_time_ns'"),
    (("publish_time_ns",), -1, "'publish_time_ns'"),
    (("width",), True, "'width'"),
    (("height",), _DELETE, "'height'"),
    (("stage_ms",), _DELETE, "'stage_ms'"),
    (("stage_ms", "layers"), NAN, "stage_ms.layers"),
    (("objects",), {}, "'objects'"),
    (("objects", 2, "occlusion_layer"), 0, "objects[2].occlusion_layer"),
    (("objects", 2, "mask", "counts"), b"\xc3\xa9", "objects[2].mask.counts"),
    (("objects", 0, "embedding"), _F16_NAN, "objects[0].embedding"),
    (("objects", 1, "score"), NAN, "objects[1].score"),
    (("seq",), -3, "'seq'"),
    (("v",), True, "schema version"),
]


@pytest.mark.parametrize("path, value, fragment", BAD_AMENDMENTS,
                         ids=[f"{'.'.join(map(str, p))}={v!r}"[:60] for p, v, _ in BAD_AMENDMENTS])
def test_amendment_fields_are_type_checked(path, value, fragment):
    payload = msgpack.packb(_mutate(_amendment_map(), path, value), use_bin_type=True)
    with pytest.raises(SchemaError, match=re.escape(fragment)) as info:
        schema.decode(b"frames/cam1/", payload)
    assert not isinstance(info.value, schema.UnknownMessageTypeError)


def test_amendment_on_the_status_topic_is_malformed():
    with pytest.raises(SchemaError, match="topic"):
        schema.decode(b"status/", schema.encode_amendment(_amendment(), 0, 0))


# ------------------------------------------------------------------------------------------ unknown types
def test_unknown_version_1_types_raise_unknown_message_type_error():
    payload = msgpack.packb({"v": 1, "type": "heatmap", "seq": 0, "anything": [1, 2]})
    with pytest.raises(schema.UnknownMessageTypeError, match="unknown message type 'heatmap'") as info:
        schema.decode(b"frames/cam1/", payload)
    assert info.value.message_type == "heatmap" and isinstance(info.value, SchemaError)


@pytest.mark.parametrize("d", [{"v": 2, "type": "heatmap", "seq": 0}, {"v": True, "type": "heatmap", "seq": 0},
                               {"v": 1, "type": 5, "seq": 0}, {"v": 1, "seq": 0}])
def test_other_versions_and_typeless_messages_are_malformed_not_unknown_types(d):
    with pytest.raises(SchemaError) as info:
        schema.decode(b"frames/cam1/", msgpack.packb(d))
    assert not isinstance(info.value, schema.UnknownMessageTypeError)


def test_amendment_json_and_console_line():
    msg = schema.decode(b"frames/cam1/", schema.encode_amendment(_amendment(), 7, 0))
    doc = json.loads(json.dumps(message_to_json(msg), allow_nan=False))
    assert (doc["type"], doc["stage"], doc["frame_index"], doc["seq"], doc["refs"]) == ("amendment", "layers", 41, 7, [0, 1, None])
    assert doc["stage_ms"] == {"layers": 12.25} and doc["objects"][2]["occlusion_layer"] == 3
    assert doc["objects"][2]["mask"]["counts"] == _amendment().objects[2].mask.counts.decode("ascii")
    line = summary_line(msg)
    assert line.startswith("cam1       frame     41  +layers: 3 objects (layer 1..3, completes 2, adds 1)"), line
    assert "amendment seq 7" in line


def test_bytes_like_arguments_decode():
    payload = schema.encode_frame(_result(), 5, 6)
    msg = schema.decode(memoryview(b"frames/cam1/"), bytearray(payload))
    assert isinstance(msg, schema.FrameMessage) and msg.topic == "frames/cam1/"
