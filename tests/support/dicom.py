"""Real DICOS / DICOM files written with pydicom for the scanner tests (uncompressed, explicit VR little endian)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

#: DICOS Digital X-Ray Image Storage (for processing): what a baggage scanner exports
DICOS_DX_STORAGE = "1.2.840.10008.5.1.4.1.1.501.2.2"
#: a DICOS Threat Detection Report: a DICOM file without pixel data
DICOS_TDR_STORAGE = "1.2.840.10008.5.1.4.1.1.501.3"


def _meta(sop_class: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def scan_dataset(stored: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0, bag_id: str = "BAG-0001",
                 scanner_serial: str = "XR-7", series_uid: str | None = None,
                 acquisition: str = "20261130172338.250000", frame_time_ms: float | None = None,
                 photometric: str = "MONOCHROME2") -> Dataset:
    """A DICOS X-ray image dataset: ``stored`` uint16[H, W] (one frame) or uint16[N, H, W] (N frames)."""
    stored = np.asarray(stored)
    meta = _meta(DICOS_DX_STORAGE)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = bag_id  # DICOS: Object of Inspection ID
    ds.DeviceSerialNumber = scanner_serial
    ds.StationName = "LANE-3"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.AcquisitionDateTime = acquisition
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
        if frame_time_ms is not None:
            ds.FrameTime = frame_time_ms
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def write_scan(path: str | Path, stored: np.ndarray, *, preamble: bool = True, **kw) -> Path:
    """``scan_dataset(stored, **kw)`` saved to ``path``: with the 128-byte preamble and ``DICM`` (a DICOM file), or
    without them (a bare dataset, as some exporters write ``.dcm``)."""
    path = Path(path)
    ds = scan_dataset(stored, **kw)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, implicit_vr=False, little_endian=True)
    return path


def write_report(path: str | Path) -> Path:
    """A DICOS threat-detection report: a valid DICOM file with no image in it."""
    path = Path(path)
    meta = _meta(DICOS_TDR_STORAGE)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID = "BAG-0001"
    ds.ContentDate, ds.ContentTime = "20261130", "172338"
    ds.save_as(path, enforce_file_format=True)
    return path
