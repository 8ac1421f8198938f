"""SAS training task and data: the seed's ``<id>_<layer>`` folder layout round-trips through write and read (and
agrees with the layers.json written beside it), bad folders are errors naming the folder, batches are deterministic
per (seed, rank, batch), a few trainer steps run and evaluation reports ``amodal eval layers`` metrics."""
from __future__ import annotations

import argparse
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from amodal.errors import ConfigError
from amodal.training.data.layers import LayersDataset, SasLayersDataset, open_layers_dataset, write_sas_item
from amodal.training.data.synth import layers as synth
from amodal.training.tasks import build_task
from amodal.training.tasks.sas import SASBatch, SASTask, ground_truth

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def sas_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("sas_layers")
    synth.generate(out, 6, 4, _args(["--size", "32", "--format", "sas", "--objects-max", "4", "--max-layers", "3"]))
    return out


def test_sas_folders_hold_image_mask_and_newmask_per_layer_with_an_empty_stop_target(sas_root):
    ds = SasLayersDataset(sas_root)
    assert len(ds) == 6 and [image_id for image_id, _ in ds.items] == list(range(6))
    json_ds = LayersDataset(sas_root)  # layers.json points into the same folders
    for i in range(len(ds)):
        item, annotated = ds[i], json_ds[i]
        L = item.num_layers
        assert sorted(p.name for p in sas_root.glob(f"{i}_*")) == [f"{i}_{k}" for k in range(L + 1)]
        assert {p.name for p in (sas_root / f"{i}_0").iterdir()} == {"image.png", "mask.png", "newmask.png"}
        assert L == annotated.num_layers and np.array_equal(item.image, annotated.image)
        assert np.array_equal(item.layer_masks, annotated.layer_masks)
        assert np.array_equal(item.cumulative_masks, annotated.cumulative_masks)
        assert not item.layer_masks[-1].any() and all(item.layer_masks[k].any() for k in range(L))
        assert not item.cumulative_masks[0].any()
        for k in range(L):  # newmask of layer k+1 = newmask of k ∪ mask of k
            assert np.array_equal(item.cumulative_masks[k + 1], item.cumulative_masks[k] | item.layer_masks[k])
        # GT layer k is the union of the amodal masks of the objects of layer k
        for k in range(1, L + 1):
            union = np.any([o.amodal for o in annotated.objects if o.layer == k], axis=0)
            assert np.array_equal(item.layer_masks[k - 1], union)
    assert isinstance(open_layers_dataset(sas_root), LayersDataset)
    assert isinstance(open_layers_dataset(sas_root, "sas"), SasLayersDataset)


def test_write_then_read_round_trips(sas_root, tmp_path):
    ds = SasLayersDataset(sas_root)
    for i in range(len(ds)):
        write_sas_item(tmp_path, 100 + i, ds[i])
    back = SasLayersDataset(tmp_path)
    assert [image_id for image_id, _ in back.items] == [100 + i for i in range(len(ds))]
    for i in range(len(ds)):
        a, b = ds[i], back[i]
        assert b.name == str(100 + i) and a.num_layers == b.num_layers
        assert np.array_equal(a.image, b.image) and np.array_equal(a.layer_masks, b.layer_masks)
        assert np.array_equal(a.cumulative_masks, b.cumulative_masks)


def test_bad_folders_are_errors_that_name_the_folder(sas_root, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(sas_root, root, ignore=shutil.ignore_patterns("*.json"))
    (root / "2_1" / "newmask.png").unlink()
    with pytest.raises(ConfigError, match=r"2_1: missing newmask.png"):
        SasLayersDataset(root)
    shutil.rmtree(root)
    shutil.copytree(sas_root, root, ignore=shutil.ignore_patterns("*.json"))
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "3_0" / "mask.png")
    ds = SasLayersDataset(root)
    with pytest.raises(ConfigError, match=r"3_0: files of different sizes"):
        ds[3]
    shutil.rmtree(root / "4_0")
    with pytest.raises(ConfigError, match=r"4_0: missing"):
        SasLayersDataset(root)
    (root / "notes").mkdir()
    with pytest.raises(ConfigError, match=r"notes: folder name is not <image id>_<layer>"):
        SasLayersDataset(root)


def _task(root, **overrides) -> SASTask:
    config = {"data_root": str(root), "val_root": str(root), "layout": "sas",
              "model": {"image_size": 32, "block_out_channels": [8, 16]},
              "inference": {"sampler": "ddim", "steps": 2, "ensemble_size": 2, "layer_limit": 2},
              "eval_max_images": 3, **overrides}
    return build_task("sas", config)


def test_batches_are_deterministic_and_cover_every_layer_and_stop_target(sas_root):
    task = _task(sas_root)
    assert task.summary["pairs"] == sum(SasLayersDataset(sas_root)[i].num_layers + 1 for i in range(6))
    a = next(task.train_batches(batch_size=4, seed=1, rank=0, world_size=1, start_batch=3))
    b = next(task.train_batches(batch_size=4, seed=1, rank=0, world_size=1, start_batch=3))
    c = next(task.train_batches(batch_size=4, seed=2, rank=0, world_size=1, start_batch=3))
    assert isinstance(a, SASBatch) and a.images.shape == (4, 3, 32, 32) and a.masks.shape == (4, 1, 32, 32)
    for name in ("images", "cumulative", "masks", "timesteps", "noise"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.noise, c.noise)
    assert set(a.masks.unique().tolist()) <= {0.0, 1.0} and ((a.timesteps >= 0) & (a.timesteps < 1000)).all()
    many = next(task.train_batches(batch_size=256, seed=0, rank=0, world_size=1))
    assert (many.masks.flatten(1).sum(1) == 0).any()  # stop targets are trained on


def test_losses_train_and_evaluation_reports_layer_metrics(sas_root):
    torch.manual_seed(0)
    task = _task(sas_root)
    model = task.build_model()
    batch = next(task.train_batches(batch_size=6, seed=0, rank=0, world_size=1))
    losses = task.losses(model, batch)
    assert set(losses) == {"loss_mse", "loss_vb"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    metrics = task.evaluate(model, torch.device("cpu"))
    assert metrics["num_images"] == 3 and metrics["score"] == metrics["miou_layers"]
    for key in ("layer_iou/1", "count_accuracy", "object_layer_accuracy", "order_accuracy", "seconds_per_image"):
        assert key in metrics
    assert 0.0 <= metrics["miou_layers"] <= 1.0 and metrics["mean_layers"] <= 2
    meta = task.export_metadata()
    assert meta["model"] == "sas" and meta["config"]["image_size"] == 32 and meta["inference"]["steps"] == 2


def test_ground_truth_without_objects_uses_the_layer_unions(sas_root):
    item = SasLayersDataset(sas_root)[0]
    gt = ground_truth(item, "x")
    assert gt.num_layers == item.num_layers and np.array_equal(gt.layer_mask(1), item.layer_masks[0])


def test_task_config_errors():
    with pytest.raises(ConfigError, match="val_root"):
        build_task("sas", {"data_root": "x"})
    with pytest.raises(ConfigError, match="preset"):
        build_task("sas", {"data_root": "x", "val_root": "y", "preset": "huge"})
