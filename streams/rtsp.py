"""RTSP/RTSPS cameras: TCP interleaved transport, low-latency demuxing, reconnection forever.

FFmpeg options (FFmpeg 8.1 as bundled with av 18.1; checked against a silent peer): ``timeout`` is the
RTSP socket I/O timeout in microseconds and works; ``stimeout`` (removed in FFmpeg 5) and ``rw_timeout``
(a protocol option the RTSP demuxer does not forward) are silently ignored, so they are not set.  PyAV's
``av.open(timeout=(open_s, read_s))`` interrupt callback bounds opening and each packet read as well.

Capture time: FFmpeg sets ``AVFormatContext.start_time_realtime`` (av 18: ``container.start_time_realtime``,
microseconds since the Unix epoch) from the first RTCP sender report, such that the wall clock of a frame
is ``start_time_realtime + pts``.  Until the first sender report arrives (GStreamer sends one within a
few seconds) it is unknown and frames carry the receipt wall clock instead.
"""
from __future__ import annotations

import av

from amodal.errors import ConfigError
from amodal.streams.base import SourceConfig
from amodal.streams.pyav_source import PyAVSource

#: demuxer probing knobs: enough to find SPS/PPS in a camera stream, small enough to start fast
PROBE_SIZE_BYTES = 65536
ANALYZE_DURATION_US = 200_000


def rtsp_options(config: SourceConfig) -> dict[str, str]:
    """FFmpeg input options for a low-latency TCP RTSP session."""
    return {
        "rtsp_transport": "tcp",
        "timeout": str(int(config.read_timeout_s * 1_000_000)),
        "fflags": "nobuffer",
        "flags": "low_delay",
        "probesize": str(PROBE_SIZE_BYTES),
        "analyzeduration": str(ANALYZE_DURATION_US),
    }


class RTSPSource(PyAVSource):
    """A live RTSP camera; reconnects with capped exponential backoff until ``stop``."""

    def __init__(self, config: SourceConfig) -> None:
        if not config.uri.lower().startswith(("rtsp://", "rtsps://")):
            raise ConfigError(f"source {config.stream_id}: not an RTSP URI: {config.uri!r}")
        super().__init__(config, url=config.uri, live=True, options=rtsp_options(config))

    def capture_time_ns(self, container: av.container.InputContainer, pts_s: float | None, receipt_ns: int) -> int:
        """RTCP-derived wall clock when the camera has sent a sender report, else the receipt clock."""
        start_us = container.start_time_realtime
        if start_us is None or start_us <= 0 or pts_s is None:
            return receipt_ns
        return int(start_us) * 1000 + int(round(pts_s * 1e9))
