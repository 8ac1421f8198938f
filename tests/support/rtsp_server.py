#!/usr/bin/python3
"""A loopback RTSP server for tests: GStreamer's gst-rtsp-server serving a live looping test pattern.

Run with the SYSTEM python (``/usr/bin/python3``, which has ``gi`` + GstRtspServer), not the venv:

    /usr/bin/python3 tests/support/rtsp_server.py --port 8554 --mount /cam0 --mount /cam1

Each mount serves ``videotestsrc is-live=true`` encoded by x264 (zerolatency, ultrafast, one keyframe per
``--gop`` frames) as RTP/H.264.  Prints ``READY <port>`` on stdout once listening; exits on SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PATTERNS = ("ball", "smpte", "snow", "circular", "pinwheel", "spokes", "gradient")


def _pipeline(width: int, height: int, fps: int, gop: int, pattern: str) -> str:
    return (
        f"( videotestsrc is-live=true pattern={pattern} "
        f"! video/x-raw,width={width},height={height},framerate={fps}/1 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate=400 threads=1 "
        f"! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port)")
    parser.add_argument("--mount", action="append", help="mount point, e.g. /cam0 (repeatable)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--gop", type=int, default=10, help="frames between keyframes")
    args = parser.parse_args(argv)
    mounts = args.mount or ["/cam0"]

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    points = server.get_mount_points()
    for i, mount in enumerate(mounts):
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(_pipeline(args.width, args.height, args.fps, args.gop, PATTERNS[i % len(PATTERNS)]))
        factory.set_shared(True)
        points.add_factory(mount if mount.startswith("/") else "/" + mount, factory)
    if server.attach(None) == 0:
        print(f"FAILED to listen on {args.host}:{args.port}", flush=True)
        return 1

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
