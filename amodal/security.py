"""CURVE encryption and client authentication for every amodal socket (pyzmq's ``zmq.auth``).

Keys are ZeroMQ certificate files as ``zmq.auth.create_certificates`` writes them (``amodal keys generate DIR
--name NAME`` → ``NAME.key`` with the public key, ``NAME.key_secret`` with both).  The engine's server sockets
(the result publisher, the gallery query endpoint) load the server's secret certificate and accept only clients
whose public certificate lies in the ``authorized_clients`` directory (re-read when it changes, so a client is
added or revoked without a restart); ZAP runs in one authenticator thread per ZeroMQ context.  A client — a
``Subscriber``, ``GalleryClient``, ``amodal subscribe`` or ``amodal query`` — gives the server's public
certificate and its own secret certificate.  An unlisted client's handshake is refused and the refusal is logged.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from amodal.errors import ConfigError

log = logging.getLogger("amodal.security")


@dataclass(frozen=True)
class SecuritySettings:
    """``server_secret_key``: the server's secret certificate file (``NAME.key_secret``); ``authorized_clients``: a
    directory of client public certificates (``*.key``) that may connect."""

    server_secret_key: str
    authorized_clients: str

    def __post_init__(self) -> None:
        if not Path(self.server_secret_key).is_file():
            raise ConfigError(f"security.server_secret_key: no certificate file {self.server_secret_key}")
        if not Path(self.authorized_clients).is_dir():
            raise ConfigError(f"security.authorized_clients: no directory {self.authorized_clients}")


def generate_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (secret, mode 0600) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def load_keys(path: str | Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) z85 keys of a certificate file; ConfigError naming the file when it is unusable."""
    path = Path(path)
    try:
        public_key, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the certificate {path}: {exc}") from exc
    if secret and not secret_key:
        raise ConfigError(f"{path} holds no secret key (give the NAME.key_secret file)")
    return public_key, secret_key


class _AuthorizedClients:
    """ZAP credentials provider: the public keys in a directory, re-read when the directory changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._mtime_ns = -1
        self._keys: set[bytes] = set()

    def _refresh(self) -> None:
        mtime_ns = self.directory.stat().st_mtime_ns
        if mtime_ns != self._mtime_ns:
            self._keys = set(zmq.auth.load_certificates(str(self.directory)))
            self._mtime_ns = mtime_ns

    def callback(self, domain: str, key: bytes) -> bool:
        with self._lock:
            try:
                self._refresh()
            except OSError as exc:
                log.error("cannot read authorized client keys in %s: %s", self.directory, exc)
                return False
            allowed = key in self._keys
        if not allowed:
            log.warning("refused a CURVE client whose public key %s is not in %s", key.decode(errors="replace"),
                        self.directory)
        return allowed


_authenticators: dict[int, tuple[ThreadAuthenticator, set[str]]] = {}  # context → its authenticator, domains
_authenticators_lock = threading.Lock()


def _zap_domain(context: zmq.Context, settings: SecuritySettings) -> str:
    """The ZAP domain of ``settings`` in ``context``'s authenticator (started once per context, before the first
    CURVE server socket binds); each authorized-clients directory is its own domain."""
    domain = "amodal:" + str(Path(settings.authorized_clients).resolve())
    with _authenticators_lock:
        auth, domains = _authenticators.get(id(context), (None, set()))
        if auth is None:
            auth = ThreadAuthenticator(context, log=logging.getLogger("amodal.security.zap"))
            auth.start()
            _authenticators[id(context)] = (auth, domains)
        if domain not in domains:
            auth.configure_curve_callback(domain=domain, credentials_provider=_AuthorizedClients(
                Path(settings.authorized_clients)))
            domains.add(domain)
    return domain


def secure_server(sock: zmq.Socket, settings: SecuritySettings | None) -> None:
    """Make ``sock`` (before ``bind``) a CURVE server that accepts only the authorized clients; no-op for None."""
    if settings is None:
        return
    public_key, secret_key = load_keys(settings.server_secret_key, secret=True)
    sock.zap_domain = _zap_domain(sock.context, settings).encode()
    sock.curve_secretkey = secret_key
    sock.curve_publickey = public_key
    sock.curve_server = True


def secure_client(sock: zmq.Socket, server_public_key: str | Path | None, client_cert: str | Path | None) -> None:
    """Make ``sock`` (before ``connect``) a CURVE client of the server with public certificate
    ``server_public_key``, authenticating with ``client_cert`` (a secret certificate); both or neither."""
    if server_public_key is None and client_cert is None:
        return
    if server_public_key is None or client_cert is None:
        raise ConfigError("CURVE needs both the server's public key file and this client's secret certificate")
    server_key, _ = load_keys(server_public_key, secret=False)
    public_key, secret_key = load_keys(client_cert, secret=True)
    sock.curve_serverkey = server_key
    sock.curve_publickey = public_key
    sock.curve_secretkey = secret_key


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ``ipc://``/``inproc://`` and TCP endpoints bound to 127.0.0.0/8, ``localhost`` or ``[::1]``."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")
