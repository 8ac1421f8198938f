"""DICOS / DICOM files in the scanner hot folder: real files written with pydicom, 16-bit values kept (modality
transform applied), multi-frame files, scan identifiers published with the results, bad files reported."""
from __future__ import annotations

import os
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from amodal import Subscriber
from amodal.engine.config import EngineConfig
from amodal.engine.engine import Engine
from amodal.engine.stage import InputSpec, Stage, StageBatch
from amodal.errors import SchemaError, SourceError
from amodal.schema import FrameMessage, StatusMessage, decode, encode_frame, frames_topic
from amodal.streams.base import SourceConfig
from amodal.streams.dicom import decode_dicom
from amodal.streams.scanner import ScannerSource
from amodal.types import FrameResult, ObjectResult, ScanInfo, StreamState
from tests.engine.conftest import free_port
from tests.support.dicom import scan_dataset, write_report, write_scan
from tests.support.sink import SourceThread

POLL_S = 0.03


def _scanner(folder: Path, query: str = "settle_s=0.1&give_up_s=0.5", **kw: object) -> ScannerSource:
    return ScannerSource(SourceConfig(f"scanner://{folder}?{query}", "belt", poll_interval_s=POLL_S, **kw))  # type: ignore[arg-type]


def _stored(n: int, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """uint16[n, h, w] spanning the 16-bit range, with neighbours one unit apart (an 8-bit squeeze would merge them)."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 65535, size=(n, h, w), dtype=np.uint16)
    out[:, 0, 0], out[:, 0, 1] = 40000, 40001
    return out


def test_single_frame_with_slope_and_intercept_keeps_16_bits_and_identifiers(tmp_path: Path) -> None:
    stored = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 40).astype(np.uint16)  # 0 .. 30680
    write_scan(tmp_path / "bag1.dcm", stored, slope=2.0, intercept=-100.0, bag_id="BAG-42", scanner_serial="XR-7",
               series_uid="1.2.3.4", acquisition="20261130172338.250000+0100")
    with SourceThread(_scanner(tmp_path)) as runner:
        assert runner.sink.wait_frames(1, 5)
    frame = runner.sink.frames[0]
    expected = np.clip(stored.astype(np.int64) * 2 - 100, 0, 65535).astype(np.uint16)
    assert frame.pixel_format == "gray16" and frame.planes[0].dtype == np.uint16
    np.testing.assert_array_equal(frame.planes[0], expected)
    assert expected[0, 0] == 0 and expected.max() == 61260  # clipped below, 16-bit values above 255 kept
    assert (frame.width, frame.height) == (32, 24)
    scan = frame.scan
    assert (scan.scanner_id, scan.bag_id, scan.series_uid, scan.file_name) == ("XR-7", "BAG-42", "1.2.3.4", "bag1.dcm")
    assert scan.acquisition_time == "2026-11-30T17:23:38.250000+0100"
    assert (scan.frame_number, scan.frame_count) == (1, 1) and scan.sop_instance_uid


def test_multi_frame_file_gives_one_frame_per_frame_in_order(tmp_path: Path) -> None:
    stored = _stored(3)
    write_scan(tmp_path / "belt.dicos", stored, frame_time_ms=40.0)
    write_scan(tmp_path / "later.dcm", stored[0])
    later = time.time() + 1
    os.utime(tmp_path / "later.dcm", (later, later))
    with SourceThread(_scanner(tmp_path)) as runner:
        assert runner.sink.wait_frames(4, 5)
    frames = runner.sink.frames
    for k in range(3):
        np.testing.assert_array_equal(frames[k].planes[0], stored[k])
        assert (frames[k].scan.frame_number, frames[k].scan.frame_count) == (k + 1, 3)
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [round(f.pts_s, 3) for f in frames[:3]] == [0.0, 0.04, 0.08]
    assert frames[3].scan.file_name == "later.dcm" and frames[3].scan.frame_count == 1
    assert len({f.scan.series_uid for f in frames[:3]}) == 1


def test_dicm_preamble_without_suffix_and_bare_dcm_without_preamble(tmp_path: Path) -> None:
    stored = _stored(1)[0]
    write_scan(tmp_path / "1.2.840.55", stored)  # a UID as the name: found by its DICM preamble
    write_scan(tmp_path / "bare.dcm", stored, preamble=False)
    (tmp_path / "notes.txt").write_text("not a scan")
    with SourceThread(_scanner(tmp_path)) as runner:
        assert runner.sink.wait_frames(2, 5)
        time.sleep(0.3)
    assert sorted(f.scan.file_name for f in runner.sink.frames) == ["1.2.840.55", "bare.dcm"]
    assert not [e for e in runner.sink.events if e.state == StreamState.ERROR]
    for frame in runner.sink.frames:
        np.testing.assert_array_equal(frame.planes[0], stored)


def test_monochrome1_is_inverted_and_8_bit_stays_gray8(tmp_path: Path) -> None:
    stored = _stored(1)[0]
    frame = decode_dicom(write_scan(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1"))[0]
    np.testing.assert_array_equal(frame.planes[0], 65535 - stored)
    ds = scan_dataset(stored)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = (stored >> 8).astype(np.uint8).tobytes()
    ds.save_as(tmp_path / "g8.dcm", enforce_file_format=True)
    g8 = decode_dicom(tmp_path / "g8.dcm")[0]
    assert g8.pixel_format == "gray8"
    np.testing.assert_array_equal(g8.planes[0], (stored >> 8).astype(np.uint8))


def test_truncated_and_non_image_files_give_errors_naming_them_and_later_files_arrive(tmp_path: Path) -> None:
    good = _stored(1)[0]
    data = write_scan(tmp_path / "whole.dcm", good).read_bytes()
    (tmp_path / "whole.dcm").unlink()
    with SourceThread(_scanner(tmp_path)) as runner:
        assert runner.sink.wait_event(StreamState.UP, 5)
        (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
        write_report(tmp_path / "report.dcm")
        assert runner.sink.wait_for(lambda s: sum(e.state == StreamState.ERROR for e in s.events) >= 2, 10)
        write_scan(tmp_path / "next.dcm", good)
        assert runner.sink.wait_frames(1, 5)
    errors = [e for e in runner.sink.events if e.state == StreamState.ERROR]
    assert len(errors) == 2 and not any(e.fatal for e in errors)
    cut = next(e for e in errors if "cut.dcm" in e.reason)
    report = next(e for e in errors if "report.dcm" in e.reason)
    assert "pixel data" in cut.reason and "without pixel data" in report.reason
    assert [f.scan.file_name for f in runner.sink.frames] == ["next.dcm"]
    np.testing.assert_array_equal(runner.sink.frames[0].planes[0], good)


def test_declared_size_checked_before_decoding(tmp_path: Path) -> None:
    path = write_scan(tmp_path / "big.dcm", _stored(2))
    with pytest.raises(SourceError, match="exceeds max_image_pixels"):
        decode_dicom(path, max_pixels=24 * 32)  # two frames of 24x32 declared


class Probe(Stage):
    """Primary: publishes the 16-bit values it was given back as numbers (box = first two pixels, min, max)."""

    name = "probe"
    primary = True
    fills = frozenset({"objects"})
    input_spec = InputSpec()

    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        out = []
        for image in batch.input(self.input_spec).images:
            v = (image[0].double() * 65535).round()
            box = (float(v[0, 0]), float(v[0, 1]), float(v.min()), float(v.max()))
            out.append((ObjectResult(1, "probe", 1.0, box),))
        return out


@pytest.mark.parametrize("decode", ["processes", "threads"])
def test_values_and_identifiers_reach_a_subscriber_through_the_engine(tmp_path: Path, decode: str) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    stored = _stored(2, seed=5)
    write_scan(tmp_path / "bag.dcm", stored, bag_id="BAG-9", scanner_serial="XR-1", series_uid="9.8.7")
    config = EngineConfig(publish=endpoint, wait_for_subscribers=1, decode=decode, sources=(
        SourceConfig(uri=f"scanner://{tmp_path}?settle_s=0.05", stream_id="belt", pipeline="scanners",
                     max_frames=2),))
    engine = Engine(config, pipelines={"scanners": [Probe()]})
    got: list[FrameMessage] = []
    with Subscriber(endpoint) as sub:
        engine.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                m = sub.recv(0.2)
                if isinstance(m, FrameMessage):
                    got.append(m)
                if isinstance(m, StatusMessage) and m.event.state == StreamState.ENDED and len(got) >= 2:
                    break
        finally:
            engine.stop()
    assert len(got) == 2
    for k, m in enumerate(got):
        s = stored[k].astype(float)
        assert m.result.objects[0].box_xyxy == (40000.0, 40001.0, s.min(), s.max())
        scan = m.result.scan
        assert (scan.bag_id, scan.scanner_id, scan.series_uid) == ("BAG-9", "XR-1", "9.8.7")
        assert (scan.frame_number, scan.frame_count, scan.file_name) == (k + 1, 2, "bag.dcm")


def _frame_payload(scan: ScanInfo | None) -> bytes:
    result = FrameResult("belt", 3, 0.0, 1, 32, 24, scan=scan)
    return encode_frame(result, 0, 2)


def test_schema_scan_round_trip_and_old_messages_still_decode() -> None:
    scan = ScanInfo("XR-7", "BAG-1", "1.2", "1.2.3", "2026-11-30T17:23:38", 2, 3, "b.dcm")
    topic = frames_topic("belt").encode()
    assert decode(topic, _frame_payload(scan)).result.scan == scan
    old = msgpack.unpackb(_frame_payload(None))
    assert "scan" not in old
    assert decode(topic, msgpack.packb(old)).result.scan is None
    sparse = {**old, "scan": {"frame_number": 1, "frame_count": 1}}  # strings may be omitted
    assert decode(topic, msgpack.packb(sparse)).result.scan == ScanInfo()


@pytest.mark.parametrize("scan, field", [
    ({"frame_number": 3, "frame_count": 2}, "scan.frame_number"),
    ({"frame_number": 1}, "scan.frame_count"),
    ({"frame_number": 1, "frame_count": 1, "bag_id": 7}, "scan.bag_id"),
    ([1, 2], "scan"),
])
def test_schema_malformed_scan_names_the_field(scan: object, field: str) -> None:
    message = {**msgpack.unpackb(_frame_payload(None)), "scan": scan}
    with pytest.raises(SchemaError, match=repr(field)):
        decode(frames_topic("belt").encode(), msgpack.packb(message))
