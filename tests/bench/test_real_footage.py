"""The real-footage scorer: matching at IoU 0.5, ignore regions, false positives; the stored labels load."""
import numpy as np

from amodal.bench.real_footage.evaluate import Detections, LabelledFrame, load_frames, score_frame, summarise


def _frame() -> LabelledFrame:
    return LabelledFrame("f.jpg", np.zeros((100, 200, 3), np.uint8),
                         np.array([[10, 10, 30, 70], [100, 40, 180, 90]], float), ("person", "vehicle"),
                         np.array([[150, 0, 200, 30]], float))


def test_matching_ignore_and_false_positives():
    det = Detections(np.array([[11, 12, 31, 70],     # person, IoU ~0.9 -> found
                               [10, 10, 30, 70],     # duplicate person -> false positive
                               [100, 40, 180, 90],   # "animal" on the car -> false positive (wrong group)
                               [160, 2, 195, 25],    # inside the ignore region -> ignored
                               [40, 40, 60, 60]],    # nothing there -> false positive
                              float), np.array([0.9, 0.8, 0.7, 0.9, 0.2]),
                     ("person", "person", "animal", "car", "car"))
    c = score_frame(_frame(), det, 0.5)
    assert (c["person_found"], c["person_gt"], c["vehicle_found"], c["vehicle_gt"]) == (1, 1, 0, 1)
    assert (c["fp"], c["ignored"]) == (2, 1)
    c = score_frame(_frame(), det, 0.1)
    assert c["fp"] == 3
    s = summarise([_frame()], [det], 0.85)
    assert s["person_recall"] == 1.0 and s["fp_per_frame"] == 0.0 and s["ignored"] == 1


def test_vehicle_found_by_a_car_detection_only_above_iou_half():
    near = Detections(np.array([[100, 40, 180, 90]], float), np.array([0.6]), ("car",))
    off = Detections(np.array([[140, 40, 220, 90]], float), np.array([0.6]), ("car",))  # IoU 1/3
    assert score_frame(_frame(), near, 0.5)["vehicle_found"] == 1
    c = score_frame(_frame(), off, 0.5)
    assert c["vehicle_found"] == 0 and c["fp"] == 1


def test_stored_labels_load_with_their_frames():
    frames = load_frames()
    assert len(frames) == 9
    assert sum(g == "person" for f in frames for g in f.groups) == 6
    for f in frames:
        h, w = f.rgb.shape[:2]
        assert (f.boxes_xyxy[:, 2] <= w).all() and (f.boxes_xyxy[:, 3] <= h).all()
        assert (f.boxes_xyxy[:, :2] < f.boxes_xyxy[:, 2:]).all()


def test_weight_sets_name_shipped_files_or_a_run_folder(tmp_path):
    import pytest

    from amodal.bench.real_footage.evaluate import weight_sets
    from amodal.errors import ConfigError
    from amodal.pretrained import WEIGHTS_DIR

    sets = weight_sets(["shipped", "street", f"mine={tmp_path}"])
    assert sets["street"] == {"maskrcnn": WEIGHTS_DIR / "maskrcnn_street_synthetic.safetensors",
                              "ovis": WEIGHTS_DIR / "cmasktrack_street_synthetic.safetensors"}
    assert sets["shipped"]["ovis"] == WEIGHTS_DIR / "cmasktrack_tiny_synthetic.safetensors"
    assert sets["mine"]["maskrcnn"] == tmp_path / "maskrcnn_tiny_synthetic.safetensors"
    assert all(p.is_file() for s in ("shipped", "street") for p in sets[s].values())
    with pytest.raises(ConfigError, match="NAME=DIR or one of"):
        weight_sets(["moon"])
