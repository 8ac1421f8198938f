"""Fixtures for stream tests; the helpers live in ``tests/support`` (importable as ``tests.support``)."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tests.support.media import make_video  # noqa: E402
from tests.support.rtsp import RtspServer, gst_rtsp_available  # noqa: E402


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def video_mp4(media_dir: Path) -> Path:
    """2 s of testsrc2 at 25 fps, 320x240, H.264 with B-frames, +faststart mp4 (50 frames)."""
    return make_video(media_dir / "clip.mp4", seconds=2.0, fps=25, size=(320, 240), gop=25)


@pytest.fixture(scope="session")
def video_mkv(media_dir: Path) -> Path:
    """Same clip in Matroska (duration in the header, no frame count)."""
    return make_video(media_dir / "clip.mkv", seconds=2.0, fps=25, size=(320, 240), gop=25)


@pytest.fixture(scope="session")
def rtsp_available() -> bool:
    return gst_rtsp_available()


@pytest.fixture
def rtsp_server(rtsp_available: bool) -> Iterator[RtspServer]:
    """A fresh loopback RTSP server with mounts /cam0 and /cam1 on a free port (stopped afterwards)."""
    if not rtsp_available:
        message = "GStreamer RTSP server (system python3 + gi + GstRtspServer + x264enc) not available"
        if os.environ.get("CI"):
            pytest.fail(message + " — .ci/system-deps.sh installs it")
        pytest.skip(message)
    server = RtspServer(("/cam0", "/cam1")).start()
    try:
        yield server
    finally:
        server.stop()
