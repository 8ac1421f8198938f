"""Pick the source for a URI.

==========================================  ==================================================
``rtsp://``, ``rtsps://``                   ``RTSPSource`` (live, TCP, reconnects)
``scanner://DIR[?settle_s=..]``             ``ScannerSource`` (hot folder of images, live)
``synthetic://NAME?w=&h=&fps=&objects=..``  ``SyntheticSource`` (rendered scene, live)
``/dev/videoN``, ``v4l2:///dev/videoN``     ``V4L2Source`` (local camera, live)
paths, ``file://``, http(s), HLS, rtmp ...  ``PyAVSource`` (files; network streams live)
==========================================  ==================================================
"""
from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from amodal.errors import ConfigError
from amodal.streams.base import Source, SourceConfig
from amodal.streams.events import redact

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def open_source(config: SourceConfig) -> Source:
    """The ``Source`` for ``config.uri``; raises ``ConfigError`` naming the URI when it is not usable."""
    uri = config.uri.strip()
    match = _SCHEME.match(uri)
    scheme = match.group(1).lower() if match else ""
    if scheme in ("rtsp", "rtsps"):
        from amodal.streams.rtsp import RTSPSource

        if not urlsplit(uri).hostname:
            raise ConfigError(f"source {config.stream_id}: RTSP URI has no host: {redact(uri)!r}")
        return RTSPSource(config)
    if scheme == "scanner":
        from amodal.streams.scanner import ScannerSource

        return ScannerSource(config)
    if scheme == "synthetic":
        from amodal.streams.synthetic import SyntheticSource

        return SyntheticSource(config)
    if scheme == "v4l2" or (not scheme and uri.startswith("/dev/video")):
        from amodal.streams.v4l2 import V4L2Source

        return V4L2Source(config)

    from amodal.streams.pyav_source import PYAV_SCHEMES, PyAVSource

    if scheme and scheme not in PYAV_SCHEMES:
        raise ConfigError(
            f"source {config.stream_id}: unsupported URI scheme {scheme!r} in {redact(uri)!r}; expected rtsp, "
            f"rtsps, scanner, synthetic, v4l2 or one of {sorted(PYAV_SCHEMES)}"
        )
    if not scheme or scheme == "file":
        path = uri[len("file://"):] if scheme == "file" else uri
        if not os.path.isfile(path):
            raise ConfigError(f"source {config.stream_id}: no such media file: {uri!r}")
    elif not urlsplit(uri).hostname:
        raise ConfigError(f"source {config.stream_id}: network URI has no host: {redact(uri)!r}")
    return PyAVSource(config)
