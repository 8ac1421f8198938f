"""``amodal.settings.build_settings``: the one mapping → frozen settings dataclass helper."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from amodal.errors import ConfigError
from amodal.settings import build_settings


@dataclass(frozen=True)
class Inner:
    gamma: float = 2.0
    sizes: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        if self.gamma < 0:
            raise ConfigError(f"gamma must be >= 0, got {self.gamma}")


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None


def test_defaults_from_none_and_empty():
    assert build_settings(Outer, None, "cfg") == Outer()
    assert build_settings(Outer, {}, "cfg") == Outer()


def test_nested_sections_and_lists_become_tuples():
    built = build_settings(Outer, {"name": "y", "inner": {"sizes": [3, 4]}, "maybe": {"gamma": 1.0}}, "cfg")
    assert built.inner.sizes == (3, 4) and isinstance(built.inner.sizes, tuple)
    assert built.maybe == Inner(gamma=1.0)


def test_unknown_key_is_named_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"cfg\.inner: unknown key gama; known: gamma, sizes"):
        build_settings(Outer, {"inner": {"gama": 1}}, "cfg")


def test_not_a_mapping_and_required_keys():
    with pytest.raises(ConfigError, match="cfg: expected a mapping, got list"):
        build_settings(Outer, [1, 2], "cfg")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="missing required key name"):
        build_settings(Outer, {}, "cfg", required=("name",))


def test_validation_errors_carry_the_section():
    with pytest.raises(ConfigError, match=r"^cfg\.inner: gamma must be >= 0"):
        build_settings(Outer, {"inner": {"gamma": -1}}, "cfg")
