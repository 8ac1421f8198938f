"""``QueryServer``: gallery search over one ZeroMQ ROUTER socket, protocol version 1 (docs/gallery.md).

Requests and replies are single-part msgpack maps; REQ clients talk to the ROUTER unchanged::

    {"v": 1, "op": "search", "embedding": <little-endian bytes>, "dtype": "f2"|"f4", "k": int}
    {"v": 1, "op": "search", "image": <JPEG or PNG bytes>, "k": int}     # needs an embedder
    {"v": 1, "op": "stats"}
    → {"v": 1, "ok": true, "matches": [{"global_id", "similarity", "sightings": [...]}, ...]}
    → {"v": 1, "ok": true, "stats": {...}}
    → {"v": 1, "ok": false, "error": "<what was wrong>"[, "retry_after_s": float]}

Threads and sockets::

    clients ──REQ/DEALER──▶ ROUTER ◀── socket thread: rate limits, size and header checks, stats and
                                     │   embedding searches answered inline, image searches queued
                                     ├─▶ queue.Queue(image_queue_size) ─▶ image_workers threads
                                     └── PULL (inproc) ◀── one PUSH per worker: the finished replies

The socket thread owns the ROUTER and the PULL; each worker owns its PUSH.  The socket thread never
decodes an image (it reads only the PNG IHDR / JPEG SOF size fields), so a slow image never holds up a
``stats``; workers read the header again with PIL, check it, and only then decode.  Every request gets
exactly one reply: a full queue or an empty rate bucket is an immediate error reply with
``retry_after_s``; an image whose header says it has more than ``max_image_pixels`` is refused before
any pixel is decoded.  Nothing is unpickled.
"""
from __future__ import annotations

import contextlib
import io
import logging
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgpack
import numpy as np
import zmq

from amodal.engine.gallery.config import QueryLimits
from amodal.engine.gallery.gallery import Gallery
from amodal.engine.gallery.identity import check_embedding
from amodal.engine.gallery.rate_limit import RateLimiter
from amodal.engine.gallery.types import match_to_wire
from amodal.errors import PublishError, SchemaError
from amodal.security import SecuritySettings, secure_server

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
_DTYPES = {"f2": "<f2", "f4": "<f4"}
_IMAGE_FORMATS = ["JPEG", "PNG"]
_POLL_MS = 100
_MAX_MESSAGES_PER_TURN = 64  # requests taken off the ROUTER before finished image replies are forwarded again
_RESULT_HEADER = struct.Struct("<?d")  # worker → socket thread: ok, service time in seconds

ImageEmbedder = Callable[[np.ndarray], np.ndarray]  # uint8[H, W, 3] RGB → float32[D]


# ------------------------------------------------------------------------------------------ requests
@dataclass(frozen=True, slots=True)
class StatsRequest:
    """``{"op": "stats"}``."""


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """A validated search: ``query`` float32[D] for an embedding search, else ``image`` (JPEG/PNG bytes
    with a PNG/JPEG signature and, where its size fields were found, at most ``max_image_pixels``)."""

    k: int
    query: np.ndarray | None = None
    image: bytes | None = None


def parse_request(payload: bytes | memoryview, dim: int, limits: QueryLimits) -> StatsRequest | SearchRequest:
    """The request in ``payload``; ``SchemaError`` naming what is wrong.  Cheap enough for the
    socket thread: an image is only checked by its signature and the size fields of its PNG IHDR or JPEG
    SOF (``check_image_signature``); PIL reads it later, in a worker."""
    if len(payload) > limits.max_request_bytes:
        raise SchemaError(f"request is {len(payload)} bytes, more than max_request_bytes={limits.max_request_bytes}")
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
        return StatsRequest()
    if op != "search":
        raise SchemaError(f"unknown op {op!r}; expected 'search' or 'stats'")
    k = request.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= limits.k_max:
        raise SchemaError(f"k must be an int in [1, {limits.k_max}], got {k!r}")
    has_embedding, has_image = request.get("embedding") is not None, request.get("image") is not None
    if has_embedding == has_image:
        raise SchemaError("a search needs exactly one of 'embedding' and 'image'")
    if has_embedding:
        return SearchRequest(k, query=_embedding_from_request(request, dim, limits.max_embedding_norm))
    image = request["image"]
    check_image_signature(image, limits.max_image_pixels)
    return SearchRequest(k, image=image)


def _embedding_from_request(request: dict, dim: int, max_norm: float) -> np.ndarray:
    data, dtype = request["embedding"], request.get("dtype")
    if not isinstance(data, bytes):
        raise SchemaError(f"embedding must be msgpack bin (raw little-endian floats), got {type(data).__name__}")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise SchemaError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r:.60}")
    itemsize = np.dtype(_DTYPES[dtype]).itemsize
    if len(data) != dim * itemsize:
        raise SchemaError(f"embedding is {len(data)} bytes; dimension {dim} in {dtype} needs {dim * itemsize}")
    return check_query_embedding(np.frombuffer(data, dtype=_DTYPES[dtype]), dim, max_norm, "query")


def check_query_embedding(embedding, dim: int, max_norm: float, where: str) -> np.ndarray:
    """float32[D] of D finite values with an L2 norm in (0, ``max_norm``]; ``SchemaError`` otherwise.
    The norm is taken in float64, so float32 values near 3e38 cannot overflow it to inf."""
    with np.errstate(over="ignore"):  # check_embedding's float32 norm may overflow; ours below cannot
        array = check_embedding(embedding, dim, where)
    norm = float(np.linalg.norm(array.astype(np.float64)))
    if not norm <= max_norm:
        raise SchemaError(f"{where}: embedding has L2 norm {norm:.4g}, more than max_embedding_norm={max_norm:g}")
    return array


# -------------------------------------------------------------------------------------------- images
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
_JPEG_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_MAX_SEGMENTS = 256  # segments scanned for the SOF; a JPEG with more is left to PIL (in a worker)


def check_image_signature(data: bytes, max_image_pixels: int) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's SOF segment, reading a few bytes by offset (no
    PIL, no inflate: cheap enough for the socket thread), or None when the SOF was not found quickly.
    ``SchemaError`` for bytes that are neither PNG nor JPEG, and for more than ``max_image_pixels``."""
    if not isinstance(data, bytes):
        raise SchemaError(f"image must be msgpack bin (JPEG or PNG bytes), got {type(data).__name__}")
    if data.startswith(_PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise SchemaError("image cannot be decoded as JPEG or PNG (a PNG without its IHDR chunk)")
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    elif data.startswith(_JPEG_SOI):
        size = _jpeg_sof_size(data)
        if size is None:
            return None
        width, height = size
    else:
        raise SchemaError(f"image cannot be decoded as JPEG or PNG (it starts with {data[:8]!r})")
    _check_pixels(width, height, max_image_pixels)
    return width, height


def _jpeg_sof_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    for _ in range(_JPEG_MAX_SEGMENTS):  # bounded: a crafted file cannot make the socket thread loop long
        if i + 4 > len(data) or data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte before the marker
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in _JPEG_SOF_MARKERS:
            if i + 9 > len(data):
                return None
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def image_header(data: bytes, max_image_pixels: int) -> tuple[str, int, int]:
    """``(format, width, height)`` of JPEG or PNG bytes read by PIL from the header alone (no pixel is
    decoded); ``SchemaError`` for anything else or an image of more than ``max_image_pixels``."""
    with _open_image(data, max_image_pixels) as image:
        return str(image.format), int(image.width), int(image.height)


def decode_image(data: bytes, max_image_pixels: int) -> np.ndarray:
    """uint8[H, W, 3] RGB from JPEG or PNG bytes; ``SchemaError`` for anything else, and for an image of
    more than ``max_image_pixels`` before it is decoded."""
    with _open_image(data, max_image_pixels) as image:
        try:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError ... for corrupt data
            raise SchemaError(f"image cannot be decoded as JPEG or PNG ({type(exc).__name__}: {exc})") from exc


@contextlib.contextmanager
def _open_image(data: bytes, max_image_pixels: int) -> Iterator:
    """The PIL image of ``data``, opened lazily (header only) and checked against ``max_image_pixels``."""
    from PIL import Image

    if not isinstance(data, bytes):
        raise SchemaError(f"image must be msgpack bin (JPEG or PNG bytes), got {type(data).__name__}")
    try:
        image = Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:  # PIL's own guard (> 2 x Image.MAX_IMAGE_PIXELS)
        raise SchemaError(f"image is too large: {exc}") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError ... for what it cannot read
        raise SchemaError(f"image cannot be decoded as JPEG or PNG ({type(exc).__name__}: {exc})") from exc
    with image:
        _check_pixels(image.width, image.height, max_image_pixels)
        yield image


def _check_pixels(width: int, height: int, max_image_pixels: int) -> None:
    if width * height > max_image_pixels:
        raise SchemaError(f"image is {width}x{height} = {width * height} pixels, more than "
                          f"max_image_pixels={max_image_pixels}; refused before decoding")


def embed_image_query(data: bytes, embed_image: ImageEmbedder, dim: int, limits: QueryLimits) -> np.ndarray:
    """float32[D] of JPEG/PNG bytes: decoded (within ``limits``), embedded, checked like a query embedding."""
    rgb = decode_image(data, limits.max_image_pixels)
    try:
        embedding = embed_image(rgb)
    except Exception as exc:  # the embedder's failure is this request's failure, not the server's
        log.exception("image embedder failed on a %s image", rgb.shape)
        raise SchemaError(f"the image embedder failed on a {rgb.shape[1]}x{rgb.shape[0]} image: "
                          f"{type(exc).__name__}: {exc}") from exc
    return check_query_embedding(embedding, dim, limits.max_embedding_norm, "embedder output")


# ------------------------------------------------------------------------------------------- replies
def error_reply(message: str, retry_after_s: float | None = None) -> dict:
    reply = {"v": PROTOCOL_VERSION, "ok": False, "error": message}
    if retry_after_s is not None:
        reply["retry_after_s"] = round(float(retry_after_s), 3)
    return reply


def search_reply(gallery: Gallery, query: np.ndarray, k: int) -> dict:
    matches = gallery.search(query[None], k)[0]
    return {"v": PROTOCOL_VERSION, "ok": True, "matches": [match_to_wire(m) for m in matches]}


def handle_request(payload: bytes, gallery: Gallery, embed_image: ImageEmbedder | None, *,
                   limits: QueryLimits | None = None) -> dict:
    """The reply map for one request, everything done in the calling thread (an image too).  Never raises
    for bad input: error replies instead.  ``QueryServer`` splits the same steps across its threads."""
    limits = limits or QueryLimits()
    try:
        request = parse_request(payload, gallery.config.dim, limits)
        if isinstance(request, StatsRequest):
            return {"v": PROTOCOL_VERSION, "ok": True, "stats": gallery.stats()}
        if request.image is not None:
            if embed_image is None:
                raise SchemaError("image queries need an image embedder, and this server has none")
            return search_reply(gallery, embed_image_query(request.image, embed_image, gallery.config.dim, limits),
                                request.k)
        return search_reply(gallery, request.query, request.k)
    except SchemaError as exc:
        return error_reply(str(exc))


@dataclass(frozen=True, slots=True)
class _ImageJob:
    envelope: list[bytes]  # the ROUTER's routing frames, sent back with the reply
    image: bytes
    k: int


def _split_envelope(parts: list) -> tuple[list, list]:
    """(routing envelope, body) of a ROUTER message: REQ puts an empty delimiter after the routing id;
    a DEALER may send the body right after it."""
    for i in range(1, len(parts)):
        if len(parts[i]) == 0:
            return parts[: i + 1], parts[i + 1 :]
    return parts[:1], parts[1:]


# ---------------------------------------------------------------------------------------------- server
class QueryServer:
    """>>> with QueryServer(gallery, "tcp://127.0.0.1:5560", embed_image=embedder, limits=QueryLimits()) as server:
    ...     ...   # answers GalleryClient requests until the block ends

    Counters (read from any thread; written by the socket thread only): ``requests``, ``errors`` (error
    replies of every kind), ``rate_limited``, ``busy`` (refused for a full image queue)."""

    def __init__(
        self,
        gallery: Gallery,
        endpoint: str,
        embed_image: ImageEmbedder | None = None,
        *,
        limits: QueryLimits | None = None,
        linger_ms: int = 0,
        security: SecuritySettings | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.gallery = gallery
        self.endpoint = endpoint
        self.embed_image = embed_image
        self.limits = limits or QueryLimits()
        if not isinstance(self.limits, QueryLimits):
            raise TypeError(f"limits must be a QueryLimits, got {type(self.limits).__name__}")
        self.linger_ms = linger_ms
        self._context = context or zmq.Context.instance()
        self.security = security  # CURVE: only authorized clients (amodal.security)
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self._jobs: queue.Queue[_ImageJob] = queue.Queue(maxsize=self.limits.image_queue_size)
        self._results_endpoint = f"inproc://amodal-gallery-query-results-{id(self):x}"
        self._error: Exception | None = None
        self.bound_endpoint: str | None = None
        self.requests = 0
        self.errors = 0
        self.rate_limited = 0
        self.busy = 0
        self.images_in_flight = 0  # queued or being decoded/embedded
        self._drain_timeout_s = 5.0  # close(): how long searches already in a worker may still take
        self._image_service_s = 0.1  # moving average of a worker's time per image (for retry_after_s)
        self._request_limiter = RateLimiter(self.limits.client_requests_per_s, self.limits.client_request_burst)
        self._image_limiter = RateLimiter(self.limits.client_images_per_s, self.limits.client_image_burst)

    def start(self, timeout_s: float = 5.0) -> "QueryServer":
        """Bind (in the socket thread) and start the image workers; ``PublishError`` when the endpoint
        cannot be bound."""
        self._stop.clear()
        self._bound.clear()
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
        """Stop taking requests; images already taken by a worker are answered (within ``timeout_s``),
        waiting ones get a "shutting down" error reply; then the sockets close."""
        if self._thread is None:
            return
        self._drain_timeout_s = timeout_s
        self._stop.set()
        self._thread.join(timeout_s + 1.0)
        self._thread = None

    def __enter__(self) -> "QueryServer":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def server_stats(self) -> dict:
        """The endpoint's own counters (also sent as ``stats["query"]``)."""
        return {"requests": self.requests, "errors": self.errors, "rate_limited": self.rate_limited,
                "busy": self.busy, "images_in_flight": self.images_in_flight,
                "image_queue_depth": self._jobs.qsize(), "image_workers": self.limits.image_workers,
                "image_queue_size": self.limits.image_queue_size, "clients_tracked": len(self._request_limiter)}

    # -------------------------------------------------------------------------------- socket thread
    def _run(self) -> None:
        router = self._context.socket(zmq.ROUTER)
        results = self._context.socket(zmq.PULL)
        try:
            for sock in (router, results):
                sock.setsockopt(zmq.LINGER, self.linger_ms)
            router.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
            router.setsockopt(zmq.RCVHWM, self.limits.socket_hwm_messages)
            router.setsockopt(zmq.SNDHWM, self.limits.socket_hwm_messages)
            secure_server(router, self.security)
            router.bind(self.endpoint)
            self.bound_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            results.bind(self._results_endpoint)
        except zmq.ZMQError as exc:
            self._error = exc
            router.close(0)
            results.close(0)
            self._bound.set()
            return
        self._workers = [threading.Thread(target=self._work, name=f"amodal-gallery-image-{i}", daemon=True)
                         for i in range(self.limits.image_workers if self.embed_image is not None else 0)]
        for worker in self._workers:
            worker.start()
        self._bound.set()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(results, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(_POLL_MS))
                if results in events:
                    self._forward_results(router, results)
                if router in events:
                    for _ in range(_MAX_MESSAGES_PER_TURN):
                        try:
                            parts = router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._on_message(router, parts)
        finally:
            self._shut_down(router, results)

    def _on_message(self, router: zmq.Socket, parts: list[zmq.Frame]) -> None:
        self.requests += 1
        envelope_frames, body = _split_envelope(parts)
        envelope = [f.bytes for f in envelope_frames]
        client = envelope[0]
        try:
            reply = self._answer(client, envelope, body)
        except Exception as exc:  # a bug must cost one request, never the server
            log.exception("gallery query failed")
            reply = error_reply(f"internal error: {type(exc).__name__}: {exc}")
        if reply is not None:
            self._send(router, envelope, reply)

    def _answer(self, client: bytes, envelope: list[bytes], body: list[zmq.Frame]) -> dict | None:
        """The reply to send now, or None when the request went to the image workers."""
        wait_s = self._request_limiter.take(client)
        if wait_s > 0:
            self.rate_limited += 1
            return error_reply(f"rate limited: more than client_requests_per_s={self.limits.client_requests_per_s:g} "
                               f"(burst {self.limits.client_request_burst}) requests from this client; "
                               f"retry in {wait_s:.3f} s", retry_after_s=wait_s)
        if len(body) != 1:
            return error_reply(f"expected a 1-part message, got {len(body)} parts")
        try:
            request = parse_request(body[0].buffer, self.gallery.config.dim, self.limits)
            if isinstance(request, StatsRequest):
                stats = {**self.gallery.stats(), "query": self.server_stats()}
                return {"v": PROTOCOL_VERSION, "ok": True, "stats": stats}
            if request.query is not None:
                return search_reply(self.gallery, request.query, request.k)
            if self.embed_image is None:
                raise SchemaError("image queries need an image embedder, and this server has none")
        except SchemaError as exc:
            return error_reply(str(exc))
        wait_s = self._image_limiter.take(client)
        if wait_s > 0:
            self.rate_limited += 1
            return error_reply(f"rate limited: more than client_images_per_s={self.limits.client_images_per_s:g} "
                               f"(burst {self.limits.client_image_burst}) image searches from this client; "
                               f"retry in {wait_s:.3f} s", retry_after_s=wait_s)
        try:
            self._jobs.put_nowait(_ImageJob(envelope, request.image, request.k))
        except queue.Full:
            self._image_limiter.refund(client)
            self.busy += 1
            retry_s = max(0.05, self._image_service_s * (self.limits.image_queue_size / max(1, len(self._workers))))
            return error_reply(f"busy: {self.limits.image_queue_size} image searches already wait for "
                               f"{len(self._workers)} workers (image_queue_size={self.limits.image_queue_size}); "
                               f"retry in {retry_s:.3f} s", retry_after_s=retry_s)
        self.images_in_flight += 1
        return None

    def _forward_results(self, router: zmq.Socket, results: zmq.Socket) -> None:
        while True:
            try:
                parts = results.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            ok, service_s = _RESULT_HEADER.unpack(parts[0])
            self.images_in_flight -= 1
            self._image_service_s = 0.8 * self._image_service_s + 0.2 * service_s
            if not ok:
                self.errors += 1
            router.send_multipart(parts[1:])  # a ROUTER drops (never blocks) a reply to a gone or full peer

    def _send(self, router: zmq.Socket, envelope: list[bytes], reply: dict) -> None:
        if not reply["ok"]:
            self.errors += 1
        router.send_multipart([*envelope, msgpack.packb(reply, use_bin_type=True)])

    def _shut_down(self, router: zmq.Socket, results: zmq.Socket) -> None:
        try:
            while True:  # waiting images are answered, not dropped
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                self.images_in_flight -= 1
                self._send(router, job.envelope, error_reply("the gallery query server is shutting down"))
            deadline_s = time.monotonic() + self._drain_timeout_s
            while any(w.is_alive() for w in self._workers) and time.monotonic() < deadline_s:
                if results.poll(_POLL_MS):
                    self._forward_results(router, results)
            self._forward_results(router, results)
        finally:
            results.close()
            router.close()

    # ------------------------------------------------------------------------------- worker threads
    def _work(self) -> None:
        push = self._context.socket(zmq.PUSH)
        try:
            push.setsockopt(zmq.LINGER, self.linger_ms)
            push.setsockopt(zmq.SNDHWM, self.limits.image_queue_size + self.limits.image_workers)
            push.connect(self._results_endpoint)
            while True:
                try:
                    job = self._jobs.get(timeout=_POLL_MS / 1000)
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    continue
                started_s = time.monotonic()
                reply = self._image_reply(job)
                header = _RESULT_HEADER.pack(bool(reply["ok"]), time.monotonic() - started_s)
                push.send_multipart([header, *job.envelope, msgpack.packb(reply, use_bin_type=True)])
        finally:
            push.close()

    def _image_reply(self, job: _ImageJob) -> dict:
        try:
            query = embed_image_query(job.image, self.embed_image, self.gallery.config.dim, self.limits)
            return search_reply(self.gallery, query, job.k)
        except SchemaError as exc:
            return error_reply(str(exc))
        except Exception as exc:  # a bug must cost one request, never the worker
            log.exception("gallery image query failed")
            return error_reply(f"internal error: {type(exc).__name__}: {exc}")
