"""Pipeline stages: the lifecycle every model stage implements, what it declares and what it receives.

A *primary* stage turns frames into objects; a *secondary* stage receives the frames and the objects of the stages
before it and fills fields of those objects (amodal mask, occluder mask, layer, embedding, global identity) or adds
objects.  One thread calls the whole lifecycle — the engine's inference thread, or the stage's own worker when its
rate policy detaches it from the hot path::

    start(device) → process(batch) per micro-batch (frames of several streams mixed)
                  → on_source_eos(stream_id) when a stream ended and all its frames were processed → stop()

A *lagging* stage (``lag_frames`` > 0: windowed EoRaS looks W − 1 frames ahead) completes a frame only after later
frames arrived: ``process`` returns the objects it could not complete yet unchanged, and ``take_late`` hands over,
after each ``process`` and ``on_source_eos``, the frames it completed since (``LateResult``); the engine publishes
each as an amendment of its frame.  A lagging stage runs detached (its default rate policy), so that it receives
every synchronous stage's objects and its late results amend the frames as published.

A stage declares what it ``needs`` and what it ``fills`` (names from ``CAPABILITIES``); the engine refuses at
start-up a pipeline where a stage's needs are not filled by an earlier stage.  A stage declares its pixel input
(``input_spec``); the engine preprocesses each micro-batch once per distinct declared input, straight from the
decoded planes (the fused Triton kernel on CUDA, its CPU path otherwise), and hands every stage the tensors it
asked for with the geometry that maps results back to frame pixels.  No stage converts colour or resizes frames.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from amodal.errors import ConfigError, EngineError
from amodal.kernels.preprocess import LetterboxGeometry
from amodal.types import CameraIntrinsics, Frame, ObjectResult

#: what stages fill and need: objects, their visible masks, per-stream track ids, tracked objects of the person
#: class, amodal masks, occluder masks, occlusion levels, occlusion layers, ReID embeddings, global identities
CAPABILITIES = ("objects", "masks", "tracks", "person_tracks", "amodal_masks", "occluder_masks",
                "occlusion_levels", "occlusion_layers", "embeddings", "global_ids")


class StageError(EngineError, RuntimeError):
    """A stage broke its contract (processed before start, returned the wrong number of results)."""


def check_capabilities(names: frozenset[str], where: str) -> frozenset[str]:
    unknown = sorted(names - set(CAPABILITIES))
    if unknown:
        raise ConfigError(f"{where}: unknown capabilities {unknown}; known: {', '.join(CAPABILITIES)}")
    return names


@dataclass(frozen=True)
class InputSpec:
    """The pixels a stage wants for each frame: RGB (or BGR) float ``[3, h, w]``, ``(v − mean) / std`` with v in
    0..1 (16-bit scanner frames keep their full range: v = value / 65535), letterboxed into ``size_hw`` keeping the
    aspect ratio (None = the frame's own size, no resampling)."""

    size_hw: tuple[int, int] | None = None
    channel_order: Literal["rgb", "bgr"] = "rgb"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    pad_position: Literal["centre", "top_left"] = "centre"
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        if self.size_hw is not None and (len(self.size_hw) != 2 or min(self.size_hw) < 1):
            raise ConfigError(f"InputSpec.size_hw must be (height, width) >= 1, got {self.size_hw}")
        if self.channel_order not in ("rgb", "bgr"):
            raise ConfigError(f"InputSpec.channel_order must be rgb or bgr, got {self.channel_order!r}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"InputSpec.dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"InputSpec: mean and std need 3 values, std > 0; got {self.mean}, {self.std}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass(frozen=True, eq=False)
class PreparedInput:
    """One declared input for every frame of a batch: ``images[i]`` float ``[3, h, w]`` on the stage's device and
    ``geometries[i]`` mapping its pixels back to frame ``i``'s (``boxes_to_source``, ``masks_to_source``)."""

    images: tuple[torch.Tensor, ...]
    geometries: tuple[LetterboxGeometry, ...]

    def stacked(self) -> torch.Tensor:
        """float ``[B, 3, h, w]``; every image must have one size (always true for a fixed ``size_hw``)."""
        shapes = {tuple(t.shape) for t in self.images}
        if len(shapes) != 1:
            raise StageError(f"images of different sizes {sorted(shapes)} cannot be stacked; declare size_hw")
        return torch.stack(self.images)


@dataclass(frozen=True, eq=False)
class StageBatch:
    """What a stage receives: the frames of one micro-batch, the objects the stages before it produced for each
    frame (empty tuples before the primary stage), the prepared inputs the pipeline's stages declared, and the
    cameras of the streams whose sources set one (``camera:``)."""

    frames: tuple[Frame, ...]
    objects: tuple[tuple[ObjectResult, ...], ...]
    inputs: Mapping[InputSpec, PreparedInput] = field(default_factory=dict)
    cameras: Mapping[str, CameraIntrinsics] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.objects) != len(self.frames):
            raise StageError(f"StageBatch: {len(self.frames)} frames but {len(self.objects)} object lists")

    def __len__(self) -> int:
        return len(self.frames)

    def input(self, spec: InputSpec) -> PreparedInput:
        """The prepared input for ``spec`` (declared by the stage as its ``input_spec``)."""
        try:
            return self.inputs[spec]
        except KeyError:
            raise StageError(f"no prepared input for {spec}; a stage receives the input it declared") from None

    def select(self, indexes: Sequence[int]) -> "StageBatch":
        """The sub-batch of frames ``indexes`` (inputs sliced alike)."""
        inputs = {spec: PreparedInput(tuple(p.images[i] for i in indexes), tuple(p.geometries[i] for i in indexes))
                  for spec, p in self.inputs.items()}
        return StageBatch(tuple(self.frames[i] for i in indexes), tuple(self.objects[i] for i in indexes), inputs,
                          self.cameras)


@dataclass(frozen=True)
class FrameRef:
    """What identifies a frame in an amendment, without its pixels (a lagging stage holds these, not frames)."""

    stream_id: str
    index: int
    capture_time_ns: int
    width: int
    height: int
    received_mono_ns: int

    @classmethod
    def of(cls, frame: Frame) -> "FrameRef":
        return cls(frame.stream_id, frame.index, frame.capture_time_ns, frame.width, frame.height,
                   frame.received_mono_ns)


@dataclass(frozen=True, eq=False)
class LateResult:
    """A lagging stage's completion of an earlier frame: the objects that frame had when the stage received it
    (``before``) and after the stage (``after``: same order, completed objects replaced, added ones appended)."""

    frame: FrameRef
    before: tuple[ObjectResult, ...]
    after: tuple[ObjectResult, ...]


@dataclass(frozen=True)
class RatePolicy:
    """How often a stage runs: on ``every`` frame (default), every ``n``-th frame of each stream (``nth``), or on the
    ``newest`` frame of each stream whenever it is free.  A stage whose policy is not ``every`` — or that sets
    ``detached`` — runs on its own worker off the hot path; its results are published as amendments to the frames
    they belong to.  ``backlog``: frames a detached ``every``/``nth`` stage may have waiting before it drops the
    oldest (each drop is reported on the status topic)."""

    mode: Literal["every", "nth", "newest"] = "every"
    n: int = 1
    detached: bool | None = None
    backlog: int = 256

    def __post_init__(self) -> None:
        if self.mode not in ("every", "nth", "newest"):
            raise ConfigError(f"rate.mode must be every, nth or newest, got {self.mode!r}")
        if not isinstance(self.n, int) or self.n < 1 or (self.mode != "nth" and self.n != 1):
            raise ConfigError(f"rate.n must be an integer >= 1, and only set with mode nth; got {self.n!r}")
        if self.backlog < 1:
            raise ConfigError(f"rate.backlog must be >= 1, got {self.backlog}")

    @property
    def is_detached(self) -> bool:
        return self.mode != "every" if self.detached is None else bool(self.detached)


class Stage(abc.ABC):
    """Base of every pipeline stage.  Subclasses set the class attributes and implement ``process``."""

    #: the name used in pipelines (``--pipeline ovis,reid``) and in amendments
    name: ClassVar[str] = ""
    #: True for a stage that turns frames into objects (it ignores the objects it receives)
    primary: ClassVar[bool] = False
    #: the rate policy used when the pipeline entry does not set ``rate``
    default_rate: ClassVar[RatePolicy] = RatePolicy()

    #: capabilities earlier stages must fill / this stage fills (may depend on the weights: set them in __init__)
    needs: frozenset[str] = frozenset()
    fills: frozenset[str] = frozenset()
    #: the pixels this stage wants (None: it needs no pixels)
    input_spec: InputSpec | None = None
    #: frames a lagging stage waits for before it completes a frame (0: it completes every frame in ``process``)
    lag_frames: int = 0

    device: torch.device | None = None

    def start(self, device: torch.device) -> None:
        """Load or move weights to ``device``; called once, on the thread that will call ``process``."""
        self.device = device

    @property
    def started(self) -> bool:
        return self.device is not None

    @abc.abstractmethod
    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        """The objects of each frame after this stage, in the order of ``batch.frames``: a primary stage's own
        objects; a secondary stage's received objects with its fields filled (``dataclasses.replace``), plus any
        objects it adds (after the received ones, so their indexes stay valid)."""

    def use_security(self, settings) -> None:
        """The engine's CURVE settings (``amodal.security.SecuritySettings`` or None), given before ``start``:
        a stage that serves a socket of its own (the gallery query endpoint) secures it with them."""

    def on_source_eos(self, stream_id: str) -> None:
        """Forget the per-stream state of ``stream_id`` (tracks, caches, gallery tracks); a lagging stage completes
        the frames it still holds (handed over by the next ``take_late``)."""

    def take_late(self) -> list[LateResult]:
        """The earlier frames a lagging stage completed since the last call (oldest first); empty for others."""
        return []

    def stop(self) -> None:
        """Release resources (save galleries, close endpoints)."""
        self.device = None
