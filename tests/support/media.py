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
