"""PyAV files that are truncated, damaged, oversized or carry non-UTF-8 metadata: the final event says what
happened (frames decoded versus due), good files never raise a false alarm, and open failures of any kind
reconnect (live) or end with a fatal error naming the cause (files)."""
from __future__ import annotations

from pathlib import Path

import av
import pytest

from amodal.streams.base import SourceConfig
from amodal.streams.pyav_source import PyAVSource
from amodal.types import StreamState
from tests.support.media import (
    damaged_copy,
    ffprobe_frame_count,
    make_video,
    make_video_with_audio,
    truncated_copy,
    video_with_latin1_title,
)
from tests.support.sink import ListSink, SourceThread


def _run(path: Path | str, timeout_s: float = 30.0, **kw: object) -> ListSink:
    runner = SourceThread(PyAVSource(SourceConfig(str(path), "f", **kw)), ListSink(keep_planes=False)).start()  # type: ignore[arg-type]
    assert runner.join(timeout_s), f"{path} did not finish within {timeout_s} s"
    return runner.sink


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """4 s, 25 fps (100 frames) in each container, plus recordings with audio and B-frames at 29.97 fps."""
    folder = tmp_path_factory.mktemp("clips")
    out = {ext: make_video(folder / f"clip.{ext}", seconds=4.0, fps=25, size=(160, 120)) for ext in ("mp4", "mkv", "ts")}
    for ext in ("mp4", "mkv", "ts"):
        out[f"av.{ext}"] = make_video_with_audio(folder / f"av.{ext}", seconds=2.0, rate="30000/1001")
    return out


@pytest.mark.parametrize("name", ["mp4", "mkv", "ts", "av.mp4", "av.mkv", "av.ts"])
def test_good_files_end_cleanly_with_every_frame(name: str, clips: dict[str, Path]) -> None:
    sink = _run(clips[name])
    assert len(sink.frames) == ffprobe_frame_count(clips[name])
    last = sink.events[-1]
    assert last.state == StreamState.ENDED and last.reason == "end of stream", last


def test_variable_rate_file_with_a_timestamp_jump_is_no_false_alarm(tmp_path: Path) -> None:
    """Frames 20..29 removed at encoding time (a VFR file with a 0.44 s jump): nothing is missing."""
    path = make_video(tmp_path / "vfr.mp4", seconds=3.0, size=(160, 120),
                      extra_args=("-vf", "select='not(between(n,20,29))'", "-fps_mode", "passthrough"))
    sink = _run(path)
    assert len(sink.frames) == 65 and sink.events[-1].state == StreamState.ENDED
    assert sink.events[-1].reason == "end of stream"


@pytest.mark.parametrize("ext", ["mp4", "mkv", "ts"])
@pytest.mark.parametrize("fraction", [0.3, 0.9, 0.99])
def test_truncated_files_say_they_ended_early(ext: str, fraction: float, clips: dict[str, Path], tmp_path: Path) -> None:
    path = truncated_copy(clips[ext], tmp_path / f"cut.{ext}", fraction)
    sink = _run(path)
    delivered = len(sink.frames)
    assert 0 < delivered < 100 or (ext == "ts" and delivered == 100)  # TS: the cut may fall in the last PES
    assert [f.index for f in sink.frames] == list(range(delivered))
    last = sink.events[-1]
    assert last.state == StreamState.ERROR and last.fatal, last
    assert f"{path}: ended early: {delivered} " in last.reason, last.reason
    if ext != "ts":  # mp4 and Matroska state the video's length: the count is estimated
        assert f"{delivered} of ~100 frames" in last.reason and "last frame ends at" in last.reason


@pytest.mark.parametrize("ext", ["mp4", "mkv", "ts"])
@pytest.mark.parametrize("how", ["zero", "noise"])
def test_damaged_files_name_the_missing_frames(ext: str, how: str, clips: dict[str, Path], tmp_path: Path) -> None:
    """20 kB in the middle zeroed or overwritten: the frames lost there are counted, decoding goes on after."""
    path = damaged_copy(clips[ext], tmp_path / f"bad.{ext}", at=0.4, n_bytes=20_000 if how == "zero" else 3_000, how=how)
    sink = _run(path)
    delivered = len(sink.frames)
    assert 50 < delivered < 100  # frames after the damage were decoded too
    assert sink.frames[-1].pts_s - sink.frames[0].pts_s > 3.9  # ... up to the end of the file
    last = sink.events[-1]
    assert last.state == StreamState.ERROR and last.fatal, last
    assert f"incomplete: {delivered} of ~100 frames" in last.reason and "missing in 1 gap" in last.reason, last.reason


def test_cut_out_bytes_are_found_from_the_container_structure(clips: dict[str, Path], tmp_path: Path) -> None:
    path = damaged_copy(clips["mkv"], tmp_path / "hole.mkv", how="hole")
    last = _run(path).events[-1]
    assert last.state == StreamState.ERROR and "the Matroska segment declares" in last.reason, last.reason


def test_damage_without_lost_frames_is_named_in_the_ended_reason(tmp_path: Path) -> None:
    clip = make_video(tmp_path / "c.ts", seconds=2.0, size=(160, 120))
    path = damaged_copy(clip, tmp_path / "speck.ts", at=0.3, n_bytes=50, how="noise")
    sink = _run(path)
    assert len(sink.frames) == 50
    last = sink.events[-1]
    assert last.state == StreamState.ENDED and last.reason.startswith("end of stream; ") and "corrupt" in last.reason


def test_non_utf8_metadata_plays(tmp_path: Path) -> None:
    path = video_with_latin1_title(tmp_path / "latin1.mkv")
    with pytest.raises(UnicodeDecodeError):  # what PyAV does by default: the file is not broken, its title is
        av.open(str(path))
    sink = _run(path)
    assert len(sink.frames) == 25 and sink.events[-1].state == StreamState.ENDED


def _raise_unicode(*args: object, **kwargs: object) -> None:
    raise UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte")


def test_any_open_failure_reconnects_a_live_source(monkeypatch: pytest.MonkeyPatch, video_mp4: Path) -> None:
    monkeypatch.setattr(av, "open", _raise_unicode)
    config = SourceConfig(str(video_mp4), "live", reconnect=True, backoff_initial_s=0.02, backoff_max_s=0.05)
    with SourceThread(PyAVSource(config)) as runner:
        assert runner.sink.wait_for(lambda s: len([e for e in s.events if e.state == StreamState.RECONNECTING]) >= 2, 5)
    recon = [e for e in runner.sink.events if e.state == StreamState.RECONNECTING][0]
    assert "open failed" in recon.reason and "container metadata is not valid text" in recon.reason
    assert runner.sink.events[-1].state == StreamState.ENDED and not any(e.fatal for e in runner.sink.events)


def test_any_open_failure_ends_a_file_with_a_fatal_error_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                                    video_mp4: Path) -> None:
    monkeypatch.setattr(av, "open", _raise_unicode)
    sink = _run(video_mp4)
    last = sink.events[-1]
    assert last.state == StreamState.ERROR and last.fatal
    assert str(video_mp4) in last.reason and "container metadata is not valid text" in last.reason
    assert "internal" not in last.reason and not sink.frames


def test_video_frames_over_the_pixel_limit_are_refused_before_decoding(video_mp4: Path) -> None:
    sink = _run(video_mp4, max_image_pixels=320 * 240 - 1)
    last = sink.events[-1]
    assert not sink.frames and last.state == StreamState.ERROR and last.fatal
    assert "320x240 = 0.1 MP exceeds max_image_pixels" in last.reason and str(video_mp4) in last.reason
    assert len(_run(video_mp4, max_image_pixels=320 * 240).frames) == 50


def test_a_looped_damaged_file_reports_its_damage_once(tmp_path: Path) -> None:
    clip = make_video(tmp_path / "c.ts", seconds=2.0, size=(160, 120))
    path = damaged_copy(clip, tmp_path / "speck.ts", at=0.3, n_bytes=50, how="noise")
    sink = _run(path, loop=True, max_frames=160)
    assert len(sink.frames) == 160
    errors = [e for e in sink.events if e.state == StreamState.ERROR]
    assert len(errors) == 1 and not errors[0].fatal and "looping a damaged file" in errors[0].reason
    assert sink.events[-1].state == StreamState.ENDED and sink.events[-1].reason == "max_frames reached"
