"""One error hierarchy for the whole engine (STYLE.md §8)."""
from __future__ import annotations


class EngineError(Exception):
    """Base of every error amodal raises on purpose."""


class ConfigError(EngineError, ValueError):
    """A configuration value is missing, malformed or inconsistent."""


class SourceError(EngineError):
    """A source cannot be opened or read (dead camera, corrupt file, bad URI)."""


class KernelUnsupportedError(EngineError, RuntimeError):
    """A kernel was asked for a backend, dtype or shape it does not support."""


class PublishError(EngineError):
    """Results cannot be published (socket bind failure, encoding failure)."""


class SchemaError(EngineError, ValueError):
    """A message on the wire does not follow the result schema."""


class CheckpointError(EngineError, ValueError):
    """A checkpoint is missing, truncated or does not match the model."""
