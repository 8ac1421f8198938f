"""synth layers: layer assignment on constructed cases, targets/cumulative unions, round trip, determinism, errors."""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amodal.errors import ConfigError
from amodal.training.data.layers import LayersDataset
from amodal.training.data.synth import layers


def _args(extra: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    layers.add_arguments(p)
    return p.parse_args(extra)


def _rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("layers")
    layers.generate(out, 24, 5, _args(["--size", "48"]))
    return out


def test_assign_layers_constructed_cases() -> None:
    # A (nearest) overlaps B; B overlaps C; D overlaps nothing; E is overlapped by A and C.
    A = _rect(20, 20, 0, 6, 0, 6)
    B = _rect(20, 20, 4, 10, 4, 10)
    C = _rect(20, 20, 8, 14, 8, 14)
    D = _rect(20, 20, 16, 20, 0, 3)
    E = _rect(20, 20, 5, 13, 12, 13) | _rect(20, 20, 0, 2, 5, 13)
    masks = np.stack([A, B, C, D, E])
    got = layers.assign_layers(masks, [0, 1, 2, 3, 4])
    assert got == {0: 1, 1: 2, 2: 3, 3: 1, 4: 4}
    # Same masks, C in front of everything: C layer 1, B behind C → 2, A overlaps B only (behind it) → 3.
    got = layers.assign_layers(masks, [2, 1, 0, 3, 4])
    assert got == {2: 1, 1: 2, 0: 3, 3: 1, 4: 4}
    # Touching corners do not overlap.
    assert layers.assign_layers(np.stack([_rect(4, 4, 0, 2, 0, 2), _rect(4, 4, 2, 4, 2, 4)]), [0, 1]) == {0: 1, 1: 1}


def test_layer_targets_are_unions() -> None:
    masks = np.stack([_rect(8, 8, 0, 3, 0, 3), _rect(8, 8, 2, 5, 2, 5), _rect(8, 8, 6, 8, 0, 8)])
    layer_masks, cumulative = layers.layer_targets(masks, [1, 2, 1], 2)
    np.testing.assert_array_equal(layer_masks[0], masks[0] | masks[2])
    np.testing.assert_array_equal(layer_masks[1], masks[1])
    assert not layer_masks[2].any() and not cumulative[0].any()
    np.testing.assert_array_equal(cumulative[1], masks[0] | masks[2])
    np.testing.assert_array_equal(cumulative[2], masks.any(axis=0))


def test_round_trip_and_layer_rules(dataset: Path) -> None:
    ds = LayersDataset(dataset)
    assert len(ds) == 24
    counts = set()
    for k in range(len(ds)):
        item = ds[k]
        L = item.num_layers
        counts.add(L)
        assert 1 <= L <= 4 and item.image.shape == (48, 48, 3)
        objs = item.objects
        amodal = np.stack([o.amodal for o in objs])
        rec = json.loads((dataset / "layers.json").read_text())["images"][k]
        order = sorted(range(len(objs)), key=lambda j: rec["objects"][j]["depth_rank"])
        assert layers.assign_layers(amodal, order) == {j: objs[j].layer for j in range(len(objs))}
        want_layers, want_cum = layers.layer_targets(amodal, [o.layer for o in objs], L)
        np.testing.assert_array_equal(item.layer_masks, want_layers)
        np.testing.assert_array_equal(item.cumulative_masks, want_cum)
        assert not item.layer_masks[-1].any(), "the final target is empty"
        covered = np.zeros((48, 48), bool)
        for j in order:
            o = objs[j]
            np.testing.assert_array_equal(o.visible, o.amodal & ~covered)
            covered |= o.amodal
            # every object of layer k ≥ 2 is overlapped by a nearer object of layer k − 1, none deeper
            nearer = [objs[i] for i in order[: order.index(j)] if (objs[i].amodal & o.amodal).any()]
            assert max((n.layer for n in nearer), default=0) == o.layer - 1
    assert len(counts) >= 3, f"layer counts should vary, got {counts}"


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    layers.generate(tmp_path / "a", 4, 9, _args([]))
    layers.generate(tmp_path / "b", 4, 9, _args([]))
    layers.generate(tmp_path / "c", 4, 10, _args([]))
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b and a["images/img000000.png"] != c["images/img000000.png"]
    with Image.open(tmp_path / "a" / "images" / "img000000.png") as im:
        assert im.size == (64, 64)


def test_malformed_layers_json_is_named(tmp_path: Path, dataset: Path) -> None:
    doc = json.loads((dataset / "layers.json").read_text())
    root = tmp_path / "bad"
    root.mkdir()
    bad = json.loads(json.dumps(doc))
    bad["images"][0]["layer_masks"] = bad["images"][0]["layer_masks"][:-1]
    (root / "layers.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="img000000.png has .* layer_masks, expected num_layers \\+ 1"):
        LayersDataset(root)
    bad = json.loads(json.dumps(doc))
    bad["images"][1]["objects"][0]["layer"] = 9
    (root / "layers.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="img000001.png object 1 has layer 9"):
        LayersDataset(root)
    (root / "layers.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="img000000.png: file not found"):
        LayersDataset(root)[0]
    (root / "layers.json").write_text("[")
    with pytest.raises(ConfigError, match="not valid JSON"):
        LayersDataset(root)
    with pytest.raises(ConfigError, match="max-layers"):
        layers.generate(tmp_path / "x", 1, 0, _args(["--max-layers", "0"]))


@pytest.mark.skipif(any(importlib.util.find_spec(f"amodal.training.data.synth.{k}") is None
                        for k in ("xray", "persons", "video")),
                    reason="the CLI parser imports every generator module")
def test_cli_synth_and_show(tmp_path: Path) -> None:
    from amodal.training.data.cli import main

    out = tmp_path / "l"
    assert main(["synth", "layers", "--out", str(out), "--n", "3", "--size", "32"]) == 0
    png = tmp_path / "sheet.png"
    assert main(["show", str(out), "--out", str(png)]) == 0
    with Image.open(png) as im:
        assert im.size[0] > 32 and im.size[1] > 3 * 32
