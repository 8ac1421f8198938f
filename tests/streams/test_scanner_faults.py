"""Scanner hot folder under faults: empty, oversized, vanishing, re-used and unreadable entries never stall the
folder, and bags are never dropped silently (block by default; drops are reported naming the file)."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from amodal.engine.queues import SourceQueue
from amodal.errors import ConfigError
from amodal.streams.base import SourceConfig
from amodal.streams.images import ImageTooLargeError, decode_image
from amodal.streams.scanner import ScannerSource
from amodal.types import Frame, StreamEvent, StreamState
from tests.support.media import image_bytes, write_atomically, write_huge_tiff
from tests.support.sink import SourceThread

POLL_S = 0.03


def _scanner(folder: Path, query: str, **kw: object) -> ScannerSource:
    return ScannerSource(SourceConfig(f"scanner://{folder}?{query}", "belt", poll_interval_s=POLL_S, **kw))  # type: ignore[arg-type]


def _bag(value: int) -> bytes:
    return image_bytes(np.full((16, 16), value, np.uint8), "png")


def _errors(runner: SourceThread) -> list[StreamEvent]:
    return [e for e in runner.sink.events if e.state == StreamState.ERROR]


def _values(runner: SourceThread) -> list[int]:
    return [int(f.planes[0][0, 0]) for f in runner.sink.frames]


def test_empty_file_is_retried_reported_and_never_blocks_newer_bags(tmp_path: Path) -> None:
    """The user's case: one zero-length file (oldest in the folder) and 10 bags behind it."""
    empty = tmp_path / "bag_000.png"
    empty.write_bytes(b"")
    past_s = time.time() - 5
    os.utime(empty, (past_s, past_s))
    with SourceThread(_scanner(tmp_path, "settle_s=0.1&give_up_s=2")) as runner:
        assert runner.sink.wait_event(StreamState.UP, 5)
        started = time.monotonic()
        for i in range(1, 11):
            write_atomically(tmp_path / f"bag_{i:03d}.png", _bag(i))
        # all 10 before the empty file is even given up on: it holds nothing back
        assert runner.sink.wait_frames(10, 1.5), f"{runner.sink.frame_count()} of 10 bags delivered"
        delivered_s = time.monotonic() - started
        assert not _errors(runner)
        error = runner.sink.wait_event(StreamState.ERROR, 5)
        assert error is not None and not error.fatal
        assert str(empty) in error.reason and "empty (0 bytes)" in error.reason and "attempts" in error.reason
        # the scanner finally writes that file: it is a new bag and is delivered
        write_atomically(empty, _bag(99))
        assert runner.sink.wait_frames(11, 5)
        time.sleep(0.3)
    assert _values(runner) == list(range(1, 11)) + [99]
    assert len(_errors(runner)) == 1
    print(f"10 of 10 bags after an empty file delivered in {delivered_s:.2f} s")


def test_undecodable_file_is_retried_at_settle_intervals_and_bounded(tmp_path: Path) -> None:
    """A stable broken file is decoded again every settle_s (not every poll), a bounded number of times."""
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    source = _scanner(tmp_path, "settle_s=0.2&give_up_s=1")
    with SourceThread(source) as runner:
        error = runner.sink.wait_event(StreamState.ERROR, 5)
    assert error is not None and not error.fatal and "broken.png" in error.reason
    attempts = int(error.reason.split(" attempts")[0].rsplit(" ", 1)[1])
    assert 3 <= attempts <= 6, error.reason  # ~1 s / 0.2 s, not ~1 s / 0.03 s


def test_oversized_tiff_is_skipped_before_decoding_and_the_folder_goes_on(tmp_path: Path) -> None:
    """A small file declaring 12000 x 12000 (144 MP > the default 100 MP): reported, never decoded."""
    huge = write_huge_tiff(tmp_path / "bomb.tif", 12000, 12000)
    assert huge.stat().st_size < 2_000_000
    with pytest.raises(ImageTooLargeError, match="12000x12000 = 144.0 MP"):  # the default limit, for direct callers too
        decode_image(huge)
    past_s = time.time() - 5
    os.utime(huge, (past_s, past_s))
    (tmp_path / "next.png").write_bytes(_bag(5))
    with SourceThread(_scanner(tmp_path, "settle_s=0.1&give_up_s=3")) as runner:
        assert runner.sink.wait_frames(1, 5)
        error = runner.sink.wait_event(StreamState.ERROR, 1)
        time.sleep(0.3)
    assert error is not None and not error.fatal
    assert "bomb.tif" in error.reason and "12000x12000" in error.reason and "max_image_pixels" in error.reason
    assert _values(runner) == [5] and len(_errors(runner)) == 1


def test_pixel_limit_is_configurable_for_every_image_format(tmp_path: Path) -> None:
    for fmt in ("png", "tiff", "jpeg", "bmp"):
        path = tmp_path / f"img.{fmt}"
        path.write_bytes(image_bytes(np.zeros((100, 120), np.uint8), fmt))
        with pytest.raises(ImageTooLargeError, match=r"120x100 = 0\.0 MP exceeds max_image_pixels"):
            decode_image(path, max_pixels=11_999)
        assert decode_image(path, max_pixels=12_000)[1][0].shape == (100, 120)
    pages = tmp_path / "pages.tif"
    tifffile.imwrite(pages, np.zeros((3, 100, 120), np.uint8), photometric="minisblack")  # 3 pages: 3 x the pixels
    with pytest.raises(ImageTooLargeError, match="120x100x3 pages"):
        decode_image(pages, max_pixels=30_000)
    planar = tmp_path / "planar.tif"  # separate-plane RGB: 3 samples per pixel, not 3 pages
    rgb = np.random.default_rng(0).integers(0, 256, (3, 100, 120), dtype=np.uint8)
    tifffile.imwrite(planar, rgb, photometric="rgb", planarconfig="separate")
    pixel_format, (plane,) = decode_image(planar, max_pixels=12_000)
    assert pixel_format == "rgb24" and plane.shape == (100, 120, 3)
    np.testing.assert_array_equal(plane, np.moveaxis(rgb, 0, -1))
    with pytest.raises(ConfigError, match="max_image_pixels must be > 0"):
        SourceConfig("scanner://x", "belt", max_image_pixels=0)


def test_reused_name_and_rewritten_file_are_new_bags(tmp_path: Path) -> None:
    """Scanners often re-use names (scan.png) after the previous bag was moved away."""
    path = tmp_path / "scan.png"
    with SourceThread(_scanner(tmp_path, "settle_s=0.1")) as runner:
        assert runner.sink.wait_event(StreamState.UP, 5)
        write_atomically(path, _bag(1))
        assert runner.sink.wait_frames(1, 5)
        path.unlink()
        time.sleep(0.2)
        write_atomically(path, _bag(2))  # same name, after the first was removed
        assert runner.sink.wait_frames(2, 5)
        write_atomically(path, _bag(3))  # rewritten in place of a delivered file
        assert runner.sink.wait_frames(3, 5)
        time.sleep(0.3)
    assert _values(runner) == [1, 2, 3] and not _errors(runner)


def test_vanishing_file_directory_and_symlink_loop_never_stall_the_folder(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()  # a directory with an image name
    os.symlink("loop.png", tmp_path / "loop.png")  # stat raises ELOOP
    gone = tmp_path / "gone.png"
    gone.write_bytes(_bag(0)[:40])  # half-written, then removed before it settles
    with SourceThread(_scanner(tmp_path, "settle_s=0.2&give_up_s=2")) as runner:
        assert runner.sink.wait_event(StreamState.UP, 5)
        gone.unlink()
        for i in (1, 2):
            write_atomically(tmp_path / f"ok{i}.png", _bag(i))
        assert runner.sink.wait_frames(2, 5), runner.sink.events
        time.sleep(0.3)
    assert _values(runner) == [1, 2]
    states = runner.sink.states()
    assert StreamState.RECONNECTING not in states
    errors = _errors(runner)
    assert len(errors) == 1 and not errors[0].fatal and "loop.png" in errors[0].reason, errors


def test_unreadable_file_is_reported_and_skipped(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    locked = tmp_path / "locked.png"
    locked.write_bytes(_bag(1))
    locked.chmod(0)
    (tmp_path / "open.png").write_bytes(_bag(2))
    with SourceThread(_scanner(tmp_path, "settle_s=0.1&give_up_s=0.5")) as runner:
        assert runner.sink.wait_frames(1, 5)
        error = runner.sink.wait_event(StreamState.ERROR, 5)
    assert error is not None and "locked.png" in error.reason and "Permission" in error.reason
    assert _values(runner) == [2]


def test_scanner_blocks_by_default_and_never_loses_a_bag_to_a_slow_stage(tmp_path: Path) -> None:
    """The user's case: 20 bags, a slow consumer; every bag is analysed, in order, none dropped."""
    source = _scanner(tmp_path, "settle_s=0.1")
    assert source.overflow == "block"
    for i in range(20):
        write_atomically(tmp_path / f"bag_{i:03d}.png", _bag(i))
        stamp_s = time.time() - 100 + i
        os.utime(tmp_path / f"bag_{i:03d}.png", (stamp_s, stamp_s))
    ready = threading.Condition()
    q = SourceQueue("belt", source.queue_size, source.overflow, ready, frame_label=source.frame_label)
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(q, stop), daemon=True)
    thread.start()
    analysed: list[int] = []
    deadline = time.monotonic() + 20
    try:
        while len(analysed) < 20 and time.monotonic() < deadline:
            with ready:
                item = q.pop() if len(q) else None
                if item is None:
                    ready.wait(0.05)
            if isinstance(item, Frame):
                time.sleep(0.05)  # a slow stage: the scanner polls every 30 ms
                analysed.append(int(item.planes[0][0, 0]))
    finally:
        stop.set()
        with ready:
            q.closed = True
            ready.notify_all()
        thread.join(5)
    assert analysed == list(range(20)) and q.dropped == 0


def test_explicit_drop_oldest_reports_each_dropped_bag_by_file(tmp_path: Path) -> None:
    for i in range(6):
        (tmp_path / f"bag_{i:03d}.png").write_bytes(_bag(i))
        stamp_s = time.time() - 100 + i
        os.utime(tmp_path / f"bag_{i:03d}.png", (stamp_s, stamp_s))
    source = _scanner(tmp_path, "settle_s=0.1", overflow="drop-oldest", queue_size=2)
    ready = threading.Condition()
    q = SourceQueue("belt", source.queue_size, source.overflow, ready, frame_label=source.frame_label)
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(q, stop), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while q.accepted < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(5)
    with ready:
        items = [q.pop() for _ in range(len(q))]
    dropped = [e for e in items if isinstance(e, StreamEvent) and e.state == StreamState.DROPPED]
    frames = [int(f.planes[0][0, 0]) for f in items if isinstance(f, Frame)]
    assert q.dropped == 4 and frames == [4, 5]
    reasons = " ".join(e.reason for e in dropped)
    for i in range(4):
        assert f"{i} (bag_{i:03d}.png)" in reasons, reasons
