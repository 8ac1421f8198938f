"""Sources in decode worker processes: ``WorkerSource`` runs any ``Source`` in its own process and hands the engine
its frames through a shared-memory ring (``amodal.streams.shm_ring``), so decoding and the engine's pipeline stop
sharing one interpreter lock.

Engine side, ``WorkerSource`` keeps the ``Source`` contract (``run(sink, stop)`` on the engine's source thread): it
starts the worker, turns each message into a ``Frame`` whose planes are numpy views on the worker's slot, and
returns when the source has ended.  Only small metadata crosses the pipe: every ``Frame`` field other than
``planes`` (taken generically from ``dataclasses.fields``), the slot and the planes' layout; events cross as they
are.  Worker side, the wrapped source runs its own ``run`` unchanged (demux, decode, state machine, reconnection,
events) against a sink that copies each frame's planes into a free slot.

Slots and queue policies.  A slot stays the engine's while any view of its planes lives: preprocessing, the
stages, the sinks that keep frames (the annotated-video sink's queue) and detached stages' backlogs all hold the
frame, so the slot is released exactly when the last of them lets go (``weakref.finalize`` on the slot), with no
copy and no change to those consumers.  The ring has ``2 * queue_size + 8`` slots (the queue full, a batch of the
same size being analysed, two in flight, and six that sinks may still hold: the annotated video, the live view).  ``block``: a worker with no free slot waits for one (the engine's
queue is full, the file waits, as in threads mode).  ``drop-oldest``: the engine's queue drops its oldest frame
as before (the dropped frame's slot is free at once); should every slot still be held (frames kept by slow
consumers), the worker drops the frame it just decoded rather than wait, and the engine reports it in the same
``dropped`` notices.

Crashes.  A worker that dies (a decoder segfault, the OOM killer, SIGKILL) is an ``error`` event for its stream
(not fatal) and is started again after the source's backoff (``backoff_initial_s`` … ``backoff_max_s``); the
other streams have their own workers and never notice.  Live sources continue with the next frame index; files
resume after the last delivered frame (the new worker decodes from the start and skips what was delivered); a
file whose worker dies twice in a row without delivering a frame ends with a fatal ``error``.

Processes come from the ``forkserver`` context (never a fork of the engine, which has threads and torch); the
server preloads the source modules so that a (re)start takes milliseconds.  Workers ignore SIGINT (a terminal's
Ctrl-C reaches the whole process group: the engine stops them in order) and end their source on SIGTERM; a worker
whose engine died sees its pipe close and ends too.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import itertools
import logging
import multiprocessing
import os
import select
import signal
import threading
import time
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from multiprocessing.context import set_spawning_popen

from amodal.streams.backoff import Backoff
from amodal.streams.base import FrameSink, OverflowPolicy, Source
from amodal.streams.events import make_event
from amodal.streams.shm_ring import EngineRing, WorkerRing, plane_layout, ring_name, unlink_worker_segments
from amodal.types import Frame, StreamEvent, StreamState

log = logging.getLogger(__name__)

#: modules the fork server imports once, so that each worker starts without importing them again
PRELOAD = ["amodal.streams.worker", "amodal.streams.open", "amodal.streams.pyav_source", "amodal.streams.scanner",
           "amodal.streams.synthetic"]
#: Frame fields sent as metadata (everything but the planes)
_META_FIELDS = tuple(f.name for f in dataclasses.fields(Frame) if f.name != "planes")
_STOP_GRACE_S = 5.0  # after asking a worker to stop: its source's read timeout plus this, then SIGTERM, then SIGKILL
_LABELS_KEPT = 1024


def mp_context() -> multiprocessing.context.BaseContext:
    """The process context of decode workers (forkserver, with the source modules preloaded)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


class _WorkerPopen(popen_forkserver.Popen):
    """The forkserver ``Popen`` without re-importing the engine's ``__main__`` in the worker.

    multiprocessing re-runs the parent's main module (as ``__mp_main__``) in every spawned or forkserver child so
    that functions defined there can be unpickled.  A worker needs none of it (its target and source live in
    importable modules), and the re-import would cost a program that embeds the engine its whole import time
    (torch) per worker start, or re-run its engine if it lacks an ``if __name__ == "__main__"`` guard.  There is
    no public switch, so this is ``popen_forkserver.Popen._launch`` (CPython 3.8-3.12) with the two main-module
    keys left out of the preparation data.
    """

    def _launch(self, process_obj) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_name", None)
        prep_data.pop("init_main_from_path", None)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)
        _parent_w = os.dup(w)  # the child's sentinel of its parent, as in the original
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _WorkerProcess(multiprocessing.context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj):
        return _WorkerPopen(process_obj)


def ring_slots(queue_size: int) -> int:
    """Slots of a source's ring: its queue full, as many in the batch being analysed, two in flight, and six held by
    sinks.  Too few starve a live source: with every slot held downstream the worker drops the frame it just
    decoded, so the engine analyses older frames (``make demo``: capture → subscriber p50 912 ms with 2q + 2 slots,
    588 ms with 2q + 10, 515 ms on threads)."""
    return 2 * queue_size + 8


# ------------------------------------------------------------------------------------------------ worker process
class _WorkerSink:
    """The sink a source writes to inside its worker: planes into the ring, metadata and events down the pipe."""

    def __init__(self, send, stop: threading.Event, engine_pid: int, slots: int, policy: OverflowPolicy,
                 skip_frames: int, label_of, generations=None) -> None:
        """``send(message)``: to the engine (thread-safe); ``generations``: the process's ring numbering (shared
        by the sources of a pool worker, so that ring names stay unique)."""
        self._send = send
        self._generations = generations if generations is not None else itertools.count(1)
        self._stop = stop
        self._engine_pid = engine_pid
        self._slots = slots
        self._policy = policy
        self._skip_frames = skip_frames
        self._label_of = label_of
        self.ring: WorkerRing | None = None
        self.generation = 0
        self.rings: dict[int, WorkerRing] = {}  # announced, not yet attached by the engine
        self.attached: set[int] = set()
        self._attached_cond = threading.Condition()

    def send(self, message: tuple) -> None:
        self._send(message)

    def put_event(self, event: StreamEvent) -> None:
        try:
            self.send(("event", event))
        except OSError:  # the engine is gone: the reader thread has set stop
            pass

    def put_frame(self, frame: Frame) -> bool:
        if self._stop.is_set():
            return False
        if frame.index < self._skip_frames:  # a restarted file worker: delivered before the crash
            return True
        layout, need = plane_layout(frame.planes)
        ring = self._ring_for(need)
        label = self._label(frame)
        slot = ring.free_slot()
        wait_s = 0.0002
        while slot is None:
            if self._policy == "drop-oldest":  # every slot held downstream: a live source never waits
                self.send(("dropped", frame.index, label))
                return True
            if self._stop.wait(wait_s):
                return False
            wait_s = min(wait_s * 2, 0.002)
            slot = ring.free_slot()
        ring.fill(slot, frame.planes, layout)
        meta = {name: getattr(frame, name) for name in _META_FIELDS}
        try:
            self.send(("frame", self.generation, slot, tuple(tuple(p) for p in layout), meta, label))
        except OSError:
            return False
        return True

    def _label(self, frame: Frame) -> str | None:
        if self._label_of is None:
            return None
        try:
            return self._label_of(frame)
        except Exception as exc:  # noqa: BLE001 - a label is a courtesy
            return f"label unavailable: {type(exc).__name__}"

    def _ring_for(self, need: int) -> WorkerRing:
        """The current ring, or a new one when a frame no longer fits its slots or would waste most of them
        (the resolution or pixel format changed)."""
        ring = self.ring
        if ring is not None and need <= ring.slot_bytes and need * 2 > ring.slot_bytes:
            return ring
        if ring is not None:
            ring.close()  # the engine's mapping keeps what it holds
        self.generation = next(self._generations)
        ring = WorkerRing(ring_name(self._engine_pid, os.getpid(), self.generation), self._slots, need)
        self.ring = self.rings[self.generation] = ring
        self.send(("ring", self.generation, ring.name, ring.slots, ring.slot_bytes))
        return ring

    def on_attached(self, generation: int) -> None:
        with self._attached_cond:
            self.attached.add(generation)
            self._attached_cond.notify_all()

    def finish(self, engine_gone: threading.Event, timeout_s: float) -> None:
        """Wait until the engine has attached every announced ring (or is gone), unlink the rest, unmap."""
        deadline = time.monotonic() + timeout_s
        with self._attached_cond:
            while set(self.rings) - self.attached and not engine_gone.is_set() and time.monotonic() < deadline:
                self._attached_cond.wait(0.05)
        for generation, ring in self.rings.items():
            if generation not in self.attached:
                ring.unlink()
        if self.ring is not None:
            self.ring.close()
            self.ring = None


def worker_main(conn, source: Source, engine_pid: int, slots: int, policy: OverflowPolicy, skip_frames: int) -> None:
    """A decode worker: run ``source`` against a ring sink until it ends, the engine says stop, or the engine dies."""
    try:  # ``ps`` / ``top`` show decode workers by name (Linux; the name is the main thread's, 15 bytes at most)
        with open("/proc/self/comm", "w") as comm:
            comm.write("amodal-decode")
    except OSError:
        pass
    stop = threading.Event()
    engine_gone = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # ``stop.set`` takes the Event's lock, which the interrupted main thread may hold: set it from a new thread
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=stop.set, daemon=True).start())
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        with send_lock:
            conn.send(message)

    sink = _WorkerSink(send, stop, engine_pid, slots, policy, skip_frames, getattr(source, "frame_label", None))

    def read_commands() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the engine closed the pipe or died
                engine_gone.set()
                stop.set()
                return
            if message[0] == "stop":
                stop.set()
            elif message[0] == "attached":
                sink.on_attached(message[1])

    threading.Thread(target=read_commands, name="amodal-worker-commands", daemon=True).start()
    try:
        source.run(sink, stop)
    except Exception as exc:  # as on the engine's source thread: the stream ends, the engine goes on
        sink.put_event(StreamEvent(source.stream_id, StreamState.ERROR, f"internal error: {exc!r}", time.time_ns(),
                                   fatal=True))
    finally:
        try:
            sink.send(("done",))
        except OSError:
            engine_gone.set()
        sink.finish(engine_gone, timeout_s=30.0)


# ------------------------------------------------------------------------------------------------- engine side
_LINGERING: list[EngineRing] = []  # rings of finished workers still viewed by frames somewhere in the engine
_LINGERING_LOCK = threading.Lock()


def _reap_lingering() -> None:
    with _LINGERING_LOCK:
        _LINGERING[:] = [ring for ring in _LINGERING if not ring.try_close()]


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


@dataclasses.dataclass
class _WorkerRun:
    """How one worker process ended."""

    done: bool  # it said ``done`` (its source returned)
    frames: int  # frames it delivered
    reason: str = ""


class WorkerSource(Source):
    """``inner`` run in a decode worker process; see the module docstring.  ``pid`` is the current worker's."""

    def __init__(self, inner: Source, pool=None) -> None:
        """``pool``: a ``amodal.streams.worker_pool.DecodePool`` to run in (None: a process of its own)."""
        super().__init__(inner.config)
        self.pool = pool
        if isinstance(inner, WorkerSource):
            raise ValueError(f"source {inner.stream_id} is already a WorkerSource")
        self.inner = inner
        self.live = inner.live
        self.pid: int | None = None
        self.restarts = 0
        self._labels: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._next_index = 0  # the index the next delivered frame gets

    @property
    def overflow(self) -> OverflowPolicy:
        return self.inner.overflow

    @property
    def queue_size(self) -> int:
        return self.inner.queue_size

    def frame_label(self, frame: Frame) -> str | None:
        """The label the worker's source gave a recently delivered frame (a scanner's file name), for drop notices."""
        if frame.stream_id != self.stream_id:
            return None
        return self._labels.get(frame.index)

    def run(self, sink: FrameSink, stop: threading.Event) -> None:
        sid = self.stream_id
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        crashed_without_frames = 0
        while True:
            outcome = self._run_worker(sink, stop)
            if outcome.done:
                return
            if stop.is_set():
                sink.put_event(make_event(sid, StreamState.ENDED, f"stopped ({outcome.reason})"))
                return
            if outcome.frames:
                backoff.reset()
                crashed_without_frames = 0
            else:
                crashed_without_frames += 1
            if not self.live and crashed_without_frames >= 2:
                sink.put_event(make_event(sid, StreamState.ERROR, f"{outcome.reason}; it died again before frame "
                                          f"{self._next_index}, giving up", fatal=True))
                return
            delay_s = backoff.next_delay_s()
            sink.put_event(make_event(sid, StreamState.ERROR, f"{outcome.reason}; restarting in {delay_s:.1f} s",
                                      attempt=backoff.attempt))
            if stop.wait(delay_s):
                sink.put_event(make_event(sid, StreamState.ENDED, "stopped"))
                return
            self.restarts += 1

    def _run_worker(self, sink: FrameSink, stop: threading.Event) -> _WorkerRun:
        """Start the source in a worker (its own process, or a pool's) and relay what it sends until it is done or
        the worker dies."""
        # live streams go on with new indexes; files resume where the engine stopped receiving
        offset, skip = (self._next_index, 0) if self.live else (0, self._next_index)
        args = (self.inner, ring_slots(self.queue_size), self.overflow, skip)
        try:
            channel = self.pool.attach(self.stream_id, *args) if self.pool is not None else _ProcessChannel(
                self.stream_id, *args)
        except Exception as exc:  # noqa: BLE001 - an unpicklable source, no processes left: this stream cannot run
            sink.put_event(make_event(self.stream_id, StreamState.ERROR,
                                      f"cannot start a decode worker: {type(exc).__name__}: {exc}", fatal=True))
            return _WorkerRun(True, 0)
        self.pid = channel.pid
        rings: dict[int, EngineRing] = {}
        frames, done, stop_sent, stop_deadline = 0, False, False, None
        try:
            while True:
                if stop.is_set() and not stop_sent:
                    stop_sent, stop_deadline = self._ask_stop(channel)
                if stop_deadline is not None and time.monotonic() > stop_deadline:
                    log.warning("decode worker of %s (pid %s) did not stop in time; ending it", self.stream_id,
                                channel.pid)
                    break
                _reap_lingering()
                if not channel.poll(50):
                    continue
                try:
                    message = channel.recv()
                except (EOFError, OSError):
                    break
                kind = message[0]
                if kind == "frame":
                    frame = self._frame(message, rings, offset)
                    if not sink.put_frame(frame):  # the engine wants no more frames (stopping, source removed)
                        if not stop_sent:
                            stop_sent, stop_deadline = self._ask_stop(channel)
                    else:
                        frames += 1
                        self._next_index = frame.index + 1
                    del frame
                elif kind == "event":
                    sink.put_event(message[1])
                elif kind == "ring":
                    _, generation, name, slots, slot_bytes = message
                    for ring in rings.values():
                        ring.retired = True
                    rings[generation] = EngineRing(name, slots, slot_bytes)
                    channel.send(("attached", generation))
                elif kind == "dropped":
                    self._dropped(sink, message[1] + offset, message[2])
                elif kind == "done":
                    done = True
                    break
        finally:
            reason = channel.end(done)
            for ring in rings.values():
                ring.retired = True
                if not ring.try_close():
                    with _LINGERING_LOCK:
                        _LINGERING.append(ring)
        return _WorkerRun(done, frames, reason)

    def _frame(self, message: tuple, rings: dict[int, EngineRing], offset: int) -> Frame:
        _, generation, slot, layout, meta, label = message
        planes = rings[generation].planes(slot, layout)
        meta = dict(meta)
        meta["index"] += offset
        if label is not None:
            self._labels[meta["index"]] = label
            while len(self._labels) > _LABELS_KEPT:
                self._labels.popitem(last=False)
        return Frame(planes=planes, **meta)

    def _dropped(self, sink: FrameSink, index: int, label: str | None) -> None:
        self._next_index = index + 1
        record = getattr(sink, "record_dropped", None)
        if record is not None:
            record(index, label)
        else:
            sink.put_event(make_event(self.stream_id, StreamState.DROPPED,
                                      f"stream {self.stream_id}: dropped frame {index}"
                                      + (f" ({label})" if label else "") + " (no free shared-memory slot)"))

    def _ask_stop(self, channel) -> tuple[bool, float]:
        channel.send(("stop",))
        return True, time.monotonic() + self.config.read_timeout_s + self.config.open_timeout_s + _STOP_GRACE_S


def start_worker(target, name: str, args_with_pipe) -> tuple[multiprocessing.process.BaseProcess,
                                                           multiprocessing.connection.Connection]:
    """Start a daemon worker process running ``target(*args_with_pipe(child_end))``; returns it and the engine's
    end of their duplex pipe (the child's end is closed here once the worker holds it)."""
    conn, child_conn = mp_context().Pipe(duplex=True)
    process = _WorkerProcess(target=target, name=name, daemon=True, args=args_with_pipe(child_conn))
    try:
        process.start()
    except BaseException:
        conn.close()
        raise
    finally:
        child_conn.close()
    return process, conn


class _ProcessChannel:
    """One source's own worker process and its pipe."""

    def __init__(self, stream_id: str, source: Source, slots: int, policy: OverflowPolicy, skip: int) -> None:
        self.process, self.conn = start_worker(worker_main, f"amodal-decode-{stream_id}",
                                               lambda child: (child, source, os.getpid(), slots, policy, skip))
        self.pid = self.process.pid
        self._readable = select.poll()  # one poller for the worker's life (Connection.poll builds one per call)
        self._readable.register(self.conn.fileno(), select.POLLIN)

    def poll(self, timeout_ms: int) -> bool:
        return bool(self._readable.poll(timeout_ms))

    def recv(self) -> tuple:
        return self.conn.recv()

    def send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except OSError:  # the worker is gone; its end is noticed on the next read
            pass

    def end(self, done: bool) -> str:
        """Join (or end) the worker process, unlink rings it never handed over; the reason it ended."""
        return end_process(self.process, 2.0 if done else 0.5, [self.conn])


def end_process(process, join_s: float, conns=()) -> str:
    """Join ``process`` (then SIGTERM, then SIGKILL), close ``conns``, unlink the rings it never handed over;
    returns why it ended."""
    process.join(join_s)
    if process.is_alive():
        process.terminate()
        process.join(2.0)
    if process.is_alive():
        process.kill()
        process.join(2.0)
    for conn in conns:
        conn.close()
    leaked = unlink_worker_segments(os.getpid(), process.pid)
    if leaked:
        log.info("unlinked %d shared-memory ring(s) of decode worker %s: %s", len(leaked), process.pid, leaked)
    return f"decode worker (pid {process.pid}) died: {_describe_exit(process.exitcode)}"


def run_in_worker(source: Source, pool=None) -> Source:
    """``source`` wrapped in a ``WorkerSource`` (in ``pool`` when given; a ``WorkerSource`` as it is)."""
    return source if isinstance(source, WorkerSource) else WorkerSource(source, pool)


__all__ = ["PRELOAD", "WorkerSource", "mp_context", "ring_slots", "run_in_worker", "worker_main"]
