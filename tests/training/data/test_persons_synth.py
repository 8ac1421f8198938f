"""Synthetic persons (Market-1501 / Occluded-Duke layout): names, splits, occlusion, parsing, appearance."""
from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import pytest
from PIL import Image

from amodal.errors import ConfigError
from amodal.training.data.market import PID_CAM_RE, load_parsing, load_reid_dataset
from amodal.training.data.synth import persons

TINY = ["--height", "64", "--width", "32", "--cameras", "3", "--cameras-per-id-min", "2", "--cameras-per-id-max", "3",
        "--images-per-camera-min", "1", "--images-per-camera-max", "2"]  # fmt: skip
N_IDS = 8


def tiny_args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    persons.add_arguments(parser)
    return parser.parse_args([*TINY, *extra])


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("persons")
    summary = persons.generate(out, N_IDS, 11, tiny_args())
    meta = json.loads((out / persons.META).read_text())["images"]
    return out, summary, meta


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_generation_is_deterministic(tiny_set, tmp_path):
    out, _, _ = tiny_set
    again = tmp_path / "again"
    persons.generate(again, N_IDS, 11, tiny_args())
    assert _files(again) == _files(out)
    for rel in _files(out):
        assert (again / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_names_follow_market_format(tiny_set):
    out, summary, meta = tiny_set
    marker = json.loads((out / "amodal_dataset.json").read_text())
    assert marker["kind"] == "persons" and marker["n"] == N_IDS and marker["seed"] == 11
    names = [p.name for folder in ("bounding_box_train", "query", "bounding_box_test") for p in (out / folder).iterdir()]
    assert len(names) == len(meta) == sum(summary["images"].values())
    for name in names:
        match = PID_CAM_RE.search(name)
        assert match is not None, name
        pid, cam = int(match.group(1)), int(match.group(2))
        assert (pid, cam) == (meta[name]["pid"], meta[name]["camera"])
        assert 1 <= cam <= 3
        stem = name[: -len(".jpg")]
        parts = stem.split("_")
        assert len(parts) == 4 and len(parts[2]) == 6 and len(parts[3]) == 2, name
        assert parts[0] == "-1" or len(parts[0]) == 4, name
    gallery_pids = {meta[n]["pid"] for n in names if meta[n]["folder"] == "bounding_box_test"}
    assert {0, -1} <= gallery_pids  # distractors and junk as Market has them


def test_round_trip_splits_and_parsing(tiny_set):
    out, summary, meta = tiny_set
    data = load_reid_dataset(out)
    train_ids = {i.original_pid for i in data.train}
    test_ids = {q.pid for q in data.query}
    assert train_ids and test_ids and not train_ids & test_ids
    assert train_ids | test_ids == set(range(1, N_IDS + 1))
    assert data.num_train_pids == len(train_ids) == summary["train_ids"]
    for q in data.query:  # every query can be matched in another camera
        assert any(g.pid == q.pid and g.camid != q.camid for g in data.gallery)
    for item in data.train + data.query + data.gallery:
        assert item.parsing_path is not None
        with Image.open(item.path) as img:
            assert img.size == (32, 64)
        labels = load_parsing(item.parsing_path, (64, 32))
        assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
        if meta[item.path.name]["pid"] > 0 and not meta[item.path.name]["occluder"]:
            assert {1, 2, 3, 4} <= set(np.unique(labels)), item.path.name  # a whole person is visible


def test_queries_are_occluded_and_gallery_is_mixed(tiny_set):
    _, _, meta = tiny_set
    queries = [m for m in meta.values() if m["folder"] == "query"]
    assert queries and all(m["occluder"] for m in queries)
    assert all(0.2 - 0.05 <= m["occluded_fraction"] <= 0.6 + 0.05 for m in queries)
    gallery = [m for m in meta.values() if m["folder"] == "bounding_box_test" and m["pid"] > 0]
    assert any(m["occluder"] for m in gallery) and any(not m["occluder"] for m in gallery)


def test_occluders_hide_body_in_parsing(tiny_set):
    out, _, meta = tiny_set
    body_fraction = {True: [], False: []}
    for name, m in meta.items():
        if m["pid"] <= 0:
            continue
        labels = np.asarray(Image.open(out / "parsing" / (name[:-4] + ".png")))
        body_fraction[bool(m["occluder"])].append((labels > 0).mean() / max(m["body_fraction_of_image"], 1e-6))
    # visible body pixels / full silhouette pixels: ≈ 1 when clear, ≈ 1 − occluded fraction when occluded
    assert np.mean(body_fraction[False]) > 0.9
    assert np.mean(body_fraction[True]) < 0.8


@pytest.fixture(scope="module")
def street_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("persons_street")
    persons.generate(out, N_IDS, 11, tiny_args("--looks", "street"))
    return out, None, json.loads((out / persons.META).read_text())["images"]


def test_street_looks_are_the_street_worlds_people_before_photographs(street_set):
    """``--looks street``: recorded in the marker; a camera's background is a photograph above the horizon (the
    floor as in plain looks); one look per identity across cameras."""
    out, _, meta = street_set
    assert json.loads((out / persons.MARKER).read_text())["looks"] == "street"
    looks = {k: persons.config_from_args(tiny_args("--looks", k)) for k in ("plain", "street")}
    cams = {k: persons.make_camera(np.random.default_rng(5), 1, cfg).background for k, cfg in looks.items()}
    rows = np.nonzero(np.abs(cams["street"] - cams["plain"]).max(axis=(1, 2)) > 0.02)[0]
    assert rows.min() == 0 and 0.3 * len(cams["plain"]) < rows.max() < 0.9 * len(cams["plain"])  # above the horizon
    _assert_one_look_per_identity(out, meta)
    with pytest.raises(SystemExit):
        tiny_args("--looks", "moon")


def test_identity_looks_the_same_across_cameras(tiny_set):
    """Mean upper-body colour: closer within an identity (other cameras) than between identities."""
    _assert_one_look_per_identity(*tiny_set[::2])


def _assert_one_look_per_identity(out, meta) -> None:
    colours: dict[int, list[np.ndarray]] = {}
    for name, m in meta.items():
        if m["pid"] <= 0:
            continue
        labels = np.asarray(Image.open(out / "parsing" / (name[:-4] + ".png")))
        if (labels == 2).sum() < 20:
            continue
        rgb = np.asarray(Image.open(out / m["folder"] / name).convert("RGB")).astype(float)
        colours.setdefault(m["pid"], []).append(rgb[labels == 2].mean(axis=0))
    within = [np.linalg.norm(a - b) for cs in colours.values() for a, b in itertools.combinations(cs, 2)]
    means = {pid: np.mean(cs, axis=0) for pid, cs in colours.items()}
    between = [np.linalg.norm(means[a] - means[b]) for a, b in itertools.combinations(means, 2)]
    assert len(within) >= 10 and len(between) >= 10
    assert np.mean(within) < 0.6 * np.mean(between)


def test_config_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="cameras"):
        persons.config_from_args(tiny_args("--cameras", "12"))
    with pytest.raises(ConfigError, match="occlusion-min"):
        persons.config_from_args(tiny_args("--occlusion-min", "0.7", "--occlusion-max", "0.5"))
    with pytest.raises(ConfigError, match="n >= 2"):
        persons.generate(tmp_path, 1, 0, tiny_args())
