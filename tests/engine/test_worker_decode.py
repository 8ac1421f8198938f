"""Decode in worker processes (``decode: processes``): frames cross through shared memory complete and in order,
queue policies keep their meaning, a killed worker restarts without disturbing other streams, and neither a stop
nor a killed engine leaves a process or a ``/dev/shm`` segment behind."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from amodal.engine.config import EngineConfig
from amodal.engine.engine import Engine
from amodal.engine.sink import Sink
from amodal.engine.stage import StageBatch
from amodal.engine.stages.identity import IdentityStage
from amodal.errors import ConfigError
from amodal.streams.base import SourceConfig
from amodal.streams.open import open_source
from amodal.streams.planes import frame_planes
from amodal.streams.shm_ring import NAME_PREFIX, segment_names
from amodal.streams.worker import WorkerSource, ring_slots
from amodal.types import ObjectResult, StreamState
from tests.support.array_source import ArraySource
from tests.support.media import make_video
from tests.support.worker_sources import ResizingSource, resizing_planes

REPO = Path(__file__).resolve().parents[2]


def _digest(planes) -> str:
    h = hashlib.sha1()
    for p in planes:
        h.update(str((p.shape, p.dtype.str)).encode())
        h.update(np.ascontiguousarray(p).tobytes())
    return h.hexdigest()


class _RecordingSink(Sink):
    """Digests of every analysed frame's planes (taken while the engine holds them) and every event."""

    name = "recording"

    def __init__(self) -> None:
        self.frames: list[tuple[str, int, str, bool, object]] = []  # stream, index, digest, in shared memory, scan
        self.events = []
        self._cond = threading.Condition()

    def write_results(self, frames, results) -> None:
        with self._cond:
            for f in frames:
                shared = all(not p.flags.owndata for p in f.planes)
                self.frames.append((f.stream_id, f.index, _digest(f.planes), shared, f.scan))
            self._cond.notify_all()

    def write_event(self, event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def indexes(self, stream_id: str) -> list[int]:
        with self._cond:
            return [i for s, i, *_ in self.frames if s == stream_id]

    def wait(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def ended(self, stream_id: str) -> bool:
        return any(e.stream_id == stream_id and e.state in (StreamState.ENDED, StreamState.REMOVED)
                   for e in self.events)


class _SlowStage(IdentityStage):
    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        time.sleep(0.03)
        return super().process(batch)


def _engine(endpoint: str, sink: _RecordingSink, stage=None, **kw) -> Engine:
    config = EngineConfig(publish=endpoint, decode="processes", **kw)
    return Engine(config, pipelines={"default": [stage or IdentityStage()]}, sinks=[sink]).start()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_decode_setting_is_validated() -> None:
    assert EngineConfig().decode == "processes"
    assert EngineConfig.from_dict({"decode": "threads"}).decode == "threads"
    with pytest.raises(ConfigError, match="decode must be one of processes, threads"):
        EngineConfig(decode="gpu")


@pytest.mark.parametrize("decode_workers", [0, 1], ids=["a process per source", "a pool of one"])
def test_frames_from_a_worker_match_a_direct_pyav_decode(endpoint, tmp_path, decode_workers) -> None:
    clip = make_video(tmp_path / "clip.mp4", seconds=2.0, size=(176, 144), gop=10)
    with av.open(str(clip)) as container:
        expected = [_digest(frame_planes(f)[1]) for f in container.decode(video=0)]
    sink = _RecordingSink()
    engine = _engine(endpoint, sink, decode_workers=decode_workers)
    try:
        for sid in ("clip", "again"):  # with a pool of one, both sources decode in the same worker process
            engine.add_source(SourceConfig(uri=str(clip), stream_id=sid))
        assert sink.wait(lambda: sink.ended("clip") and sink.ended("again"), 30)
    finally:
        engine.stop()
    for sid in ("clip", "again"):
        got = [(i, digest, shared) for s, i, digest, shared, _ in sink.frames if s == sid]
        assert [i for i, _, _ in got] == list(range(len(expected)))
        assert [d for _, d, _ in got] == expected  # every plane, byte for byte, in decode order
        assert all(shared for _, _, shared in got)  # read in place from the worker's ring, never copied or pickled
        assert [e.state for e in sink.events if e.stream_id == sid] == [
            StreamState.CONNECTING, StreamState.UP, StreamState.ENDED]


def test_a_resolution_change_resizes_the_ring_and_every_frame_field_crosses(endpoint) -> None:
    source = ResizingSource("scans", 12, first_hw=(24, 32), then_hw=(60, 90), switch_at=5)
    sink = _RecordingSink()
    engine = _engine(endpoint, sink)
    try:
        engine.add_source(source)
        assert sink.wait(lambda: sink.ended("scans"), 30)
    finally:
        engine.stop()
    rows = [r for r in sink.frames if r[0] == "scans"]
    assert [r[1] for r in rows] == list(range(12))
    for _, i, digest, shared, scan in rows:
        assert digest == _digest(resizing_planes(i, source.size_of(i)))
        assert shared and scan.bag_id == f"bag-{i}" and scan.file_name == f"scan_{i:03d}.dcm"


def test_drop_oldest_still_drops_under_a_slow_stage(endpoint, tmp_path) -> None:
    clip = make_video(tmp_path / "clip.mp4", seconds=2.0, size=(160, 120))
    sink = _RecordingSink()
    engine = _engine(endpoint, sink, stage=_SlowStage(), max_batch_size=1)
    try:
        engine.add_source(SourceConfig(uri=str(clip), stream_id="cam", overflow="drop-oldest", queue_size=2))
        assert sink.wait(lambda: sink.ended("cam"), 30)
    finally:
        engine.stop()
    analysed = sink.indexes("cam")
    notices = [e for e in sink.events if e.state == StreamState.DROPPED]
    dropped = sum(1 if " dropped frame " in e.reason else int(e.reason.split(" dropped ", 1)[1].split(" frames")[0])
                  for e in notices)
    assert notices and dropped, "a file decoded at full speed outruns a 30 ms stage: frames must be dropped"
    assert analysed == sorted(set(analysed)) and analysed[-1] == 49  # in order; the newest frame is kept
    assert len(analysed) + dropped == 50, (analysed, [e.reason for e in notices])  # analysed or reported, once


def test_a_killed_worker_restarts_and_its_stream_resumes_while_another_keeps_flowing(endpoint) -> None:
    sink = _RecordingSink()
    engine = _engine(endpoint, sink)
    victim = WorkerSource(ArraySource("victim", 100_000, interval_s=0.01, live=True))
    other = WorkerSource(ArraySource("other", 100_000, interval_s=0.01, live=True))
    try:
        engine.add_source(victim)
        engine.add_source(other)
        assert sink.wait(lambda: len(sink.indexes("victim")) >= 5 and len(sink.indexes("other")) >= 5, 30)
        killed_pid, other_pid = victim.pid, other.pid
        os.kill(killed_pid, signal.SIGKILL)
        assert sink.wait(lambda: any(e.stream_id == "victim" and e.state == StreamState.ERROR for e in sink.events), 10)
        before = len(sink.indexes("victim"))
        other_at_error = len(sink.indexes("other"))
        assert sink.wait(lambda: len(sink.indexes("victim")) >= before + 5, 30), "the restarted worker must deliver"
        other_after = len(sink.indexes("other"))
    finally:
        engine.stop()
    error = next(e for e in sink.events if e.stream_id == "victim" and e.state == StreamState.ERROR)
    assert not error.fatal and "SIGKILL" in error.reason and "restarting" in error.reason
    assert victim.pid != killed_pid and victim.restarts == 1 and other.pid == other_pid
    victim_indexes = sink.indexes("victim")
    assert victim_indexes == sorted(set(victim_indexes)), "indexes keep increasing across the restart"
    assert other_after > other_at_error, "the other stream flowed while the victim restarted"
    assert not [e for e in sink.events if e.stream_id == "other" and e.state == StreamState.ERROR]
    assert not _alive(killed_pid)


def test_no_process_and_no_shared_memory_segment_survive_a_stop(endpoint, tmp_path) -> None:
    clip = make_video(tmp_path / "clip.mp4", seconds=1.0, size=(160, 120))
    prefix = f"{NAME_PREFIX}{os.getpid()}-"
    sink = _RecordingSink()
    engine = _engine(endpoint, sink)
    sources = [WorkerSource(open_source(SourceConfig(uri=str(clip), stream_id=f"f{i}", loop=True))) for i in range(2)]
    sources.append(WorkerSource(ArraySource("cam", 100_000, interval_s=0.005, live=True)))
    try:
        for s in sources:
            engine.add_source(s)
        assert sink.wait(lambda: all(len(sink.indexes(s.stream_id)) >= 10 for s in sources), 30)
        running_names = segment_names(prefix)
        engine.remove_source("f1")
        pids = [s.pid for s in sources]
    finally:
        engine.stop()
    assert running_names == [], "the engine unlinks each ring's name as soon as it has mapped it"
    assert segment_names(prefix) == []
    assert _wait_until(lambda: not any(_alive(p) for p in pids), 5), [p for p in pids if _alive(p)]


# the engine's side of decode workers without the rest of the engine (no torch import: the test stays short)
_PROXY_SCRIPT = """
import sys, threading, time
from amodal.streams.base import SourceConfig
from amodal.streams.open import open_source
from amodal.streams.worker import WorkerSource

class Discard:
    frames = 0
    def put_frame(self, frame):
        Discard.frames += 1
        return True
    def put_event(self, event):
        return None  # events are not what this script checks

stop = threading.Event()
for i, uri in enumerate(sys.argv[1:]):
    source = WorkerSource(open_source(SourceConfig(uri=uri, stream_id=f"s{i}", loop=True, realtime=True)))
    threading.Thread(target=source.run, args=(Discard(), stop), daemon=True).start()
time.sleep(600)
"""


@pytest.mark.parametrize("how", ["Ctrl-C (SIGINT to the process group of amodal run)",
                                 "SIGKILL to the process running the sources"])
def test_an_engine_ended_by_a_signal_leaves_no_worker_and_no_segment(endpoint, tmp_path, how) -> None:
    clip = make_video(tmp_path / "clip.mp4", seconds=1.0, size=(160, 120))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ctrl_c = how.startswith("Ctrl-C")
    if ctrl_c:
        cmd = [sys.executable, "-m", "amodal.cli", "run", "--source", f"a={clip}", "--source", f"b={clip}", "--loop",
               "--realtime", "--pipeline", "identity", "--publish", endpoint]
    else:
        cmd = [sys.executable, "-c", _PROXY_SCRIPT, str(clip), str(clip)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a shell gives a foreground job
    try:
        workers: set[int] = set()
        # two decode workers (children of the fork server) are running
        assert _wait_until(lambda: len(workers.update(p for p in _descendants(proc.pid) if "amodal-decode" in
                                                      _cmdline(p)) or workers) >= 2, 60), _descendants(proc.pid)
        time.sleep(1.0)  # frames flowing through the rings
        everything = _descendants(proc.pid)
        if ctrl_c:  # the terminal signals every process of the group: workers ignore it, the engine stops them
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.kill()
        proc.wait(30)
        if ctrl_c:
            assert proc.returncode == 0, proc.stderr.read()
        assert _wait_until(lambda: not any(_alive(p) for p in everything), 15), \
            [(p, _cmdline(p)) for p in everything if _alive(p)]
        assert segment_names(f"{NAME_PREFIX}{proc.pid}-") == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _cmdline(pid: int) -> str:
    """A process's command line and name (decode workers name themselves ``amodal-decode``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/comm") as f:
            return cmdline + " " + f.read().strip()
    except OSError:
        return ""


class _KeepingSink:
    """Keeps every frame it gets (so their slots stay held) until ``release()``; records worker-side drops."""

    def __init__(self) -> None:
        self.frames, self.events, self.dropped = [], [], []
        self.seen: list[int] = []

    def put_frame(self, frame) -> bool:
        self.frames.append(frame)
        self.seen.append(frame.index)
        return True

    def put_event(self, event) -> None:
        self.events.append(event)

    def record_dropped(self, index: int, label) -> None:
        self.dropped.append(index)

    def release(self) -> None:
        self.frames.clear()


def test_with_every_slot_held_a_live_worker_drops_new_frames_and_a_file_worker_waits() -> None:
    live = WorkerSource(ArraySource("cam", 20, live=True))  # drop-oldest, queue 2
    slots = ring_slots(2)
    sink = _KeepingSink()
    live.run(sink, threading.Event())
    assert sink.seen == list(range(slots)) and sink.dropped == list(range(slots, 20))
    assert sink.events[-1].state == StreamState.ENDED

    file_like = WorkerSource(ArraySource("file", 60))  # block, queue 16
    slots = ring_slots(16)
    sink = _KeepingSink()
    stop = threading.Event()
    runner = threading.Thread(target=file_like.run, args=(sink, stop), daemon=True)
    runner.start()
    assert _wait_until(lambda: len(sink.seen) >= slots, 20)
    time.sleep(0.3)
    assert sink.seen == list(range(slots)) and not sink.dropped, "the worker waits for a slot, it never drops"
    sink.release()  # the slots go back: the worker continues
    runner.join(20)
    assert not runner.is_alive() and sink.seen == list(range(60)) and not sink.dropped


class _IndexSink:
    """Records indexes and events; keeps no frame (each slot goes back at once)."""

    def __init__(self) -> None:
        self.indexes: list[int] = []
        self.events = []

    def put_frame(self, frame) -> bool:
        assert int(frame.planes[0][0, 0, 0]) == frame.index % 256  # the frame's own pixels (ArraySource)
        self.indexes.append(frame.index)
        return True

    def put_event(self, event) -> None:
        self.events.append(event)


def test_a_file_whose_worker_is_killed_resumes_after_the_last_delivered_frame() -> None:
    source = WorkerSource(ArraySource("file", 150, interval_s=0.004))  # a file: block policy, not live
    sink = _IndexSink()
    runner = threading.Thread(target=source.run, args=(sink, threading.Event()), daemon=True)
    runner.start()
    assert _wait_until(lambda: len(sink.indexes) >= 30, 20)
    os.kill(source.pid, signal.SIGKILL)
    runner.join(30)
    assert not runner.is_alive()
    assert sink.indexes == list(range(150)), "every frame once, in order, across the restart"
    errors = [e for e in sink.events if e.state == StreamState.ERROR]
    assert len(errors) == 1 and not errors[0].fatal and "SIGKILL" in errors[0].reason
    assert sink.events[-1].state == StreamState.ENDED and source.restarts == 1


def test_a_pool_shares_workers_and_a_killed_one_restarts_only_its_sources(endpoint) -> None:
    sink = _RecordingSink()
    engine = _engine(endpoint, sink, decode_workers=2)
    sources = {sid: WorkerSource(ArraySource(sid, 100_000, interval_s=0.01, live=True), engine._decode_pool)
               for sid in ("a", "b", "c")}
    prefix = f"{NAME_PREFIX}{os.getpid()}-"
    try:
        for source in sources.values():
            engine.add_source(source)
        assert sink.wait(lambda: all(len(sink.indexes(sid)) >= 5 for sid in sources), 30)
        pool_pids = engine._decode_pool.pids
        pid_of = {sid: sources[sid].pid for sid in sources}
        # the sources attach from their own threads, in any order: two share a worker, the third has the other
        shared = [sid for sid in sources if list(pid_of.values()).count(pid_of[sid]) == 2]
        (solo,) = set(sources) - set(shared)
        assert len(pool_pids) == 2 and len(shared) == 2 and set(pid_of.values()) == set(pool_pids)
        killed = pid_of[shared[0]]
        os.kill(killed, signal.SIGKILL)
        assert sink.wait(lambda: {e.stream_id for e in sink.events if e.state == StreamState.ERROR} >= set(shared), 10)
        before = {sid: len(sink.indexes(sid)) for sid in sources}
        assert sink.wait(lambda: all(len(sink.indexes(sid)) >= before[sid] + 5 for sid in sources), 30)
        restarted = [sources[sid].pid for sid in shared]
        pool_after = engine._decode_pool.pids
    finally:
        engine.stop()
    # a new pool worker replaced the lost one; the restarted sources run in the pool's live workers
    assert killed not in restarted and set(restarted) <= set(pool_after) and len(pool_after) == 2
    assert sources[solo].pid == pid_of[solo]
    assert not [e for e in sink.events if e.stream_id == solo and e.state == StreamState.ERROR]
    for sid in sources:
        indexes = sink.indexes(sid)
        assert indexes == sorted(set(indexes))
    assert segment_names(prefix) == []
    assert _wait_until(lambda: not any(_alive(p) for p in [killed, *pool_after]), 5)


class _SlowerStage(IdentityStage):
    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        time.sleep(0.15)
        return super().process(batch)


def test_a_scanners_drop_notices_still_name_its_files(endpoint, tmp_path) -> None:
    from PIL import Image

    folder = tmp_path / "belt"
    folder.mkdir()
    old = time.time() - 60  # settled long ago: the scanner delivers them at once, faster than the stage
    for i in range(10):
        path = folder / f"bag_{i:02d}.png"
        Image.fromarray(np.full((16, 16), i * 20, np.uint8)).save(path)
        os.utime(path, (old + i, old + i))
    sink = _RecordingSink()
    engine = _engine(endpoint, sink, stage=_SlowerStage(), max_batch_size=1)
    try:
        engine.add_source(SourceConfig(uri=f"scanner://{folder}?settle_s=0.05", stream_id="belt", queue_size=1,
                                       overflow="drop-oldest", max_frames=10))
        assert sink.wait(lambda: sink.ended("belt"), 30)
    finally:
        engine.stop()
    notices = [e.reason for e in sink.events if e.state == StreamState.DROPPED]
    assert notices and all("(bag_" in reason and ".png)" in reason for reason in notices), notices
