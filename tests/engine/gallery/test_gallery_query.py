"""The gallery query endpoint over real ZeroMQ (tcp loopback): good queries, and malformed ones answered
with errors while the server keeps serving."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import msgpack
import numpy as np
import pytest
import zmq
from conftest import Persons, unit
from PIL import Image

from amodal.engine.gallery import Gallery, GalleryConfig, QueryServer
from amodal.errors import PublishError
from amodal.gallery_client import GalleryClient, GalleryQueryError, GalleryTimeoutError

DIM = 16
_PROJECTION = unit(np.random.default_rng(7).standard_normal((DIM, 3)).T).T  # [DIM, 3]


def mean_colour_embedder(rgb: np.ndarray) -> np.ndarray:
    """uint8[H, W, 3] → float32[DIM]: the centred mean colour through a fixed projection."""
    return unit(_PROJECTION @ (rgb.reshape(-1, 3).mean(axis=0) / 255.0 - 0.5))


def failing_embedder(rgb: np.ndarray) -> np.ndarray:
    if rgb.shape[0] == 13:
        raise RuntimeError("cannot embed 13-pixel-high crops")
    return mean_colour_embedder(rgb)


def _image(colour, fmt: str, size=(24, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


COLOURS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 30, 210)}


@pytest.fixture
def gallery() -> Gallery:
    gallery = Gallery(GalleryConfig(dim=DIM, match_threshold=0.9, min_observations=2))
    persons = Persons(count=4, dim=DIM, seed=3)
    for p in range(4):
        persons.feed(gallery, p, "cam", track_id=p, frames=4)
    for i, colour in enumerate(COLOURS.values()):  # identities 5, 6, 7 wear red, green, blue
        embedding = mean_colour_embedder(np.full((8, 8, 3), colour, np.uint8))
        for t in range(3):
            gallery.update_track("shop", 100 + i, embedding, 1.0, t, (1.0, 2.0, 3.0, 4.0))
    assert len(gallery) == 7
    gallery.persons = persons  # the test data behind identities 1-4
    return gallery


@pytest.fixture
def server(gallery: Gallery, endpoint: str):
    with QueryServer(gallery, endpoint, embed_image=failing_embedder) as server:
        yield server


def test_embedding_queries_f4_and_f2(gallery: Gallery, server: QueryServer, endpoint: str):
    with GalleryClient(endpoint, timeout_s=5) as client:
        for dtype in ("f4", "f2"):
            matches = client.search(embedding=gallery.persons.base[2], k=3, dtype=dtype)
            assert len(matches) == 3 and matches[0].global_id == 3
            assert matches[0].similarity > 0.8 and matches[0].similarity >= matches[1].similarity
            assert matches[0].sightings[0].stream_id == "cam" and matches[0].sightings[0].track_id == 2
            if dtype == "f4":  # the wire form loses nothing
                assert matches == gallery.search(gallery.persons.base[2][None], k=3)[0]


def test_image_queries_and_stats(server: QueryServer, endpoint: str):
    with GalleryClient(endpoint, timeout_s=5) as client:
        assert client.search(image=_image(COLOURS["red"], "PNG"), k=1)[0].global_id == 5
        assert client.search(image=_image(COLOURS["green"], "JPEG"), k=1)[0].global_id == 6
        blue = np.full((10, 6, 3), COLOURS["blue"], np.uint8)
        top = client.search(image=blue, k=2)  # an array is sent as PNG
        assert top[0].global_id == 7 and top[0].sightings[0].box_xyxy == (1.0, 2.0, 3.0, 4.0)
        stats = client.stats()
        assert stats["identities"] == 7 and stats["device"] == "cpu" and stats["index_kind"] == "exact"


def _raw(endpoint: str, payload: bytes) -> dict:
    with GalleryClient(endpoint, timeout_s=5) as client:
        return client.request_raw(payload)


def _pack(**fields) -> bytes:
    return msgpack.packb({"v": 1, **fields}, use_bin_type=True)


def test_malformed_requests_get_error_replies_and_the_server_keeps_answering(gallery: Gallery, server: QueryServer,
                                                                             endpoint: str):
    good = np.asarray(gallery.persons.base[0], "<f4").tobytes()
    cases = {
        b"\xc1 not msgpack": "not msgpack",
        msgpack.packb([1, 2, 3]): "expected a map",
        msgpack.packb({"op": "stats"}): "request version None",
        _pack(op="delete"): "unknown op 'delete'",
        _pack(op="search", embedding=good, dtype="f4"): "k must be an int",
        _pack(op="search", embedding=good, dtype="f4", k="3"): "k must be an int",
        _pack(op="search", embedding=good, dtype="f4", k=0): r"k must be an int in \[1, 100\], got 0",
        _pack(op="search", embedding=good, dtype="f4", k=101): "got 101",
        _pack(op="search", embedding=good[:-4], dtype="f4", k=1): "60 bytes; dimension 16 in f4 needs 64",
        _pack(op="search", embedding=good, dtype="f8", k=1): "dtype must be one of",
        _pack(op="search", embedding="0.1,0.2", dtype="f4", k=1): "embedding must be msgpack bin",
        _pack(op="search", embedding=np.full(DIM, np.nan, "<f4").tobytes(), dtype="f4", k=1): "non-finite",
        _pack(op="search", embedding=np.zeros(DIM, "<f4").tobytes(), dtype="f4", k=1): "zero norm",
        _pack(op="search", k=1): "exactly one of 'embedding' and 'image'",
        _pack(op="search", embedding=good, dtype="f4", image=b"x", k=1): "exactly one of",
        _pack(op="search", image=b"GIF89a garbage", k=1): "cannot be decoded as JPEG or PNG",
        _pack(op="search", image=_image((1, 2, 3), "PNG")[:40], k=1): "cannot be decoded",
        _pack(op="search", image=_image((1, 2, 3), "BMP"), k=1): "cannot be decoded",
        _pack(op="search", image=_image((1, 2, 3), "PNG", size=(5, 13)), k=1): "embedder failed on a 5x13 image",
    }
    for payload, message in cases.items():
        reply = _raw(endpoint, payload)
        assert reply["v"] == 1 and reply["ok"] is False, (payload[:40], reply)
        assert re.search(message, reply["error"]), (message, reply["error"])
        # after each bad request, a good one is still answered
        assert _raw(endpoint, _pack(op="search", embedding=good, dtype="f4", k=1))["matches"][0]["global_id"] == 1
    # a multipart request is refused too
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart([b"a", b"b"])
        assert sock.poll(5000)
        assert "1-part message, got 2" in msgpack.unpackb(sock.recv())["error"]
    finally:
        sock.close()
    assert server.errors == len(cases) + 1 and server.requests == 2 * len(cases) + 1


def test_image_query_without_embedder_and_client_errors(gallery: Gallery, endpoint: str):
    with QueryServer(gallery, endpoint, embed_image=None), GalleryClient(endpoint, timeout_s=5) as client:
        with pytest.raises(GalleryQueryError, match="need an image embedder"):
            client.search(image=_image((1, 2, 3), "PNG"), k=1)
        assert client.search(embedding=gallery.persons.base[1], k=1)[0].global_id == 2
        with pytest.raises(ValueError, match="exactly one"):
            client.search(k=1)


def test_timeout_and_bind_failure(gallery: Gallery, endpoint: str):
    with GalleryClient(endpoint, timeout_s=0.2) as client:  # nothing listens there
        with pytest.raises(GalleryTimeoutError, match="no reply within 0.2 s"):
            client.stats()
        with QueryServer(gallery, endpoint):  # the client recovers once a server appears
            assert client.stats()["identities"] == 7
    with QueryServer(gallery, endpoint):
        with pytest.raises(PublishError, match="cannot bind"):
            QueryServer(gallery, endpoint).start()


def test_amodal_query_cli(gallery: Gallery, endpoint: str, tmp_path):
    npy = tmp_path / "query.npy"
    np.save(npy, gallery.persons.base[3])
    png = tmp_path / "crop.png"
    png.write_bytes(_image(COLOURS["blue"], "PNG"))
    with QueryServer(gallery, endpoint, embed_image=mean_colour_embedder):
        out = subprocess.run([sys.executable, "-m", "amodal.cli", "query", "--endpoint", endpoint,
                              "--embedding-npy", str(npy), "--k", "2"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        matches = json.loads(out.stdout)["matches"]
        assert [m["global_id"] for m in matches][:1] == [4] and len(matches) == 2
        out = subprocess.run([sys.executable, "-m", "amodal.cli", "query", "--endpoint", endpoint,
                              "--image", str(png), "--k", "1"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and json.loads(out.stdout)["matches"][0]["global_id"] == 7, out.stderr
        bad = tmp_path / "bad.npy"
        np.save(bad, np.ones(5, np.float32))
        out = subprocess.run([sys.executable, "-m", "amodal.cli", "query", "--endpoint", endpoint,
                              "--embedding-npy", str(bad)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "20 bytes; dimension 16" in out.stderr
