"""The ``maskrcnn`` training task on moving-shapes scenes: config checks, deterministic resumable batches, the
shipped weights' record and held-out score reproduced by the task, and a short ``amodal train`` run whose loss
falls, which evaluates and exports weights ``load_maskrcnn`` reads."""
from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from amodal.cli import main as amodal_main
from amodal.errors import ConfigError
from amodal.models.maskrcnn import load_maskrcnn
from amodal.models.weights import load_weights
from amodal.training.tasks import build_task
from amodal.training.tasks.maskrcnn import MaskRCNNTask, FrameBatch
from amodal.training.trainer import load_train_config
from amodal.training.trainer.metrics_log import read_metrics
from amodal.world.shapes import SHAPE_KINDS

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "amodal" / "_weights" / "maskrcnn_tiny_synthetic.safetensors"
CONFIG = REPO / "training" / "configs" / "maskrcnn_tiny.yaml"
MICRO = {"input_height": 64, "input_width": 96, "objects": 3, "min_visible_px": 20, "eval_scenes": 3,
         "tiny_widths": [8, 8, 16, 16], "fpn_channels": 16, "anchor_sizes": [8, 16, 32, 64, 128], "box_head_dim": 32,
         "mask_head_channels": 8, "rpn_post_nms_train": 64, "rpn_post_nms_test": 32, "box_batch_size_per_image": 32,
         "max_detections": 10}
TASK_RECORD = ("model", "config", "classes", "input_size", "normalisation", "training_data", "metric")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _source(name: str) -> Path | None:
    """The source file of module ``name``; None for a name that is not a module (a class imported from one)."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None


def _amodal_imports(module: str) -> set[str]:
    """Every ``amodal.*`` module ``module`` imports, transitively (function-local imports included)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        source = _source(name) if name not in seen else None
        if source is None:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            todo.extend(n for n in names if n.startswith("amodal."))
    return seen


def test_task_imports_neither_the_runtime_nor_the_streams():
    imported = _amodal_imports("amodal.training.tasks.maskrcnn")
    assert "amodal.world.shapes" in imported and "amodal.models.maskrcnn" in imported
    assert not [m for m in imported if m.split(".")[1] in ("engine", "streams", "bench")]


def test_config_validation():
    with pytest.raises(ConfigError, match="task_config: unknown key lr_typo"):
        MaskRCNNTask({"lr_typo": 1})
    with pytest.raises(ConfigError, match="held-out scenes must not be training scenes"):
        MaskRCNNTask({"train_scenes": 100, "eval_first_seed": 50})
    with pytest.raises(ConfigError, match="task_config: backbone must be one of"):
        MaskRCNNTask({"backbone": "vgg"})
    with pytest.raises(ConfigError, match="task_config: objects must be an integer"):
        MaskRCNNTask({"objects": 0})


def test_batches_are_deterministic_resumable_and_per_rank():
    task = build_task("maskrcnn", MICRO)
    assert isinstance(task, MaskRCNNTask)
    stream = task.train_batches(batch_size=2, seed=4, rank=0, world_size=1)
    batches = [next(stream) for _ in range(3)]
    first = batches[0]
    assert isinstance(first, FrameBatch) and len(first.images) == len(first.targets) == 2
    for image, target in zip(first.images, first.targets):
        assert image.shape == (3, 64, 96) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        n = target.labels.numel()
        assert n >= 1 and target.boxes_xyxy.shape == (n, 4) and target.masks.shape == (n, 64, 96)
        assert set(target.labels.tolist()) <= set(range(1, len(SHAPE_KINDS) + 1))
        assert (target.masks.flatten(1).sum(1) >= MICRO["min_visible_px"]).all()
        for box, mask in zip(target.boxes_xyxy, target.masks):  # boxes are the visible masks' extents
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    again = next(iter(task.train_batches(batch_size=2, seed=4, rank=0, world_size=1)))
    torch.testing.assert_close(again.images[1], first.images[1])
    resumed = next(iter(task.train_batches(batch_size=2, seed=4, rank=0, world_size=1, start_batch=2)))
    torch.testing.assert_close(resumed.images[0], batches[2].images[0])
    torch.testing.assert_close(resumed.targets[0].masks, batches[2].targets[0].masks)
    other_rank = next(iter(task.train_batches(batch_size=2, seed=4, rank=1, world_size=2)))
    assert not torch.equal(other_rank.images[0], first.images[0])


def test_shipped_config_is_what_the_task_writes_and_its_score_is_reproduced():
    """``maskrcnn_tiny.yaml`` rebuilds the shipped architecture and record; the task's evaluation scores the shipped
    weights as the record says (the first 5 of its 40 held-out scenes here: the same frames, a close AP)."""
    config = load_train_config(CONFIG)
    assert (config.max_steps, config.batch_size, config.grad_clip_norm) == (600, 4, 10.0)
    assert (config.optimizer.name, config.optimizer.lr, config.optimizer.momentum,
            config.optimizer.weight_decay) == ("sgd", 0.02, 0.9, 1e-4)
    assert config.schedule.milestone_steps(config.max_steps) == (480,)
    task = build_task(config.task, config.task_config)
    _, shipped = load_weights(SHIPPED)
    written = task.export_metadata()
    assert set(TASK_RECORD) == set(written) <= set(shipped)
    for key in ("model", "config", "classes", "input_size", "normalisation", "metric"):
        assert written[key] == shipped[key], key
    loaded = load_maskrcnn(SHIPPED)
    fresh = task.build_model().state_dict()
    assert {k: v.shape for k, v in fresh.items()} == {k: v.shape for k, v in loaded.model.state_dict().items()}

    small = build_task("maskrcnn", {**config.task_config, "eval_scenes": 5})
    result = small.evaluate(loaded.model, torch.device("cpu"))
    assert not loaded.model.training
    assert result["score"] == result["AP"] and result["AP"] > 0.6 and result["bbox/AP"] > 0.6
    assert result["num_gt"] > 0 and result["num_predictions"] >= result["num_gt"] * 0.8


def test_training_run_loss_falls_evaluates_and_exports(tmp_path, capsys):
    config = {
        "task": "maskrcnn", "task_config": MICRO, "out_dir": str(tmp_path / "run"), "seed": 0, "max_steps": 24,
        "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1.0e-4},
        "schedule": {"name": "step", "warmup_steps": 4, "warmup_factor": 0.1, "milestones": [0.8], "gamma": 0.1},
        "grad_clip_norm": 10.0, "eval_every": 0, "log_every": 4, "checkpoint_every": 24, "keep_checkpoints": 1,
        "export": "maskrcnn.safetensors", "device": "cpu", "amp": "none",
    }
    path = tmp_path / "maskrcnn.yaml"
    path.write_text(yaml.safe_dump(config))
    assert amodal_main(["train", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    evaluation = summary["last_eval"]
    assert {"score", "AP", "AP50", "bbox/AP", "bbox/AP50", "num_gt", "num_predictions"} <= set(evaluation)
    assert evaluation["score"] == evaluation["AP"] and -1.0 <= evaluation["AP"] <= 1.0
    assert evaluation["num_gt"] > 0
    logged = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in logged] == [4, 8, 12, 16, 20, 24]
    assert set(logged[0]["losses"]) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                                        "loss_rpn_box_reg"}
    assert logged[-1]["loss"] < logged[0]["loss"]

    loaded = load_maskrcnn(summary["export"])
    assert loaded.config.class_names == SHAPE_KINDS and loaded.config.min_size == 64 and loaded.config.max_size == 96
    record = loaded.metadata
    assert set(TASK_RECORD) <= set(record) and record["classes"] == list(SHAPE_KINDS)
    assert record["input_size"] == [64, 96] and record["normalisation"]["scale"] == "rgb/255"
    assert record["score"] == evaluation["score"] and record["steps"] == 24
    with torch.inference_mode():
        (out,) = loaded.model([torch.rand(3, 64, 96)])
    assert out["masks"].shape[1:] == (1, 64, 96)


def test_street_world_frames_carry_the_street_classes_and_exact_visible_masks():
    from amodal.training.tasks.maskrcnn import STREET_CLASSES, render_sample

    task = build_task("maskrcnn", {**MICRO, "world": "street", "street_style": "camera", "input_width": 128,
                                   "input_height": 80, "objects": 6, "scene_frames": 8})
    assert task.model_config.class_names == STREET_CLASSES == ("person", "car", "animal", "box", "ball")
    assert task.export_metadata()["training_data"]["scenes"].startswith("amodal.world.street style=camera 128x80")
    labels = []
    for seed in range(6):
        image, target = render_sample(task.config, seed, 3)
        assert image.shape == (3, 80, 128)
        labels += target.labels.tolist()
        for box, mask in zip(target.boxes_xyxy, target.masks):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert int(mask.sum()) >= MICRO["min_visible_px"]
    assert 1 in labels and set(labels) <= set(range(1, 6))
    losses = task.losses(task.build_model().train(), next(task.train_batches(batch_size=2, seed=0, rank=0, world_size=1)))
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ConfigError, match="world must be one of"):
        MaskRCNNTask({"world": "moon"})
    with pytest.raises(ConfigError, match="street_style must be one of"):
        MaskRCNNTask({"world": "street", "street_style": "oil"})


def test_init_from_starts_from_earlier_weights_with_mapped_classes(tmp_path):
    """``init_from`` + ``class_map`` (the second stage of the street recipe, or a user's COCO weights): every
    detector tensor copied, the mapped classes' rows copied, the others fresh; a config that does not fit the
    weights names the keys to set."""
    from amodal.models.maskrcnn_import import CLASS_ROWS
    from amodal.models.weights import save_weights

    street = {**MICRO, "world": "street", "input_width": 96, "input_height": 64, "scene_frames": 8}
    torch.manual_seed(0)
    source_task = MaskRCNNTask(street)
    source = source_task.build_model().state_dict()
    path = save_weights(source, tmp_path / "stage1.safetensors", {"config": source_task.model_config.to_dict()})

    task = MaskRCNNTask({**street, "init_from": str(path), "class_map": {"person": "person", "car": "car"}})
    torch.manual_seed(5)
    fresh = MaskRCNNTask(street).build_model().state_dict()
    torch.manual_seed(5)
    model = task.build_model().state_dict()
    assert task.init_report["mapped"] == {"person": ["person"], "car": ["car"]}
    assert task.init_report["unmapped"] == ["animal", "box", "ball"]
    for key, value in model.items():
        if key not in CLASS_ROWS:
            assert torch.equal(value, source[key]), key
    for key, per_class in CLASS_ROWS.items():
        rows = lambda t, k: t[key][k * per_class:(k + 1) * per_class]  # noqa: E731
        for label in (0, 1, 2):  # background, person, car: from the weights
            assert torch.equal(rows(model, label), rows(source, label)), (key, label)
        for label in (3, 4, 5):  # animal, box, ball: as a fresh model
            assert torch.equal(rows(model, label), rows(fresh, label)), (key, label)
    assert task.export_metadata()["initialised_from"]["init_from"] == str(path)

    with pytest.raises(ConfigError, match=r"set fpn_channels: 16 \(not 24\)"):
        MaskRCNNTask({**street, "fpn_channels": 24, "init_from": str(path)})
    with pytest.raises(ConfigError, match="unknown source classes"):
        MaskRCNNTask({**street, "init_from": str(path), "class_map": {"cyclist": "person"}})
    with pytest.raises(ConfigError, match="class_map needs init_from"):
        MaskRCNNTask({**street, "class_map": {"person": "person"}})


def test_zoom_window_cuts_resizes_and_mirrors_frame_and_masks_alike():
    import numpy as np

    from amodal.training.tasks.zoom import ZoomWindow, apply_zoom, draw_zoom_window

    image = torch.zeros(3, 64, 96)
    image[0, 10:20, 20:30] = 1.0  # a red object at x 20..30, y 10..20
    masks = torch.zeros(1, 64, 96, dtype=torch.uint8)
    masks[0, 10:20, 20:30] = 1
    zoomed, zmasks = apply_zoom(image, masks, ZoomWindow(top=8, left=16, height=32, width=48, mirror=False))
    assert zoomed.shape == (3, 64, 96) and zmasks.shape == (1, 64, 96) and zmasks.dtype == torch.uint8
    ys, xs = torch.nonzero(zmasks[0], as_tuple=True)  # twice as large, moved by the window's corner
    assert (int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1) == (8, 28, 4, 24)
    assert float(zoomed[0, 6:22, 10:26].min()) > 0.99 and float(zoomed[0, 30:, 40:].max()) < 0.01
    mirrored, mmasks = apply_zoom(image, masks, ZoomWindow(0, 0, 64, 96, mirror=True))
    assert torch.equal(mmasks[0], masks[0].flip(-1)) and torch.equal(mirrored, image.flip(-1))
    assert torch.equal(apply_zoom(image, masks[:0], ZoomWindow(8, 16, 32, 48, False))[1], masks[:0])

    rng = np.random.default_rng(0)
    windows = [draw_zoom_window(rng, 64, 96, zoom_prob=0.5, zoom_max=3.0, hflip_prob=0.5) for _ in range(400)]
    zooms = np.array([96 / w.width for w in windows])
    assert 0.4 < (zooms > 1.0).mean() < 0.6 and zooms.max() <= 3.0 + 0.05 and 0.4 < np.mean([w.mirror for w in windows]) < 0.6
    assert all(0 <= w.top <= 64 - w.height and 0 <= w.left <= 96 - w.width for w in windows)
    assert all(abs(w.width / w.height - 1.5) < 0.1 for w in windows)  # the frame's aspect


def test_zoomed_training_frames_hold_larger_objects_with_exact_targets_and_stay_resumable():
    plain = build_task("maskrcnn", MICRO)
    zoomed = build_task("maskrcnn", {**MICRO, "zoom_prob": 1.0, "zoom_max": 3.0, "hflip_prob": 0.5})
    def areas(task):
        stream = task.train_batches(batch_size=4, seed=2, rank=0, world_size=1)
        return [float(m.sum()) for _ in range(4) for t in next(stream).targets for m in t.masks]
    assert sum(areas(zoomed)) / len(areas(zoomed)) > 1.5 * sum(areas(plain)) / len(areas(plain))
    batches = zoomed.train_batches(batch_size=2, seed=4, rank=0, world_size=1)
    first, _, third = next(batches), next(batches), next(batches)
    for target in first.targets + third.targets:
        assert (target.masks.flatten(1).sum(1) >= MICRO["min_visible_px"]).all()
        for box, mask in zip(target.boxes_xyxy, target.masks):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    resumed = next(iter(zoomed.train_batches(batch_size=2, seed=4, rank=0, world_size=1, start_batch=2)))
    torch.testing.assert_close(resumed.images[1], third.images[1])
    torch.testing.assert_close(resumed.targets[1].masks, third.targets[1].masks)
    with pytest.raises(ConfigError, match="zoom_max must be a number ≥ 1"):
        MaskRCNNTask({"zoom_max": 0.5})
    with pytest.raises(ConfigError, match=r"hflip_prob must be in \[0, 1\]"):
        MaskRCNNTask({"hflip_prob": 2})
