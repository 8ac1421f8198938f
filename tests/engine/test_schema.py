"""The wire schema round-trips every field and rejects malformed or foreign payloads with SchemaError."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest

from amodal import schema
from amodal.errors import SchemaError
from amodal.types import FrameResult, ObjectResult, RLEMask, StreamEvent, StreamState


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
        (msgpack.packb({"v": 1, "type": "status", "seq": 0, "stream_id": "a", "state": "exploded", "time_ns": 1}), "unknown stream state"),
    ],
)
def test_malformed_payloads_raise_schema_error(payload, fragment):
    with pytest.raises(SchemaError, match=fragment):
        schema.decode(b"frames/a/", payload)


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
