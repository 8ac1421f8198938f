"""``Subscriber`` over a real loopback ZeroMQ PUB socket: malformed messages are counted and skipped, every
good one is yielded; ``amodal subscribe`` (console and ``--json``) survives whatever arrives."""
from __future__ import annotations

import json
import logging
import random
import threading

import msgpack
import pytest

from amodal import schema
from amodal.cli_subscribe import main as subscribe_main
from amodal.schema import AmendmentMessage, FrameMessage, StatusMessage
from amodal.subscriber import Subscriber, SubscriberStats
from amodal.types import Amendment, FrameResult, ObjectResult, RLEMask, StreamEvent, StreamState
from tests.support.wire import bind_pub, wait_connected

NAN, INF = float("nan"), float("inf")


@pytest.fixture
def pub(endpoint):
    sock = bind_pub(endpoint)
    yield sock
    sock.close(0)


def _ready(sub: Subscriber, pub) -> Subscriber:
    """``sub`` connected to ``pub``, with fresh stats (the probes are not counted)."""
    wait_connected(pub, lambda wait_s: sub.recv(wait_s) is not None)
    sub.stats = SubscriberStats()
    return sub


def _frame(stream_id: str, index: int, class_name: str = "person") -> FrameResult:
    import numpy as np

    mask = np.zeros((8, 8), bool)
    mask[2:5, 1:7] = True
    obj = ObjectResult(1, class_name, 0.75, (1.0, 2.0, 7.0, 5.0), RLEMask.encode(mask), track_id=index,
                       occlusion_level=0.25, occlusion_layer=1, global_id=3)
    return FrameResult(stream_id, index, index / 25, 1_700_000_000_000_000_000 + index, 8, 8, (obj,), "test",
                       stage_ms={"queue": 1.0, "model": 2.0})


def _bad(payload: bytes, path: tuple, value) -> bytes:
    """``payload`` (one valid message) with the field at ``path`` replaced by ``value``."""
    d = msgpack.unpackb(payload, raw=False)
    node = d
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return msgpack.packb(d, use_bin_type=True)


def _malformed_messages() -> list[list[bytes]]:
    """One of each defect from the issue, plus broken framing."""
    frame = schema.encode_frame(_frame("a", 99), 99, 5)
    status = schema.encode_status(StreamEvent("a", StreamState.RECONNECTING, "refused", 1, attempt=2), 99)
    obj = ("objects", 0)
    frames_a = b"frames/a/"
    return [
        [frames_a, _bad(frame, ("stage_ms", "model"), "slow")],
        [frames_a, _bad(frame, ("stage_ms", "model"), NAN)],
        [frames_a, _bad(frame, (*obj, "occlusion_level"), "high")],
        [frames_a, _bad(frame, (*obj, "occlusion_level"), INF)],
        [frames_a, _bad(frame, (*obj, "score"), NAN)],
        [frames_a, _bad(frame, (*obj, "mask", "counts"), b"caf\xc3\xa9")],
        [frames_a, _bad(frame, (*obj, "occlusion_layer"), b"\x01")],
        [frames_a, _bad(frame, (*obj, "global_id"), b"\x03")],
        [frames_a, _bad(frame, ("v",), True)],
        [frames_a, _bad(frame, ("v",), 1.0)],
        [b"status/", _bad(status, ("attempt",), "3")],
        [b"status/", _bad(status, ("attempt",), [1])],
        [b"status/", _bad(status, ("attempt",), INF)],
        [b"status/", _bad(status, ("attempt",), NAN)],
        [frames_a, b"\xc1 not msgpack"],
        [frames_a],  # one part
        [frames_a, frame, b"extra"],  # three parts
        [b"frames/\xff/", frame],  # topic not UTF-8
    ]


def test_malformed_messages_are_counted_and_every_good_one_is_yielded(endpoint, pub):
    bad = _malformed_messages()
    good = [[b"frames/a/", schema.encode_frame(_frame("a", i), i, 5)] for i in range(40)]
    good += [[b"status/", schema.encode_status(StreamEvent("a", StreamState.UP, None, 7), i)] for i in range(10)]
    stream = _interleave(good, bad * 3, random.Random(4))
    with Subscriber(endpoint) as sub:
        _ready(sub, pub)
        for parts in stream:
            pub.send_multipart(parts)
        got = list(_drain(sub))
    frames = [m for m in got if isinstance(m, FrameMessage)]
    assert [m.result.frame_index for m in frames] == list(range(40))
    assert [m.seq for m in got if isinstance(m, StatusMessage)] == list(range(10))
    assert sub.stats.malformed == len(bad) * 3
    assert sub.stats.received == len(good) + len(bad) * 3
    assert sub.stats.lost == {} and sub.stats.restarts == 0


def _interleave(good: list, bad: list, rng: random.Random) -> list:
    """``good`` in its order with ``bad`` scattered between."""
    out = list(good)
    for parts in bad:
        out.insert(rng.randrange(len(out) + 1), parts)
    return out


def _drain(sub: Subscriber, quiet_s: float = 1.0):
    while (message := sub.recv(quiet_s)) is not None:
        yield message


@pytest.mark.parametrize("flags", [["--json"], []], ids=["json", "console"])
def test_cli_survives_malformed_and_odd_messages(endpoint, pub, capsys, flags):
    """``amodal subscribe`` prints every good message (odd strings too) and one summary of the malformed ones."""
    rc: list[int] = []
    thread = threading.Thread(target=lambda: rc.append(subscribe_main([endpoint, *flags, "--timeout", "5"])))
    thread.start()
    printed: list[str] = []

    def probe_printed(wait_s: float) -> bool:
        thread.join(wait_s)
        printed.append(capsys.readouterr().out)
        return "probe" in printed[-1]

    try:
        wait_connected(pub, probe_printed)
        odd = _frame("a", 0, class_name="caf\u00e9 \x1b[2J \u2603")
        messages = [[b"frames/a/", schema.encode_frame(odd, 0, 5)], *_malformed_messages(),
                    [b"frames/a/", schema.encode_frame(_frame("a", 1), 1, 5)]]
        for parts in messages:
            pub.send_multipart(parts)
    finally:
        thread.join(30)
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line and "probe" not in line]
    assert rc == [0]
    assert len(lines) == 2, lines
    if flags == ["--json"]:
        docs = [json.loads(line) for line in lines]
        assert [d["frame_index"] for d in docs] == [0, 1]
        assert docs[0]["objects"][0]["class_name"] == "caf\u00e9 \x1b[2J \u2603"
    else:
        assert "frame      0" in lines[0] and "frame      1" in lines[1]
        assert "\x1b" not in lines[0], "control characters from the wire must not reach the terminal"
    assert f"skipped {len(_malformed_messages())} malformed message(s)" in captured.err


# --------------------------------------------------------------------------------------------- amendments
def _amendment(stream_id: str, index: int) -> Amendment:
    obj = ObjectResult(1, "person", 0.75, (1.0, 2.0, 7.0, 5.0), occlusion_layer=2)
    region = ObjectResult(0, "layer", 1.0, (0.0, 0.0, 8.0, 8.0), occlusion_layer=1)
    return Amendment(stream_id, index, "layers", 1_700_000_000_000_000_000 + index, 8, 8, (obj, region), (0, None),
                     stage_ms={"layers": 4.0})


def _frames_and_amendments(n: int, skip_frames=(), skip_amendments=()) -> list[list[bytes]]:
    """Frame i then its amendment, on ``frames/a/``; each type numbered by its own sequence (frame i: seq i,
    amendment i: seq i); the ``skip_*`` sequence numbers are not sent (lost)."""
    out = []
    for i in range(n):
        if i not in skip_frames:
            out.append([b"frames/a/", schema.encode_frame(_frame("a", i), i, 5)])
        if i not in skip_amendments:
            out.append([b"frames/a/", schema.encode_amendment(_amendment("a", i), i, 6)])
    return out


def test_frames_and_amendments_have_separate_sequences(endpoint, pub):
    with Subscriber(endpoint) as sub:
        _ready(sub, pub)
        for parts in _frames_and_amendments(6):
            pub.send_multipart(parts)
        got = list(_drain(sub))
        assert [type(m).__name__ for m in got] == ["FrameMessage", "AmendmentMessage"] * 6
        assert [m.amendment.frame_index for m in got if isinstance(m, AmendmentMessage)] == list(range(6))
        assert sub.stats.lost == {} and sub.stats.restarts == 0 and sub.stats.malformed == 0


def test_lost_frames_and_amendments_are_counted_per_sequence(endpoint, pub):
    with Subscriber(endpoint) as sub:
        _ready(sub, pub)
        for parts in _frames_and_amendments(8, skip_frames={2, 3}, skip_amendments={5}):
            pub.send_multipart(parts)
        got = list(_drain(sub))
    assert len(got) == 8 + 8 - 3
    assert sub.stats.lost == {"frames/a/": 3} and sub.stats.lost_amendments == {"frames/a/": 1}
    assert sub.stats.restarts == 0 and sub.stats.malformed == 0


def test_publisher_restart_is_seen_in_either_sequence(endpoint, pub):
    with Subscriber(endpoint) as sub:
        _ready(sub, pub)
        for parts in _frames_and_amendments(3) + _frames_and_amendments(2):  # the second run starts at seq 0 again
            pub.send_multipart(parts)
        got = list(_drain(sub))
    assert len(got) == 10 and sub.stats.restarts == 2 and sub.stats.lost == {}


def test_amendments_false_skips_them_silently(endpoint, pub):
    with Subscriber(endpoint, amendments=False) as sub:
        _ready(sub, pub)
        for parts in _frames_and_amendments(5, skip_amendments={2}):
            pub.send_multipart(parts)
        got = list(_drain(sub))
    assert [m.result.frame_index for m in got] == list(range(5)) and all(isinstance(m, FrameMessage) for m in got)
    assert sub.stats.malformed == 0 and sub.stats.unknown_types == 0 and sub.stats.lost == {}
    assert sub.stats.received == 10 - 1


def test_malformed_amendments_are_counted(endpoint, pub):
    bad = msgpack.unpackb(schema.encode_amendment(_amendment("a", 0), 0, 6), raw=False)
    bad["refs"] = [0]  # two objects, one ref
    with Subscriber(endpoint) as sub:
        _ready(sub, pub)
        pub.send_multipart([b"frames/a/", msgpack.packb(bad, use_bin_type=True)])
        pub.send_multipart([b"frames/a/", schema.encode_frame(_frame("a", 0), 0, 5)])
        got = list(_drain(sub))
    assert [type(m) for m in got] == [FrameMessage]
    assert sub.stats.malformed == 1 and "refs" in sub.stats.last_error


# ------------------------------------------------------------------------------------------ unknown types
def test_unknown_version_1_types_are_counted_apart_and_quietly(endpoint, pub, caplog):
    future = [{"v": 1, "type": "heatmap", "seq": i, "stream_id": "a", "cells": b"\x00" * 16} for i in range(4)]
    with Subscriber(endpoint) as sub:
        _ready(sub, pub)
        caplog.set_level(logging.DEBUG, logger="amodal.subscriber")
        for i, d in enumerate(future):
            pub.send_multipart([b"frames/a/", msgpack.packb(d, use_bin_type=True)])
            pub.send_multipart([b"frames/a/", schema.encode_frame(_frame("a", i), i, 5)])
        pub.send_multipart([b"frames/a/", msgpack.packb({**future[0], "v": 2}, use_bin_type=True)])  # another version
        got = list(_drain(sub))
    assert [m.result.frame_index for m in got] == [0, 1, 2, 3]
    assert sub.stats.unknown_types == 4 and sub.stats.malformed == 1 and sub.stats.lost == {}
    unknown = [r for r in caplog.records if "heatmap" in r.getMessage()]
    assert len(unknown) == 4 and all(r.levelno == logging.DEBUG for r in unknown)
