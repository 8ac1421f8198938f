"""Layered amodal decomposition: per-layer IoU, layer count / object / order accuracy, bad inputs, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from amodal.errors import ConfigError
from amodal.training.evaluation.cli import main
from amodal.training.evaluation.layers import assign_layers, evaluate_layers

H = W = 20


def mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


OBJ_A = mask(0, 10, 0, 10)  # layer 1 (unoccluded)
OBJ_B = mask(5, 15, 5, 15)  # layer 2, partly behind A
OBJ_C = mask(15, 20, 0, 4)  # layer 2


def gt() -> dict:
    objects = [{"layer": 1, "amodal": rle(OBJ_A)}, {"layer": 2, "amodal": rle(OBJ_B)},
               {"layer": 2, "amodal": rle(OBJ_C)}]
    return {"images": [{"file": "img0.png", "height": H, "width": W, "objects": objects}]}


def preds(layers: list[np.ndarray]) -> dict:
    return {"images": [{"file": "img0.png", "layers": [rle(m) for m in layers]}]}


def test_perfect_prediction() -> None:
    result = evaluate_layers(gt(), preds([OBJ_A, OBJ_B | OBJ_C, np.zeros((H, W), bool)]))
    assert result["miou_layers"] == 1.0 and result["layer_iou/1"] == 1.0 and result["layer_iou/2"] == 1.0
    assert result["count_accuracy"] == 1.0 and result["object_layer_accuracy"] == 1.0
    assert result["order_accuracy"] == 1.0


def test_missing_object_and_truncation_at_the_first_empty_layer() -> None:
    # layer 2 predicts B only; the empty third mask stops the sequence, the fourth is never read
    result = evaluate_layers(gt(), preds([OBJ_A, OBJ_B, np.zeros((H, W), bool), OBJ_C]))
    assert result["layer_iou/2"] == pytest.approx(100 / 120)  # |B| / |B ∪ C|
    assert result["miou_layers"] == pytest.approx((1 + 100 / 120) / 2)
    assert result["count_accuracy"] == 1.0
    assert result["object_layer_accuracy"] == pytest.approx(2 / 3)  # C overlaps no predicted layer
    assert result["order_accuracy"] == 0.0


def test_extra_layer_and_swapped_order() -> None:
    result = evaluate_layers(gt(), preds([OBJ_A, OBJ_B | OBJ_C, mask(0, 2, 15, 20)]))
    assert result["layer_iou/3"] == 0.0 and result["miou_layers"] == pytest.approx(2 / 3)
    assert result["count_accuracy"] == 0.0 and result["object_layer_accuracy"] == 1.0
    assert result["order_accuracy"] == 0.0
    swapped = evaluate_layers(gt(), preds([OBJ_B | OBJ_C, OBJ_A]))
    assert swapped["object_layer_accuracy"] == 0.0 and swapped["count_accuracy"] == 1.0


def test_assignment_by_coverage_then_iou() -> None:
    # B is covered 1/4 by layer 1 (A) and fully by layer 2 → layer 2
    assert list(assign_layers(np.stack([OBJ_B]), [OBJ_A, OBJ_B])) == [2]
    # equal coverage: the layer with the higher IoU wins
    assert list(assign_layers(np.stack([OBJ_C]), [np.ones((H, W), bool), OBJ_C])) == [2]
    assert list(assign_layers(np.stack([OBJ_C]), [OBJ_A])) == [0]


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ConfigError, match=r"prediction for 'img0.png' layer 2: mask size \[5, 5\]"):
        evaluate_layers(gt(), preds([OBJ_A, np.ones((5, 5), bool)]))
    with pytest.raises(ConfigError, match=r"no prediction for ground-truth image 'img0.png'"):
        evaluate_layers(gt(), {"images": []})
    with pytest.raises(ConfigError, match=r"not in the ground truth: \['other.png'\]"):
        evaluate_layers(gt(), {"images": [{"file": "other.png", "layers": []}]})
    bad = gt()
    del bad["images"][0]["objects"][1]["layer"]
    with pytest.raises(ConfigError, match=r"ground-truth image 'img0.png' object 1: needs 'layer'"):
        evaluate_layers(bad, preds([OBJ_A]))


def test_cli_end_to_end(tmp_path, capsys) -> None:
    (tmp_path / "layers.json").write_text(json.dumps(gt()))
    (tmp_path / "pred.json").write_text(json.dumps(preds([OBJ_A, OBJ_B])))
    out = tmp_path / "layers_result.json"
    assert main(["layers", str(tmp_path / "layers.json"), str(tmp_path / "pred.json"), "--out", str(out)]) == 0
    assert "order_accuracy" in capsys.readouterr().out
    assert json.loads(out.read_text())["layer_iou/2"] == pytest.approx(100 / 120)
