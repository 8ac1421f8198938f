"""``QueryServer``: gallery search over one ZeroMQ REP socket, owned by one thread.

Requests and replies are single-part msgpack maps (docs/gallery.md)::

    {"v": 1, "op": "search", "embedding": <little-endian bytes>, "dtype": "f2"|"f4", "k": int}
    {"v": 1, "op": "search", "image": <JPEG or PNG bytes>, "k": int}     # needs an embedder
    {"v": 1, "op": "stats"}
    → {"v": 1, "ok": true, "matches": [{"global_id", "similarity", "sightings": [...]}, ...]}
    → {"v": 1, "ok": true, "stats": {...}}
    → {"v": 1, "ok": false, "error": "<what was wrong>"}

Every request gets exactly one reply; a malformed request gets an error reply and the server goes on.
Images are decoded with PIL (JPEG and PNG only, at most ``max_image_pixels``); nothing is unpickled.
"""
from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable

import msgpack
import numpy as np
import zmq

from amodal.engine.gallery.gallery import Gallery
from amodal.engine.gallery.identity import check_embedding
from amodal.engine.gallery.types import match_to_wire
from amodal.errors import PublishError, SchemaError

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
_DTYPES = {"f2": "<f2", "f4": "<f4"}
_IMAGE_FORMATS = ["JPEG", "PNG"]
_POLL_MS = 100

ImageEmbedder = Callable[[np.ndarray], np.ndarray]  # uint8[H, W, 3] RGB → float32[D]


def handle_request(payload: bytes, gallery: Gallery, embed_image: ImageEmbedder | None, *, k_max: int = 100,
                   max_image_pixels: int = 4096 * 4096) -> dict:
    """The reply map for one request payload (never raises for bad input: error replies instead)."""
    try:
        return {"v": PROTOCOL_VERSION, "ok": True, **_dispatch(payload, gallery, embed_image, k_max, max_image_pixels)}
    except SchemaError as exc:
        return {"v": PROTOCOL_VERSION, "ok": False, "error": str(exc)}


def _dispatch(payload: bytes, gallery: Gallery, embed_image: ImageEmbedder | None, k_max: int,
              max_image_pixels: int) -> dict:
    try:
        request = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise SchemaError(f"request is not msgpack ({type(exc).__name__}: {exc})") from exc
    if not isinstance(request, dict):
        raise SchemaError(f"request is a msgpack {type(request).__name__}, expected a map")
    if request.get("v") != PROTOCOL_VERSION:
        raise SchemaError(f"request version {request.get('v')!r}, this server speaks {PROTOCOL_VERSION}")
    op = request.get("op")
    if op == "stats":
        return {"stats": gallery.stats()}
    if op != "search":
        raise SchemaError(f"unknown op {op!r}; expected 'search' or 'stats'")
    k = request.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= k_max:
        raise SchemaError(f"k must be an int in [1, {k_max}], got {k!r}")
    has_embedding, has_image = request.get("embedding") is not None, request.get("image") is not None
    if has_embedding == has_image:
        raise SchemaError("a search needs exactly one of 'embedding' and 'image'")
    if has_embedding:
        query = _embedding_from_request(request, gallery.config.dim)
    else:
        if embed_image is None:
            raise SchemaError("image queries need an image embedder, and this server has none")
        query = _embed(request["image"], embed_image, gallery.config.dim, max_image_pixels)
    matches = gallery.search(query[None], k)[0]
    return {"matches": [match_to_wire(m) for m in matches]}


def _embedding_from_request(request: dict, dim: int) -> np.ndarray:
    data, dtype = request["embedding"], request.get("dtype")
    if not isinstance(data, bytes):
        raise SchemaError(f"embedding must be msgpack bin (raw little-endian floats), got {type(data).__name__}")
    if dtype not in _DTYPES:
        raise SchemaError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    itemsize = np.dtype(_DTYPES[dtype]).itemsize
    if len(data) != dim * itemsize:
        raise SchemaError(f"embedding is {len(data)} bytes; dimension {dim} in {dtype} needs {dim * itemsize}")
    return check_embedding(np.frombuffer(data, dtype=_DTYPES[dtype]).astype(np.float32), dim, "query")


def decode_image(data: bytes, max_image_pixels: int) -> np.ndarray:
    """uint8[H, W, 3] RGB from JPEG or PNG bytes; ``SchemaError`` for anything else or a too-large image."""
    from PIL import Image

    if not isinstance(data, bytes):
        raise SchemaError(f"image must be msgpack bin (JPEG or PNG bytes), got {type(data).__name__}")
    try:
        with Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS) as image:
            if image.width * image.height > max_image_pixels:
                raise SchemaError(f"image is {image.width}x{image.height}, more than {max_image_pixels} pixels")
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except SchemaError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError ...
        raise SchemaError(f"image cannot be decoded as JPEG or PNG ({type(exc).__name__}: {exc})") from exc
    return rgb


def _embed(data: bytes, embed_image: ImageEmbedder, dim: int, max_image_pixels: int) -> np.ndarray:
    rgb = decode_image(data, max_image_pixels)
    try:
        embedding = embed_image(rgb)
    except Exception as exc:  # the embedder's failure is this request's failure, not the server's
        log.exception("image embedder failed on a %s image", rgb.shape)
        raise SchemaError(f"the image embedder failed on a {rgb.shape[1]}x{rgb.shape[0]} image: "
                          f"{type(exc).__name__}: {exc}") from exc
    return check_embedding(embedding, dim, "embedder output")


class QueryServer:
    """>>> with QueryServer(gallery, "tcp://127.0.0.1:5560", embed_image=None) as server:
    ...     ...   # answers GalleryClient requests until the block ends"""

    def __init__(
        self,
        gallery: Gallery,
        endpoint: str,
        embed_image: ImageEmbedder | None = None,
        *,
        k_max: int = 100,
        max_image_pixels: int = 4096 * 4096,
        max_request_bytes: int = 64 << 20,
        linger_ms: int = 0,
        context: zmq.Context | None = None,
    ) -> None:
        self.gallery = gallery
        self.endpoint = endpoint
        self.embed_image = embed_image
        self.k_max = k_max
        self.max_image_pixels = max_image_pixels
        self.max_request_bytes = max_request_bytes
        self.linger_ms = linger_ms
        self._context = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: Exception | None = None
        self.bound_endpoint: str | None = None
        self.requests = 0
        self.errors = 0  # requests answered with an error reply

    def start(self, timeout_s: float = 5.0) -> "QueryServer":
        """Bind (in the server thread); ``PublishError`` when the endpoint cannot be bound."""
        self._thread = threading.Thread(target=self._run, name="amodal-gallery-query", daemon=True)
        self._thread.start()
        if not self._bound.wait(timeout_s):
            raise PublishError(f"gallery query server did not bind {self.endpoint} within {timeout_s} s")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise PublishError(f"gallery query server cannot bind {self.endpoint}: {self._error}") from self._error
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop answering and close the socket (the thread notices within ~0.1 s)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout_s)
        self._thread = None

    def __enter__(self) -> "QueryServer":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        sock = self._context.socket(zmq.REP)
        try:
            sock.setsockopt(zmq.LINGER, self.linger_ms)
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_request_bytes)
            sock.bind(self.endpoint)
            self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = exc
            sock.close(0)
            self._bound.set()
            return
        self._bound.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(_POLL_MS):
                    continue
                parts = sock.recv_multipart()
                sock.send(msgpack.packb(self._reply(parts), use_bin_type=True))
        finally:
            sock.close()

    def _reply(self, parts: list[bytes]) -> dict:
        self.requests += 1
        if len(parts) != 1:
            reply = {"v": PROTOCOL_VERSION, "ok": False, "error": f"expected a 1-part message, got {len(parts)} parts"}
        else:
            try:
                reply = handle_request(parts[0], self.gallery, self.embed_image, k_max=self.k_max,
                                       max_image_pixels=self.max_image_pixels)
            except Exception as exc:  # a bug must cost one request, never the server
                log.exception("gallery query failed")
                reply = {"v": PROTOCOL_VERSION, "ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
        if not reply["ok"]:
            self.errors += 1
        return reply
