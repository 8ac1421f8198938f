"""``amodal data`` end to end for the persons world: synth persons → show."""
from __future__ import annotations

import json

from PIL import Image

from amodal.training.data.cli import detect_kind, main


def test_cli_synth_persons_and_show(tmp_path, capsys):
    out = tmp_path / "persons"
    rc = main(["synth", "persons", "--out", str(out), "--n", "4", "--seed", "2", "--height", "64", "--width", "32",
               "--cameras", "2", "--images-per-camera-max", "1"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["kind"] == "persons" and summary["train_ids"] + summary["test_ids"] == 4
    assert detect_kind(out) == "persons"
    sheet = tmp_path / "sheet.png"
    assert main(["show", str(out), "--out", str(sheet), "--max-items", "4"]) == 0
    with Image.open(sheet) as img:
        assert img.size[0] >= 2 * 32 and img.size[1] >= 64
    assert main(["synth", "persons", "--out", str(tmp_path / "p"), "--n", "3", "--cameras", "1"]) == 1
