"""Settings of the live view: where it listens, who may use it, and how much it may cost the engine.

``--http HOST:PORT`` gives ``host``/``port``; a bearer token (``--http-token-file``) is required as soon as the
host is not a loopback address, so a view reachable from other machines is never open to them.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from amodal.errors import ConfigError

#: shortest token accepted from a file (a guessable token is no protection)
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class WebSettings:
    """``max_fps``/``max_width``/``jpeg_quality``: each stream's video is drawn and JPEG-encoded at most ``max_fps``
    times a second, scaled down to at most ``max_width`` pixels wide; ``bags_kept``: how many of a scanner stream's
    latest bags the page lists (thumbnails ``thumb_width`` wide); ``token``: the bearer token (None = none)."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    max_fps: float = 10.0
    max_width: int = 640
    jpeg_quality: int = 75
    bags_kept: int = 8
    thumb_width: int = 160
    shutdown_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise ConfigError(f"http port must be 0..65535 (0 = any free one), got {self.port!r}")
        if not self.max_fps > 0:
            raise ConfigError(f"max_fps must be > 0, got {self.max_fps!r}")
        if self.max_width < 16 or self.thumb_width < 16:
            raise ConfigError(f"max_width and thumb_width must be >= 16, got {self.max_width}, {self.thumb_width}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ConfigError(f"jpeg_quality must be 1..95, got {self.jpeg_quality}")
        if self.bags_kept < 1:
            raise ConfigError(f"bags_kept must be >= 1, got {self.bags_kept}")
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            raise ConfigError(f"the http token must have at least {MIN_TOKEN_CHARS} characters")
        if self.token is None and not is_loopback_host(self.host):
            raise ConfigError(f"--http {self.host}:{self.port} listens beyond loopback: give --http-token-file "
                              f"(a bearer token every request must carry), or listen on 127.0.0.1")


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``; False for anything else (0.0.0.0 included)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_http_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:8080`` / ``[::1]:8080`` / ``:8080`` (loopback) → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--http wants HOST:PORT (e.g. 127.0.0.1:8080), got {text!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def read_token_file(path: str | Path) -> str:
    """The token in ``path`` (surrounding whitespace removed)."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"--http-token-file {path}: cannot read it: {exc.strerror or exc}") from exc
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConfigError(f"--http-token-file {path}: the token must be one word of at least {MIN_TOKEN_CHARS} "
                          f"characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


def web_settings(address: str, token_file: str | None, **kw) -> WebSettings:
    """The settings ``--http ADDRESS [--http-token-file FILE]`` give."""
    host, port = parse_http_address(address)
    return WebSettings(host=host, port=port, token=None if token_file is None else read_token_file(token_file), **kw)
