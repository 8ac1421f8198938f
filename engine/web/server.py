"""uvicorn serving the live view's app on its own thread and event loop.

The listening socket is bound here, before the server thread starts, so a port in use or an address this host
does not have is a ``ConfigError`` at start (not a log line from another thread), and port 0 picks a free port.
On stop, MJPEG responses end by themselves (the state is closing); a viewer that stopped reading is cut off
after ``shutdown_timeout_s``.
"""
from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from amodal.errors import ConfigError, EngineError

log = logging.getLogger(__name__)


class HttpServer:
    def __init__(self, app, host: str, port: int, *, shutdown_timeout_s: float = 2.0) -> None:
        self.app, self.host, self.port = app, host, port
        self.shutdown_timeout_s = shutdown_timeout_s
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"--http {self.host}:{self.port}: cannot listen there: {exc.strerror or exc}") from exc
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=int(max(1, self.shutdown_timeout_s)))
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="amodal-web-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"the live view's HTTP server did not start on {self.url}")
            time.sleep(0.01)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.shutdown_timeout_s + 5.0)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(2.0)
        self._server = self._thread = None
