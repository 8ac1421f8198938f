"""``python -m amodal.demo --feed xray`` (``make demo-xray``): a baggage scanner's belt, end to end.

1. renders bags of the X-ray world (``amodal.world.xray``, the renderer of ``amodal data synth xray``, here with
   seeds outside the training sets) and drops them one by one into a hot folder as DICOS files (pydicom; 8-bit RGB
   pseudo-colour, or the 16-bit high-energy transmission with ``--gray16``), each written under a temporary name
   and renamed when complete, as scanners do, with its bag id, scanner id and acquisition time;
2. runs the scanner pipeline (default ``xray``, the shipped bilayer weights trained here on synthetic scans) on
   ``scanner://`` that folder, publishing on a loopback ZeroMQ port, with the annotated-video sink writing the belt
   (one bag per ``1 / video_fps`` s: item masks, striped occluder masks, boxes, classes, occlusion levels);
3. subscribes like any client and prints, per bag, what was rendered into it and what the engine found (class,
   score, share of the item under its occluder), with the bag id the scanner wrote into the file.  With
   ``--pipeline xray,layers`` the ``layers`` stage (layered decomposition by diffusion, slow) runs detached on every
   bag and its layers arrive as amendments after the bag's result (not drawn in the video).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np

from amodal.engine.annotate import AnnotatedVideoSink
from amodal.engine.config import EngineConfig, PipelineConfig, StageConfig, parse_stage_list
from amodal.engine.engine import Engine
from amodal.engine.stage import RatePolicy
from amodal.engine.stages import STAGES
from amodal.schema import AmendmentMessage, FrameMessage, StatusMessage
from amodal.streams.base import SourceConfig
from amodal.subscriber import Subscriber
from amodal.types import StreamState

BAG_SEED = 9090  # outside the seeds of every training and held-out set
SCANNER_ID = "DEMO-XR-1"
DICOS_DX_STORAGE = "1.2.840.10008.5.1.4.1.1.501.2.1"  # DICOS Digital X-Ray Image Storage (for presentation)


def write_bag_dicos(path: Path, image: np.ndarray, *, bag_id: str, scanner_id: str, when: datetime.datetime) -> Path:
    """One scan as a DICOS file: ``image`` uint8[H, W, 3] (RGB pseudo-colour) or uint16[H, W] (MONOCHROME2).
    Written under ``.<name>.tmp`` and renamed, so a hot folder never sees it half-written."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DICOS_DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = bag_id  # DICOS: Object of Inspection ID
    ds.DeviceSerialNumber = scanner_id
    ds.SeriesInstanceUID = generate_uid()
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S.%f")
    ds.Rows, ds.Columns = image.shape[:2]
    if image.ndim == 3:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(image).astype(image.dtype.newbyteorder("<")).tobytes()
    temp = path.with_name(f".{path.name}.tmp")
    ds.save_as(temp, enforce_file_format=True)
    os.replace(temp, path)
    return path


def every_bag(stage: StageConfig) -> StageConfig:
    """A later stage that runs detached by default (``layers``: newest frame only) set to run detached on every
    bag, so each bag gets its amendment; other stages unchanged."""
    if stage.rate is None and STAGES[stage.name].factory.default_rate.is_detached:
        return dataclasses.replace(stage, rate=RatePolicy("every", detached=True))
    return stage


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _found_line(message: FrameMessage) -> str:
    r = message.result
    bag = r.scan.bag_id if r.scan is not None else f"frame {r.frame_index}"
    items = [o for o in r.objects if o.class_name != "layer"]
    if not items:
        return f"bag {bag}: nothing found"
    parts = []
    for o in sorted(items, key=lambda o: -o.score):
        hidden = f", {o.occlusion_level:.0%} under its occluder" if o.occlusion_level is not None else ""
        parts.append(f"{o.class_name} {o.score:.2f}{hidden}")
    return f"bag {bag}: found {len(items)}: " + "; ".join(parts)


def main(args: argparse.Namespace) -> int:
    """Run the belt with the parsed ``amodal.demo`` arguments (``bags``, ``interval_s``, ``size``, ``gray16``,
    ``pipeline``, ``weights``, ``score_threshold``, ``max_items``, ``video_fps``, ``amendments_wait_s``, ``out``)."""

    from amodal.world.xray import BagConfig, render_bag

    belt = args.out / "belt"
    belt.mkdir(parents=True, exist_ok=True)
    for old in belt.glob("bag_*.dcm"):  # a previous run's bags
        old.unlink()
    pipeline = PipelineConfig.of("scanners", parse_stage_list(args.pipeline))
    first = pipeline.stages[0]
    flags = (("weights", args.weights), ("score_threshold", args.score_threshold), ("max_detections", args.max_items))
    overrides = {k: v for k, v in flags if v is not None and hasattr(first.settings, k)}
    later = tuple(every_bag(stage) for stage in pipeline.stages[1:])
    pipeline = dataclasses.replace(pipeline, stages=(
        dataclasses.replace(first, settings=dataclasses.replace(first.settings, **overrides)), *later))
    detached = [s.name for s in pipeline.stages if s.rate is not None and s.rate.is_detached]
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    source = SourceConfig(uri=f"scanner://{belt}?settle_s=0.1", stream_id="belt",
                          max_frames=args.bags, poll_interval_s=0.05)
    config = EngineConfig(sources=(source,), pipelines=(pipeline,), publish=endpoint, max_batch_size=1,
                          wait_for_subscribers=1, wait_for_subscribers_timeout_s=30.0)
    annotated = args.out / "annotated.mp4"
    video = AnnotatedVideoSink(annotated, per_stream=False, fps=args.video_fps)
    engine = Engine(config, sinks=[video])
    rendered: dict[str, str] = {}
    found: list[FrameMessage] = []
    amended: list[AmendmentMessage] = []
    done = threading.Event()

    def subscribe() -> None:
        ended_at: float | None = None
        with Subscriber(endpoint, streams=["belt"]) as sub:
            while True:
                msg = sub.recv(0.2)
                if ended_at is not None and (len(amended) >= len(found) * len(detached)
                                             or time.monotonic() - ended_at > args.amendments_wait_s):
                    break
                if msg is None:
                    continue
                if isinstance(msg, FrameMessage):
                    found.append(msg)
                    bag = msg.result.scan.bag_id if msg.result.scan is not None else None
                    print(f"bag {bag} rendered with: {rendered.get(bag, '?')}", flush=True)
                    print("  " + _found_line(msg), flush=True)
                elif isinstance(msg, AmendmentMessage):
                    amended.append(msg)
                    a = msg.amendment
                    layers = sorted({o.occlusion_layer for o in a.objects if o.occlusion_layer is not None})
                    print(f"  + {a.stage} on frame {a.frame_index}: {len(a.objects)} objects"
                          + (f", layers {layers}" if layers else ""), flush=True)
                elif isinstance(msg, StatusMessage) and msg.event.state == StreamState.ERROR:
                    print(f"[status] {msg.event.reason}", flush=True)
                elif isinstance(msg, StatusMessage) and msg.event.state == StreamState.ENDED:
                    ended_at = time.monotonic()  # detached stages' amendments may still come
        done.set()

    threading.Thread(target=subscribe, daemon=True).start()
    engine.start()  # attaches the hot folder once the subscriber above has subscribed
    print(f"engine: {','.join(pipeline.stage_names)} on {engine.device}, hot folder {belt}, publishing on {endpoint}")
    cfg = BagConfig(width=args.size, height=args.size, items_min=1, items_max=3, clutter_min=4, clutter_max=8)
    started = time.monotonic()
    for k in range(args.bags):
        scene = render_bag(BAG_SEED, k, cfg)
        bag_id = f"BAG-{k + 1:04d}"
        names = [c.name for c in scene.components if c.kind == "item"]
        rendered[bag_id] = ", ".join(names) if names else "no item"
        write_bag_dicos(belt / f"bag_{k + 1:04d}.dcm", scene.image(args.gray16), bag_id=bag_id,
                        scanner_id=SCANNER_ID, when=datetime.datetime.now())
        time.sleep(args.interval_s)
    done.wait(max(120.0, 60.0 * args.bags))
    engine.wait(30)
    engine.stop()
    elapsed_s = time.monotonic() - started
    if not found:
        print("no bag was published")
        return 1
    items = sum(len(m.result.objects) for m in found)
    print(f"bags analysed: {len(found)} of {args.bags} in {elapsed_s:.1f} s; items published: {items}"
          + (f"; amendments from {', '.join(detached)}: {len(amended)}" if detached else ""))
    print(f"annotated video: {annotated.resolve()} ({len(found)} bags at {args.video_fps} per second: item masks, "
          f"striped occluder masks, classes, occlusion levels)")
    return 0
