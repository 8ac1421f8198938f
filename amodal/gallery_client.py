"""``GalleryClient``: ask an engine's gallery query endpoint (REQ side of engine/gallery/query.py).

>>> with GalleryClient("tcp://127.0.0.1:5560", timeout_s=5.0) as client:
...     matches = client.search(embedding=vector, k=5)     # list[IdentityMatch], best first
...     matches = client.search(image=jpeg_bytes, k=5)      # the server embeds the image
...     client.stats()                                      # dict

Error replies raise ``GalleryQueryError``; a refusal for load (the server's image queue is full, or this
client is over its rate limit) raises its subclass ``GalleryBusyError`` carrying ``retry_after_s``.
"""
from __future__ import annotations

from pathlib import Path

import io

import msgpack
import numpy as np
import zmq

from amodal.security import secure_client

from amodal.engine.gallery.types import IdentityMatch, match_from_wire
from amodal.errors import EngineError

PROTOCOL_VERSION = 1


class GalleryQueryError(EngineError):
    """The gallery answered with an error, or with something that is not a reply."""


class GalleryTimeoutError(GalleryQueryError, TimeoutError):
    """No reply within ``timeout_s``."""


class GalleryBusyError(GalleryQueryError):
    """The server refused the request for load (its image queue is full, or this client is over its rate
    limit); the same request may succeed after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class GalleryClient:
    def __init__(self, endpoint: str, timeout_s: float = 5.0, context: zmq.Context | None = None, *,
                 server_public_key: str | Path | None = None, client_cert: str | Path | None = None) -> None:
        """``server_public_key``/``client_cert``: CURVE certificate files when the engine has security on."""
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._curve = (server_public_key, client_cert)

    def search(self, *, embedding: np.ndarray | None = None, image: bytes | np.ndarray | None = None,
               k: int = 10, dtype: str = "f4") -> list[IdentityMatch]:
        """Top-``k`` identities for ``embedding`` float[D] (sent as ``dtype`` ``f4`` or ``f2``) or ``image``
        (JPEG/PNG bytes, or uint8[H, W, 3] RGB sent as PNG)."""
        if (embedding is None) == (image is None):
            raise ValueError("search needs exactly one of embedding= and image=")
        request: dict = {"v": PROTOCOL_VERSION, "op": "search", "k": k}
        if embedding is not None:
            if dtype not in ("f2", "f4"):
                raise ValueError(f"dtype must be 'f2' or 'f4', got {dtype!r}")
            request["embedding"] = np.ascontiguousarray(np.asarray(embedding).reshape(-1), dtype=f"<{dtype}").tobytes()
            request["dtype"] = dtype
        else:
            request["image"] = image if isinstance(image, bytes) else _png_bytes(image)
        reply = self._request(request)
        try:
            return [match_from_wire(m) for m in reply["matches"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise GalleryQueryError(f"{self.endpoint}: malformed search reply ({type(exc).__name__}: {exc})") from exc

    def stats(self) -> dict:
        reply = self._request({"v": PROTOCOL_VERSION, "op": "stats"})
        if not isinstance(reply.get("stats"), dict):
            raise GalleryQueryError(f"{self.endpoint}: stats reply without a stats map")
        return reply["stats"]

    def request_raw(self, payload: bytes) -> dict:
        """Send ``payload`` as is and return the decoded reply map (error replies included, not raised)."""
        return self._exchange(payload)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None

    def __enter__(self) -> "GalleryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ internals
    def _request(self, request: dict) -> dict:
        reply = self._exchange(msgpack.packb(request, use_bin_type=True))
        if reply.get("ok") is not True:
            message = f"{self.endpoint}: {reply.get('error', 'error reply without a message')}"
            retry_after_s = reply.get("retry_after_s")
            if isinstance(retry_after_s, (int, float)) and not isinstance(retry_after_s, bool):
                raise GalleryBusyError(message, float(retry_after_s))
            raise GalleryQueryError(message)
        return reply

    def _exchange(self, payload: bytes) -> dict:
        if self._socket is None:
            self._socket = self._context.socket(zmq.REQ)
            self._socket.setsockopt(zmq.LINGER, 0)
            secure_client(self._socket, *self._curve)
            self._socket.connect(self.endpoint)
        self._socket.send(payload)
        if not self._socket.poll(int(self.timeout_s * 1000)):
            self.close()  # a REQ socket waiting for a lost reply cannot send again: start a fresh one
            raise GalleryTimeoutError(f"{self.endpoint}: no reply within {self.timeout_s} s")
        data = self._socket.recv()
        try:
            reply = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            raise GalleryQueryError(f"{self.endpoint}: reply is not msgpack ({type(exc).__name__})") from exc
        if not isinstance(reply, dict) or reply.get("v") != PROTOCOL_VERSION:
            raise GalleryQueryError(f"{self.endpoint}: reply is not a version-{PROTOCOL_VERSION} map")
        return reply


def _png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    array = np.asarray(rgb)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image arrays must be uint8[H, W, 3] RGB, got {array.dtype}{list(array.shape)}")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
