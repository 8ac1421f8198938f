"""Frozen data that crosses folders: frames, stream events and per-object results.

Everything here is plain data (numpy arrays, ints, strings); no torch, so that ``streams/`` and the
subscriber side stay light.  Times: ``*_ns`` are integer nanoseconds; ``capture_time_ns`` and
``publish_time_ns`` are wall-clock (``time.time_ns``), ``received_mono_ns`` is ``time.monotonic_ns``
and is only ever compared within one process.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

@dataclass(frozen=True, slots=True)
class CameraIntrinsics:
    """A source's camera: its pixel intrinsics ``K`` (3×3 rows ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``, at the
    stream's resolution) or, without a calibration, its horizontal field of view ``hfov_deg`` (square pixels,
    principal point at the centre).  Set per source (``camera: {K: ...}`` or ``camera: {hfov_deg: 70}``); stages
    that reason in 3-D (``eoras``) read it from their batch."""

    K: tuple[tuple[float, float, float], ...] | None = None
    hfov_deg: float | None = None

    def __post_init__(self) -> None:
        from amodal.errors import ConfigError

        if (self.K is None) == (self.hfov_deg is None):
            raise ConfigError(f"camera: give exactly one of K or hfov_deg, got K={self.K!r}, hfov_deg={self.hfov_deg!r}")
        if self.K is not None:
            try:
                rows = tuple(tuple(float(v) for v in row) for row in self.K)
            except (TypeError, ValueError):
                rows = ()
            if len(rows) != 3 or any(len(r) != 3 for r in rows) or rows[0][0] <= 0 or rows[1][1] <= 0:
                raise ConfigError(f"camera.K must be a 3x3 matrix with positive fx, fy, got {self.K!r}")
            object.__setattr__(self, "K", rows)
        elif not 0.0 < float(self.hfov_deg) < 180.0:
            raise ConfigError(f"camera.hfov_deg must be in (0, 180), got {self.hfov_deg!r}")


PixelFormat = Literal["yuv420p", "nv12", "rgb24", "gray8", "gray16"]
PIXEL_FORMATS: tuple[str, ...] = ("yuv420p", "nv12", "rgb24", "gray8", "gray16")


@dataclass(frozen=True, slots=True)
class ScanInfo:
    """Identifiers of a scanner's scan (from a DICOS / DICOM file; see ``amodal.streams.dicom``), carried by each of
    its frames and published with the frame's results.  Plain strings and ints; None where the file does not say.

    ``scanner_id``: the device (serial number, else station name); ``bag_id``: the object of inspection (bag,
    parcel); ``series_uid`` / ``sop_instance_uid``: DICOM UIDs of the series and of the file's scan;
    ``acquisition_time``: ISO 8601 text as the scanner wrote it (its local time, with the UTC offset when stated);
    ``frame_number`` of ``frame_count`` (1-based) within the file; ``file_name``: the file's name in the hot folder.
    """

    scanner_id: str | None = None
    bag_id: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    acquisition_time: str | None = None
    frame_number: int = 1
    frame_count: int = 1
    file_name: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.frame_number <= self.frame_count:
            raise ValueError(f"ScanInfo: frame_number {self.frame_number} outside 1..{self.frame_count}")


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One decoded frame of one stream, kept in its decoded pixel format.

    ``planes`` by ``pixel_format``:
      * ``yuv420p``: ``(Y uint8[H, W], U uint8[H/2, W/2], V uint8[H/2, W/2])`` (BT.601 limited range)
      * ``nv12``:    ``(Y uint8[H, W], UV uint8[H/2, W/2, 2])``
      * ``rgb24``:   ``(RGB uint8[H, W, 3],)``
      * ``gray8``:   ``(uint8[H, W],)``; ``gray16``: ``(uint16[H, W],)`` — full scanner dynamic range.
    Colour conversion is deferred to preprocessing so decode stays at the decoder's rate.
    """

    stream_id: str
    index: int  # 0-based, counts every frame delivered by this source since it was attached
    pts_s: float | None  # presentation timestamp from the stream, in seconds (None if absent)
    capture_time_ns: int  # wall clock of capture: from the stream when it says (RTCP), else receipt
    received_mono_ns: int  # time.monotonic_ns() when the decoder produced the frame
    pixel_format: str
    planes: tuple[np.ndarray, ...]
    width: int
    height: int
    scan: ScanInfo | None = None  # the scan's identifiers (scanner feeds of DICOS / DICOM files), else None

    def __post_init__(self) -> None:
        if self.pixel_format not in PIXEL_FORMATS:
            raise ValueError(f"unknown pixel format {self.pixel_format!r}; expected one of {PIXEL_FORMATS}")

    def to_rgb(self) -> np.ndarray:
        """uint8[H, W, 3] RGB (16-bit grayscale is scaled by 1/257 for display)."""
        from amodal.colour import planes_to_rgb

        return planes_to_rgb(self.pixel_format, self.planes)

    def to_float(self) -> np.ndarray:
        """float32[H, W, 3] RGB in [0, 1], keeping the full precision of 16-bit sources."""
        if self.pixel_format == "gray16":
            g = self.planes[0].astype(np.float32) * (1.0 / 65535.0)
            return np.repeat(g[:, :, None], 3, axis=2)
        return self.to_rgb().astype(np.float32) * (1.0 / 255.0)


class StreamState(str, enum.Enum):
    """States of a source's state machine, published on the status topic.

    ``DROPPED`` is not a state change of the source: the engine's queue reports with it each frame it
    discarded under a dropping overflow policy (reason: stream, frame index, and the file for scanners).
    """

    CONNECTING = "connecting"
    UP = "up"
    RECONNECTING = "reconnecting"
    ERROR = "error"
    ENDED = "ended"
    REMOVED = "removed"
    DROPPED = "dropped"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """A change of a stream's state; ``reason`` says why for errors and reconnects."""

    stream_id: str
    state: StreamState
    reason: str | None = None
    time_ns: int = 0  # wall clock
    attempt: int = 0  # reconnect attempt number (0 for the first connection)
    fatal: bool = False  # True when the source will not try again


@dataclass(frozen=True, slots=True)
class RLEMask:
    """A binary mask as COCO RLE (pycocotools' compressed ``counts`` bytes)."""

    height: int
    width: int
    counts: bytes

    @classmethod
    def encode(cls, mask: np.ndarray) -> "RLEMask":
        """From a bool/uint8 mask[H, W]."""
        from pycocotools import mask as mask_utils

        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8, copy=False)))
        return cls(height=int(rle["size"][0]), width=int(rle["size"][1]), counts=bytes(rle["counts"]))

    def decode(self) -> np.ndarray:
        """bool[H, W]."""
        from pycocotools import mask as mask_utils

        return mask_utils.decode({"size": [self.height, self.width], "counts": self.counts}).astype(bool)

    def area(self) -> int:
        from pycocotools import mask as mask_utils

        return int(mask_utils.area({"size": [self.height, self.width], "counts": self.counts}))


@dataclass(frozen=True, slots=True)
class ObjectResult:
    """One object in one frame.  Fields after ``mask`` are filled by the models that know them."""

    class_id: int
    class_name: str
    score: float
    box_xyxy: tuple[float, float, float, float]  # source-frame pixels
    mask: RLEMask | None = None  # visible mask
    track_id: int | None = None
    amodal_mask: RLEMask | None = None
    occluder_mask: RLEMask | None = None
    occlusion_level: float | None = None  # fraction of the object hidden, 0..1
    occlusion_layer: int | None = None  # 1 = unoccluded layer, 2 = behind layer 1, ...
    embedding: np.ndarray | None = None  # float16[D], ReID embedding (L2-normalised)
    global_id: int | None = None  # cross-camera identity


@dataclass(frozen=True, slots=True)
class FrameResult:
    """Everything an analyzer says about one frame."""

    stream_id: str
    frame_index: int
    pts_s: float | None
    capture_time_ns: int
    width: int
    height: int
    objects: tuple[ObjectResult, ...] = ()
    analyzer: str = ""
    received_mono_ns: int = 0  # carried from the Frame for in-process latency accounting
    stage_ms: dict[str, float] = field(default_factory=dict)  # per-stage latency for this frame
    scan: ScanInfo | None = None  # carried from the Frame (scanner feeds), published with the results


@dataclass(frozen=True, slots=True)
class Amendment:
    """What a stage running off the hot path (a slow stage) adds to a frame whose result was already published.

    Same stream and ``frame_index`` as that frame's ``FrameResult``; ``stage`` names the stage.  ``objects`` are the
    stage's objects for the frame; ``refs[i]`` is the index, in the frame result's ``objects``, of the object that
    ``objects[i]`` completes (its fields filled by this stage), or None for an object the stage adds (e.g. a layer
    region).  ``len(refs) == len(objects)``.
    """

    stream_id: str
    frame_index: int
    stage: str
    capture_time_ns: int
    width: int
    height: int
    objects: tuple[ObjectResult, ...] = ()
    refs: tuple[int | None, ...] = ()
    received_mono_ns: int = 0  # carried from the Frame for in-process latency accounting
    stage_ms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.refs) != len(self.objects):
            raise ValueError(f"Amendment: {len(self.objects)} objects but {len(self.refs)} refs")
