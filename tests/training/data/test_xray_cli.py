"""``amodal data`` end to end for the X-ray world: synth xray → annotate-occlusion → show."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from amodal.training.data.cli import main
from amodal.training.data.coco import segmentation_to_mask


def test_cli_synth_annotate_show(tmp_path, capsys):
    out = tmp_path / "xray"
    rc = main(["synth", "xray", "--out", str(out), "--n", "2", "--seed", "3", "--width", "96", "--height", "96",
               "--items-min", "2", "--items-max", "3", "--clutter-min", "1", "--clutter-max", "2"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["kind"] == "xray" and summary["images"] == 2 and summary["instances"] >= 4

    # strip the occluder field and recompute it with the annotation tool: same masks as the generator wrote
    generated = json.loads((out / "annotations/train.json").read_text())
    bare = {**generated, "annotations": [{k: v for k, v in a.items() if k != "bg_object_segmentation"}
                                         for a in generated["annotations"]]}  # fmt: skip
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    assert main(["annotate-occlusion", str(tmp_path / "bare.json"), str(tmp_path / "occ.json")]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["annotations"] == len(generated["annotations"])
    redone = {a["id"]: a for a in json.loads((tmp_path / "occ.json").read_text())["annotations"]}
    for ann in generated["annotations"]:
        a = segmentation_to_mask(ann["bg_object_segmentation"], 96, 96)
        b = segmentation_to_mask(redone[ann["id"]]["bg_object_segmentation"], 96, 96)
        assert np.array_equal(a, b), ann["id"]

    sheet = tmp_path / "sheet.png"
    assert main(["show", str(out), "--out", str(sheet), "--max-items", "2"]) == 0
    with Image.open(sheet) as img:
        assert img.size[0] >= 2 * 96 and img.mode == "RGB"


def test_cli_reports_bad_input(tmp_path, capsys):
    (tmp_path / "bad.json").write_text('{"images": [], "annotations": [{"id": 1}]}')
    assert main(["annotate-occlusion", str(tmp_path / "bad.json"), str(tmp_path / "o.json")]) == 1
    assert "annotation #0 needs" in capsys.readouterr().err
    assert main(["synth", "xray", "--out", str(tmp_path / "x"), "--n", "1", "--items-min", "3", "--items-max", "1"]) == 1
