"""The gallery query endpoint under load and abuse, over real ZeroMQ (tcp loopback): oversized images refused
before decoding, non-finite or huge embeddings refused, per-client rate limits, a bounded image queue with
"busy" replies, and cheap requests answered while image searches are stuck."""
from __future__ import annotations

import io
import re
import struct
import threading
import time
import tracemalloc
import zlib

import msgpack
import numpy as np
import pytest
import zmq
from conftest import Persons, unit
from PIL import Image, ImageFile

from amodal.engine.gallery import Gallery, GalleryConfig, QueryServer
from amodal.engine.gallery.config import QueryLimits
from amodal.engine.gallery.query import check_image_signature, decode_image, image_header, parse_request
from amodal.engine.gallery.rate_limit import RateLimiter
from amodal.errors import ConfigError, SchemaError
from amodal.gallery_client import GalleryBusyError, GalleryClient, GalleryQueryError

DIM = 16
REPLY_TIMEOUT_MS = 10_000


def colour_embedder(rgb: np.ndarray) -> np.ndarray:
    return unit(np.resize(rgb.reshape(-1, 3).mean(axis=0) / 255.0 - 0.5 + 1e-3, DIM))


class GatedEmbedder:
    """An embedder that blocks inside every call until ``release()``: image searches stay in the workers
    for as long as a test needs."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.calls = 0
        self._gate = threading.Event()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.entered.release()
        if not self._gate.wait(30):
            raise RuntimeError("gate never opened")
        return colour_embedder(rgb)

    def release(self) -> None:
        self._gate.set()


def _png(size_wh: tuple[int, int], colour=(200, 30, 30)) -> bytes:
    return _encode(size_wh, "PNG", colour)


def _encode(size_wh: tuple[int, int], fmt: str, colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size_wh, colour).save(buf, format=fmt)
    return buf.getvalue()


def _with_comments(jpeg: bytes, count: int) -> bytes:
    """``jpeg`` with ``count`` empty COM segments before its frame header (pushing the SOF far back)."""
    return jpeg[:2] + b"\xff\xfe\x00\x02" * count + jpeg[2:]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` RGB with one tiny IDAT: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _pack(**fields) -> bytes:
    return msgpack.packb({"v": 1, **fields}, use_bin_type=True)


def _image_request(image: bytes, k: int = 1) -> bytes:
    return _pack(op="search", image=image, k=k)


@pytest.fixture
def gallery() -> Gallery:
    gallery = Gallery(GalleryConfig(dim=DIM, match_threshold=0.9, min_observations=2))
    persons = Persons(count=3, dim=DIM, seed=5)
    for p in range(3):
        persons.feed(gallery, p, "cam", track_id=p, frames=3)
    gallery.persons = persons
    return gallery


class Dealer:
    """A client that pipelines requests (what a REQ socket cannot): one routing id, many requests."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, payload: bytes) -> None:
        self.sock.send_multipart([b"", payload])  # the REQ envelope: an empty delimiter, then the body

    def recv(self, timeout_ms: int = REPLY_TIMEOUT_MS) -> dict:
        assert self.sock.poll(timeout_ms), "no reply"
        delimiter, body = self.sock.recv_multipart()
        assert delimiter == b""
        return msgpack.unpackb(body, raw=False)

    def recv_until_quiet(self, quiet_ms: int = 1000) -> list[dict]:
        """Every reply that arrives until none came for ``quiet_ms``."""
        replies = []
        while self.sock.poll(quiet_ms):
            replies.append(self.recv())
        return replies

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def dealer(endpoint: str):
    client = Dealer(endpoint)
    yield client
    client.close()


# ------------------------------------------------------------------------------------ size limits
class DecodeSpy:
    """Counts PIL pixel decodes (``ImageFile.load``) in every thread of this process."""

    def __init__(self, monkeypatch) -> None:
        self.loads = 0
        original = ImageFile.ImageFile.load

        def load(image, *args, **kwargs):
            self.loads += 1
            return original(image, *args, **kwargs)

        monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_oversized_image_is_refused_before_decoding(gallery: Gallery, endpoint: str, monkeypatch):
    spy = DecodeSpy(monkeypatch)
    big = _png((4096, 4096))  # a flat colour: ~50 KB of PNG, 48 MiB once decoded to RGB
    limits = QueryLimits()
    assert limits.max_image_pixels < 4096 * 4096 and len(big) < limits.max_request_bytes
    tracemalloc.start()
    try:
        with pytest.raises(SchemaError, match=r"4096x4096 = 16777216 pixels, more than max_image_pixels=4194304"):
            parse_request(_image_request(big), DIM, limits)
        with pytest.raises(SchemaError, match="refused before decoding"):
            decode_image(big, limits.max_image_pixels)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert spy.loads == 0 and peak_bytes < 2 << 20, (spy.loads, peak_bytes)  # decoded RGB would be 48 MiB

    embedder = GatedEmbedder()
    embedder.release()
    with QueryServer(gallery, endpoint, embed_image=embedder), GalleryClient(endpoint, timeout_s=10) as client:
        with pytest.raises(GalleryQueryError, match=r"4096x4096 = 16777216 pixels.*refused before decoding"):
            client.search(image=big, k=1)
        bomb = _png_header_only(100_000, 100_000)  # 10^10 pixels claimed in 100 bytes
        with pytest.raises(GalleryQueryError, match="too large|more than max_image_pixels"):
            client.search(image=bomb, k=1)
        big_jpeg = _encode((2100, 2100), "JPEG")  # 4.41 Mpx
        with pytest.raises(GalleryQueryError, match=r"2100x2100 = 4410000 pixels.*refused before decoding"):
            client.search(image=big_jpeg, k=1)  # refused from its SOF by the socket thread
        with pytest.raises(GalleryQueryError, match=r"2100x2100 = 4410000 pixels.*refused before decoding"):
            client.search(image=_with_comments(big_jpeg, 300), k=1)  # SOF too far for it: PIL's header, in a worker
        assert spy.loads == 0 and embedder.calls == 0
        assert client.search(image=_png((40, 80)), k=1)  # a crop-sized image is decoded and embedded
        assert spy.loads >= 1 and embedder.calls == 1  # (the spy does see decodes)


def test_request_bytes_limit_is_an_error_reply(gallery: Gallery, endpoint: str):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")  # incompressible: ~120 KB
    limits = QueryLimits(max_request_bytes=64 << 10)
    with QueryServer(gallery, endpoint, embed_image=colour_embedder, limits=limits), \
            GalleryClient(endpoint, timeout_s=10) as client:
        with pytest.raises(GalleryQueryError, match=r"request is \d+ bytes, more than max_request_bytes=65536"):
            client.search(image=buf.getvalue(), k=1)
        assert client.stats()["identities"] == 3


def test_image_header_reads_sizes_without_decoding():
    assert image_header(_png((33, 7)), 1000) == ("PNG", 33, 7)
    assert image_header(_encode((33, 7), "JPEG"), 1000) == ("JPEG", 33, 7)
    for fmt in ("PNG", "JPEG"):
        assert check_image_signature(_encode((33, 7), fmt), 1000) == (33, 7)
        with pytest.raises(SchemaError, match="33x7 = 231 pixels, more than max_image_pixels=230"):
            check_image_signature(_encode((33, 7), fmt), 230)
    assert check_image_signature(_with_comments(_encode((33, 7), "JPEG"), 10), 1000) == (33, 7)
    assert check_image_signature(_with_comments(_encode((33, 7), "JPEG"), 300), 1000) is None  # left to PIL
    assert check_image_signature(b"\xff\xd8" + b"\xff" * (8 << 20), 1000) is None  # fill bytes: a bounded scan
    with pytest.raises(SchemaError, match="cannot be decoded as JPEG or PNG"):
        check_image_signature(_encode((33, 7), "BMP"), 1000)
    with pytest.raises(SchemaError, match="without its IHDR"):
        check_image_signature(_png((33, 7))[:20], 1000)
    with pytest.raises(SchemaError, match="33x7 = 231 pixels, more than max_image_pixels=230"):
        image_header(_png((33, 7)), 230)
    with pytest.raises(SchemaError, match="must be msgpack bin"):
        image_header("not bytes", 1000)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize("values, dtype, message", [
    (np.full(DIM, np.inf), "f4", "non-finite"),
    (np.r_[np.full(DIM - 1, 0.1), -np.inf], "f2", "non-finite"),
    (np.full(DIM, 1e30), "f4", r"L2 norm 4e\+30, more than max_embedding_norm=1000"),  # its float32 norm is inf
    (np.full(DIM, 3.4e38), "f4", "more than max_embedding_norm"),
    (np.full(DIM, 6e4), "f2", r"L2 norm 2\.4e\+05, more than max_embedding_norm=1000"),
])
def test_non_finite_or_huge_embedding_is_an_error_reply(gallery: Gallery, endpoint: str, dealer: Dealer, values,
                                                        dtype, message):
    with QueryServer(gallery, endpoint):
        dealer.send(_pack(op="search", embedding=np.asarray(values, f"<{dtype}").tobytes(), dtype=dtype, k=1))
        reply = dealer.recv()
        assert reply["ok"] is False and "matches" not in reply, reply
        assert re.search(message, reply["error"]), reply["error"]
        # an unnormalised but sane embedding is still a query
        dealer.send(_pack(op="search", embedding=np.asarray(30 * gallery.persons.base[1], "<f4").tobytes(),
                          dtype="f4", k=1))
        assert dealer.recv()["matches"][0]["global_id"] == 2


def test_embedder_output_is_checked_like_a_query(gallery: Gallery, endpoint: str):
    with QueryServer(gallery, endpoint, embed_image=lambda rgb: np.full(DIM, 1e20, np.float32)), \
            GalleryClient(endpoint, timeout_s=10) as client:
        with pytest.raises(GalleryQueryError, match="embedder output: embedding has L2 norm 4e\\+20"):
            client.search(image=_png((8, 8)), k=1)


# -------------------------------------------------------------------------- rate limits and queue
def test_image_flood_from_one_client_is_rate_limited_while_stats_answers(gallery: Gallery, endpoint: str,
                                                                         dealer: Dealer, record_property):
    # every request gets a reply only while the replies fit the server's per-connection send high-water mark (a
    # ROUTER drops what is above it: the default 32 < 40 lost refusals whenever they were sent faster than TCP took them)
    limits = QueryLimits(client_images_per_s=2.0, client_image_burst=3, image_workers=1, image_queue_size=64,
                         socket_hwm_messages=64)
    embedder = GatedEmbedder()
    flood = 40
    with QueryServer(gallery, endpoint, embed_image=embedder, limits=limits) as server:
        image = _image_request(_png((32, 64)))
        for _ in range(flood):
            dealer.send(image)
        assert embedder.entered.acquire(timeout=10)  # the first image search is stuck in the worker
        with GalleryClient(endpoint, timeout_s=10) as other:  # another client (its own routing id)
            started_s = time.monotonic()
            stats = other.stats()
            stats_latency_s = time.monotonic() - started_s
        record_property("stats_latency_ms_during_flood", round(stats_latency_s * 1e3, 2))
        assert stats["identities"] == 3 and stats["query"]["image_workers"] == 1
        assert stats_latency_s < 2.0  # answered, not stuck behind the image searches
        refused = dealer.recv_until_quiet()  # refusals come at once, while the worker is stuck
        assert refused and not any(r["ok"] for r in refused)
        embedder.release()
        replies = refused + [dealer.recv() for _ in range(flood - len(refused))]
    limited = [r for r in replies if not r["ok"]]
    assert len(replies) == flood and len(limited) == len(refused) >= flood - 4, [r.get("error") for r in replies]
    for reply in limited:
        assert "rate limited" in reply["error"] and "client_images_per_s=2" in reply["error"], reply
        assert 0 < reply["retry_after_s"] <= 0.5
    assert all(r["matches"] for r in replies if r["ok"])
    assert server.rate_limited == len(limited) and server.busy == 0


def test_full_image_queue_gives_immediate_busy_replies(gallery: Gallery, endpoint: str, dealer: Dealer):
    limits = QueryLimits(image_workers=1, image_queue_size=2, client_images_per_s=1000.0, client_image_burst=1000)
    embedder = GatedEmbedder()
    image = _image_request(_png((32, 64)))
    with QueryServer(gallery, endpoint, embed_image=embedder, limits=limits) as server:
        dealer.send(image)
        assert embedder.entered.acquire(timeout=10)  # one search in the worker ...
        for _ in range(5):
            dealer.send(image)  # ... two fit the queue, three do not
        busy = [dealer.recv() for _ in range(3)]  # answered while the worker is still stuck
        for reply in busy:
            assert reply["ok"] is False and reply["error"].startswith("busy:"), reply
            assert "image_queue_size=2" in reply["error"] and reply["retry_after_s"] > 0
        with GalleryClient(endpoint, timeout_s=10) as other:
            assert other.stats()["query"]["image_queue_depth"] == 2
            with pytest.raises(GalleryBusyError, match="busy") as refused:  # the client's own exception type
                other.search(image=_png((8, 8)), k=1)
            assert refused.value.retry_after_s > 0
        embedder.release()
        done = [dealer.recv() for _ in range(3)]
    assert all(r["ok"] and r["matches"] for r in done), done
    assert server.busy == 4 and embedder.calls == 3


def test_waiting_image_searches_are_answered_at_shutdown(gallery: Gallery, endpoint: str, dealer: Dealer):
    limits = QueryLimits(image_workers=1, image_queue_size=4)
    embedder = GatedEmbedder()
    server = QueryServer(gallery, endpoint, embed_image=embedder, limits=limits).start()
    try:
        for _ in range(3):
            dealer.send(_image_request(_png((16, 16))))
        assert embedder.entered.acquire(timeout=10)
        deadline_s = time.monotonic() + 10
        while server.images_in_flight < 3 and time.monotonic() < deadline_s:  # one in the worker, two waiting
            time.sleep(0.01)
        assert server.images_in_flight == 3
        threading.Timer(0.3, embedder.release).start()
    finally:
        server.close()
    replies = [dealer.recv() for _ in range(3)]
    assert sorted(r["ok"] for r in replies) == [False, False, True]
    assert all("shutting down" in r["error"] for r in replies if not r["ok"])


def test_request_rate_limit_covers_every_op(gallery: Gallery, endpoint: str, dealer: Dealer):
    limits = QueryLimits(client_requests_per_s=0.1, client_request_burst=2)
    with QueryServer(gallery, endpoint, limits=limits):
        for _ in range(4):
            dealer.send(_pack(op="stats"))
        replies = [dealer.recv() for _ in range(4)]
        with GalleryClient(endpoint, timeout_s=10) as other:
            assert other.stats()["identities"] == 3  # another client has its own bucket
    assert [r["ok"] for r in replies] == [True, True, False, False]
    assert "client_requests_per_s=0.1 (burst 2)" in replies[2]["error"]


# ------------------------------------------------------------------------------- units and config
def test_rate_limiter_refills_refunds_and_forgets_idle_clients():
    now_s = [100.0]
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock_s=lambda: now_s[0])
    assert [limiter.take(b"a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take(b"a") == pytest.approx(0.5)
    assert limiter.take(b"b") == 0.0  # clients do not share a bucket
    now_s[0] += 0.25
    assert limiter.take(b"a") == pytest.approx(0.25)
    now_s[0] += 0.25
    assert limiter.take(b"a") == 0.0 and limiter.take(b"a") > 0
    limiter.refund(b"a")
    assert limiter.take(b"a") == 0.0
    assert len(limiter) == 2
    now_s[0] += 10.0  # both buckets have refilled: forgotten at the next take
    limiter.take(b"c")
    assert len(limiter) == 1


@pytest.mark.parametrize("field, value", [
    ("image_workers", 0), ("image_queue_size", -1), ("max_image_pixels", 1.5), ("k_max", True),
    ("client_images_per_s", 0.0), ("max_embedding_norm", float("nan")), ("client_requests_per_s", float("inf")),
])
def test_query_limits_name_the_bad_value(field, value):
    with pytest.raises(ConfigError, match=field):
        QueryLimits(**{field: value})
    with pytest.raises(ConfigError, match="max_message_bytes"):
        QueryLimits(max_request_bytes=10 << 20, max_message_bytes=1 << 20)


def test_cli_retries_busy_replies_after_retry_after_s(monkeypatch):
    from amodal import cli_query

    slept_s: list[float] = []
    monkeypatch.setattr(cli_query.time, "sleep", slept_s.append)
    attempts = []

    def busy_twice() -> str:
        attempts.append(1)
        if len(attempts) <= 2:
            raise GalleryBusyError("busy: retry", retry_after_s=0.25 * len(attempts))
        return "answer"

    assert cli_query._retrying(busy_twice, retries=3) == "answer" and slept_s == [0.25, 0.5]
    attempts.clear()
    with pytest.raises(GalleryBusyError):
        cli_query._retrying(busy_twice, retries=1)
    assert len(attempts) == 2
    with pytest.raises(GalleryQueryError, match="not busy"):  # other errors are not retried
        cli_query._retrying(lambda: (_ for _ in ()).throw(GalleryQueryError("not busy")), retries=3)
