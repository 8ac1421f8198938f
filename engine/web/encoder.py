"""Drawing and JPEG encoding for the live view, on the view's own thread.

Each wanted stream's latest result is drawn with ``amodal.draw.draw_result`` (the drawing of ``--annotate``) over
its frame — or, where only published results are known (``amodal view``), over a neutral grey canvas of the
frame's size — at most ``max_width`` pixels wide (frame and masks scaled down before drawing: drawing costs per
pixel) and JPEG-encoded with Pillow, at most ``max_fps`` times a second per
stream.  A scanner stream's every bag (up to the ``bags_kept`` latest) also gets a thumbnail.  The engine only
ever stores a reference into a one-frame slot, so how long this takes bounds the view's frame rate, never the
engine's.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import threading
import time

import numpy as np
from PIL import Image

from amodal.draw import draw_result
from amodal.engine.web.state import Bag, LiveState, Pending, bag_items
from amodal.types import Frame, FrameResult, RLEMask

log = logging.getLogger(__name__)

#: the canvas under results drawn without their frame
NEUTRAL_GREY = 96


def scale_result(result: FrameResult, width: int, height: int) -> FrameResult:
    """``result`` at ``width`` x ``height``: boxes scaled, masks resampled (nearest) — so that a large frame is
    drawn at the size it is shown, not at full size and then shrunk."""
    if (width, height) == (result.width, result.height):
        return result
    sx, sy = result.width / width, result.height / height
    rows = np.minimum(((np.arange(height) + 0.5) * sy).astype(np.intp), result.height - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * sx).astype(np.intp), result.width - 1)

    def scaled(mask: RLEMask | None) -> RLEMask | None:
        if mask is None or (mask.height, mask.width) != (result.height, result.width):
            return None
        return RLEMask.encode(mask.decode()[rows][:, cols])

    objects = tuple(dataclasses.replace(
        o, box_xyxy=(o.box_xyxy[0] / sx, o.box_xyxy[1] / sy, o.box_xyxy[2] / sx, o.box_xyxy[3] / sy),
        mask=scaled(o.mask), amodal_mask=scaled(o.amodal_mask), occluder_mask=scaled(o.occluder_mask))
        for o in result.objects)
    return dataclasses.replace(result, objects=objects, width=width, height=height)


def render(frame: Frame | None, result: FrameResult, max_width: int | None = None) -> np.ndarray:
    """uint8[H, W, 3]: ``result`` drawn over ``frame`` (None: over a neutral canvas of the result's size), scaled
    down first to at most ``max_width`` pixels wide (None: full size)."""
    width, height = max(1, result.width), max(1, result.height)
    if max_width is not None and width > max_width:
        width, height = max_width, max(1, round(height * max_width / width))
    if frame is None:
        return draw_result(np.full((height, width, 3), NEUTRAL_GREY, dtype=np.uint8), scale_result(result, width, height))
    rgb = frame.to_rgb()
    if (rgb.shape[1], rgb.shape[0]) != (width, height):
        rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))
    return draw_result(rgb, scale_result(result, width, height))


def encode_jpeg(rgb: np.ndarray, max_width: int, quality: int) -> bytes:
    """JPEG bytes of ``rgb`` scaled down (never up) to at most ``max_width`` pixels wide."""
    image = Image.fromarray(rgb)
    if image.width > max_width:
        image = image.resize((max_width, max(1, round(image.height * max_width / image.width))),
                             Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


class FrameEncoder:
    """The thread that turns pending results into JPEGs (video) and bag thumbnails."""

    def __init__(self, state: LiveState, *, max_fps: float, max_width: int, quality: int, thumb_width: int) -> None:
        self.state = state
        self.period_s = 1.0 / max_fps
        self.max_width, self.quality, self.thumb_width = max_width, quality, thumb_width
        self.encoded = 0  # frames drawn and encoded (video and thumbnails)
        self.encode_s = 0.0  # the time that took
        self.errors = 0  # frames that could not be drawn
        self._reported: set[str] = set()
        self.failure: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="amodal-web-encoder", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self.state.close()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        try:
            while not self.state.closing:
                started = time.monotonic()
                frames, bags = self.state.take_work(self.period_s)
                for stream_id, pending in frames.items():
                    jpeg = self._encode(pending, self.max_width)
                    if jpeg is not None:
                        self.state.put_jpeg(stream_id, jpeg)
                for stream_id, pendings in bags.items():
                    for p in pendings:
                        jpeg = self._encode(p, self.thumb_width)
                        if jpeg is not None:
                            self.state.put_bag(stream_id, Bag(p.result.frame_index, p.result.capture_time_ns,
                                                              bag_items(p.result), jpeg))
                if frames:  # at most max_fps per stream: the next frames wait out the rest of the period
                    left = self.period_s - (time.monotonic() - started)
                    if left > 0:
                        time.sleep(left)
        except BaseException as exc:  # noqa: BLE001 - recorded: the sink reports it and the engine stops
            self.failure = exc
            log.exception("the live view's encoder failed")

    def _encode(self, pending: Pending, width: int) -> bytes | None:
        """The JPEG, or None when this frame cannot be drawn (counted in ``errors``, logged once per stream)."""
        started = time.perf_counter()
        try:
            jpeg = encode_jpeg(render(pending.frame, pending.result, width), width, self.quality)
        except Exception:  # noqa: BLE001 - one frame the view cannot draw must not end the view
            self.errors += 1
            if pending.result.stream_id not in self._reported:
                self._reported.add(pending.result.stream_id)
                log.exception("the live view cannot draw frame %d of stream %s", pending.result.frame_index,
                              pending.result.stream_id)
            return None
        self.encode_s += time.perf_counter() - started
        self.encoded += 1
        return jpeg
