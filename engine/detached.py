"""A detached stage: a slow stage on its own worker thread, off the hot path, publishing amendments.

The inference thread ``submit``s each frame's result after the synchronous stages; the worker takes what its rate
policy keeps — every frame (``every``), every ``n``-th frame of each stream (``nth``), or only each stream's
newest frame whenever it is free (``newest``: older pending frames of that stream are superseded, not queued) —
preprocesses its own input, runs the stage, and hands an ``Amendment`` per frame to ``emit`` (a lagging stage's
amendments are the earlier frames it completed, from ``take_late``, after each batch and each end of stream).  The fast stages'
results are never delayed: ``submit`` only appends to a bounded backlog (``every``/``nth``: beyond
``rate.backlog`` frames the oldest is dropped and a ``dropped`` event says so).  End of stream is queued behind
the stream's frames, so ``on_source_eos`` runs after its last frame; ``stop`` processes what is pending first.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from amodal.engine.pipeline import StageSlot, run_stage
from amodal.engine.preprocess import prepare_inputs
from amodal.engine.stage import FrameRef, StageBatch
from amodal.types import Amendment, CameraIntrinsics, Frame, ObjectResult, StreamEvent, StreamState

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class _Work:
    frame: Frame
    objects: tuple[ObjectResult, ...]
    camera: CameraIntrinsics | None = None


@dataclass(frozen=True)
class _EndOfStream:
    stream_id: str


def amendment_of(frame: Frame | FrameRef, stage: str, before: tuple[ObjectResult, ...], after: tuple[ObjectResult, ...],
                 stage_ms: dict[str, float]) -> Amendment:
    """The objects ``stage`` changed (``refs`` = their index in ``before``) or added (ref None)."""
    objects, refs = [], []
    for i, obj in enumerate(after):
        if i < len(before):
            if obj is not before[i]:
                objects.append(obj)
                refs.append(i)
        else:
            objects.append(obj)
            refs.append(None)
    return Amendment(stream_id=frame.stream_id, frame_index=frame.index, stage=stage,
                     capture_time_ns=frame.capture_time_ns, width=frame.width, height=frame.height,
                     objects=tuple(objects), refs=tuple(refs), received_mono_ns=frame.received_mono_ns,
                     stage_ms=stage_ms)


class DetachedStage:
    def __init__(self, slot: StageSlot, device: torch.device, emit: Callable[[Amendment], None],
                 report: Callable[[StreamEvent], None], max_batch_size: int = 8) -> None:
        """``emit(amendment)`` and ``report(event)`` are called from the worker thread."""
        self.slot = slot
        self.stage = slot.stage
        self.device = device
        self._emit = emit
        self._report = report
        self.max_batch_size = max_batch_size
        self._pending: collections.deque[_Work | _EndOfStream] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self.processed = 0
        self.superseded = 0  # newest policy: frames replaced by a newer one of their stream before they ran
        self.dropped = 0  # every/nth: frames dropped because the backlog was full

    # ---------------------------------------------------------------------------------------- control
    def start(self, timeout_s: float = 600.0) -> None:
        """Start the worker; the stage starts on it.  Re-raises the stage's start error."""
        self._thread = threading.Thread(target=self._run, name=f"amodal-stage-{self.stage.name}", daemon=True)
        self._thread.start()
        self._started.wait(timeout_s)
        if self._start_error is not None:
            raise self._start_error

    def submit(self, frame: Frame, objects: tuple[ObjectResult, ...], camera: CameraIntrinsics | None = None) -> None:
        """Offer one frame (the objects the synchronous stages gave it, its source's camera) to the stage; never
        blocks."""
        rate = self.slot.rate
        if rate.mode == "nth" and frame.index % rate.n:
            return
        dropped: _Work | None = None
        with self._cond:
            if rate.mode == "newest":
                for i, item in enumerate(self._pending):
                    if isinstance(item, _Work) and item.frame.stream_id == frame.stream_id:
                        del self._pending[i]
                        self.superseded += 1
                        break
            elif sum(isinstance(i, _Work) for i in self._pending) >= rate.backlog:
                for i, item in enumerate(self._pending):
                    if isinstance(item, _Work):
                        dropped = item
                        del self._pending[i]
                        self.dropped += 1
                        break
            self._pending.append(_Work(frame, objects, camera))
            self._cond.notify_all()
        if dropped is not None:
            self._report(StreamEvent(dropped.frame.stream_id, StreamState.DROPPED,
                                     f"stage {self.stage.name} dropped frame {dropped.frame.index}: its backlog of "
                                     f"{rate.backlog} frames is full", time.time_ns()))

    def end_stream(self, stream_id: str) -> None:
        """Queue the end of ``stream_id`` behind its frames."""
        with self._cond:
            self._pending.append(_EndOfStream(stream_id))
            self._cond.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything submitted so far is processed; True if it was."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._cond.wait(remaining)
        return True

    def stop(self, timeout_s: float = 30.0) -> None:
        """Process what is pending (for at most ``timeout_s``), stop the stage on its worker, end the thread.

        Frames still pending after ``timeout_s`` are not processed: each is reported by a ``dropped`` event, the
        batch in progress finishes, and the thread always ends (a slow stage never outlives its engine)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is None:
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            with self._cond:
                abandoned = [item for item in self._pending if isinstance(item, _Work)]
                ends = [item for item in self._pending if isinstance(item, _EndOfStream)]
                self._pending.clear()
                self._pending.extend(ends)  # end-of-stream hooks still run (they are cheap)
            log.error("stage %s: %d frames not processed within %.0f s of stopping; reported as dropped",
                      self.stage.name, len(abandoned), timeout_s)
            for w in abandoned:
                self._report(StreamEvent(w.frame.stream_id, StreamState.DROPPED,
                                         f"stage {self.stage.name} dropped frame {w.frame.index}: the engine "
                                         f"stopped before it was processed", time.time_ns()))
            self._thread.join()  # the batch in progress, then the end-of-stream hooks and stop()
        self._thread = None

    # ------------------------------------------------------------------------------------------ worker
    def _run(self) -> None:
        try:
            self.stage.start(self.device)
        except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closing:
                        self._cond.wait()
                    if not self._pending and self._closing:
                        break
                    items = self._take()
                    self._busy = True
                try:
                    self._process(items)
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        finally:
            try:
                self.stage.stop()
            except Exception as exc:  # noqa: BLE001
                log.exception("stage %s failed to stop", self.stage.name)
                self._report(StreamEvent("*", StreamState.ERROR, f"stage {self.stage.name} failed to stop: {exc!r}",
                                         time.time_ns()))

    def _take(self) -> list[_Work | _EndOfStream]:
        """Up to ``max_batch_size`` frames, or one end-of-stream marker."""
        if isinstance(self._pending[0], _EndOfStream):
            return [self._pending.popleft()]
        items: list[_Work | _EndOfStream] = []
        while self._pending and isinstance(self._pending[0], _Work) and len(items) < self.max_batch_size:
            items.append(self._pending.popleft())
        return items

    def _process(self, items: list[_Work | _EndOfStream]) -> None:
        if isinstance(items[0], _EndOfStream):
            stream_id = items[0].stream_id
            start_ns = time.monotonic_ns()
            try:
                self.stage.on_source_eos(stream_id)
            except Exception as exc:  # noqa: BLE001 - reported, the stage goes on with the other streams
                log.exception("stage %s failed at the end of stream %s", self.stage.name, stream_id)
                self._report(StreamEvent(stream_id, StreamState.ERROR,
                                         f"stage {self.stage.name} failed at end of stream: {exc!r}", time.time_ns()))
            self._emit_late(start_ns)
            return
        work = [w for w in items if isinstance(w, _Work)]
        frames = [w.frame for w in work]
        start_ns = time.monotonic_ns()
        spec = self.stage.input_spec
        batch = StageBatch(tuple(frames), tuple(w.objects for w in work),
                           prepare_inputs(frames, [spec] if spec is not None else [], self.device),
                           {w.frame.stream_id: w.camera for w in work if w.camera is not None})
        outputs, failures = run_stage(self.stage, batch)
        stage_ms = (time.monotonic_ns() - start_ns) / 1e6
        for failure in failures:
            self._report(StreamEvent(failure.stream_id, StreamState.ERROR,
                                     f"stage {failure.stage} failed on frames {list(failure.frame_indexes)}: "
                                     f"{failure.reason}", time.time_ns()))
        for w, objects in zip(work, outputs):
            if objects is None:
                continue
            self.processed += 1
            if self.stage.lag_frames:  # its completions of these frames come later, from take_late
                continue
            wait_ms = (start_ns - w.frame.received_mono_ns) / 1e6
            self._emit(amendment_of(w.frame, self.stage.name, w.objects, objects,
                                    {"wait": wait_ms, self.stage.name: stage_ms}))
        self._emit_late(start_ns)

    def _emit_late(self, start_ns: int) -> None:
        """Amend the earlier frames a lagging stage completed (``stage_ms``: this turn of the worker)."""
        try:
            late = self.stage.take_late()
        except Exception as exc:  # noqa: BLE001 - reported; what it held for those frames is lost, said so
            log.exception("stage %s failed to hand over its late results", self.stage.name)
            self._report(StreamEvent("*", StreamState.ERROR,
                                     f"stage {self.stage.name} failed to hand over late results: {exc!r}",
                                     time.time_ns()))
            return
        stage_ms = (time.monotonic_ns() - start_ns) / 1e6
        for result in late:
            wait_ms = (start_ns - result.frame.received_mono_ns) / 1e6
            self._emit(amendment_of(result.frame, self.stage.name, result.before, result.after,
                                    {"wait": wait_ms, self.stage.name: stage_ms}))
