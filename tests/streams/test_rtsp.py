"""RTSP against a real loopback GStreamer server: frames flow, RTCP capture time, reconnection after the
server dies and comes back on the same port (while other sources keep flowing), timeouts, prompt stop."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from amodal.streams.base import SourceConfig
from amodal.streams.pyav_source import PyAVSource
from amodal.streams.rtsp import RTSPSource, rtsp_options
from amodal.types import StreamState
from tests.support.rtsp import RtspServer, free_port
from tests.support.sink import ListSink, SourceThread


def _rtsp(url: str, stream_id: str, **kw: object) -> RTSPSource:
    settings = {"open_timeout_s": 3.0, "read_timeout_s": 1.0, "backoff_initial_s": 0.1, "backoff_max_s": 0.5}
    settings.update(kw)
    return RTSPSource(SourceConfig(url, stream_id, **settings))  # type: ignore[arg-type]


def test_rtsp_options_use_tcp_and_ffmpeg8_timeout_names() -> None:
    opts = rtsp_options(SourceConfig("rtsp://h/x", "a", read_timeout_s=2.5))
    assert opts["rtsp_transport"] == "tcp" and opts["timeout"] == "2500000"
    assert opts["fflags"] == "nobuffer" and opts["flags"] == "low_delay"
    assert "stimeout" not in opts  # removed in FFmpeg 5: silently ignored by av 18's FFmpeg 8


def test_rtsp_frames_and_rtcp_capture_time(rtsp_server: RtspServer) -> None:
    with SourceThread(_rtsp(rtsp_server.url("/cam0"), "cam0"), ListSink(keep_planes=False)) as runner:
        sink = runner.sink
        # the first RTCP sender report arrives within a few seconds; from then on capture = start + pts
        def rtcp_clock(s: ListSink) -> bool:
            tail = s.frames[-10:]
            return len(tail) == 10 and len({f.capture_time_ns - round(f.pts_s * 1e9) for f in tail}) == 1

        assert sink.wait_for(rtcp_clock, 15), "capture times never followed the RTCP clock"
        last = sink.frames[-1]
        assert abs(last.capture_time_ns - time.time_ns()) < 2e9  # a camera clock on this machine
        assert sink.states()[:2] == [StreamState.CONNECTING, StreamState.UP]
        assert last.pixel_format == "yuv420p" and (last.width, last.height) == (320, 240)
        idx = [f.index for f in sink.frames]
        assert idx == list(range(len(idx)))


def test_rtsp_reconnects_when_server_restarts_on_same_port(rtsp_server: RtspServer, video_mp4: Path) -> None:
    cams = [SourceThread(_rtsp(rtsp_server.url(m), m.strip("/")), ListSink(keep_planes=False)).start()
            for m in ("/cam0", "/cam1")]
    file_source = PyAVSource(SourceConfig(str(video_mp4), "file", realtime=True, loop=True))
    other = SourceThread(file_source, ListSink(keep_planes=False)).start()
    try:
        for cam in cams:
            assert cam.sink.wait_frames(10, 15)
        n_events = [len(c.sink.events) for c in cams]
        n_frames = [c.sink.frame_count() for c in cams]
        other_before = other.sink.frame_count()
        rtsp_server.kill()
        for cam, after in zip(cams, n_events):
            ev = cam.sink.wait_event(StreamState.RECONNECTING, 10, after=after)
            assert ev is not None and ev.attempt >= 1 and ev.reason and "cam" in ev.reason
        time.sleep(1.0)  # the cameras stay down a while, retrying
        assert other.sink.wait_frames(other_before + 15, 5), "the file source stalled while the cameras were down"
        rtsp_server.start()
        for cam, after, frames in zip(cams, n_events, n_frames):
            up = cam.sink.wait_event(StreamState.UP, 20, after=after)
            assert up is not None and up.attempt >= 1
            assert cam.sink.wait_frames(frames + 10, 15), "frames did not flow again after reconnecting"
            idx = [f.index for f in cam.sink.frames]
            assert idx == list(range(len(idx)))  # indexes continue across the reconnect
            states = [e.state for e in cam.sink.events[after:]]
            assert StreamState.ERROR not in states and StreamState.ENDED not in states
    finally:
        for runner in (*cams, other):
            assert runner.stop() < 3.0


def test_closed_port_reconnects_quickly_and_stops_promptly() -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/cam0"
    with SourceThread(_rtsp(url, "dead")) as runner:
        ev = runner.sink.wait_for(lambda s: sum(e.state == StreamState.RECONNECTING for e in s.events) >= 3, 5)
        assert ev, runner.sink.events
        recon = [e for e in runner.sink.events if e.state == StreamState.RECONNECTING]
        assert [e.attempt for e in recon[:3]] == [1, 2, 3]
        assert "refused" in recon[0].reason.lower() and url in recon[0].reason
        assert runner.stop() < 1.5
    assert runner.sink.events[-1].state == StreamState.ENDED
    assert not runner.sink.frames


def test_silent_peer_times_out() -> None:
    """A server that accepts TCP and never answers: the open timeout turns it into RECONNECTING."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    closing = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not closing.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"rtsp://127.0.0.1:{listener.getsockname()[1]}/cam0"
    try:
        started = time.monotonic()
        with SourceThread(_rtsp(url, "silent", open_timeout_s=0.5, read_timeout_s=0.5)) as runner:
            ev = runner.sink.wait_event(StreamState.RECONNECTING, 5)
            assert ev is not None and "timed out" in ev.reason, runner.sink.events
            assert time.monotonic() - started < 3.0
            assert runner.stop() < 2.0
    finally:
        closing.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        listener.close()


def test_no_reconnect_means_fatal_error() -> None:
    url = f"rtsp://user:secret@127.0.0.1:{free_port()}/cam0"
    runner = SourceThread(_rtsp(url, "once", reconnect=False)).start()
    assert runner.join(5)
    last = runner.sink.events[-1]
    assert last.state == StreamState.ERROR and last.fatal
    assert "secret" not in last.reason and "***@" in last.reason


def test_rtsp_source_rejects_other_uris() -> None:
    from amodal.errors import ConfigError

    with pytest.raises(ConfigError, match="not an RTSP URI"):
        RTSPSource(SourceConfig("http://h/x", "a"))
