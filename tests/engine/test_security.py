"""CURVE on the engine's sockets: key generation, authorized subscribers and query clients get results, unlisted
and plain clients get nothing and the refusal is logged, client keys are re-read while running."""
from __future__ import annotations

import logging
import shutil
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from amodal import Subscriber
from amodal.engine.config import EngineConfig
from amodal.engine.engine import Engine
from amodal.engine.gallery import Gallery, GalleryConfig, QueryServer
from amodal.engine.stages.identity import IdentityStage
from amodal.errors import ConfigError
from amodal.gallery_client import GalleryClient, GalleryTimeoutError
from amodal.schema import FrameMessage
from amodal.security import SecuritySettings, generate_keys, is_loopback_endpoint

from tests.support.array_source import ArraySource

AMODAL = [sys.executable, "-m", "amodal.cli"]


@pytest.fixture
def keys(tmp_path):
    """A server pair, an authorized client, an unlisted client; the authorized directory holds the client's key."""
    server_public, server_secret = generate_keys(tmp_path / "server", "engine")
    client_public, client_secret = generate_keys(tmp_path / "clients", "alice")
    _, stranger_secret = generate_keys(tmp_path / "strangers", "mallory")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(client_public, authorized / "alice.key")
    settings = SecuritySettings(server_secret_key=str(server_secret), authorized_clients=str(authorized))
    return {"settings": settings, "server_public": server_public, "client": client_secret,
            "stranger": stranger_secret, "authorized": authorized, "tmp": tmp_path}


def _frames(sub: Subscriber, want: int, timeout_s: float) -> int:
    got, deadline = 0, time.monotonic() + timeout_s
    while got < want and time.monotonic() < deadline:
        if isinstance(sub.recv(0.2), FrameMessage):
            got += 1
    return got


def test_keys_are_generated_with_a_private_secret(tmp_path):
    run = subprocess.run([*AMODAL, "keys", "generate", str(tmp_path / "k"), "--name", "cam-hub"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    public, secret = tmp_path / "k" / "cam-hub.key", tmp_path / "k" / "cam-hub.key_secret"
    assert public.is_file() and secret.is_file()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "secret-key" in secret.read_text() and "secret-key" not in public.read_text()


def test_only_authorized_subscribers_receive_and_refusals_are_logged(keys, endpoint, caplog):
    caplog.set_level(logging.WARNING)
    engine = Engine(EngineConfig(publish=endpoint, security=keys["settings"], exit_when_done=False),
                    pipelines={"default": [IdentityStage()]}).start()
    try:
        good = Subscriber(endpoint, server_public_key=keys["server_public"], client_cert=keys["client"])
        stranger = Subscriber(endpoint, server_public_key=keys["server_public"], client_cert=keys["stranger"])
        plain = Subscriber(endpoint)
        time.sleep(0.5)
        engine.add_source(ArraySource("cam", 100_000, interval_s=0.005, live=True))
        assert _frames(good, 20, 20) == 20
        assert _frames(stranger, 1, 1.5) == 0 and _frames(plain, 1, 0.5) == 0
        refusals = [r.getMessage() for r in caplog.records]
        assert any("refused a CURVE client" in m and "strangers" not in m for m in refusals), refusals
        assert any("refused a subscriber" in m for m in refusals), refusals
        # authorize the stranger while running: its next connection is accepted
        shutil.copy(keys["stranger"].with_suffix(".key"), keys["authorized"] / "mallory.key")
        late = Subscriber(endpoint, server_public_key=keys["server_public"], client_cert=keys["stranger"])
        assert _frames(late, 5, 20) == 5
        for sub in (good, stranger, plain, late):
            sub.close()
    finally:
        engine.stop()


def test_the_query_endpoint_answers_only_authorized_clients(keys, endpoint):
    gallery = Gallery(GalleryConfig(dim=4, match_threshold=0.9, min_observations=1))
    gallery.update_track("cam", 1, np.array([1, 0, 0, 0], np.float32), 1.0, 0, (0.0, 0.0, 1.0, 1.0))
    with QueryServer(gallery, endpoint, security=keys["settings"]):
        with GalleryClient(endpoint, timeout_s=5, server_public_key=keys["server_public"],
                           client_cert=keys["client"]) as client:
            assert client.search(embedding=np.array([1, 0, 0, 0], np.float32), k=1)[0].global_id == 1
        with GalleryClient(endpoint, timeout_s=1.5, server_public_key=keys["server_public"],
                           client_cert=keys["stranger"]) as client:
            with pytest.raises(GalleryTimeoutError):
                client.stats()
        with GalleryClient(endpoint, timeout_s=1.5) as client:
            with pytest.raises(GalleryTimeoutError):
                client.stats()


def test_amodal_subscribe_with_keys_and_clear_key_errors(keys, endpoint):
    engine = Engine(EngineConfig(publish=endpoint, security=keys["settings"], exit_when_done=False),
                    pipelines={"default": [IdentityStage()]}).start()
    try:
        sub = subprocess.Popen([*AMODAL, "subscribe", endpoint, "--json", "--count", "5", "--timeout", "30",
                                "--server-key", str(keys["server_public"]), "--client-cert", str(keys["client"])],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)
        engine.add_source(ArraySource("cam", 100_000, interval_s=0.01, live=True))
        out, err = sub.communicate(timeout=60)
        assert sub.returncode == 0, err
        assert len([line for line in out.splitlines() if '"type": "frame"' in line]) == 5
    finally:
        engine.stop()
    bad = subprocess.run([*AMODAL, "subscribe", endpoint, "--server-key", str(keys["server_public"]),
                          "--client-cert", str(keys["server_public"])], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "holds no secret key" in bad.stderr


def test_settings_and_bind_warnings(keys, tmp_path, caplog):
    with pytest.raises(ConfigError, match="no certificate file"):
        SecuritySettings(server_secret_key=str(tmp_path / "none"), authorized_clients=str(keys["authorized"]))
    path = tmp_path / "c.yaml"
    path.write_text(f"security: {{server_secret_key: {keys['settings'].server_secret_key}, "
                    f"authorized_clients: {keys['authorized']}}}\n")
    assert EngineConfig.from_yaml(path).security == keys["settings"]
    assert is_loopback_endpoint("tcp://127.0.0.1:5555") and is_loopback_endpoint("ipc:///tmp/x")
    assert not is_loopback_endpoint("tcp://0.0.0.0:5555") and not is_loopback_endpoint("tcp://10.0.0.5:5555")
    caplog.set_level(logging.WARNING)
    Engine(EngineConfig(publish="tcp://0.0.0.0:5599"), pipelines={"default": [IdentityStage()]})
    assert any("WITHOUT CURVE" in r.getMessage() for r in caplog.records)
