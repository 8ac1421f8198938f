"""fuzz-messages: malformed wire messages to the three things that read them.

Messages (deterministic per seed): valid frame / amendment / status / metrics payloads (masks, embeddings,
refs) with a field deleted or given a value of another type (huge and negative ints, NaN and inf, strings,
bins, deep containers), their bytes flipped / truncated / extended, plain random bytes, wrong part counts
(1, 3, 5 parts, empty parts), msgpack headers that claim huge containers (array32 / map32 / bin32 / str32 of
~4 G entries), nesting 20 to 100,000 levels deep, topics that do not match the payload, non-UTF-8 topics.
Every topic starts with a subscribed prefix, so every message reaches the reader.

(a) ``amodal.Subscriber`` in this process: a thread calls ``recv`` and counts any exception that leaves it
    (an escape); every message must be counted as received (yielded, malformed or of an unknown type); RSS
    before/after and the tracemalloc peak while it reads; a valid message sent after the fuzz is yielded.
(b) ``amodal subscribe --json`` as a process: its stdout must stay one JSON object per line, it prints the
    valid message sent after the fuzz, then exits 0 by itself (``--timeout``) with its skipped-message counts;
    no traceback on stderr; its RSS before/after.
(c) the gallery ``QueryServer`` (a small in-memory gallery, an image embedder): malformed requests from one
    DEALER, one at a time; every request must get exactly one reply, and every request that the protocol
    refuses (``handle_request`` in this process says so) an error reply; a valid ``stats`` afterwards works.
"""
from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import traceback
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from amodal import schema
from amodal.bench.reliability.common import CrashWatch, free_endpoint, rss_mb, rounded
from amodal.types import Amendment, FrameResult, ObjectResult, RLEMask, StreamEvent, StreamState

Multipart = list[bytes]


# ---------------------------------------------------------------------------------------------- messages
def _objects(rng: np.random.Generator, n: int) -> tuple[ObjectResult, ...]:
    out = []
    for i in range(n):
        mask = np.zeros((24, 32), dtype=bool)
        mask[4:4 + i + 3, 5:15] = True
        out.append(ObjectResult(class_id=i, class_name=f"c{i}", score=0.5, box_xyxy=(1.0, 2.0, 30.0, 20.0),
                                mask=RLEMask.encode(mask), track_id=i, amodal_mask=RLEMask.encode(mask),
                                occluder_mask=None, occlusion_level=0.25, occlusion_layer=1,
                                embedding=rng.standard_normal(8).astype(np.float32), global_id=i))
    return tuple(out)


def valid_messages(rng: np.random.Generator) -> list[Multipart]:
    """One valid message of each type (and a frame without objects)."""
    objects = _objects(rng, 2)
    frame = FrameResult("cam", 3, 0.12, 1_700_000_000_000_000_000, 32, 24, objects, analyzer="identity",
                        stage_ms={"model": 1.5})
    empty = FrameResult("cam", 4, None, 1_700_000_000_000_000_000, 32, 24)
    amendment = Amendment("cam", 3, "layers", 1_700_000_000_000_000_000, 32, 24, objects, (0, None),
                          {"layers": 3.0})
    status = StreamEvent("cam", StreamState.RECONNECTING, "read timed out", 1_700_000_000_000_000_000, 2, False)
    metrics = {"fps": {"cam": 25.0}, "stages": {"model": {"p50_ms": 1.0}}, "batches": 10, "ok": True, "x": None}
    topic = schema.frames_topic("cam").encode()
    return [
        [topic, schema.encode_frame(frame, 0, 1)],
        [topic, schema.encode_frame(empty, 1, 1)],
        [topic, schema.encode_amendment(amendment, 0, 1)],
        [schema.STATUS_TOPIC.encode(), schema.encode_status(status, 0)],
        [schema.METRICS_TOPIC.encode(), schema.encode_metrics(metrics, 0, 1)],
    ]


def _weird_value(rng: np.random.Generator, depth: int = 0) -> Any:
    choices = [None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, math.nan, math.inf, -math.inf, "",
               "x" * 300, "\x00\u202e\U0001f600", b"", b"\xff" * 7, [], {}, [1, 2, 3], {"a": 1}, 1e308, -0.0]
    if depth < 3 and rng.random() < 0.15:
        return [_weird_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    if depth < 3 and rng.random() < 0.1:
        return {str(i): _weird_value(rng, depth + 1) for i in range(int(rng.integers(0, 4)))}
    return choices[int(rng.integers(0, len(choices)))]


def _paths(d: Any, prefix: tuple = ()) -> list[tuple]:
    """Key paths of every value inside nested maps and arrays."""
    out = []
    if isinstance(d, dict):
        for k, v in d.items():
            out.append(prefix + (k,))
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.append(prefix + (i,))
            out.extend(_paths(v, prefix + (i,)))
    return out


def _set(d: Any, path: tuple, value: Any, delete: bool = False) -> None:
    for key in path[:-1]:
        d = d[key]
    if delete:
        if isinstance(d, dict):
            del d[path[-1]]
        else:
            d.pop(path[-1])
    else:
        d[path[-1]] = value


def _deep(depth: int, kind: str) -> bytes:
    """msgpack bytes nested ``depth`` levels (arrays or maps), built by hand (packb would recurse)."""
    unit = b"\x91" if kind == "array" else b"\x81\xa1a"
    return unit * depth + b"\xc0"


def _huge_header(rng: np.random.Generator) -> bytes:
    """A msgpack container or blob header that claims ~4 G entries/bytes, followed by little."""
    head = [b"\xdd", b"\xdf", b"\xc6", b"\xdb", b"\xdc", b"\xde"][int(rng.integers(0, 6))]
    size = b"\xff\xff" if head in (b"\xdc", b"\xde") else b"\xff\xff\xff\xff"
    return head + size + rng.bytes(int(rng.integers(0, 64)))


MESSAGE_KINDS = ("field_type", "field_delete", "field_add", "bytes_flip", "truncate", "extend", "random_payload",
                 "part_count", "huge_header", "deep_nesting", "wrong_topic", "bad_topic", "big_valid_shape",
                 "type_change")


def fuzz_messages(count: int, seed: int) -> list[tuple[str, Multipart]]:
    """``count`` (kind, multipart) malformed or odd messages, kinds round-robin."""
    rng = np.random.default_rng(seed)
    bases = valid_messages(rng)
    decoded = [(parts[0], msgpack.unpackb(parts[1], raw=False)) for parts in bases]
    out: list[tuple[str, Multipart]] = []
    for i in range(count):
        kind = MESSAGE_KINDS[i % len(MESSAGE_KINDS)]
        j = int(rng.integers(0, len(bases)))
        topic, payload = bases[j]
        base_topic, base_map = decoded[j]
        if kind in ("field_type", "field_delete", "field_add", "type_change"):
            d = msgpack.unpackb(payload, raw=False)  # a fresh copy
            paths = _paths(d)
            path = paths[int(rng.integers(0, len(paths)))]
            if kind == "field_type":
                _set(d, path, _weird_value(rng))
            elif kind == "field_delete":
                _set(d, path, None, delete=True)
            elif kind == "field_add":
                key = ["extra", 7, b"k", None][int(rng.integers(0, 4))] if rng.random() < 0.3 else "extra"
                d[key] = _weird_value(rng)
            else:
                d["type"] = ["frame", "amendment", "status", "metrics", "future", "", 1][int(rng.integers(0, 7))]
                d["v"] = [1, 1, 1, 2, 0, True, 1.0, "1"][int(rng.integers(0, 8))]
            try:
                packed = msgpack.packb(d, use_bin_type=True, strict_types=False)
            except (TypeError, ValueError, OverflowError):
                packed = rng.bytes(32)
            out.append((kind, [topic, packed]))
        elif kind == "bytes_flip":
            data = bytearray(payload)
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 16))):
                data[pos] ^= int(rng.integers(1, 256))
            out.append((kind, [topic, bytes(data)]))
        elif kind == "truncate":
            out.append((kind, [topic, payload[: int(rng.integers(0, len(payload)))]]))
        elif kind == "extend":
            out.append((kind, [topic, payload + rng.bytes(int(rng.integers(1, 256)))]))
        elif kind == "random_payload":
            out.append((kind, [topic, rng.bytes(int(rng.integers(0, 2048)))]))
        elif kind == "part_count":
            n = [1, 3, 5, 2][int(rng.integers(0, 4))]
            parts = [topic, payload, *[rng.bytes(int(rng.integers(0, 64))) for _ in range(3)]][:n]
            if n == 2:
                parts = [topic, b""]
            out.append((kind, parts))
        elif kind == "huge_header":
            out.append((kind, [topic, _huge_header(rng)]))
        elif kind == "deep_nesting":
            depth = int([20, 100, 1000, 10_000, 100_000][int(rng.integers(0, 5))])
            nest = _deep(depth, "array" if rng.random() < 0.5 else "map")
            if rng.random() < 0.5:  # a valid metrics message whose metrics nest deeper than allowed
                head = msgpack.packb({"v": 1, "type": "metrics", "seq": 0, "time_ns": 1}, use_bin_type=True)
                payload = bytes([head[0] + 1]) + head[1:] + b"\xa7metrics" + b"\x81\xa1a" * min(depth, 5000) + b"\x80"
                out.append((kind, [schema.METRICS_TOPIC.encode(), payload]))
            else:
                out.append((kind, [topic, nest]))
        elif kind == "wrong_topic":
            other = [schema.frames_topic("other").encode(), schema.STATUS_TOPIC.encode(), schema.METRICS_TOPIC.encode(),
                     b"frames/cam", b"frames/cam/extra/"][int(rng.integers(0, 5))]
            out.append((kind, [other, payload]))
        elif kind == "bad_topic":
            bad = [b"frames/\xff\xfe/", b"frames/" + b"x" * 5000 + b"/", b"status/\x00", b"frames/ /",
                   b"frames//"][int(rng.integers(0, 5))]
            out.append((kind, [bad, payload]))
        else:  # big_valid_shape: big but bounded payloads (many objects, long strings, a 1 MB bin)
            d = msgpack.unpackb(bases[0][1], raw=False)
            which = int(rng.integers(0, 3))
            if which == 0:  # mostly a few hundred objects; one in ten 4,000 (~1 MB)
                d["objects"] = d["objects"] * (2000 if rng.random() < 0.1 else int(rng.integers(25, 100)))
            elif which == 1:
                d["analyzer"] = "a" * int(rng.integers(1000, 1_000_000))
            else:
                d["objects"][0]["mask"]["counts"] = rng.bytes(int(rng.integers(1000, 1 << 20)))
            out.append((kind, [bases[0][0], msgpack.packb(d, use_bin_type=True)]))
    return out


def sentinel_message() -> Multipart:
    frame = FrameResult("sentinel", 0, 0.0, 1_700_000_000_000_000_000, 8, 8)
    return [schema.frames_topic("sentinel").encode(), schema.encode_frame(frame, 0, 1)]


def _probe(seq: int) -> Multipart:
    event = StreamEvent("probe", StreamState.UP, None, 1, 0, False)
    return [schema.STATUS_TOPIC.encode(), schema.encode_status(event, seq)]


def _bind_pub(endpoint: str) -> zmq.Socket:
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 0)  # unlimited: nothing is dropped on the sending side
    pub.bind(endpoint)
    return pub


def _send_paced(pub: zmq.Socket, messages: list[tuple[str, Multipart]], received: callable, chunk: int = 200,
                timeout_s: float = 120.0) -> None:
    """Send in chunks, each once the reader has taken all but one chunk (bounded memory in flight)."""
    deadline = time.monotonic() + timeout_s
    for start in range(0, len(messages), chunk):
        while received() < start - chunk and time.monotonic() < deadline:
            time.sleep(0.005)
        for _, parts in messages[start:start + chunk]:
            pub.send_multipart(parts)


# ---------------------------------------------------------------------------------- (a) Subscriber
def fuzz_subscriber(messages: list[tuple[str, Multipart]], timeout_s: float = 180.0) -> dict[str, Any]:
    from amodal.subscriber import Subscriber

    endpoint = free_endpoint()
    pub = _bind_pub(endpoint)
    sub = Subscriber(endpoint, metrics=True)
    escapes: list[str] = []
    yielded: list[str | None] = []  # the stream id of each yielded message (the messages are not kept)
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                message = sub.recv(0.05)
            except Exception as exc:  # noqa: BLE001 - an escape: what this campaign counts
                escapes.append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2000:]}")
                continue
            if message is not None:
                yielded.append(getattr(getattr(message, "result", None), "stream_id", None))

    reader = threading.Thread(target=read, name="fuzz-subscriber", daemon=True)
    reader.start()
    seq = 0
    deadline = time.monotonic() + 30
    while not yielded and time.monotonic() < deadline:  # until the subscription has reached the PUB socket
        pub.send_multipart(_probe(seq))
        seq += 1
        time.sleep(0.05)
    time.sleep(0.3)
    base_received, base_yielded = sub.stats.received, len(yielded)
    rss_before = rss_mb()
    tracemalloc.start()
    t0 = time.monotonic()
    _send_paced(pub, messages, lambda: sub.stats.received - base_received)
    deadline = time.monotonic() + timeout_s
    while sub.stats.received - base_received < len(messages) and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed_s = time.monotonic() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    pub.send_multipart(sentinel_message())
    deadline = time.monotonic() + 10
    sentinel_ok = False
    while not sentinel_ok and time.monotonic() < deadline:
        sentinel_ok = "sentinel" in yielded[-5:]
        time.sleep(0.01)
    rss_after = rss_mb()
    alive = reader.is_alive()
    stop.set()
    reader.join(5)
    stats = sub.stats
    received = stats.received - base_received - (1 if sentinel_ok else 0)
    out = {
        "sent": len(messages), "received": received, "yielded_valid": len(yielded) - base_yielded - int(sentinel_ok),
        "malformed": stats.malformed, "unknown_types": stats.unknown_types, "escapes": len(escapes),
        "escape_examples": escapes[:5], "alive": alive, "sentinel_ok": sentinel_ok,
        "rss_before_mb": rounded(rss_before, 1), "rss_after_mb": rounded(rss_after, 1),
        "tracemalloc_peak_mb": rounded(peak / 2**20, 2), "seconds": rounded(elapsed_s, 2),
        "messages_per_s": rounded(len(messages) / elapsed_s, 0),
    }
    sub.close()
    pub.close(0)
    return out


# ---------------------------------------------------------------------------------- (b) subscribe process
def fuzz_subscribe_process(messages: list[tuple[str, Multipart]], timeout_s: float = 180.0) -> dict[str, Any]:
    endpoint = free_endpoint()
    pub = _bind_pub(endpoint)
    stderr = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-m", "amodal.cli", "subscribe", endpoint, "--json", "--metrics",
                             "--timeout", "8"], stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines: list[str] = []
    bad_lines: list[str] = []
    paces_seen = [0]

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                json.loads(line)
                lines.append(line)
                paces_seen[0] += '"stream_id": "pace"' in line
            except ValueError:
                bad_lines.append(line[:300])

    reader = threading.Thread(target=read, name="fuzz-subscribe-stdout", daemon=True)
    reader.start()
    seq = 0
    deadline = time.monotonic() + 60
    while not lines and time.monotonic() < deadline and proc.poll() is None:
        pub.send_multipart(_probe(seq))
        seq += 1
        time.sleep(0.05)
    time.sleep(0.3)
    base_lines = len(lines)
    rss_before = rss_mb(proc.pid)
    rss_peak = rss_before
    t0 = time.monotonic()
    # paced: after each chunk a valid ``pace`` status message, and the next chunk once the process printed it
    # (so its RSS measures its decoding, not a backlog of unread messages in its ZeroMQ queue)
    paces = 0
    for start in range(0, len(messages), 200):
        for _, parts in messages[start:start + 200]:
            pub.send_multipart(parts)
        event = StreamEvent("pace", StreamState.UP, None, 1, 0, False)
        pub.send_multipart([schema.STATUS_TOPIC.encode(), schema.encode_status(event, paces)])
        paces += 1
        deadline = time.monotonic() + 60
        while paces_seen[0] < paces and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        rss_peak = max(rss_peak, rss_mb(proc.pid))
    pub.send_multipart(sentinel_message())
    deadline = time.monotonic() + timeout_s
    sentinel_ok = False
    while time.monotonic() < deadline and proc.poll() is None and not sentinel_ok:
        sentinel_ok = any('"stream_id": "sentinel"' in line for line in lines[-3:])
        time.sleep(0.05)
    rss_after = rss_mb(proc.pid)
    alive_at_sentinel = proc.poll() is None
    elapsed_s = time.monotonic() - t0
    try:
        rc = proc.wait(30)  # exits by itself after --timeout seconds of silence
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait(10)
    reader.join(5)
    stderr.seek(0)
    err = stderr.read()
    stderr.close()
    pub.close(0)
    skipped = _int_after(err, "skipped ", " malformed")
    unknown = _int_after(err, "skipped ", " message(s) of types")
    printed = len(lines) - base_lines - int(sentinel_ok) - paces_seen[0]
    return {
        "sent": len(messages), "printed_valid": printed, "malformed_reported": skipped, "unknown_reported": unknown,
        "accounted": printed + (skipped or 0) + (unknown or 0),
        "escapes": int("Traceback" in err) + len(bad_lines) + int(rc not in (0,)),
        "unparseable_lines": bad_lines[:5], "exit_code": rc, "traceback": err[err.find("Traceback"):][:3000]
        if "Traceback" in err else None, "alive": alive_at_sentinel, "sentinel_ok": sentinel_ok,
        "rss_before_mb": rounded(rss_before, 1), "rss_after_mb": rounded(rss_after, 1),
        "rss_peak_mb": rounded(rss_peak, 1), "seconds": rounded(elapsed_s, 2),
    }


def _int_after(text: str, before: str, after: str) -> int | None:
    import re

    match = re.search(re.escape(before) + r"(\d+)" + re.escape(after), text)
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------------------- (c) gallery queries
DIM = 16


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def colour_embedder(rgb: np.ndarray) -> np.ndarray:
    return _unit(np.resize(rgb.reshape(-1, 3).mean(axis=0) / 255.0 - 0.5 + 1e-3, DIM))


def small_gallery():
    from amodal.engine.gallery import Gallery, GalleryConfig

    gallery = Gallery(GalleryConfig(dim=DIM, match_threshold=0.9, min_observations=2))
    rng = np.random.default_rng(5)
    for person in range(4):
        base = _unit(rng.standard_normal(DIM))
        for i in range(3):
            gallery.update_track("cam", person, _unit(base + 0.1 * rng.standard_normal(DIM)), 0.9,
                                 i * 40_000_000, (10.0 * i, 20.0, 10.0 * i + 50, 140.0))
    return gallery


def _image(fmt: str, size=(24, 32), colour=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


QUERY_KINDS = ("field_type", "field_delete", "k_value", "embedding_bad", "image_bad", "both_or_neither", "op_version",
               "bytes_flip", "truncate", "random_payload", "part_count", "huge_header", "deep_nesting", "oversize")


def fuzz_queries(count: int, seed: int) -> list[tuple[str, list[bytes]]]:
    """``count`` (kind, body parts) gallery requests, nearly all malformed; kinds round-robin."""
    rng = np.random.default_rng([seed, 1])
    emb = _unit(rng.standard_normal(DIM))
    png, jpeg = _image("PNG"), _image("JPEG")
    bases = [
        {"v": 1, "op": "stats"},
        {"v": 1, "op": "search", "embedding": emb.astype("<f4").tobytes(), "dtype": "f4", "k": 3},
        {"v": 1, "op": "search", "embedding": emb.astype("<f2").tobytes(), "dtype": "f2", "k": 1},
        {"v": 1, "op": "search", "image": png, "k": 2},
        {"v": 1, "op": "search", "image": jpeg, "k": 2},
    ]
    out: list[tuple[str, list[bytes]]] = []
    for i in range(count):
        kind = QUERY_KINDS[i % len(QUERY_KINDS)]
        d = dict(bases[int(rng.integers(0, len(bases)))])
        body: list[bytes] | None = None
        if kind == "field_type":
            key = list(d)[int(rng.integers(0, len(d)))]
            d[key] = _weird_value(rng)
        elif kind == "field_delete":
            del d[list(d)[int(rng.integers(0, len(d)))]]
        elif kind == "k_value":
            d = dict(bases[1])
            d["k"] = [0, -1, 101, 10**9, 2**64 - 1, True, 1.0, "3", None, []][int(rng.integers(0, 10))]
        elif kind == "embedding_bad":
            d = dict(bases[1])
            which = int(rng.integers(0, 6))
            if which == 0:
                d["embedding"] = np.full(DIM, np.nan, "<f4").tobytes()
            elif which == 1:
                d["embedding"] = np.full(DIM, 3e38, "<f4").tobytes()
            elif which == 2:
                d["embedding"] = np.zeros(DIM, "<f4").tobytes()
            elif which == 3:
                d["embedding"] = d["embedding"][: int(rng.integers(0, DIM * 4))]
            elif which == 4:
                d["dtype"] = ["f8", "i4", "", None, 4, ["f4"], {"f4": 1}][int(rng.integers(0, 7))]
            else:
                d["embedding"] = list(emb.tolist())
        elif kind == "image_bad":
            d = dict(bases[3 + int(rng.integers(0, 2))])
            image = d["image"]
            which = int(rng.integers(0, 6))
            if which == 0:
                d["image"] = image[: int(rng.integers(0, len(image)))]
            elif which == 1:
                data = bytearray(image)
                for pos in rng.integers(8, len(data), size=int(rng.integers(1, 32))):
                    data[pos] ^= int(rng.integers(1, 256))
                d["image"] = bytes(data)
            elif which == 2:
                d["image"] = _png_claiming(int(rng.integers(1, 2**31)), int(rng.integers(1, 2**31)))
            elif which == 3:
                d["image"] = b"GIF89a" + rng.bytes(100)
            elif which == 4:
                d["image"] = image[:2] + b"\xff\xfe\x00\x02" * 400 + image[2:]  # SOF far back (PIL in a worker)
            else:
                d["image"] = "not bytes"
        elif kind == "both_or_neither":
            d = dict(bases[1])
            if rng.random() < 0.5:
                d["image"] = png
            else:
                del d["embedding"]
        elif kind == "op_version":
            if rng.random() < 0.6:
                d["op"] = ["search ", "STATS", "delete", "", None, 1][int(rng.integers(0, 6))]
            d["v"] = [2, 0, "1", 1.0, True, None][int(rng.integers(0, 6))] if "v" in d else 2
        payload = msgpack.packb(d, use_bin_type=True)
        if kind == "bytes_flip":
            data = bytearray(payload)
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
                data[pos] ^= int(rng.integers(1, 256))
            body = [bytes(data)]
        elif kind == "truncate":
            body = [payload[: int(rng.integers(0, len(payload)))]]
        elif kind == "random_payload":
            body = [rng.bytes(int(rng.integers(0, 512)))]
        elif kind == "part_count":
            body = [payload, payload][: 2] + ([b"x"] if rng.random() < 0.5 else [])
        elif kind == "huge_header":
            body = [_huge_header(rng)]
        elif kind == "deep_nesting":
            body = [_deep(int([50, 1000, 100_000][int(rng.integers(0, 3))]), "array" if rng.random() < 0.5 else "map")]
        elif kind == "oversize":  # over max_request_bytes (8 MiB), under ZeroMQ's max_message_bytes (16 MiB)
            body = [msgpack.packb({"v": 1, "op": "stats", "pad": bytes(9 << 20)}, use_bin_type=True)] \
                if i % (len(QUERY_KINDS) * 20) == QUERY_KINDS.index("oversize") else [b"\x00" * 3]
        out.append((kind, body if body is not None else [payload]))
    return out


def fuzz_query_server(requests: list[tuple[str, list[bytes]]], reply_timeout_s: float = 10.0,
                      time_limit_s: float = 600.0) -> dict[str, Any]:
    from amodal.engine.gallery import QueryServer
    from amodal.engine.gallery.config import QueryLimits
    from amodal.engine.gallery.query import handle_request

    gallery = small_gallery()
    limits = QueryLimits(client_requests_per_s=1e6, client_request_burst=1_000_000, client_images_per_s=1e6,
                         client_image_burst=1_000_000)
    endpoint = free_endpoint()
    server = QueryServer(gallery, endpoint, embed_image=colour_embedder, limits=limits).start()
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    missing, malformed_ok, valid_refused, internal, sent, handle_raised = 0, 0, 0, 0, 0, 0
    examples: dict[str, list] = {"missing": [], "malformed_ok": [], "internal": [], "handle_request_raised": []}
    kinds_refused: dict[str, int] = {}
    rss_before = rss_mb()
    tracemalloc.start()
    t0 = time.monotonic()
    for kind, body in requests:
        if time.monotonic() - t0 > time_limit_s:
            break
        sent += 1
        try:  # the protocol's own verdict, in this thread: ``handle_request`` never raises for bad input
            malformed = len(body) != 1 or not handle_request(body[0], gallery, colour_embedder, limits=limits)["ok"]
        except Exception as exc:  # noqa: BLE001 - an escape from handle_request: counted, the request is malformed
            malformed = True
            handle_raised += 1
            examples["handle_request_raised"].append((kind, f"{type(exc).__name__}: {exc}", body[0][:200].hex()))
        dealer.send_multipart([b"", *body])
        if not dealer.poll(int(reply_timeout_s * 1000)):
            missing += 1
            examples["missing"].append(kind)
            continue
        parts = dealer.recv_multipart()
        try:
            reply = msgpack.unpackb(parts[-1], raw=False)
            ok = bool(reply.get("ok"))
            error = str(reply.get("error", ""))
        except Exception as exc:  # noqa: BLE001 - a reply that is not a map counts as a wrong reply
            ok, error = True, f"unreadable reply: {exc}"
        if error.startswith("internal error"):
            internal += 1
            examples["internal"].append((kind, error[:300], body[0][:200].hex() if body else ""))
        if malformed and ok:
            malformed_ok += 1
            examples["malformed_ok"].append(kind)
        if not malformed and not ok:
            valid_refused += 1
        if not ok:
            kinds_refused[kind] = kinds_refused.get(kind, 0) + 1
    elapsed_s = time.monotonic() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    dealer.send_multipart([b"", msgpack.packb({"v": 1, "op": "stats"})])
    sentinel_ok = bool(dealer.poll(5000)) and bool(msgpack.unpackb(dealer.recv_multipart()[-1], raw=False).get("ok"))
    alive = server._thread is not None and server._thread.is_alive()  # noqa: SLF001
    counters = server.server_stats()
    rss_after = rss_mb()
    dealer.close(0)
    server.close()
    return {
        "sent": sent, "missing_replies": missing, "malformed_not_refused": malformed_ok,
        "valid_refused": valid_refused, "internal_errors": internal, "handle_request_raised": handle_raised,
        "escapes": internal + handle_raised,
        "refused_by_kind": kinds_refused, "examples": {k: v[:5] for k, v in examples.items()},
        "alive": alive, "sentinel_ok": sentinel_ok, "server_counters": counters,
        "rss_before_mb": rounded(rss_before, 1), "rss_after_mb": rounded(rss_after, 1),
        "tracemalloc_peak_mb": rounded(peak / 2**20, 2), "seconds": rounded(elapsed_s, 2),
        "requests_per_s": rounded(sent / elapsed_s, 0),
    }


# ---------------------------------------------------------------------------------------------- campaign
def run(out: Path, *, messages: int = 10_000, queries: int = 10_000, seed: int = 0,
        time_limit_s: float = 1800.0) -> dict[str, Any]:
    started = time.monotonic()
    fuzz = fuzz_messages(messages, seed)
    kinds = {k: sum(1 for kk, _ in fuzz if kk == k) for k in MESSAGE_KINDS}
    print(f"fuzz-messages: {len(fuzz)} messages ({', '.join(f'{k} {n}' for k, n in kinds.items())})", flush=True)
    subscriber = process = query = None
    requests: list = []
    with CrashWatch() as watch:
        if fuzz:
            subscriber = fuzz_subscriber(fuzz)
            print(f"  Subscriber: {json.dumps({k: v for k, v in subscriber.items() if k != 'escape_examples'})}",
                  flush=True)
            process = fuzz_subscribe_process(fuzz)
            print(f"  amodal subscribe --json: {json.dumps({k: v for k, v in process.items() if k != 'traceback'})}",
                  flush=True)
        if queries:
            requests = fuzz_queries(queries, seed)
            query = fuzz_query_server(requests, time_limit_s=max(10.0, time_limit_s - (time.monotonic() - started)))
            print(f"  QueryServer: {json.dumps({k: v for k, v in query.items() if k != 'examples'})}", flush=True)
    crash = watch.summary()
    if subscriber is not None:
        subscriber["escapes"] += crash["uncaught_thread_exceptions"]
    elif query is not None:
        query["escapes"] += crash["uncaught_thread_exceptions"]
    none: dict[str, Any] = {}
    return {
        "parameters": {"messages": messages, "queries": queries, "seed": seed, "message_kinds": kinds,
                       "query_kinds": {k: sum(1 for kk, _ in requests if kk == k) for k in QUERY_KINDS}},
        "summary": {
            "messages": len(fuzz), "queries": (query or none).get("sent", 0),
            "escapes": sum(t["escapes"] for t in (subscriber, process, query) if t is not None),
            "subscriber_received": (subscriber or none).get("received"),
            "subscribe_process_accounted": (process or none).get("accounted"),
            "query_missing_replies": (query or none).get("missing_replies"),
            "query_malformed_not_refused": (query or none).get("malformed_not_refused"),
            "query_internal_errors": (query or none).get("internal_errors"),
            "query_handle_request_raised": (query or none).get("handle_request_raised"),
            "subscriber_rss_growth_mb": _growth(subscriber),
            "subscriber_tracemalloc_peak_mb": (subscriber or none).get("tracemalloc_peak_mb"),
            "process_rss_growth_mb": _growth(process),
            "query_rss_growth_mb": _growth(query),
            "query_tracemalloc_peak_mb": (query or none).get("tracemalloc_peak_mb"),
            "seconds": rounded(time.monotonic() - started, 1),
        },
        "subscriber": subscriber, "subscribe_process": process, "query_server": query, "crash_watch": crash,
    }


def _growth(target: dict[str, Any] | None) -> float | None:
    return None if target is None else rounded(target["rss_after_mb"] - target["rss_before_mb"], 1)


def plot(results: dict[str, Any], ax_row) -> None:
    ax = ax_row[0]
    targets = [(name, results[key]) for name, key in (("Subscriber", "subscriber"), ("subscribe\nprocess",
               "subscribe_process"), ("QueryServer", "query_server")) if results.get(key) is not None]
    before = [t["rss_before_mb"] for _, t in targets]
    after = [t["rss_after_mb"] for _, t in targets]
    x = np.arange(len(targets))
    ax.bar(x - 0.2, before, 0.4, label="RSS before")
    ax.bar(x + 0.2, after, 0.4, label="RSS after")
    ax.set_xticks(x, [name for name, _ in targets])
    ax.set_ylabel("MiB")
    ax.set_title(f"fuzz-messages: {results['summary']['escapes']} escapes")
    ax.legend()
    ax = ax_row[1]
    if results.get("query_server") is not None:
        refused = results["query_server"]["refused_by_kind"]
        sent = results["parameters"]["query_kinds"]
        ax.barh(list(sent), list(sent.values()), label="requests sent")
        ax.barh(list(refused), list(refused.values()), height=0.4, label="error replies")
        q = results["query_server"]
        ax.set_title(f"QueryServer: {q['sent']} requests, {q['missing_replies']} unanswered, "
                     f"{q['internal_errors']} internal errors")
        ax.legend()
    elif results.get("subscriber") is not None:
        kinds = results["parameters"]["message_kinds"]
        ax.barh(list(kinds), list(kinds.values()))
        ax.set_xlabel("messages sent per kind")
        s = results["subscriber"]
        ax.set_title(f"Subscriber: {s['received']}/{s['sent']} received, {s['malformed']} malformed")
