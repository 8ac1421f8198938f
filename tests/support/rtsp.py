"""Start/stop/restart the loopback GStreamer RTSP server (``rtsp_server.py``) from tests."""
from __future__ import annotations

import atexit
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def gst_rtsp_available() -> bool:
    """Whether the system python has GStreamer's RTSP server and x264enc (tests skip otherwise)."""
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = ("import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0');"
             "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
             "assert Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('rtph264pay')")
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30).returncode == 0


class RtspServer:
    """One server process on 127.0.0.1 serving ``mounts`` (live test patterns, H.264 over RTP)."""

    def __init__(self, mounts: tuple[str, ...] = ("/cam0",), *, port: int | None = None, width: int = 320,
                 height: int = 240, fps: int = 25, gop: int = 10) -> None:
        self.mounts = mounts
        self.port = port if port is not None else free_port()
        self.args = ["--width", str(width), "--height", str(height), "--fps", str(fps), "--gop", str(gop)]
        self.proc: subprocess.Popen | None = None

    def url(self, mount: str | None = None) -> str:
        mount = mount or self.mounts[0]
        return f"rtsp://127.0.0.1:{self.port}{mount if mount.startswith('/') else '/' + mount}"

    def start(self, timeout_s: float = 15.0) -> "RtspServer":
        """Start and wait for READY; retries while the port is still held by a previous instance."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port), *self.args]
            for mount in self.mounts:
                cmd += ["--mount", mount]
            log = tempfile.TemporaryFile(mode="w+")
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
            atexit.register(self._terminate)
            line = self._read_line(deadline)
            if line.startswith("READY"):
                log.close()
                return self
            log.seek(0)
            last = f"{line} {log.read()[-2000:]}"
            log.close()
            self._terminate()
            time.sleep(0.2)
        raise RuntimeError(f"RTSP server did not start on port {self.port}: {last!r}")

    def _read_line(self, deadline: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=0.1):
                    line = self.proc.stdout.readline()
                    if not line or line.startswith(("READY", "FAILED")):
                        return line.strip()
                elif self.proc.poll() is not None:
                    return f"exited with {self.proc.returncode}"
        return "timed out waiting for READY"

    def _terminate(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def kill(self) -> None:
        """Hard-kill the server (a camera losing power): clients see the TCP connection drop."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._terminate()

    def stop(self) -> None:
        self._terminate()

    def restart(self, timeout_s: float = 15.0) -> "RtspServer":
        """Stop and start again on the same port."""
        self.stop()
        return self.start(timeout_s)

    def __enter__(self) -> "RtspServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
