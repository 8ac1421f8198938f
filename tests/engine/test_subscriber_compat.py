"""A subscriber of the previous release (0.1, commit 57d38e0) still decodes frame messages and skips amendments.

The previous release's ``amodal/schema.py`` and ``amodal/subscriber.py`` are loaded from git history under other
module names (they import only ``amodal.errors`` and ``amodal.types``, which stay compatible).  Amendments are
published on the frame's topic with their own sequence numbers, so the old subscriber counts them malformed and
sees its frame sequence without gaps.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from amodal import schema
from amodal.types import Amendment, FrameResult, ObjectResult, RLEMask
from tests.support.wire import bind_pub, wait_connected

PREVIOUS_RELEASE = "57d38e0"
REPO = Path(__file__).resolve().parents[2]


def _git_show(path: str) -> str:
    """The file at the previous release; skips the test where history is absent (a shallow clone; CI clones fully)."""
    try:
        done = subprocess.run(["git", "-C", str(REPO), "show", f"{PREVIOUS_RELEASE}:{path}"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"git is not usable here ({exc}); the previous release's {path} cannot be read")
    if done.returncode != 0:
        pytest.skip(f"commit {PREVIOUS_RELEASE} is not in this clone's history (shallow clone?): {done.stderr.strip()}")
    return done.stdout


def _load(name: str, source: str, directory: Path) -> ModuleType:
    path = directory / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    """(schema, subscriber) modules of the previous release; the old subscriber imports the old schema."""
    directory = tmp_path_factory.mktemp("previous_release")
    old_schema = _load("amodal_0_1_schema", _git_show("amodal/schema.py"), directory)
    source = _git_show("amodal/subscriber.py")
    rewritten = source.replace("from amodal import schema\n", "import amodal_0_1_schema as schema\n").replace(
        "from amodal.schema import", "from amodal_0_1_schema import")
    assert rewritten.count("amodal_0_1_schema") == 2, "the previous subscriber's schema imports changed shape"
    old_subscriber = _load("amodal_0_1_subscriber", rewritten, directory)
    yield old_schema, old_subscriber
    for name in ("amodal_0_1_subscriber", "amodal_0_1_schema"):
        sys.modules.pop(name, None)


def _frame(index: int) -> FrameResult:
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:9, 4:17] = True
    amodal = mask.copy()
    amodal[3:12, 4:20] = True
    emb = np.linspace(-1, 1, 8).astype(np.float16)
    objects = (
        ObjectResult(1, "person", 0.9, (4.0, 3.0, 17.0, 9.0), RLEMask.encode(mask), 7, RLEMask.encode(amodal),
                     RLEMask.encode(amodal & ~mask), 0.33, 2, emb, 12),
        ObjectResult(3, "car", 0.25, (0.0, 0.0, 1.5, 2.5)),
    )
    return FrameResult("cam1", index, index / 25, 1_700_000_000_123_456_789 + index, 30, 20, objects, "ovis",
                       stage_ms={"queue": 1.25, "model": 3.5})


def _amendment(index: int) -> Amendment:
    return Amendment("cam1", index, "layers", 1_700_000_000_123_456_789 + index, 30, 20,
                     (ObjectResult(1, "person", 0.9, (4.0, 3.0, 17.0, 9.0), occlusion_layer=2),), (0,),
                     stage_ms={"layers": 20.0})


def _assert_same_result(old: FrameResult, new: FrameResult) -> None:
    for name in FrameResult.__slots__:
        if name != "objects":
            assert getattr(old, name) == getattr(new, name), name
    assert len(old.objects) == len(new.objects)
    for a, b in zip(old.objects, new.objects):
        for name in ObjectResult.__slots__:
            x, y = getattr(a, name), getattr(b, name)
            if isinstance(y, np.ndarray):
                assert x.dtype == y.dtype and np.array_equal(x, y), name
            else:
                assert x == y and type(x) is type(y), name


def test_previous_release_decodes_new_frames_exactly(previous):
    old_schema, _ = previous
    payload = schema.encode_frame(_frame(41), 5, 1_700_000_000_200_000_000)
    old = old_schema.decode(b"frames/cam1/", payload)
    new = schema.decode(b"frames/cam1/", payload)
    assert type(old).__name__ == "FrameMessage" and old.__module__ == "amodal_0_1_schema"
    assert (old.topic, old.seq, old.publish_time_ns) == (new.topic, new.seq, new.publish_time_ns)
    _assert_same_result(old.result, new.result)


def test_previous_release_rejects_amendments_with_schema_error(previous):
    old_schema, _ = previous
    from amodal.errors import SchemaError

    with pytest.raises(SchemaError, match="unknown message type 'amendment'"):
        old_schema.decode(b"frames/cam1/", schema.encode_amendment(_amendment(41), 0, 1))


def test_previous_release_subscriber_skips_amendments_without_a_frame_gap(previous, endpoint):
    _, old_subscriber = previous
    pub = bind_pub(endpoint)
    sub = old_subscriber.Subscriber(endpoint)
    try:
        wait_connected(pub, lambda wait_s: sub.recv(wait_s) is not None)
        sub.stats = old_subscriber.SubscriberStats()
        for i in range(6):  # frame i (frame seq i), then its amendment (amendment seq i), as the engine publishes them
            pub.send_multipart([b"frames/cam1/", schema.encode_frame(_frame(i), i, 5)])
            pub.send_multipart([b"frames/cam1/", schema.encode_amendment(_amendment(i), i, 6)])
        got = []
        while (message := sub.recv(1.0)) is not None:
            got.append(message)
    finally:
        sub.close()
        pub.close(0)
    assert [m.result.frame_index for m in got] == list(range(6))
    assert sub.stats.malformed == 6 and "unknown message type 'amendment'" in sub.stats.last_error
    assert sub.stats.lost == {} and sub.stats.restarts == 0
