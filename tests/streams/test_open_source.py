"""URI routing, V4L2 error paths and reconnect backoff."""
from __future__ import annotations

from pathlib import Path

import pytest

from amodal.errors import ConfigError
from amodal.streams.backoff import Backoff
from amodal.streams.base import SourceConfig
from amodal.streams.events import redact
from amodal.streams.open import open_source
from amodal.streams.pyav_source import PyAVSource
from amodal.streams.rtsp import RTSPSource
from amodal.streams.scanner import ScannerSource
from amodal.streams.synthetic import SyntheticSource
from amodal.streams.v4l2 import V4L2Source, parse_v4l2_uri
from amodal.types import StreamState
from tests.support.sink import SourceThread


def test_routing_by_scheme(video_mp4: Path, tmp_path: Path) -> None:
    cases = {
        "rtsp://127.0.0.1:8554/cam": (RTSPSource, True),
        "rtsps://cam.local/stream": (RTSPSource, True),
        f"scanner://{tmp_path}": (ScannerSource, True),
        "synthetic://shapes?w=64&h=48": (SyntheticSource, True),
        "/dev/video0": (V4L2Source, True),
        "v4l2:///dev/video2?video_size=640x480&framerate=30": (V4L2Source, True),
        str(video_mp4): (PyAVSource, False),
        f"file://{video_mp4}": (PyAVSource, False),
        "https://example.com/live/index.m3u8": (PyAVSource, True),
        "http://example.com/clip.mp4": (PyAVSource, False),
    }
    for uri, (cls, live) in cases.items():
        source = open_source(SourceConfig(uri, "s"))
        assert type(source) is cls, uri
        assert source.live is live, uri
        # a scanner is live (polls, reconnects) but not a camera: no bag is dropped, the folder buffers
        assert source.overflow == ("drop-oldest" if live and cls is not ScannerSource else "block"), uri
        assert source.queue_size == (2 if live else 16)


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("gopher://x/y", "unsupported URI scheme"),
        ("/no/such/file.mp4", "no such media file"),
        ("rtsp:///nohost", "no host"),
        ("http:///path", "no host"),
        ("scanner://", "no folder"),
        ("synthetic://unknown", "unknown synthetic scene"),
        ("v4l2:///dev/sda", "not a V4L2 device"),
        ("v4l2:///dev/video0?bogus=1", "unknown V4L2 options"),
    ],
)
def test_invalid_uris_raise_config_error_naming_them(uri: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_source(SourceConfig(uri, "s"))


def test_v4l2_uri_options() -> None:
    assert parse_v4l2_uri("v4l2:///dev/video3?video_size=320x240&input_format=mjpeg") == (
        "/dev/video3", {"video_size": "320x240", "input_format": "mjpeg"})
    with pytest.raises(ConfigError, match="WxH"):
        parse_v4l2_uri("v4l2:///dev/video3?video_size=big")


def test_missing_v4l2_device_reconnects_and_stops_promptly() -> None:
    config = SourceConfig("/dev/video97", "cam", backoff_initial_s=0.05, backoff_max_s=0.2)
    with SourceThread(V4L2Source(config)) as runner:
        ev = runner.sink.wait_event(StreamState.RECONNECTING, 5)
        assert ev is not None and "/dev/video97" in ev.reason and ev.attempt == 1
        assert runner.stop() < 1.0
    once = SourceThread(V4L2Source(SourceConfig("/dev/video97", "cam", reconnect=False))).start()
    assert once.join(5)
    assert once.sink.events[-1].state == StreamState.ERROR and once.sink.events[-1].fatal


def test_backoff_is_capped_exponential_with_jitter() -> None:
    backoff = Backoff(0.5, 4.0, seed=1)
    delays = [backoff.next_delay_s() for _ in range(8)]
    assert all(0.5 <= d <= 4.0 for d in delays)
    ceilings = [min(4.0, 0.5 * 2**k) for k in range(8)]
    assert all(max(0.5, c / 2) <= d <= c for d, c in zip(delays, ceilings))
    assert delays[-1] >= 2.0 and backoff.attempt == 8
    assert len({round(d, 6) for d in delays[4:]}) > 1  # jittered, not lock-step
    backoff.reset()
    assert backoff.next_delay_s() == 0.5 and backoff.attempt == 1
    with pytest.raises(ConfigError):
        Backoff(2.0, 1.0)


def test_redact_hides_credentials() -> None:
    assert redact("rtsp://admin:pw@10.0.0.2:554/s") == "rtsp://***@10.0.0.2:554/s"
    assert redact("/plain/path.mp4") == "/plain/path.mp4"
