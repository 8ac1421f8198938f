"""Scanner hot folder: never a half-written file, atomic renames, order, 16-bit values, bad files."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from amodal.errors import ConfigError
from amodal.streams.base import SourceConfig
from amodal.streams.images import decode_image
from amodal.streams.scanner import ScannerSource, is_candidate, parse_scanner_uri
from amodal.types import StreamState
from tests.support.media import gray16_array, image_bytes, write_atomically, write_slowly_in_thread
from tests.support.sink import SourceThread

POLL_S = 0.03


def _scanner(folder: Path, query: str = "settle_s=0.15&give_up_s=5", **kw: object) -> ScannerSource:
    return ScannerSource(SourceConfig(f"scanner://{folder}?{query}", "xray", poll_interval_s=POLL_S, **kw))  # type: ignore[arg-type]


def _errors(runner: SourceThread) -> list:
    return [e for e in runner.sink.events if e.state == StreamState.ERROR]


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_slow_writer_is_never_read_half_written(fmt: str, tmp_path: Path) -> None:
    """Pauses between chunks are longer than the settle interval: the decode check must hold the file back."""
    array = gray16_array(96, 128, seed=3)
    data = image_bytes(array, fmt)
    with SourceThread(_scanner(tmp_path)) as runner:
        assert runner.sink.wait_event(StreamState.UP, 5)
        writer = write_slowly_in_thread(tmp_path / f"scan.{fmt}", data, chunks=4, pause_s=0.3)
        writer.join(10)
        assert runner.sink.wait_frames(1, 5)
        time.sleep(0.3)  # nothing else may follow
    frames = runner.sink.frames
    assert len(frames) == 1 and not _errors(runner)
    assert frames[0].pixel_format == "gray16" and frames[0].planes[0].dtype == np.uint16
    np.testing.assert_array_equal(frames[0].planes[0], array)
    assert frames[0].scan is not None and frames[0].scan.file_name == f"scan.{fmt}"  # which file, for subscribers


def test_temp_names_ignored_and_rename_delivers_once(tmp_path: Path) -> None:
    array = gray16_array(32, 40, seed=4)
    with SourceThread(_scanner(tmp_path)) as runner:
        assert runner.sink.wait_event(StreamState.UP, 5)
        write_atomically(tmp_path / "a.png", image_bytes(array, "png"), temp_suffix=".tmp", chunks=3, pause_s=0.25)
        (tmp_path / ".hidden.png").write_bytes(image_bytes(array, "png"))
        (tmp_path / "b.png.partial").write_bytes(image_bytes(array, "png"))
        (tmp_path / "notes.txt").write_text("not an image")
        assert runner.sink.wait_frames(1, 5)
        time.sleep(0.4)
    assert len(runner.sink.frames) == 1 and not _errors(runner)
    np.testing.assert_array_equal(runner.sink.frames[0].planes[0], array)
    assert not is_candidate("x.tmp") and not is_candidate(".x.png") and is_candidate("X.TIFF")


def test_existing_files_in_mtime_then_name_order(tmp_path: Path) -> None:
    base = time.time() - 100
    names_mtimes = [("c.png", base + 1), ("a.png", base + 3), ("b.png", base + 2), ("d.png", base + 3)]
    for i, (name, mtime) in enumerate(names_mtimes):
        (tmp_path / name).write_bytes(image_bytes(np.full((8, 8), i, dtype=np.uint8), "png"))
        os.utime(tmp_path / name, (mtime, mtime))
    with SourceThread(_scanner(tmp_path)) as runner:
        assert runner.sink.wait_frames(4, 5)
    values = [int(f.planes[0][0, 0]) for f in runner.sink.frames]
    assert values == [0, 2, 1, 3]  # c (t+1), b (t+2), then a and d (t+3) by name
    assert [f.index for f in runner.sink.frames] == [0, 1, 2, 3]
    assert [f.pts_s for f in runner.sink.frames] == [0.0, 1.0, 2.0, 2.0]
    assert runner.sink.frames[0].pixel_format == "gray8"


def test_skip_existing(tmp_path: Path) -> None:
    (tmp_path / "old.png").write_bytes(image_bytes(np.zeros((8, 8), np.uint8), "png"))
    with SourceThread(_scanner(tmp_path, "settle_s=0.1&skip_existing=1")) as runner:
        assert runner.sink.wait_event(StreamState.UP, 5)
        (tmp_path / "new.png").write_bytes(image_bytes(np.full((8, 8), 9, np.uint8), "png"))
        assert runner.sink.wait_frames(1, 5)
        time.sleep(0.3)
    assert len(runner.sink.frames) == 1 and int(runner.sink.frames[0].planes[0][0, 0]) == 9


def test_undecodable_file_is_reported_and_skipped(tmp_path: Path) -> None:
    (tmp_path / "broken.tif").write_bytes(b"II*\x00" + os.urandom(300))
    with SourceThread(_scanner(tmp_path, "settle_s=0.1&give_up_s=0.4")) as runner:
        error = runner.sink.wait_event(StreamState.ERROR, 5)
        assert error is not None and not error.fatal and "broken.tif" in error.reason
        (tmp_path / "ok.jpg").write_bytes(image_bytes(np.full((16, 16, 3), 200, np.uint8), "jpeg"))
        assert runner.sink.wait_frames(1, 5)
        # the scanner rewrites the skipped file properly: it is picked up again
        write_atomically(tmp_path / "broken.tif", image_bytes(gray16_array(8, 8), "tiff"))
        assert runner.sink.wait_frames(2, 5)
    frame = runner.sink.frames[0]
    assert frame.pixel_format == "rgb24" and frame.planes[0].shape == (16, 16, 3)
    np.testing.assert_array_equal(runner.sink.frames[1].planes[0], gray16_array(8, 8))
    assert len(_errors(runner)) == 1 and runner.sink.events[-1].state == StreamState.ENDED


def test_missing_folder_reconnects_then_comes_up(tmp_path: Path) -> None:
    folder = tmp_path / "later"
    with SourceThread(_scanner(folder, "settle_s=0.1", backoff_initial_s=0.05, backoff_max_s=0.2)) as runner:
        ev = runner.sink.wait_event(StreamState.RECONNECTING, 5)
        assert ev is not None and str(folder) in ev.reason
        folder.mkdir()
        (folder / "x.png").write_bytes(image_bytes(np.full((4, 4), 7, np.uint8), "png"))
        assert runner.sink.wait_event(StreamState.UP, 5) and runner.sink.wait_frames(1, 5)
        assert runner.stop() < 1.0


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_decode_image_keeps_16_bit_values(fmt: str, tmp_path: Path) -> None:
    array = gray16_array(20, 30, seed=5)
    assert array.max() > 255
    path = tmp_path / f"g16.{fmt}"
    path.write_bytes(image_bytes(array, fmt))
    pixel_format, (plane,) = decode_image(path)
    assert pixel_format == "gray16" and plane.dtype == np.uint16
    np.testing.assert_array_equal(plane, array)


def test_scanner_uri_validation(tmp_path: Path) -> None:
    settings = parse_scanner_uri(SourceConfig("scanner://rel/dir?settle_s=0.5&skip_existing=1", "s"))
    assert settings.folder == Path("rel/dir") and settings.settle_s == 0.5 and settings.skip_existing
    assert parse_scanner_uri(SourceConfig(f"scanner://{tmp_path}", "s")).folder == tmp_path
    for bad in ("scanner://", "scanner://d?bogus=1", "scanner://d?settle_s=x", "scanner://d?settle_s=2&give_up_s=1"):
        with pytest.raises(ConfigError):
            parse_scanner_uri(SourceConfig(bad, "s"))
