"""The live view (``amodal run --http``): a real engine with synthetic streams, its page in Debian's headless
Chromium, and the REST API over real loopback HTTP."""
from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from amodal.engine.config import EngineConfig
from amodal.engine.engine import Engine
from amodal.engine.stages.identity import IdentityStage
from amodal.engine.web import LiveView, WebSettings
from amodal.engine.web.settings import parse_http_address, read_token_file
from amodal.errors import ConfigError
from amodal.streams.base import SourceConfig
from amodal.types import FrameResult, ObjectResult, RLEMask, StreamEvent, StreamState

from tests.support.browser import chromium_available, headless_chromium, wait_until

TOKEN = "a-test-token-0123456789abcdef"


def _synthetic(stream_id: str, seed: int) -> SourceConfig:
    return SourceConfig(f"synthetic://shapes?w=160&h=120&fps=12&objects=3&seed={seed}", stream_id)


@contextlib.contextmanager
def running_engine(endpoint: str, *sources: SourceConfig, **settings):
    """An engine (identity stage) with a live view on a free loopback port; yields (engine, view)."""
    view = LiveView(WebSettings(port=0, **settings))
    engine = Engine(EngineConfig(publish=endpoint, exit_when_done=False, sources=sources),
                    pipelines={"default": [IdentityStage()]}, sinks=[view])
    view.attach(engine)
    engine.start()
    try:
        yield engine, view
    finally:
        engine.stop()


def call(method: str, url: str, body=None, headers: dict | None = None, raw: bytes | None = None) -> tuple[int, object]:
    """(status, decoded JSON body) of one HTTP request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def shown(url: str) -> dict[str, dict]:
    return {s["id"]: s for s in call("GET", url + "/streams")[1]["streams"]}


@pytest.mark.skipif(not chromium_available(), reason="needs Debian's chromium and chromium-driver (.ci/system-deps.sh)")
@pytest.mark.timeout(60)
def test_page_in_chromium_shows_streams_live_and_follows_added_and_removed_sources(endpoint):
    from selenium.webdriver.common.by import By

    with running_engine(endpoint, _synthetic("cam1", 1), _synthetic("cam2", 2)) as (engine, view), \
            headless_chromium() as browser:
        browser.get(view.url + "/")

        def state_of(stream_id: str) -> str | None:
            """The state cell's text (read in one script: the table is rebuilt every second)."""
            return browser.execute_script("const c = document.querySelector(arguments[0]); "
                                          "return c ? c.textContent : null;",
                                          f'tr[data-stream="{stream_id}"] td.state')

        for stream_id in ("cam1", "cam2"):
            wait_until(lambda: (state_of(stream_id) or "").startswith("up"), 15, f"{stream_id} shown as up")
        video = browser.find_element(By.CSS_SELECTOR, '#card-cam1 img.video')
        wait_until(lambda: browser.execute_script("return arguments[0].naturalWidth", video) > 0, 10,
                   "the first video picture")
        first = video.screenshot_as_png
        second = wait_until(lambda: (shot := video.screenshot_as_png) != first and shot, 5,
                            "a different picture in the video element")
        assert first != second

        status, body = call("POST", view.url + "/streams", {"uri": "synthetic://shapes?w=160&h=120&fps=12&seed=3",
                                                            "stream_id": "cam3", "pipeline": "default"})
        assert status == 201 and body == {"id": "cam3"}
        wait_until(lambda: (state_of("cam3") or "").startswith("up"), 15, "the added stream cam3 shown as up")
        assert browser.find_elements(By.CSS_SELECTOR, "#card-cam3 img.video")

        status, body = call("DELETE", view.url + "/streams/cam1")
        assert status == 200 and body == {"removed": "cam1"}
        wait_until(lambda: state_of("cam1") is None and not browser.find_elements(By.ID, "card-cam1"), 10,
                   "the removed stream cam1 gone from the page")
        assert (state_of("cam2") or "").startswith("up") and sorted(engine.streams) == ["cam2", "cam3"]


def test_rest_errors_name_the_field_and_the_stream(endpoint):
    with running_engine(endpoint, _synthetic("cam1", 1)) as (engine, view):
        url = view.url
        wait_until(lambda: shown(url).get("cam1", {}).get("frames"), 10, "cam1's first results")
        cases = [
            ({"uri": "synthetic://shapes", "max_frames": "ten"}, 400, "body.max_frames"),
            ({"uri": "synthetic://shapes", "colour": "red"}, 400, "colour"),
            ({"uri": "synthetic://shapes", "camera": {"hfov": 60}}, 400, "body.camera: unknown key hfov"),
            ({"stream_id": "x"}, 400, "uri"),
            ({"uri": "synthetic://shapes", "stream_id": "x", "pipeline": "nope"}, 400, "nope"),
            ({"uri": "gopher://host/x", "stream_id": "x"}, 400, "gopher"),
            ({"uri": "synthetic://shapes", "stream_id": "cam1"}, 409, "cam1"),
            ([1, 2], 400, "a source is a URI string or a mapping"),
        ]
        for body, code, named in cases:
            status, answer = call("POST", url + "/streams", body)
            assert status == code and named in answer["detail"], (body, status, answer)
        status, answer = call("POST", url + "/streams", raw=b'{"uri": ')
        assert status == 422 and answer["detail"][0]["loc"][0] == "body"
        assert call("DELETE", url + "/streams/nope")[0] == 404
        assert call("GET", url + "/streams/nope")[0] == 404
        assert call("GET", url + "/streams/nope/frame.jpg")[0] == 404
        assert sorted(engine.streams) == ["cam1"]  # nothing was attached by the bad requests
        status, added = call("POST", url + "/streams", "synthetic://shapes?w=64&h=48")  # a bare URI, a free id
        assert status == 201 and added["id"] != "cam1" and added["id"] in engine.streams
        healthy, report = call("GET", url + "/health")
        assert healthy == 200 and report["status"] == "healthy"
        status, schema = call("GET", url + "/openapi.json")
        assert status == 200 and {"/streams", "/streams/{stream_id}", "/health"} <= set(schema["paths"])
        with urllib.request.urlopen(url + "/streams/cam1/frame.jpg", timeout=10) as response:
            assert response.headers["Content-Type"] == "image/jpeg" and response.read(3) == b"\xff\xd8\xff"


def test_token_is_required_on_the_api_and_the_page(endpoint, tmp_path):
    with running_engine(endpoint, _synthetic("cam1", 1), token=TOKEN) as (_, view):
        url = view.url
        assert call("GET", url + "/streams")[0] == 401
        with pytest.raises(urllib.error.HTTPError) as page:
            urllib.request.urlopen(url + "/", timeout=10)
        assert page.value.code == 401
        assert call("GET", url + "/streams/cam1/video")[0] == 401
        assert call("POST", url + "/streams", {"uri": "synthetic://x"})[0] == 401
        assert call("GET", url + "/streams", headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
        assert call("GET", url + "/streams", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert call("GET", url + f"/streams?token={TOKEN}")[0] == 200
        with urllib.request.urlopen(url + f"/?token={TOKEN}", timeout=10) as response:
            assert b"amodal live view" in response.read()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert read_token_file(token_file) == TOKEN
    token_file.write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16"):
        read_token_file(token_file)


def test_listening_beyond_loopback_needs_a_token(endpoint, capsys):
    from amodal.cli import main

    with pytest.raises(ConfigError, match="http-token-file"):
        WebSettings(host="0.0.0.0", port=0)
    with pytest.raises(ConfigError, match="http-token-file"):
        WebSettings(host="192.168.1.10", port=8080)
    assert WebSettings(host="0.0.0.0", port=0, token=TOKEN).token == TOKEN
    assert WebSettings(host="::1", port=0).host == "::1" and parse_http_address(":8080") == ("127.0.0.1", 8080)
    code = main(["run", "--source", "synthetic://shapes?seconds=1", "--publish", endpoint, "--http", "0.0.0.0:0"])
    assert code == 2
    assert "--http-token-file" in capsys.readouterr().err


def _object(width: int, height: int, cls: str, occluded: bool) -> ObjectResult:
    visible = np.zeros((height, width), bool)
    visible[10:30, 10:40] = True
    occluder = np.zeros((height, width), bool)
    occluder[5:20, 20:60] = True
    return ObjectResult(1, cls, 0.9, (10.0, 10.0, 40.0, 30.0), mask=RLEMask.encode(visible),
                        occluder_mask=RLEMask.encode(occluder) if occluded else None,
                        occlusion_level=0.4 if occluded else 0.0)


def test_results_alone_show_a_scanner_streams_latest_bags_and_refuse_source_changes():
    """A view fed results without frames (as ``amodal view`` is): bags with their items and thumbnails, the
    latest ``bags_kept`` only; POST and DELETE answer 501."""
    view = LiveView(WebSettings(port=0, bags_kept=3), source="tcp://elsewhere:5555")
    view.state.mark_scanner("belt1")
    view.start()
    try:
        view.state.on_event(StreamEvent("belt1", StreamState.UP, "scanner folder", time.time_ns()))
        for i in range(5):
            objects = (_object(96, 64, "knife", occluded=True), _object(96, 64, "gun", occluded=False))[: 1 + i % 2]
            result = FrameResult("belt1", i, None, time.time_ns(), 96, 64, objects, analyzer="maskrcnn")
            view.state.on_results([None], [result], [12.0])
        stream = wait_until(lambda: (s := shown(view.url).get("belt1")) and s["bags"]
                            and s["bags"][0]["frame_index"] == 4 and s, 10, "the last bag")
        assert stream["kind"] == "scanner" and stream["state"] == "up" and stream["reason"] == "scanner folder"
        assert [b["frame_index"] for b in stream["bags"]] == [4, 3, 2]  # the latest first
        assert [i["class_name"] for i in stream["bags"][1]["items"]] == ["knife", "gun"]
        knife = stream["bags"][0]["items"][0]
        assert knife["has_occluder"] and knife["occlusion_level"] == 0.4
        with urllib.request.urlopen(view.url + "/streams/belt1/bags/3.jpg", timeout=10) as response:
            assert response.read(3) == b"\xff\xd8\xff"
        assert call("GET", view.url + "/streams/belt1/bags/0.jpg")[0] == 404  # no longer kept
        status, answer = call("POST", view.url + "/streams", {"uri": "synthetic://x"})
        assert status == 501 and "tcp://elsewhere:5555" in answer["detail"]
        assert call("DELETE", view.url + "/streams/belt1")[0] == 501
    finally:
        view.close()


def test_amendments_redraw_a_kept_bag_in_its_place_and_are_ignored_for_others():
    """A detached stage's amendment (one object completed, one added) changes the bag's items and thumbnail; the
    bag keeps its place; amendments of a bag no longer kept or of an unknown stream change nothing."""
    from amodal.types import Amendment

    view = LiveView(WebSettings(port=0, bags_kept=2), source="tcp://elsewhere:5555")
    view.state.mark_scanner("belt1")
    view.start()
    try:
        for i in range(3):
            result = FrameResult("belt1", i, None, time.time_ns(), 96, 64,
                                 (_object(96, 64, "knife", occluded=False),), analyzer="xray")
            view.state.on_results([None], [result], [12.0])
        wait_until(lambda: [b["frame_index"] for b in shown(view.url)["belt1"]["bags"]] == [2, 1], 10, "two bags")
        before = urllib.request.urlopen(view.url + "/streams/belt1/bags/1.jpg", timeout=10).read()
        completed, added = _object(96, 64, "knife", occluded=True), _object(96, 64, "layer", occluded=False)
        view.state.on_amendment(Amendment("belt1", 1, "layers", 0, 96, 64, (completed, added), (0, None)))
        view.state.on_amendment(Amendment("belt1", 0, "layers", 0, 96, 64, (added,), (None,)))  # not kept
        view.state.on_amendment(Amendment("belt9", 1, "layers", 0, 96, 64, (added,), (None,)))
        bags = wait_until(lambda: (b := shown(view.url)["belt1"]["bags"]) and len(b[1]["items"]) == 2 and b,
                          10, "the amended bag")
        assert [b["frame_index"] for b in bags] == [2, 1]  # in its place
        assert [(i["class_name"], i["has_occluder"]) for i in bags[1]["items"]] == [("knife", True), ("layer", False)]
        assert [i["class_name"] for i in bags[0]["items"]] == ["knife"] and "belt9" not in shown(view.url)
        after = urllib.request.urlopen(view.url + "/streams/belt1/bags/1.jpg", timeout=10).read()
        assert after[:3] == b"\xff\xd8\xff" and after != before  # the occluder is drawn now
    finally:
        view.close()


def test_a_large_frame_is_drawn_at_the_shown_size_with_its_masks_in_place():
    from amodal.engine.web.encoder import NEUTRAL_GREY, render

    mask = np.zeros((720, 1280), bool)
    mask[360:720, 640:1280] = True  # the bottom-right quarter
    obj = ObjectResult(0, "box", 0.9, (640.0, 360.0, 1279.0, 719.0), mask=RLEMask.encode(mask))
    picture = render(None, FrameResult("s", 0, None, 0, 1280, 720, (obj,)), max_width=320)
    assert picture.shape == (180, 320, 3)
    assert np.all(picture[100:170, 170:310] != NEUTRAL_GREY)  # the filled mask, scaled by 1/4
    assert np.all(picture[20:80, 20:150] == NEUTRAL_GREY)


def test_amodal_run_http_serves_the_view_with_its_token_and_stops_cleanly(endpoint, tmp_path):
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    run = subprocess.Popen([sys.executable, "-m", "amodal.cli", "run", "--source", "cam1=synthetic://shapes?w=96&h=64",
                            "--pipeline", "identity", "--publish", endpoint, "--http", f"127.0.0.1:{port}",
                            "--http-token-file", str(token_file)], stderr=subprocess.PIPE, text=True)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
    try:
        def listed():
            try:
                return call("GET", url + "/streams", headers=auth)[1]["streams"]
            except OSError:  # not listening yet
                return None

        streams = wait_until(listed, 60, "the view of amodal run")
        assert streams[0]["id"] == "cam1"
        assert call("GET", url + "/streams")[0] == 401
        assert call("POST", url + "/streams", {"uri": "synthetic://shapes?w=96&h=64", "stream_id": "cam2"},
                    headers=auth)[0] == 201
        wait_until(lambda: {s["id"] for s in listed()} == {"cam1", "cam2"}, 15, "cam2 attached")
    finally:
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=30)
    assert run.returncode == 0, stderr
    assert f"live view at {url}/" in stderr
