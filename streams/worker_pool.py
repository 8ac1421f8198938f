"""A per-engine pool of decode worker processes (``decode_workers: N``): each worker process runs several sources,
one thread each, instead of one process per source.

Fewer processes (memory, process count at 50 cameras) against weaker isolation: a worker that dies takes all its
sources with it — each gets its ``error`` event and restarts on its own backoff, in a new pool worker.  Everything
else is ``amodal.streams.worker``'s: the same ``WorkerSource`` relay on the engine side, the same ring sink and
shared-memory rings in the worker; messages carry the attachment's key so that one pipe serves every source of a
worker.  Sources go to the live worker with the fewest sources, a new one while there are fewer than ``size``.
"""
from __future__ import annotations

import itertools
import os
import queue
import signal
import threading
import time

from amodal.streams.base import OverflowPolicy, Source
from amodal.streams.worker import _WorkerSink, end_process, start_worker
from amodal.types import StreamEvent, StreamState


# ------------------------------------------------------------------------------------------------ worker process
def pool_worker_main(conn, engine_pid: int) -> None:
    """A pool worker: run the sources the engine adds, each on a thread, until the engine closes the pool or dies."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write("amodal-decode")
    except OSError:
        pass
    send_lock = threading.Lock()
    generations = itertools.count(1)  # ring numbers, unique in this process
    running: dict[str, tuple[threading.Event, _WorkerSink, threading.Thread]] = {}
    running_lock = threading.Lock()
    engine_gone = threading.Event()

    def stop_all() -> None:
        with running_lock:
            for stop, _, _ in running.values():
                stop.set()

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=stop_all, daemon=True).start())

    def run_one(key: str, source: Source, stop: threading.Event, sink: _WorkerSink) -> None:
        try:
            source.run(sink, stop)
        except Exception as exc:  # as on the engine's source thread: the stream ends, the engine goes on
            sink.put_event(StreamEvent(source.stream_id, StreamState.ERROR, f"internal error: {exc!r}",
                                       time.time_ns(), fatal=True))
        finally:
            try:
                sink.send(("done",))
            except OSError:
                engine_gone.set()
            sink.finish(engine_gone, timeout_s=30.0)
            with running_lock:
                running.pop(key, None)

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            engine_gone.set()
            break
        if message[0] == "add":
            _, key, source, slots, policy, skip = message

            def send(m: tuple, key: str = key) -> None:
                with send_lock:
                    conn.send((key, m))

            stop = threading.Event()
            sink = _WorkerSink(send, stop, engine_pid, slots, policy, skip, getattr(source, "frame_label", None),
                               generations)
            thread = threading.Thread(target=run_one, args=(key, source, stop, sink), name=f"amodal-source-{key}",
                                      daemon=True)
            with running_lock:
                running[key] = (stop, sink, thread)
            thread.start()
        elif message[0] == "cmd":
            _, key, command = message
            with running_lock:
                entry = running.get(key)
            if entry is None:
                continue
            if command[0] == "stop":
                entry[0].set()
            elif command[0] == "attached":
                entry[1].on_attached(command[1])
        elif message[0] == "close":
            break
    stop_all()
    with running_lock:
        threads = [t for _, _, t in running.values()]
    for thread in threads:
        thread.join(10.0)


# --------------------------------------------------------------------------------------------------- engine side
class _PoolChannel:
    """One source's view of its pool worker: its own inbox of the worker's messages, commands tagged with its key."""

    def __init__(self, worker: "_PoolWorker", key: str) -> None:
        self.worker = worker
        self.key = key
        self.pid = worker.pid
        self.inbox: queue.Queue = queue.Queue()
        self._pending = None

    def poll(self, timeout_ms: int) -> bool:
        if self._pending is None:
            try:
                self._pending = self.inbox.get(timeout=timeout_ms / 1000.0)
            except queue.Empty:
                return False
        return True

    def recv(self) -> tuple:
        item, self._pending = (self._pending if self._pending is not None else self.inbox.get()), None
        if item is _EOF:
            raise EOFError(self.worker.reason)
        return item

    def send(self, message: tuple) -> None:
        self.worker.send(("cmd", self.key, message))

    def end(self, done: bool) -> str:
        self.worker.detach(self.key)
        if done:
            return ""
        if self.worker.reaped.wait(10.0):
            return self.worker.reason
        return f"decode worker (pid {self.pid}) did not stop this source in time"


_EOF = object()


class _PoolWorker:
    def __init__(self) -> None:
        self.process, self.conn = start_worker(pool_worker_main, "amodal-decode-pool",
                                               lambda child: (child, os.getpid()))
        self.pid = self.process.pid
        self.reason = ""
        self.reaped = threading.Event()  # the process has ended and its leftovers are cleaned
        self.closing = False
        self._send_lock = threading.Lock()
        self._channels: dict[str, _PoolChannel] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"amodal-decode-pool-{self.pid}", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return not self.reaped.is_set() and not self.closing

    @property
    def sources(self) -> int:
        with self._lock:
            return len(self._channels)

    def attach(self, key: str) -> _PoolChannel:
        channel = _PoolChannel(self, key)
        with self._lock:
            self._channels[key] = channel
        if self.reaped.is_set():  # died while being chosen: the reader may have told its channels already
            channel.inbox.put(_EOF)
        return channel

    def detach(self, key: str) -> None:
        with self._lock:
            self._channels.pop(key, None)

    def send(self, message: tuple) -> None:
        try:
            with self._send_lock:
                self.conn.send(message)
        except OSError:  # the worker is gone: its reader reports it
            pass

    def _read(self) -> None:
        while True:
            try:
                key, message = self.conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                channel = self._channels.get(key)
            if channel is not None:
                channel.inbox.put(message)
        self.reason = end_process(self.process, 1.0, [self.conn])
        self.reaped.set()
        with self._lock:
            channels = list(self._channels.values())
        for channel in channels:
            channel.inbox.put(_EOF)

    def close(self, timeout_s: float) -> None:
        self.closing = True
        self.send(("close",))
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.terminate()
        self._reader.join(timeout_s + 5.0)


class DecodePool:
    """Up to ``size`` decode worker processes shared by an engine's sources (see the module docstring)."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"a decode pool needs size > 0, got {size}")
        self.size = size
        self._workers: list[_PoolWorker] = []
        self._keys = itertools.count()
        self._lock = threading.Lock()

    def attach(self, stream_id: str, source: Source, slots: int, policy: OverflowPolicy, skip: int) -> _PoolChannel:
        """Run ``source`` in a pool worker; its channel (``WorkerSource`` reads and commands through it)."""
        with self._lock:
            self._workers = [w for w in self._workers if w.alive]
            if len(self._workers) < self.size:
                worker = _PoolWorker()
                self._workers.append(worker)
            else:
                worker = min(self._workers, key=lambda w: w.sources)
            key = f"{stream_id}#{next(self._keys)}"
            channel = worker.attach(key)
        try:
            with worker._send_lock:
                worker.conn.send(("add", key, source, slots, policy, skip))  # pickles first: nothing half-sent
        except OSError:  # the worker just died: its reader ends the channel, the source restarts
            pass
        except BaseException:  # an unpicklable source: the caller's error
            worker.detach(key)
            raise
        return channel

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._workers if w.alive]

    def close(self, timeout_s: float = 10.0) -> None:
        """End every worker (their sources were stopped by their ``WorkerSource``s first)."""
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.close(timeout_s)
