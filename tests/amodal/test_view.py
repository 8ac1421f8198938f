"""``amodal view``: the live view of an engine elsewhere, from its published results alone — here a CURVE-secured
engine with two synthetic streams, the view a separate process subscribing with its keys, its page in Debian's
headless Chromium."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from amodal.engine.config import EngineConfig
from amodal.engine.engine import Engine
from amodal.engine.stages.identity import IdentityStage
from amodal.engine.web.encoder import NEUTRAL_GREY
from amodal.security import SecuritySettings, generate_keys
from amodal.streams.base import SourceConfig

from tests.support.browser import chromium_available, headless_chromium, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:  # not listening yet
        return 0, None


@contextlib.contextmanager
def secured_engine_and_view(tmp_path):
    server_public, server_secret = generate_keys(tmp_path / "server", "engine")
    client_public, client_secret = generate_keys(tmp_path / "clients", "viewer")
    (tmp_path / "authorized").mkdir()
    shutil.copy(client_public, tmp_path / "authorized" / "viewer.key")
    publish = f"tcp://127.0.0.1:{free_port()}"
    sources = tuple(SourceConfig(f"synthetic://shapes?w=128&h=96&fps=12&seed={i}", f"cam{i}") for i in (1, 2))
    config = EngineConfig(publish=publish, exit_when_done=False, sources=sources,
                          security=SecuritySettings(str(server_secret), str(tmp_path / "authorized")))
    engine = Engine(config, pipelines={"default": [IdentityStage()]}).start()
    port = free_port()
    view = subprocess.Popen([sys.executable, "-m", "amodal.cli", "view", publish, "--http", f"127.0.0.1:{port}",
                             "--server-key", str(server_public), "--client-cert", str(client_secret)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield engine, view, f"http://127.0.0.1:{port}"
    finally:
        view.terminate()
        try:
            view.wait(15)
        finally:
            view.kill() if view.poll() is None else None
            engine.stop()


def test_view_shows_a_secured_remote_engines_streams_from_results_alone(tmp_path):
    with secured_engine_and_view(tmp_path) as (_, view, url):
        def both_up():
            status, body = get_json(url + "/streams")
            streams = {s["id"]: s for s in body["streams"]} if status == 200 else {}
            ready = all(s in streams and streams[s]["frames"] > 2 and streams[s]["pipeline"] for s in ("cam1", "cam2"))
            return ready and streams

        streams = wait_until(both_up, 30, "both streams' results in the view")
        assert streams["cam1"]["state"] == "up" and streams["cam1"]["pipeline"] == "default"
        assert streams["cam1"]["latency_p50_ms"] is not None and streams["cam1"]["fps"] > 0
        with urllib.request.urlopen(url + "/streams/cam1/frame.jpg", timeout=10) as response:
            picture = np.asarray(Image.open(io.BytesIO(response.read())).convert("L"), dtype=np.float32)
        assert picture.shape == (96, 128)  # the frame's size, no pixels of it: a neutral canvas
        assert abs(float(picture.mean()) - NEUTRAL_GREY) < 3
        request = urllib.request.Request(url + "/streams", data=b'{"uri": "synthetic://x"}', method="POST",
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 501
        assert get_json(url + "/health")[0] == 200

        if chromium_available():
            from selenium.webdriver.common.by import By

            with headless_chromium() as browser:
                browser.get(url + "/")
                for stream_id in ("cam1", "cam2"):
                    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR,
                                                             f'tr[data-stream="{stream_id}"] td.state.state-up'),
                               15, f"{stream_id} up on the page")
                assert "results of tcp://127.0.0.1" in browser.find_element(By.ID, "mode").text
                assert browser.find_element(By.ID, "add-form").get_attribute("hidden") is not None
    assert view.returncode == 0, view.stderr.read()


def test_view_feed_applies_published_amendments_to_a_scanners_bags():
    """``amodal view``'s feed over real ZeroMQ on loopback: a bag's frame message, then an amendment to it (a stage
    that completes its item with an occluder): the bag's items show the amendment."""
    import threading
    import time

    from amodal.cli_view import feed
    from amodal.engine.publisher import Publisher
    from amodal.engine.web import LiveView, WebSettings
    from amodal.subscriber import Subscriber
    from amodal.types import Amendment, FrameResult, ObjectResult, RLEMask

    mask = np.zeros((64, 96), bool)
    mask[10:30, 10:40] = True
    plain = ObjectResult(1, "knife", 0.9, (10.0, 10.0, 40.0, 30.0), mask=RLEMask.encode(mask))
    completed = ObjectResult(1, "knife", 0.9, (10.0, 10.0, 40.0, 30.0), mask=RLEMask.encode(mask),
                             occluder_mask=RLEMask.encode(mask), occlusion_level=0.5)
    publisher = Publisher(f"tcp://127.0.0.1:{free_port()}")
    publisher.start()
    view = LiveView(WebSettings(port=0), source=publisher.bound_endpoint)
    view.state.mark_scanner("belt1")
    stop = threading.Event()
    try:
        with Subscriber(publisher.bound_endpoint, amendments=True) as subscriber:
            assert publisher.wait_for_subscribers(1, 10) == 1
            feeder = threading.Thread(target=feed, args=(view, subscriber, stop), daemon=True)
            view.start()
            feeder.start()
            publisher.write_results([], [FrameResult("belt1", 0, None, time.time_ns(), 96, 64, (plain,), analyzer="xray")])
            publisher.write_amendment(Amendment("belt1", 0, "layers", time.time_ns(), 96, 64, (completed,), (0,)))
            bags = wait_until(lambda: (s := get_json(view.url + "/streams")[1]["streams"]) and s[0]["bags"]
                              and s[0]["bags"][0]["items"][0]["has_occluder"] and s[0]["bags"], 10, "the amended bag")
            assert bags[0]["items"][0]["occlusion_level"] == 0.5 and len(bags) == 1
            stop.set()
            feeder.join(10)
    finally:
        stop.set()
        view.close()
        publisher.close()
