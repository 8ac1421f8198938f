"""Sources added and removed over HTTP: a request body parsed like an entry of the YAML config's ``sources:``,
then ``Engine.add_source`` / ``Engine.remove_source``."""
from __future__ import annotations

import functools
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from amodal.engine.web.state import LiveState
from amodal.errors import ConfigError
from amodal.settings import build_settings
from amodal.streams.base import SourceConfig


class UnknownStreamError(ConfigError):
    """No stream has this id (HTTP 404)."""


class StreamExistsError(ConfigError):
    """A stream with this id is already attached (HTTP 409)."""


@functools.cache
def _field_adapters() -> dict[str, TypeAdapter]:
    return {name: TypeAdapter(hint) for name, hint in typing.get_type_hints(SourceConfig).items()}


def source_from_body(body: Any, taken: set[str], where: str = "body") -> SourceConfig:
    """A ``SourceConfig`` from a JSON body: a URI string or a mapping like a YAML ``sources:`` entry
    (``{"uri": …, "stream_id": …, "pipeline": …, <per-source settings>}``).  Without ``stream_id`` the first free
    ``s<N>`` is taken.  Errors are ``ConfigError``s naming the field (``body.max_frames: …``)."""
    if isinstance(body, str):
        body = {"uri": body}
    if not isinstance(body, Mapping):
        raise ConfigError(f"{where}: a source is a URI string or a mapping with uri (and stream_id, pipeline, "
                          f"per-source settings), got {type(body).__name__}")
    entry = dict(body)
    adapters = _field_adapters()
    for key, value in entry.items():  # the JSON types, field by field, so that a wrong type names its field
        if key in adapters and not isinstance(value, Mapping):  # (nested sections: build_settings builds them)
            try:
                adapters[key].validate_python(tuple(value) if isinstance(value, list) else value, strict=True)
            except ValidationError as exc:
                raise ConfigError(f"{where}.{key}: {exc.errors()[0]['msg']} (got {value!r})") from None
    if "stream_id" not in entry:
        entry["stream_id"] = next(f"s{i}" for i in range(len(taken) + 1) if f"s{i}" not in taken)
    return build_settings(SourceConfig, entry, where, required=("uri",))


class EngineControl:
    """What ``POST /streams`` and ``DELETE /streams/{id}`` do to a running engine."""

    def __init__(self, engine, state: LiveState) -> None:
        """``engine``: an ``amodal.engine.engine.Engine`` (only its public source methods are used)."""
        self.engine = engine
        self.state = state
        for source in engine.config.sources:
            self.note_source(source)

    def note_source(self, config: SourceConfig) -> None:
        if config.uri.strip().lower().startswith("scanner://"):
            self.state.mark_scanner(config.stream_id)

    def add(self, body: Any) -> str:
        """Attach the source ``body`` describes; its stream id."""
        attached = set(self.engine.streams)
        config = source_from_body(body, attached | {s["id"] for s in self.state.streams()})
        if config.stream_id in attached:
            raise StreamExistsError(f"body.stream_id: stream {config.stream_id!r} is already attached")
        self.note_source(config)
        self.engine.add_source(config)
        return config.stream_id

    def remove(self, stream_id: str) -> None:
        """Detach an attached stream (its last frames are still analysed), or forget one that has ended."""
        if stream_id in self.engine.streams:
            try:
                self.engine.remove_source(stream_id)
                return
            except ConfigError:  # it retired between the two calls: forget it below
                pass
        if stream_id not in self.state:
            raise UnknownStreamError(f"no stream {stream_id!r}; attached: {sorted(self.engine.streams)}")
        self.state.forget(stream_id)
