"""fuzz-media: damaged media files as engine sources and in a scanner hot folder.

Good seeds are made here (ffmpeg: mp4/mkv/ts/avi H.264 clips; Pillow/tifffile: 8/16-bit PNG, TIFF, JPEG;
pydicom: a 16-bit DICOM), then each bad file is one seed through one mutation (deterministic per seed and
index): truncated at a random point, a random range zeroed / replaced by noise / cut out / duplicated, random
bytes flipped, noise inserted, 32-bit header fields set to huge values, the header of another format (or of
another seed) swapped in, the file emptied, or plain noise.

Engine: waves of ``wave`` bad files attached as sources to one running engine (identity pipeline) beside one
good clip.  Invariants, per bad file: exactly one final status event (``ended``, or a fatal ``error``) within
``hang_timeout_s`` (else it is a hang), no "internal error" (a source that raised); per wave: the good clip
delivers every frame and ends with "end of stream"; overall: no exception escapes a thread, the engine keeps
running.  Scanner: the image files (PNG/TIFF/JPEG; DICOM is not a scanner format and is ignored by design)
and some good images in one ``scanner://`` folder: each candidate file is accounted for exactly once, either
delivered as a frame or named by one ``error`` event; every good image is delivered.

A file being attached is written to ``<out>/fuzz_media_progress.json`` first, so a crash of the whole process
(a native fault) leaves the input that caused it.
"""
from __future__ import annotations

import collections
import faulthandler
import io
import json
import logging
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amodal.bench.reliability.common import CrashWatch, RecordingSink, free_endpoint, is_final, test_support
from amodal.engine.config import EngineConfig
from amodal.engine.engine import Engine
from amodal.engine.stages.identity import IdentityStage
from amodal.streams.base import SourceConfig
from amodal.streams.open import open_source
from amodal.types import StreamState

VIDEO_FORMATS = ("mp4", "mkv", "ts", "avi")
IMAGE_FORMATS = ("png", "tiff", "jpg", "dcm")
FORMATS = VIDEO_FORMATS + IMAGE_FORMATS
SCANNER_FORMATS = ("png", "tiff", "jpg")
MUTATIONS = ("truncate", "zero_range", "noise_range", "cut_range", "duplicate_range", "flip_bytes", "insert_noise",
             "huge_fields", "header_swap", "foreign_header", "zero_length", "noise_file", "truncate_header")


# --------------------------------------------------------------------------------------------- seeds
def _dicom_bytes(array: np.ndarray) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(array, dtype="<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def make_seeds(folder: Path) -> dict[str, list[Path]]:
    """Good files per format: two clips per video container, 8/16-bit gray and RGB images, a DICOM."""
    media = test_support("media")
    folder.mkdir(parents=True, exist_ok=True)
    seeds: dict[str, list[Path]] = collections.defaultdict(list)
    for fmt in VIDEO_FORMATS:
        for i, (size, seconds) in enumerate((((96, 64), 1.0), ((128, 96), 0.6))):
            seeds[fmt].append(media.make_video(folder / f"seed{i}.{fmt}", seconds=seconds, fps=25, size=size, gop=10))
    rng = np.random.default_rng(0)
    gray8 = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    gray16 = media.gray16_array(48, 64, seed=1)
    rgb = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    for fmt, arrays in (("png", (gray8, gray16, rgb)), ("tiff", (gray8, gray16, rgb)), ("jpg", (gray8, rgb))):
        for i, array in enumerate(arrays):
            path = folder / f"seed{i}.{fmt}"
            path.write_bytes(media.image_bytes(array, "jpeg" if fmt == "jpg" else fmt))
            seeds[fmt].append(path)
    try:
        path = folder / "seed0.dcm"
        path.write_bytes(_dicom_bytes(gray16))
        seeds["dcm"].append(path)
    except ImportError:  # pydicom missing: DICOM inputs are noise under a .dcm name (the engine reads no DICOM)
        pass
    return dict(seeds)


# --------------------------------------------------------------------------------------------- mutations
def mutate(data: bytes, how: str, rng: np.random.Generator, others: list[bytes]) -> bytes:
    """``data`` damaged by mutation ``how`` (see ``MUTATIONS``); ``others`` are good files of other formats."""
    n = len(data)

    def span() -> tuple[int, int]:
        start = int(rng.integers(0, max(1, n)))
        return start, min(n, start + int(rng.integers(1, max(2, n // 4))))

    if how == "truncate":
        return data[: int(rng.integers(0, max(1, n)))]
    if how == "truncate_header":
        return data[: int(rng.integers(1, min(n, 512) + 1))]
    if how == "zero_range":
        a, b = span()
        return data[:a] + bytes(b - a) + data[b:]
    if how == "noise_range":
        a, b = span()
        return data[:a] + rng.bytes(b - a) + data[b:]
    if how == "cut_range":
        a, b = span()
        return data[:a] + data[b:]
    if how == "duplicate_range":
        a, b = span()
        return data[:b] + data[a:b] + data[b:]
    if how == "flip_bytes":
        out = bytearray(data)
        for pos in rng.integers(0, max(1, n), size=int(rng.integers(1, 64))):
            if n:
                out[pos] ^= int(rng.integers(1, 256))
        return bytes(out)
    if how == "insert_noise":
        pos = int(rng.integers(0, n + 1))
        return data[:pos] + rng.bytes(int(rng.integers(1, 4096))) + data[pos:]
    if how == "huge_fields":  # size/length fields of headers: 4-byte words in the first KB set to huge values
        out = bytearray(data)
        for pos in rng.integers(0, max(1, min(n - 4, 1024)), size=int(rng.integers(1, 8))):
            if pos + 4 <= n:
                out[pos:pos + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\xff\xff",
                                               b"\xff\xff\x00\x00", b"\x00\x01\x00\x00"])
        return bytes(out)
    if how == "header_swap":  # the first bytes of another good file (another format, or another seed)
        other = others[int(rng.integers(0, len(others)))]
        k = int(rng.integers(8, max(9, min(len(other), 2048))))
        return other[:k] + data[k:]
    if how == "foreign_header":  # another format's whole header glued before this file
        other = others[int(rng.integers(0, len(others)))]
        return other[: int(rng.integers(4, max(5, min(len(other), 4096))))] + data
    if how == "zero_length":
        return b""
    if how == "noise_file":
        return rng.bytes(int(rng.integers(1, 64 << 10)))
    raise ValueError(f"unknown mutation {how!r}; known: {MUTATIONS}")


@dataclass(frozen=True)
class BadFile:
    path: Path
    fmt: str
    mutation: str
    seed_file: str


def make_bad_files(folder: Path, seeds: dict[str, list[Path]], count: int, seed: int) -> list[BadFile]:
    """``count`` bad files round-robin over formats and mutations, named ``f0001_<mutation>.<fmt>``."""
    folder.mkdir(parents=True, exist_ok=True)
    blobs = {fmt: [p.read_bytes() for p in paths] for fmt, paths in seeds.items()}
    formats = [f for f in FORMATS if f in blobs] + (["dcm"] if "dcm" not in blobs else [])
    out = []
    for i in range(count):
        fmt = formats[i % len(formats)]
        how = MUTATIONS[i % len(MUTATIONS)]  # 8 formats x 13 mutations, coprime: every pair within 104 files
        rng = np.random.default_rng([seed, i])
        own = blobs.get(fmt) or [rng.bytes(2048)]
        k = int(rng.integers(0, len(own)))
        others = [b for f, bs in blobs.items() for j, b in enumerate(bs) if (f, j) != (fmt, k)]
        path = folder / f"f{i:04d}_{how}.{fmt}"
        path.write_bytes(mutate(own[k], how, rng, others))
        seed_name = seeds[fmt][k].name if fmt in seeds else "noise"
        out.append(BadFile(path, fmt, how, seed_name))
    return out


# --------------------------------------------------------------------------------------------- engine
def _video_frames(path: Path) -> int:
    return test_support("media").ffprobe_frame_count(path)


_SEED_FRAMES: dict[str, int] = {}  # seed file name → frames it decodes to (videos: ffprobe; images: 1)


def run_engine_waves(bad: list[BadFile], good: Path, good_frames: int, *, wave: int, hang_timeout_s: float,
                     deadline_s: float, progress_path: Path) -> dict[str, Any]:
    """Every bad file as a source of one engine, ``wave`` at a time, each wave beside the good clip."""
    recorder = RecordingSink()
    engine = Engine(EngineConfig(publish=free_endpoint(), exit_when_done=False, max_wait_ms=2.0),
                    pipelines={"default": [IdentityStage()]}, sinks=[recorder]).start()
    per_file: list[dict[str, Any]] = []
    good_runs: list[dict[str, Any]] = []
    waves = 0
    try:
        for start in range(0, len(bad), wave):
            if time.monotonic() > deadline_s:
                break
            chunk = bad[start:start + wave]
            ids = [f"bad{start + j}" for j in range(len(chunk))]
            good_id = f"good{waves}"
            progress_path.write_text(json.dumps({"wave": waves, "files": [str(b.path) for b in chunk]}))
            t0 = time.monotonic()
            engine.add_source(SourceConfig(uri=str(good), stream_id=good_id))
            for sid, b in zip(ids, chunk):
                engine.add_source(SourceConfig(uri=str(b.path), stream_id=sid, open_timeout_s=5.0, read_timeout_s=5.0))
            everyone = [good_id, *ids]
            recorder.wait_for(lambda: all(any(map(is_final, recorder.events.get(s, ()))) for s in everyone),
                              hang_timeout_s)
            wave_s = time.monotonic() - t0
            # a stream is retired (its queue drained, its thread joined) shortly after its final event
            _wait_retired(engine, everyone, 10.0)
            for sid, b in zip(ids, chunk):
                per_file.append(_verdict(recorder, sid, b, engine))
            finals = recorder.finals(good_id)
            good_runs.append({"wave": waves, "frames": recorder.frames[good_id], "expected": good_frames,
                              "final": finals[-1].state.value if finals else None,
                              "reason": finals[-1].reason if finals else None, "wave_s": round(wave_s, 3)})
            waves += 1
            if not engine._loop_thread or not engine._loop_thread.is_alive():  # noqa: SLF001 - the engine died
                break
        engine_alive = bool(engine._loop_thread and engine._loop_thread.is_alive())  # noqa: SLF001
        failures = list(engine.failures)
    finally:
        engine.stop()
    return {"files": per_file, "good": good_runs, "engine_alive": engine_alive, "engine_failures": failures}


def _wait_retired(engine: Engine, stream_ids: list[str], timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = set(stream_ids) & set(engine.streams)
        if not left:
            return []
        time.sleep(0.02)
    hung = sorted(set(stream_ids) & set(engine.streams))
    for sid in hung:  # a hung source: detach it so the campaign goes on (its thread is a daemon)
        try:
            engine.remove_source(sid, timeout_s=1.0)
        except Exception:  # noqa: BLE001 - already gone
            pass
    return hung


def _verdict(recorder: RecordingSink, sid: str, bad: BadFile, engine: Engine) -> dict[str, Any]:
    events = list(recorder.events.get(sid, ()))
    finals = [e for e in events if is_final(e)]
    seed_frames = _SEED_FRAMES.get(bad.seed_file)
    internal = [e.reason for e in events if e.reason and "internal error" in e.reason]
    last = finals[-1] if finals else None
    return {"file": bad.path.name, "format": bad.fmt, "mutation": bad.mutation, "seed": bad.seed_file,
            "frames": recorder.frames[sid], "finals": len(finals), "hang": not finals,
            # frames lost while the final event says only "end of stream" (damage not reported; not a crash)
            "silent_loss": bool(last is not None and last.state == StreamState.ENDED and last.reason == "end of stream"
                                and seed_frames is not None and recorder.frames[sid] < seed_frames),
            "final": None if last is None else ("error" if last.state == StreamState.ERROR else last.state.value),
            "reason": None if last is None else (last.reason or "")[:300], "internal_errors": internal}


# --------------------------------------------------------------------------------------------- scanner
def run_scanner(bad: list[BadFile], good_images: list[Path], folder: Path, *, timeout_s: float) -> dict[str, Any]:
    """The image files and ``good_images`` copied into one hot folder, read by a ``scanner://`` source of an
    engine: every candidate file delivered once or named once by an ``error`` event."""
    folder.mkdir(parents=True, exist_ok=True)
    candidates: dict[str, str] = {}  # name → "bad" | "good"
    ignored = []
    for b in bad:
        shutil.copyfile(b.path, folder / b.path.name)
        if b.fmt in SCANNER_FORMATS:
            candidates[b.path.name] = "bad"
        else:
            ignored.append(b.path.name)
    for i, g in enumerate(good_images):
        name = f"good{i:04d}{g.suffix}"
        shutil.copyfile(g, folder / name)
        candidates[name] = "good"
    source = open_source(SourceConfig(uri=f"scanner://{folder}?settle_s=0.1&give_up_s=0.6", stream_id="scanner",
                                      poll_interval_s=0.05))
    # the file name each frame carries (the source itself may run in a decode worker process)
    recorder = RecordingSink(label=lambda frame: frame.scan.file_name if frame.scan is not None else None)
    engine = Engine(EngineConfig(publish=free_endpoint(), exit_when_done=False, max_wait_ms=2.0),
                    pipelines={"default": [IdentityStage()]}, sinks=[recorder]).start()
    t0 = time.monotonic()
    try:
        engine.add_source(source)

        def accounted() -> collections.Counter[str]:
            """Files delivered or named by an error event so far (called under the recorder's lock: cheap)."""
            seen: collections.Counter[str] = collections.Counter(n for n in recorder.labels.get("scanner", ()) if n)
            seen.update(_named_file(e.reason) for e in recorder.events.get("scanner", ())
                        if e.state == StreamState.ERROR)
            seen.pop(None, None)
            return seen

        recorder.wait_for(lambda: len(accounted()) >= len(candidates), timeout_s)
        time.sleep(1.0)  # anything late (a second event for a file) shows up now
        with recorder._cond:  # noqa: SLF001
            seen = accounted()
            events = list(recorder.events.get("scanner", ()))
        elapsed_s = time.monotonic() - t0
        alive = bool(engine._loop_thread and engine._loop_thread.is_alive())  # noqa: SLF001
    finally:
        engine.stop()
    delivered = collections.Counter(n for n in recorder.labels.get("scanner", ()) if n)
    missing = sorted(n for n in candidates if seen[n] == 0)
    twice = sorted(n for n in candidates if seen[n] > 1)
    errors = [e for e in events if e.state == StreamState.ERROR]
    unnamed_errors = [e.reason for e in errors if _named_file(e.reason) not in candidates]
    return {
        "candidates": len(candidates), "good_images": len(good_images), "ignored_not_scanner_format": len(ignored),
        "delivered": sum(delivered.values()), "error_events": len(errors),
        "good_delivered": sum(1 for n, kind in candidates.items() if kind == "good" and delivered[n] == 1),
        "bad_delivered_as_frames": sum(1 for n, kind in candidates.items() if kind == "bad" and delivered[n]),
        "unaccounted": missing[:50], "unaccounted_count": len(missing),
        "accounted_twice": twice[:50], "accounted_twice_count": len(twice),
        "errors_naming_no_candidate": unnamed_errors[:20], "internal_errors": [e.reason for e in events if e.reason and
                                                                               "internal error" in e.reason],
        "final_states": [e.state.value for e in events if e.state in (StreamState.ENDED, StreamState.REMOVED)],
        "seconds": round(elapsed_s, 2), "engine_alive": alive,
    }


_SCANNER_FILE = re.compile(r"^scanner (?:file|entry) (\S+) ")


def _named_file(reason: str | None) -> str | None:
    """The file name a scanner ``error`` event names ("scanner file /hot/f0001_truncate.png skipped ...")."""
    match = _SCANNER_FILE.match(reason or "")
    return Path(match.group(1)).name if match else None


# --------------------------------------------------------------------------------------------- campaign
def run(out: Path, *, files: int = 1000, seed: int = 0, wave: int = 12, hang_timeout_s: float = 60.0,
        time_limit_s: float = 1800.0, scanner: bool = True) -> dict[str, Any]:
    faulthandler.enable(file=sys.stderr, all_threads=True)
    started = time.monotonic()
    deadline_s = started + time_limit_s
    work = out / "fuzz_media_files"
    shutil.rmtree(work, ignore_errors=True)
    seeds = make_seeds(work / "seeds")
    bad = make_bad_files(work / "bad", seeds, files, seed)
    good = seeds["mp4"][0]
    good_frames = _video_frames(good)
    _SEED_FRAMES.clear()
    _SEED_FRAMES.update({p.name: _video_frames(p) for fmt in VIDEO_FORMATS for p in seeds[fmt]})
    _SEED_FRAMES.update({p.name: 1 for fmt in ("png", "tiff", "jpg") for p in seeds.get(fmt, [])})
    print(f"fuzz-media: {len(bad)} bad files over {len(FORMATS)} formats x {len(MUTATIONS)} mutations; "
          f"good clip {good.name} ({good_frames} frames)", flush=True)
    tiff_log = logging.getLogger("tifffile")
    tiff_level = tiff_log.level
    tiff_log.setLevel(logging.CRITICAL)  # tifffile warns about every broken tag it skips: thousands of lines
    with CrashWatch() as watch:
        engine_part = run_engine_waves(bad, good, good_frames, wave=wave, hang_timeout_s=hang_timeout_s,
                                       deadline_s=deadline_s, progress_path=out / "fuzz_media_progress.json")
        scanner_part = None
        if scanner and time.monotonic() < deadline_s:
            good_images = [p for fmt in SCANNER_FORMATS for p in seeds.get(fmt, [])]
            scanner_part = run_scanner(bad, good_images, work / "hot",
                                       timeout_s=max(30.0, deadline_s - time.monotonic()))
    tiff_log.setLevel(tiff_level)
    rows = engine_part["files"]
    by = collections.defaultdict(lambda: collections.Counter())
    for r in rows:
        by[r["format"]]["files"] += 1
        by[r["format"]][r["final"] or "hang"] += 1
        by[r["format"]]["with_frames"] += bool(r["frames"])
    good_runs = engine_part["good"]
    summary = {
        "files_generated": len(bad),
        "files_run": len(rows),
        "crashes": watch.summary()["uncaught_thread_exceptions"] + sum(bool(r["internal_errors"]) for r in rows),
        "hangs": sum(r["hang"] for r in rows),
        "not_one_final_event": sum(r["finals"] != 1 for r in rows),
        "silent_losses": sum(r["silent_loss"] for r in rows),
        "good_waves": len(good_runs),
        "good_incomplete": sum(g["frames"] != g["expected"] or g["final"] != "ended" for g in good_runs),
        "engine_alive": engine_part["engine_alive"],
        "engine_failures": engine_part["engine_failures"],
        "scanner_unaccounted": None if scanner_part is None else scanner_part["unaccounted_count"],
        "scanner_accounted_twice": None if scanner_part is None else scanner_part["accounted_twice_count"],
        "scanner_good_missing": None if scanner_part is None else (scanner_part["good_images"] -
                                                                     scanner_part["good_delivered"]),
        "seconds": round(time.monotonic() - started, 1),
        "stopped_by_time_limit": len(rows) < len(bad),
    }
    shutil.rmtree(work, ignore_errors=True)
    (out / "fuzz_media_progress.json").unlink(missing_ok=True)
    return {"parameters": {"files": files, "seed": seed, "wave": wave, "hang_timeout_s": hang_timeout_s,
                           "time_limit_s": time_limit_s, "formats": list(FORMATS), "mutations": list(MUTATIONS)},
            "summary": summary, "crash_watch": watch.summary(), "by_format": {k: dict(v) for k, v in by.items()},
            "by_mutation": dict(collections.Counter(r["mutation"] for r in rows)),
            "good_clip": good_runs, "scanner": scanner_part,
            "problems": [r for r in rows if r["hang"] or r["finals"] != 1 or r["internal_errors"]][:50],
            "silent_loss_files": [{k: r[k] for k in ("file", "frames", "reason")}
                                  for r in rows if r["silent_loss"]][:30],
            "files": rows}


def plot(results: dict[str, Any], ax_row) -> None:
    formats = list(results["by_format"])
    outcomes = ("ended", "error", "hang")
    bottom = np.zeros(len(formats))
    ax = ax_row[0]
    for outcome in outcomes:
        values = np.array([results["by_format"][f].get(outcome, 0) for f in formats], dtype=float)
        ax.bar(formats, values, bottom=bottom, label=outcome)
        bottom += values
    s = results["summary"]
    ax.set_title(f"fuzz-media: {s['files_run']} bad files, {s['crashes']} crashes, {s['hangs']} hangs")
    ax.set_ylabel("files by final event")
    ax.legend()
    ax = ax_row[1]
    ax.plot([g["wave_s"] for g in results["good_clip"]], ".")
    ax.set_xlabel("wave")
    ax.set_ylabel("wave time (s)")
    bad_good = s["good_incomplete"]
    ax.set_title(f"waves of bad sources beside a good clip ({bad_good} incomplete)")
