"""Decode one DICOS / DICOM file (security-screening scans) into frames' planes and the scan's identifiers.

pydicom reads the file (natively: uncompressed and RLE transfer syntaxes; a compressed syntax without an installed
pydicom pixel handler is a clear ``SourceError``).  A file is taken as DICOM when it carries the ``DICM`` preamble
(any name) or is named ``*.dcm`` / ``*.dicos`` (then also a bare dataset without preamble).

Pixels, per frame (a multi-frame file gives one ``DicomFrame`` per frame, in file order):

* grayscale (``MONOCHROME1/2``): the modality transform is applied — ``v = stored × RescaleSlope + RescaleIntercept``
  (or the Modality LUT Sequence when the file has one; pydicom's ``apply_modality_lut``) — then rounded to the
  nearest integer and clipped to ``0..65535`` to give ``gray16`` (uint16[H, W]); a value below 0 (signed data, a
  negative intercept) becomes 0 and one above 65535 becomes 65535.  ``MONOCHROME1`` (white = low) is inverted to
  ``65535 − v`` afterwards, so ``gray16`` always means higher = brighter (less attenuation).  Files of at most 8
  stored bits with the identity rescale stay ``gray8`` (uint8[H, W]); every other grayscale file is ``gray16``,
  whatever its values, so one scanner always gives one format.
* colour (``RGB``; ``YBR_*`` converted to RGB by pydicom) of 8 bits: ``rgb24`` (uint8[H, W, 3]); 16-bit colour is
  scaled to 8 bits (``>> 8``) as for other images.

The declared size (Rows × Columns × NumberOfFrames) is checked against ``max_pixels`` before the pixel data is
decoded (``ImageTooLargeError``).  Everything else that goes wrong — a truncated file, a dataset without Pixel Data
(a structured report, a DICOS threat-detection report), a missing transfer syntax — raises ``SourceError`` naming
the file.

Identifiers (``ScanInfo``, carried in every frame and published with its results; absent attributes are None):
``scanner_id`` = Device Serial Number (0018,1000), else Station Name (0008,1010); ``bag_id`` = Patient ID
(0010,0020), which DICOS names the Object of Inspection ID (the bag or parcel); ``series_uid`` = Series Instance UID
(0020,000E); ``sop_instance_uid`` (0008,0018) names the file's scan; ``acquisition_time`` = Acquisition DateTime
(0008,002A), else Acquisition Date + Time, else Content Date + Time, as ISO 8601 text (the scanner's local time;
with its UTC offset when the file states one); ``frame_number`` is 1..``frame_count``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amodal.errors import SourceError
from amodal.streams.images import DEFAULT_MAX_IMAGE_PIXELS, check_pixels
from amodal.types import ScanInfo

DICOM_SUFFIXES = frozenset({".dcm", ".dicos"})
_PREAMBLE_BYTES = 132  # 128-byte preamble + b"DICM"


@dataclass(frozen=True)
class DicomFrame:
    """One frame of a DICOM file: ``planes`` in ``pixel_format`` (see ``amodal.types.Frame``), its ``scan`` identifiers
    and its offset from the file's first frame (Frame Time × k, 0 when the file gives no Frame Time)."""

    pixel_format: str
    planes: tuple[np.ndarray, ...]
    scan: ScanInfo
    offset_s: float = 0.0


def has_dicm_preamble(path: str | Path) -> bool:
    """Whether the file starts with a 128-byte preamble and ``DICM`` (False for a shorter or unreadable file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_PREAMBLE_BYTES)
    except OSError:
        return False
    return len(head) == _PREAMBLE_BYTES and head[128:] == b"DICM"


def is_dicom_name(name: str) -> bool:
    """Whether a file name says DICOM (``.dcm`` / ``.dicos``, any case)."""
    return Path(name).suffix.lower() in DICOM_SUFFIXES


def _text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _iso_time(date: str | None, time: str | None, offset: str | None) -> str | None:
    """DICOM DA (YYYYMMDD) + TM (HHMMSS.FFFFFF, parts optional) → ``YYYY-MM-DDTHH:MM:SS[.ffffff][±HHMM]``."""
    if not date or len(date) < 8 or not date[:8].isdigit():
        return None
    out = f"{date[:4]}-{date[4:6]}-{date[6:8]}"
    if time:
        main, _, frac = time.partition(".")
        main = main.replace(":", "")
        if len(main) >= 2 and main.isdigit():
            hh, mm, ss = main[:2], main[2:4] or "00", main[4:6] or "00"
            out += f"T{hh}:{mm}:{ss}" + (f".{frac}" if frac.isdigit() else "")
    if offset and len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        out += offset
    return out


def _acquisition_time(ds) -> str | None:
    offset = _text(ds, "TimezoneOffsetFromUTC")
    stamp = _text(ds, "AcquisitionDateTime")
    if stamp:  # DT: YYYYMMDDHHMMSS.FFFFFF&ZZXX
        zone = None
        for sign in "+-":
            if sign in stamp[8:]:
                stamp, zone = stamp[:8] + stamp[8:].split(sign)[0], sign + stamp[8:].split(sign)[1]
                break
        iso = _iso_time(stamp[:8], stamp[8:] or None, zone or offset)
        if iso:
            return iso
    for date_kw, time_kw in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime")):
        iso = _iso_time(_text(ds, date_kw), _text(ds, time_kw), offset)
        if iso:
            return iso
    return None


def _gray_to_uint16(values: np.ndarray, monochrome1: bool) -> np.ndarray:
    """Modality values → uint16: rounded, clipped to 0..65535, inverted for MONOCHROME1 (module docstring)."""
    if values.dtype.kind == "f":
        values = np.rint(values)
    out = np.clip(values, 0, 65535).astype(np.uint16)
    return (65535 - out).astype(np.uint16) if monochrome1 else out


def _frames_of(ds, path: Path) -> tuple[str, list[tuple[np.ndarray, ...]]]:
    """(pixel_format, planes per frame) of a dataset whose size was already checked."""
    from pydicom.pixels import apply_modality_lut

    photometric = _text(ds, "PhotometricInterpretation") or ""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    array = ds.pixel_array  # [H, W], [N, H, W], [H, W, 3] or [N, H, W, 3]
    if samples == 1:
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3 or array.shape[0] != n_frames:
            raise SourceError(f"{path}: pixel data of shape {array.shape} for {n_frames} grayscale frame(s)")
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        identity = slope == 1.0 and intercept == 0.0 and "ModalityLUTSequence" not in ds
        if bits <= 8 and identity and photometric != "MONOCHROME1":
            return "gray8", [(np.ascontiguousarray(f.astype(np.uint8)),) for f in array]
        values = apply_modality_lut(array, ds)
        gray = _gray_to_uint16(np.asarray(values), photometric == "MONOCHROME1")
        return "gray16", [(np.ascontiguousarray(f),) for f in gray]
    if samples == 3:
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[0] != n_frames or array.shape[-1] != 3:
            raise SourceError(f"{path}: pixel data of shape {array.shape} for {n_frames} colour frame(s)")
        if array.dtype == np.uint16:
            array = (array >> 8).astype(np.uint8)
        if array.dtype != np.uint8:
            raise SourceError(f"{path}: unsupported colour sample type {array.dtype} (expected 8 or 16 bits)")
        return "rgb24", [(np.ascontiguousarray(f),) for f in array]
    raise SourceError(f"{path}: {samples} samples per pixel ({photometric or 'no photometric interpretation'}); "
                      "expected 1 (grayscale) or 3 (colour)")


def decode_dicom(path: str | Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> list[DicomFrame]:
    """Every frame of a DICOS / DICOM file with its identifiers (module docstring); ``ImageTooLargeError`` before
    decoding when Rows × Columns × NumberOfFrames exceeds ``max_pixels`` (None: no limit), ``SourceError`` naming
    the file for anything that is not a complete image."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        ds = pydicom.dcmread(path, force=not has_dicm_preamble(path))
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise SourceError(f"{path}: not a readable DICOM file: {type(exc).__name__}: {exc}") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop = _text(ds, "SOPClassUID")
        raise SourceError(f"{path}: DICOM file without pixel data (not an image"
                          + (f"; SOP class {sop})" if sop else ")"))
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise SourceError(f"{path}: DICOM image without a valid Rows / Columns / NumberOfFrames: {exc}") from exc
    if rows < 1 or columns < 1 or n_frames < 1:
        raise SourceError(f"{path}: DICOM image of {columns}x{rows}x{n_frames} frames")
    check_pixels(str(path), columns, rows, max_pixels, n_frames)
    try:
        pixel_format, planes = _frames_of(ds, path)
    except SourceError:
        raise
    except Exception as exc:  # pydicom's pixel handlers raise ValueError, RuntimeError, NotImplementedError ...
        raise SourceError(f"{path}: cannot decode the DICOM pixel data: {type(exc).__name__}: {exc}") from exc
    frame_time_ms = ds.get("FrameTime")
    try:
        step_s = float(frame_time_ms) / 1000.0 if frame_time_ms not in (None, "") else 0.0
    except (TypeError, ValueError):
        step_s = 0.0
    common = dict(
        scanner_id=_text(ds, "DeviceSerialNumber") or _text(ds, "StationName"),
        bag_id=_text(ds, "PatientID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        acquisition_time=_acquisition_time(ds),
        file_name=path.name,
    )
    return [DicomFrame(pixel_format, p, ScanInfo(frame_number=k + 1, frame_count=len(planes), **common),
                       offset_s=k * step_s if step_s > 0 else 0.0)
            for k, p in enumerate(planes)]
