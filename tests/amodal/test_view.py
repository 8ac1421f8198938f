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
