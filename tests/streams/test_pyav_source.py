"""PyAV file source: every frame exactly once and in order, bad files end in ERROR, pacing, looping."""
from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest

from amodal.streams.base import SourceConfig
from amodal.streams.planes import frame_planes
from amodal.streams.pyav_source import PyAVSource
from amodal.streams.synthetic import SyntheticSource
from amodal.types import StreamState
from tests.support.media import (
    decode_raw_frames,
    ffprobe_frame_count,
    make_video,
    truncated_copy,
    write_garbage,
)
from tests.support.sink import ListSink, SourceThread


def _run_to_end(source: PyAVSource, timeout_s: float = 30.0) -> ListSink:
    runner = SourceThread(source).start()
    assert runner.join(timeout_s), f"{source.stream_id} did not finish within {timeout_s} s"
    return runner.sink


def test_file_delivers_every_frame_once_in_order(video_mp4: Path) -> None:
    sink = _run_to_end(PyAVSource(SourceConfig(str(video_mp4), "file")))
    expected = ffprobe_frame_count(video_mp4)
    assert expected == 50
    assert [f.index for f in sink.frames] == list(range(expected))
    pts = [f.pts_s for f in sink.frames]
    assert all(b > a for a, b in zip(pts, pts[1:])), pts
    assert sink.states() == [StreamState.CONNECTING, StreamState.UP, StreamState.ENDED]
    # decoded planes equal what the ffmpeg CLI decodes, frame by frame (no colour conversion happened)
    raw = decode_raw_frames(video_mp4, 320, 240)
    assert raw.shape[0] == expected
    for frame, ref in zip(sink.frames, raw):
        assert frame.pixel_format == "yuv420p" and (frame.width, frame.height) == (320, 240)
        y, u, v = frame.planes
        assert y.shape == (240, 320) and u.shape == v.shape == (120, 160)
        np.testing.assert_array_equal(np.concatenate([y.ravel(), u.ravel(), v.ravel()]), ref)


def test_file_uri_max_frames_and_loop(video_mp4: Path) -> None:
    sink = _run_to_end(PyAVSource(SourceConfig(f"file://{video_mp4}", "loop", loop=True, max_frames=120)))
    assert [f.index for f in sink.frames] == list(range(120))
    # the pts restart at each loop: 50 frames per pass
    assert sink.frames[50].pts_s == sink.frames[0].pts_s and sink.frames[100].pts_s == sink.frames[0].pts_s
    assert sink.events[-1].state == StreamState.ENDED and sink.events[-1].reason == "max_frames reached"
    assert sink.states() == [StreamState.CONNECTING, StreamState.UP, StreamState.ENDED]  # no UP per loop


def test_sink_refusal_ends_source(video_mp4: Path) -> None:
    source = PyAVSource(SourceConfig(str(video_mp4), "refuse"))
    runner = SourceThread(source, ListSink(accept_frames=7)).start()
    assert runner.join(20)
    assert runner.sink.frame_count() == 7
    assert runner.sink.events[-1].state == StreamState.ENDED and runner.sink.events[-1].reason == "sink closed"


def test_realtime_file_is_paced(video_mp4: Path) -> None:
    source = PyAVSource(SourceConfig(str(video_mp4), "paced", realtime=True, max_frames=11))
    started = time.monotonic()
    sink = _run_to_end(source)
    elapsed_s = time.monotonic() - started
    assert len(sink.frames) == 11
    gap_s = (sink.frames[-1].received_mono_ns - sink.frames[0].received_mono_ns) / 1e9
    assert gap_s >= 0.4 * 0.9 and elapsed_s >= 0.4 * 0.9  # 10 intervals of 40 ms


@pytest.mark.parametrize(
    ("kind", "expect"),
    [("truncated-mp4", "ended early"), ("truncated-mkv", "ended early"), ("garbage", "open failed")],
)
def test_bad_files_end_in_fatal_error_others_unaffected(
    kind: str, expect: str, video_mp4: Path, video_mkv: Path, tmp_path: Path
) -> None:
    if kind == "truncated-mp4":
        path = truncated_copy(video_mp4, tmp_path / "cut.mp4", 0.5)
    elif kind == "truncated-mkv":
        path = truncated_copy(video_mkv, tmp_path / "cut.mkv", 0.5)
    else:
        path = write_garbage(tmp_path / "garbage.mp4")
    bad = SourceThread(PyAVSource(SourceConfig(str(path), "bad"))).start()
    good = SourceThread(PyAVSource(SourceConfig(str(video_mp4), "good"))).start()
    assert bad.join(20) and good.join(20)
    last = bad.sink.events[-1]
    assert last.state == StreamState.ERROR and last.fatal
    assert expect in last.reason and str(path) in last.reason
    delivered = len(bad.sink.frames)
    assert delivered < 50
    assert [f.index for f in bad.sink.frames] == list(range(delivered))
    if kind != "garbage":
        assert delivered > 5  # whatever decoded before the cut was delivered
    assert len(good.sink.frames) == 50 and good.sink.events[-1].state == StreamState.ENDED


def test_missing_file_at_run_time_is_fatal(tmp_path: Path, video_mp4: Path) -> None:
    sink = _run_to_end(PyAVSource(SourceConfig(str(tmp_path / "gone.mp4"), "gone")))
    assert sink.events[-1].state == StreamState.ERROR and sink.events[-1].fatal
    assert "gone.mp4" in sink.events[-1].reason and not sink.frames


def test_hwaccel_cuda_decodes_or_falls_back_with_reason(video_mp4: Path) -> None:
    sink = _run_to_end(PyAVSource(SourceConfig(str(video_mp4), "hw", hwaccel="cuda")))
    assert len(sink.frames) == 50
    up = [e for e in sink.events if e.state == StreamState.UP][0]
    assert sink.frames[0].pixel_format in ("yuv420p", "nv12")
    if up.reason is not None:
        assert "hwaccel cuda unavailable" in up.reason and "CPU" in up.reason


@pytest.mark.parametrize(("pix_fmt", "expected"), [("yuv444p", "yuv420p"), ("gray", "gray8"), ("rgb24", "rgb24")])
def test_other_pixel_formats_are_normalised(pix_fmt: str, expected: str, tmp_path: Path) -> None:
    codec = "ffv1" if pix_fmt != "yuv444p" else "libx264"
    path = make_video(tmp_path / f"{pix_fmt}.mkv", seconds=0.2, size=(64, 48), codec=codec, pix_fmt=pix_fmt)
    sink = _run_to_end(PyAVSource(SourceConfig(str(path), "fmt")))
    assert len(sink.frames) == 5 and sink.frames[0].pixel_format == expected
    shape0 = sink.frames[0].planes[0].shape
    assert shape0[:2] == (48, 64)


def test_frame_planes_nv12_and_gray16_match_pyav() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(36, 50, 3), dtype=np.uint8)
    nv12 = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="nv12")
    fmt, (y, uv) = frame_planes(nv12)
    ref = nv12.to_ndarray()  # (H * 3/2, W): Y rows then interleaved UV rows
    assert fmt == "nv12" and y.shape == (36, 50) and uv.shape == (18, 25, 2)
    np.testing.assert_array_equal(y, ref[:36])
    np.testing.assert_array_equal(uv.reshape(18, 50), ref[36:])
    g16 = rng.integers(0, 65536, size=(20, 30), dtype=np.uint16)
    fmt, (plane,) = frame_planes(av.VideoFrame.from_ndarray(g16, format="gray16le"))
    assert fmt == "gray16" and plane.dtype == np.uint16
    np.testing.assert_array_equal(plane, g16)


def test_synthetic_keeps_flowing_next_to_file(video_mp4: Path) -> None:
    synth = SourceThread(SyntheticSource(SourceConfig("synthetic://shapes?w=64&h=48&fps=50", "syn"))).start()
    try:
        assert synth.sink.wait_frames(3, 10)
        sink = _run_to_end(PyAVSource(SourceConfig(str(video_mp4), "file2")))
        before = synth.sink.frame_count()
        assert synth.sink.wait_frames(before + 3, 10)
        assert len(sink.frames) == 50
    finally:
        assert synth.stop() < 2.0


def test_http_hls_is_live_and_reconnects(tmp_path: Path) -> None:
    """HLS over a loopback HTTP server: at the end of the playlist (or when the server goes away) a live
    source reports RECONNECTING and resumes; indexes continue."""
    import functools
    import subprocess
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from tests.support.media import FFMPEG

    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-t", "0.4",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "5", "-f", "hls", "-hls_time", "0.2",
                    "-hls_playlist_type", "vod", str(tmp_path / "live.m3u8")], check=True, timeout=60)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/live.m3u8"
    config = SourceConfig(url, "hls", backoff_initial_s=0.05, backoff_max_s=0.1, read_timeout_s=2.0)
    source = PyAVSource(config)
    assert source.live and source.reconnect
    try:
        with SourceThread(source, ListSink(keep_planes=False)) as runner:
            assert runner.sink.wait_frames(25, 20), runner.sink.events  # > 10 frames per pass: it came back
            recon = runner.sink.wait_event(StreamState.RECONNECTING, 1)
            assert recon is not None and "stream ended" in recon.reason
            server.shutdown()
            server.server_close()
            refused = runner.sink.wait_for(
                lambda s: any(e.state == StreamState.RECONNECTING and "failed" in (e.reason or "") for e in s.events), 10)
            assert refused, runner.sink.events
        idx = [f.index for f in runner.sink.frames]
        assert idx == list(range(len(idx)))
    finally:
        server.server_close()
