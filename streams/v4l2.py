"""Local cameras through Video4Linux2 (``/dev/videoN`` or ``v4l2:///dev/videoN?video_size=640x480&...``).

Opened with PyAV's ``v4l2`` input format; query parameters ``video_size`` (WxH), ``framerate`` and
``input_format`` (e.g. ``mjpeg``, ``yuyv422``) are passed to FFmpeg.  Live: drop-oldest, and reconnects
(backoff) when the device is missing or disappears, e.g. an unplugged USB camera.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

from amodal.errors import ConfigError
from amodal.streams.base import SourceConfig
from amodal.streams.pyav_source import PyAVSource

V4L2_OPTIONS = ("video_size", "framerate", "input_format")
_DEVICE = re.compile(r"^/dev/video\d+$")


def parse_v4l2_uri(uri: str) -> tuple[str, dict[str, str]]:
    """``(device path, FFmpeg options)``; raises ``ConfigError`` for anything but ``/dev/videoN``."""
    if uri.startswith("v4l2://"):
        parts = urlsplit(uri)
        device = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
    else:
        device, query = uri, {}
    if not _DEVICE.match(device):
        raise ConfigError(f"not a V4L2 device (expected /dev/videoN): {uri!r}")
    unknown = sorted(set(query) - set(V4L2_OPTIONS))
    if unknown:
        raise ConfigError(f"{uri!r}: unknown V4L2 options {unknown}; allowed: {list(V4L2_OPTIONS)}")
    if "video_size" in query and not re.fullmatch(r"\d+x\d+", query["video_size"]):
        raise ConfigError(f"{uri!r}: video_size must be WxH, got {query['video_size']!r}")
    return device, query


class V4L2Source(PyAVSource):
    """A V4L2 capture device."""

    def __init__(self, config: SourceConfig) -> None:
        device, options = parse_v4l2_uri(config.uri)
        super().__init__(config, url=device, live=True, format_name="v4l2", options=options)
