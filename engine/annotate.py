"""The annotated-video sink: every analysed frame of a stream, with its results drawn, encoded to MP4 with PyAV.

Drawing (``amodal.draw``): visible masks filled, amodal outlines, occluder masks, boxes, track and global ids,
occlusion levels and layers.  One file per stream: the path given when the engine has exactly one configured source, else
``<stem>_<stream><suffix>`` for every stream (a ``{stream}`` in the path is replaced by the stream id instead).  Frames are
converted, drawn and encoded on the sink's own thread; the queue in front of it is bounded and blocks when full,
because the file promises every analysed frame.  A stream's file is closed at its ``ended``/``removed`` event
or a fatal error.  Amendments are not drawn (they arrive after their frame was encoded).
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from pathlib import Path

import av

from amodal.draw import draw_result
from amodal.engine.sink import Sink
from amodal.types import Frame, FrameResult, StreamEvent, StreamState

log = logging.getLogger(__name__)

_STOP = object()


class _StreamFile:
    def __init__(self, path: Path, width: int, height: int, fps: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream("libx264", rate=fps)
        self.width, self.height = width - width % 2, height - height % 2  # yuv420p needs even sizes
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        self.stream.options = {"crf": "20", "preset": "veryfast"}
        self.frames = 0

    def write(self, image) -> None:
        frame = av.VideoFrame.from_ndarray(image[: self.height, : self.width], format="rgb24")
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()


class AnnotatedVideoSink(Sink):
    name = "annotate"

    def __init__(self, path: str | Path, *, per_stream: bool = True, fps: int = 25, queue_size: int = 64) -> None:
        """``per_stream``: name each file after its stream (False: the one stream's file is ``path`` itself)."""
        self.path = Path(path)
        self.per_stream = per_stream
        self.fps = fps
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._files: dict[str, _StreamFile] = {}
        self.written: dict[str, Path] = {}  # stream → its file (also after it closed)
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="amodal-annotate", daemon=True)
        self._thread.start()

    def path_for(self, stream_id: str) -> Path:
        if "{stream}" in str(self.path):
            return Path(str(self.path).replace("{stream}", stream_id))
        if self.per_stream or self.written:  # a second stream never overwrites the first one's file
            return self.path.with_name(f"{self.path.stem}_{stream_id}{self.path.suffix or '.mp4'}")
        return self.path

    def write_results(self, frames: Sequence[Frame], results: Sequence[FrameResult]) -> None:
        if self.failure is None:
            self._queue.put((list(frames), list(results)))

    def write_event(self, event: StreamEvent) -> None:
        if self.failure is None and (event.state in (StreamState.ENDED, StreamState.REMOVED)
                                     or (event.state == StreamState.ERROR and event.fatal)):
            self._queue.put(event)

    def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(60.0)
        self._thread = None

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                if isinstance(item, StreamEvent):
                    self._close(item.stream_id)
                    continue
                for frame, result in zip(*item):
                    self._file(frame).write(draw_result(frame.to_rgb(), result))
        except BaseException as exc:  # noqa: BLE001 - recorded; the engine reports it
            self.failure = exc
            log.exception("the annotated-video sink failed")
            while True:  # never leave a producer blocked on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        finally:
            for stream_id in list(self._files):
                self._close(stream_id)

    def _file(self, frame: Frame) -> _StreamFile:
        f = self._files.get(frame.stream_id)
        if f is None:
            path = self.path_for(frame.stream_id)
            f = self._files[frame.stream_id] = _StreamFile(path, frame.width, frame.height, self.fps)
            self.written[frame.stream_id] = path
        return f

    def _close(self, stream_id: str) -> None:
        f = self._files.pop(stream_id, None)
        if f is not None:
            try:
                f.close()
            except Exception:  # noqa: BLE001
                log.exception("closing %s failed", f.path)
