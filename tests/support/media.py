"""Tiny media made by the tests themselves (ffmpeg, Pillow, tifffile) and slow/atomic file writers."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"


def make_video(
    path: str | Path,
    *,
    seconds: float = 2.0,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    gop: int = 25,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    pattern: str = "testsrc2",
    extra_args: tuple[str, ...] = (),
) -> Path:
    """Encode ``seconds`` of an lavfi test pattern (``size`` = (W, H)) to ``path``; the container follows the
    suffix.  mp4/mov get ``+faststart`` (header first, so a truncated copy still opens)."""
    path = Path(path)
    args = [FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size={size[0]}x{size[1]}:rate={fps}",
            "-t", str(seconds), "-c:v", codec, "-pix_fmt", pix_fmt]
    if codec == "libx264":
        args += ["-g", str(gop), "-preset", "ultrafast", "-threads", "1"]
    if path.suffix in (".mp4", ".mov"):
        args += ["-movflags", "+faststart"]
    subprocess.run([*args, *extra_args, str(path)], check=True, timeout=60)
    return path


def ffprobe_frame_count(path: str | Path) -> int:
    """Number of decodable video frames, counted by ffprobe (``-count_frames``)."""
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    return int(json.loads(out)["streams"][0]["nb_read_frames"])


def decode_raw_frames(path: str | Path, width: int, height: int, pix_fmt: str = "yuv420p") -> np.ndarray:
    """All frames decoded by the ffmpeg CLI as uint8[N, bytes_per_frame] (a reference for PyAV output)."""
    raw = subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", pix_fmt, "-"],
        check=True, capture_output=True, timeout=60,
    ).stdout
    per_frame = {"yuv420p": width * height * 3 // 2, "rgb24": width * height * 3, "gray": width * height}[pix_fmt]
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, per_frame)


def truncated_copy(src: str | Path, dst: str | Path, fraction: float) -> Path:
    """``dst`` = the first ``fraction`` of ``src``'s bytes."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def write_garbage(path: str | Path, n_bytes: int = 20_000, seed: int = 0) -> Path:
    """Random bytes under a media-looking name."""
    Path(path).write_bytes(np.random.default_rng(seed).bytes(n_bytes))
    return Path(path)


def gray16_array(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """uint16[H, W] spanning the full 16-bit range (many values > 255), deterministic per seed."""
    a = np.random.default_rng(seed).integers(0, 65536, size=(height, width), dtype=np.uint16)
    a[0, 0], a[0, 1] = 0, 65535
    return a


def image_bytes(array: np.ndarray, fmt: str) -> bytes:
    """Encode uint8/uint16 gray[H, W] or uint8 RGB[H, W, 3] as ``fmt`` in {"png", "tiff", "jpeg", "bmp"}."""
    if fmt == "tiff":
        buf = io.BytesIO()
        tifffile.imwrite(buf, array)
        return buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format={"png": "PNG", "jpeg": "JPEG", "bmp": "BMP"}[fmt])
    return buf.getvalue()


def write_slowly(path: str | Path, data: bytes, *, chunks: int = 6, pause_s: float = 0.1) -> None:
    """Write ``data`` to ``path`` in ``chunks`` pieces with ``pause_s`` between them (a slow scanner)."""
    step = max(1, -(-len(data) // chunks))
    with open(path, "wb") as f:
        for start in range(0, len(data), step):
            f.write(data[start:start + step])
            f.flush()
            os.fsync(f.fileno())
            if start + step < len(data):
                time.sleep(pause_s)


def write_slowly_in_thread(path: str | Path, data: bytes, *, chunks: int = 6, pause_s: float = 0.1) -> threading.Thread:
    """``write_slowly`` in a started daemon thread (join it)."""
    thread = threading.Thread(target=write_slowly, args=(path, data), kwargs={"chunks": chunks, "pause_s": pause_s},
                              daemon=True)
    thread.start()
    return thread


def write_atomically(path: str | Path, data: bytes, *, temp_suffix: str = ".tmp", pause_s: float = 0.0,
                     chunks: int = 1) -> None:
    """Write ``path + temp_suffix`` (slowly when ``pause_s``), then rename it to ``path``."""
    temp = Path(str(path) + temp_suffix)
    write_slowly(temp, data, chunks=chunks, pause_s=pause_s)
    os.replace(temp, path)


def write_huge_tiff(path: str | Path, width: int, height: int, tile: int = 1024) -> Path:
    """A zlib-compressed, tiled, all-zero uint8 TIFF declaring ``width`` x ``height``: a few MB on disk whatever
    the size it declares (a decompression bomb); written tile by tile, never holding the full image."""
    tiles = -(-height // tile) * -(-width // tile)
    zeros = np.zeros((tile, tile), np.uint8)
    with tifffile.TiffWriter(path) as writer:
        writer.write(shape=(height, width), dtype=np.uint8, compression="zlib", tile=(tile, tile),
                     data=(zeros for _ in range(tiles)))
    return Path(path)


def make_video_with_audio(
    path: str | Path, *, seconds: float = 2.0, rate: str = "25", size: tuple[int, int] = (160, 120),
    bframes: bool = True,
) -> Path:
    """testsrc2 video (x264, B-frames unless ``bframes=False``) and an audio track (aac, mp2 in TS), at frame
    ``rate`` ("25", "30000/1001"); the container follows the suffix.  The audio outlasts the video by a little,
    as in real recordings (the container's duration is then not the video's)."""
    path = Path(path)
    audio_codec = "mp2" if path.suffix == ".ts" else "aac"
    args = [FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size[0]}x{size[1]}:rate={rate}",
            "-f", "lavfi", "-i", f"sine=duration={seconds + 0.3}", "-map", "0:v", "-map", "1:a",
            "-c:v", "libx264", "-preset", "veryfast" if bframes else "ultrafast", "-threads", "1", "-g", "25",
            "-pix_fmt", "yuv420p", "-c:a", audio_codec, "-t:v", str(seconds)]
    subprocess.run([*args, str(path)], check=True, timeout=60)
    return path


def damaged_copy(src: str | Path, dst: str | Path, *, at: float = 0.4, n_bytes: int = 20_000,
                 how: str = "zero") -> Path:
    """``dst`` = ``src`` with ``n_bytes`` from ``at`` (a fraction of the size) zeroed (``how="zero"``), replaced
    by seeded noise (``"noise"``) or cut out (``"hole"``): a damaged copy, as a bad disk or transfer leaves."""
    data = bytearray(Path(src).read_bytes())
    start = int(len(data) * at)
    if how == "zero":
        data[start:start + n_bytes] = bytes(len(data[start:start + n_bytes]))
    elif how == "noise":
        data[start:start + n_bytes] = np.random.default_rng(0).bytes(len(data[start:start + n_bytes]))
    elif how == "hole":
        del data[start:start + n_bytes]
    else:
        raise ValueError(f"how must be zero, noise or hole, got {how!r}")
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def video_with_latin1_title(path: str | Path, *, seconds: float = 1.0) -> Path:
    """A Matroska file whose container and stream titles are Latin-1 bytes (not valid UTF-8), as written by
    some recorders: "Tétle þÿ" style.  Encoded with placeholder titles that are then overwritten in place."""
    path = Path(path)
    marker_file, marker_stream = b"TITLEMARKERXX", b"STREAMMARKERX"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-t",
                    str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-threads", "1",
                    "-metadata", f"title={marker_file.decode()}", "-metadata:s:v:0", f"title={marker_stream.decode()}",
                    str(path)], check=True, timeout=60)
    data = path.read_bytes()
    assert data.count(marker_file) == 1 and data.count(marker_stream) == 1, "ffmpeg wrote the titles differently"
    latin1_file, latin1_stream = b"T\xe9tle \xfe\xff cam1", b"Str\xe9am n\xba 1  "
    assert len(latin1_file) == len(marker_file) and len(latin1_stream) == len(marker_stream)  # sizes stay valid
    data = data.replace(marker_file, latin1_file).replace(marker_stream, latin1_stream)
    path.write_bytes(data)
    return path
