"""Market-1501 / Duke / Occluded-Duke folder loader on hand-made folders."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from amodal.errors import ConfigError
from amodal.training.data.market import load_parsing, load_reid_dataset, parse_name


def _touch(folder, name, size=(16, 8)):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(folder / name)


def _market(root):
    for name in ("0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s2_001001_02.jpg", "-1_c1s1_000010_01.jpg"):
        _touch(root / "bounding_box_train", name)
    for name in ("0003_c1s1_000100_01.jpg", "0005_c4s1_000200_01.jpg"):
        _touch(root / "query", name)
    for name in ("0003_c2s1_000300_02.jpg", "0003_c1s1_000400_01.jpg", "0005_c6s3_010000_01.jpg",
                 "0000_c5s1_000020_01.jpg", "-1_c2s1_000030_04.jpg"):  # fmt: skip
        _touch(root / "bounding_box_test", name)
    return root


def test_market_layout_relabel_junk_and_distractors(tmp_path):
    root = _market(tmp_path / "Market-1501-v15.09.15")
    (root / "parsing").mkdir()
    Image.fromarray(np.zeros((16, 8), np.uint8)).save(root / "parsing" / "0003_c1s1_000100_01.png")
    data = load_reid_dataset(tmp_path)  # the dataset folder is found one level down
    assert data.root == root
    assert [(i.pid, i.camid, i.original_pid) for i in data.train] == [(0, 0, 2), (0, 1, 2), (1, 2, 7)]
    assert data.num_train_pids == 2 and data.train_pid_map == {2: 0, 7: 1}
    assert [(q.pid, q.camid) for q in data.query] == [(3, 0), (5, 3)]
    assert sorted(g.pid for g in data.gallery) == [0, 3, 3, 5]  # junk −1 dropped, distractor 0 kept
    assert data.num_cameras == 6
    assert data.query[0].parsing_path == root / "parsing" / "0003_c1s1_000100_01.png"
    assert data.query[1].parsing_path is None
    assert data.summary()["gallery"] == {"images": 4, "ids": 3}


def test_duke_style_names_parse(tmp_path):
    for folder, names in {
        "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c5_f0051341.jpg"],
        "query": ["0005_c2_f0046985.jpg"],
        "bounding_box_test": ["0005_c8_f0111111.jpg", "0019_c1_f0010000.jpg"],
    }.items():
        for name in names:
            _touch(tmp_path / folder, name)
    data = load_reid_dataset(tmp_path)
    assert [(i.pid, i.camid) for i in data.train] == [(0, 1), (0, 4)]
    assert data.num_cameras == 8
    assert parse_name("0005_c8_f0111111.jpg") == (5, 8)
    assert parse_name("-1_c3s1_000001_00.jpg") == (-1, 3)


@pytest.mark.parametrize(
    "name, message",
    [
        ("person_0001.jpg", "does not match"),
        ("0003_c0s1_000100_01.jpg", "camera c0 outside"),
        ("-7_c1s1_000100_01.jpg", "pid -7 is invalid"),
    ],
)
def test_bad_file_names_are_rejected_by_name(tmp_path, name, message):
    root = _market(tmp_path)
    _touch(root / "query", name)
    with pytest.raises(ConfigError, match=message) as info:
        load_reid_dataset(root)
    assert name in str(info.value)


def test_missing_or_empty_folders(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_reid_dataset(tmp_path / "absent")
    (tmp_path / "query").mkdir()
    with pytest.raises(ConfigError, match="missing folders"):
        load_reid_dataset(tmp_path)
    (tmp_path / "bounding_box_train").mkdir()
    (tmp_path / "bounding_box_test").mkdir()
    _touch(tmp_path / "bounding_box_train", "-1_c1s1_000001_01.jpg")
    with pytest.raises(ConfigError, match="bounding_box_train: no usable images"):
        load_reid_dataset(tmp_path)


def test_parsing_masks_are_validated(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.array([[0, 1], [2, 4]], np.uint8)).save(good)
    assert load_parsing(good, (2, 2)).tolist() == [[0, 1], [2, 4]]
    bad = tmp_path / "bad.png"
    Image.fromarray(np.array([[0, 7]], np.uint8)).save(bad)
    with pytest.raises(ConfigError, match="label 7 outside 0..4"):
        load_parsing(bad)
    with pytest.raises(ConfigError, match="differs"):
        load_parsing(good, (4, 2))
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(rgb)
    with pytest.raises(ConfigError, match="single-channel"):
        load_parsing(rgb)
