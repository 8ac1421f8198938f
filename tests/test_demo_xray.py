"""``make demo-xray``'s program end to end on two bags: DICOS files dropped into a hot folder, the shipped ``xray``
weights, what was found per bag, the annotated video of the belt."""
from __future__ import annotations

import datetime
import re

import av
import numpy as np
import pytest

from amodal import demo
from amodal.demo_xray import write_bag_dicos
from amodal.streams.dicom import decode_dicom
from amodal.world.xray import BagConfig, render_bag

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("gray16", [False, True])
def test_bags_written_as_dicos_read_back_with_their_ids(tmp_path, gray16):
    scene = render_bag(9090, 0, BagConfig(width=96, height=64, clutter_min=1, clutter_max=2))
    image = scene.image(gray16)
    when = datetime.datetime(2026, 11, 30, 17, 23, 38, 250000)
    path = write_bag_dicos(tmp_path / "bag.dcm", image, bag_id="BAG-7", scanner_id="XR", when=when)
    assert [p.name for p in tmp_path.iterdir()] == ["bag.dcm"]  # the temporary name is gone
    frame = decode_dicom(path)[0]
    assert frame.pixel_format == ("gray16" if gray16 else "rgb24")
    np.testing.assert_array_equal(frame.planes[0], image)
    assert (frame.scan.bag_id, frame.scan.scanner_id) == ("BAG-7", "XR")
    assert frame.scan.acquisition_time == "2026-11-30T17:23:38.250000"


def test_demo_xray_finds_and_draws_each_bag(tmp_path, capsys):
    assert demo.main(["--feed", "xray", "--bags", "2", "--interval-s", "0.1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for bag in ("BAG-0001", "BAG-0002"):
        assert re.search(rf"bag {bag} rendered with: \w+", out)
        assert re.search(rf"  bag {bag}: (nothing found|found \d+: \w+ 0\.\d\d, \d+% under its occluder)", out)
    assert "bags analysed: 2 of 2" in out
    assert sorted(p.name for p in (tmp_path / "belt").iterdir()) == ["bag_0001.dcm", "bag_0002.dcm"]
    with av.open(str(tmp_path / "annotated.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 2 and frames[0].shape == (256, 256, 3)
