"""uvicorn serving the live view's app on its own thread and event loop.

The listening socket is bound here, before the server thread starts, so a port in use or an address this host
does not have is a ``ConfigError`` at start (not a log line from another thread), and port 0 picks a free port.
Each connection's kernel send buffer is fixed at ``SEND_BUFFER_BYTES``.  On stop, MJPEG responses end by
themselves (the state is closing); the connections still open after ``STOP_GRACE_S`` (viewers that stopped
reading, blocked on a full send buffer) are cut.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import uvicorn

from amodal.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

#: per connection (Linux doubles it): 2-4 pictures of 640x480 MJPEG; ~1.3 MB/s per viewer at 100 ms round trip
SEND_BUFFER_BYTES = 64 * 1024
#: at stop, how long open responses may take to end before the connections left (stalled viewers) are cut
STOP_GRACE_S = 0.5


class HttpServer:
    def __init__(self, app, host: str, port: int, *, shutdown_timeout_s: float = 2.0) -> None:
        self.app, self.host, self.port = app, host, port
        self.shutdown_timeout_s = shutdown_timeout_s
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it (Linux): a fixed send buffer instead of one autotuned up to megabytes, so
        # a viewer that stops reading blocks its response after a few pictures and then costs nothing
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
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
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(sock),), name="amodal-web-http",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"the live view's HTTP server did not start on {self.url}")
            time.sleep(0.01)

    async def _serve(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        await self._server.serve(sockets=[sock])

    def _abort_connections(self) -> None:
        """(On the server's loop) cut every open connection: what is left at stop are viewers that stopped reading."""
        for connection in list(self._server.server_state.connections):
            connection.transport.abort()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_GRACE_S)  # requests in progress finish; MJPEG responses end (the state is closing)
            if self._thread.is_alive() and self._loop is not None and not self._loop.is_closed():
                try:
                    self._loop.call_soon_threadsafe(self._abort_connections)
                except RuntimeError:  # the loop closed in between
                    pass
            self._thread.join(self.shutdown_timeout_s + 5.0)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(2.0)
        self._server = self._thread = self._loop = None
