"""Engine pieces: schedules, prediction resizing, weights files, device choice."""

import pytest
import torch

from segbench.engine.checkpoint import load_weights, save_weights
from segbench.engine.config import TrainConfig
from segbench.engine.device import resolve_device
from segbench.engine.evaluate import resize_prediction
from segbench.engine.optim import build_optimizer, lr_factor, param_groups
from segbench.errors import ConfigError, DataError


def test_poly_and_cosine_schedules_with_warmup():
    poly = TrainConfig(steps=10, schedule="poly", poly_power=1.0)
    assert [round(lr_factor(s, poly), 6) for s in (0, 5, 9)] == [1.0, 0.5, 0.1]
    warm = TrainConfig(steps=10, schedule="cosine", warmup_steps=2)
    assert lr_factor(0, warm) == 0.5 and lr_factor(1, warm) == 1.0
    assert lr_factor(2, warm) == pytest.approx(1.0) and lr_factor(10, warm) == pytest.approx(0.0)
    assert lr_factor(6, warm) == pytest.approx(0.5)
    assert lr_factor(7, TrainConfig(steps=10, schedule="constant")) == 1.0


def test_step_schedule_is_caffes_multistep():
    step = TrainConfig(steps=6000, schedule="step", milestones=[2000, 4000], gamma=0.1)
    step.validate()
    assert step.milestones == (2000, 4000)
    factors = [lr_factor(s, step) for s in (0, 1999, 2000, 3999, 4000, 5999)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    warm = TrainConfig(steps=100, schedule="step", milestones=[50], warmup_steps=10)
    assert lr_factor(4, warm) == 0.5 and lr_factor(49, warm) == 1.0 and lr_factor(50, warm) == pytest.approx(0.1)


@pytest.mark.parametrize("fields, message", [
    ({"schedule": "step"}, "schedule 'step' needs milestones"),
    ({"schedule": "step", "milestones": [400, 200]}, "milestones must be increasing positive step numbers"),
    ({"milestones": [0]}, "milestones must be increasing positive step numbers"),
    ({"schedule": "step", "milestones": [5], "gamma": 0.0}, "gamma must be in \\(0, 1\\]"),
    ({"schedule": "exp"}, "schedule must be one of poly, cosine, step, constant"),
])
def test_bad_schedule_fields_are_one_line_errors(fields, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**fields).validate()


def test_train_split_is_chosen_checked_and_recorded(tmp_path):
    from segbench.engine.run import run_experiment

    tiny = {"steps": 2, "batch_size": 4, "num_train": 8, "num_val": 6, "num_test": 5, "image_size": 48}
    with pytest.raises(ConfigError, match="dataset 'shapes' has no split 'trainaug' to train on; splits: train, val"):
        run_experiment("weldon", "shapes", overrides={**tiny, "train_split": "trainaug"}, runs=tmp_path,
                       progress=False)
    assert not list(tmp_path.rglob("*.json"))
    said = []
    outcome = run_experiment("weldon", "shapes", overrides={**tiny, "train_split": "test"}, runs=tmp_path,
                             progress=False, echo=said.append)
    record = outcome.record
    assert record["train_split"] == "test" and record["config"]["train"]["train_split"] == "test"
    assert not any("same split" in line for line in said)
    outcome = run_experiment("weldon", "shapes", overrides={**tiny, "train_split": "val"}, runs=tmp_path,
                             progress=False, echo=said.append)
    assert any("training and evaluating on the same split 'val' of 'shapes'" in line for line in said)
    default = run_experiment("weldon", "shapes", overrides=tiny, runs=tmp_path, progress=False).record
    assert default["train_split"] == "train"


def test_head_lr_mult_splits_backbone_and_head():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Linear(2, 2)
            self.head = torch.nn.Linear(2, 1)

    groups = param_groups(Net(), TrainConfig(lr=0.1, head_lr_mult=10.0))
    assert [g["lr"] for g in groups] == [0.1, 1.0] and [len(g["params"]) for g in groups] == [2, 2]
    optimizer = build_optimizer(Net(), TrainConfig(optimizer="adamw", lr=0.01))
    assert isinstance(optimizer, torch.optim.AdamW)


def test_resize_prediction_to_original_size():
    maps = torch.arange(4.0).view(1, 2, 2).repeat(3, 1, 1)
    mask = torch.tensor([[0, 1], [2, 3]])
    out = resize_prediction({"score_maps": maps, "mask": mask, "scores": torch.ones(3)}, (4, 6))
    assert out["score_maps"].shape == (3, 4, 6) and out["mask"].shape == (4, 6)
    assert out["mask"].dtype == torch.int64 and set(out["mask"].unique().tolist()) == {0, 1, 2, 3}
    assert out["mask"][0, 0] == 0 and out["mask"][3, 5] == 3
    assert out["score_maps"][0, 0, 0] == 0.0 and out["score_maps"][0, 3, 5] == 3.0
    same = resize_prediction({"score_maps": maps}, (2, 2))
    assert torch.equal(same["score_maps"], maps)


def test_instances_follow_the_resize():
    instances = {"boxes": torch.tensor([[2.0, 4.0, 6.0, 8.0]]), "classes": torch.tensor([1]),
                 "scores": torch.tensor([0.9]), "masks": torch.zeros(1, 10, 20, dtype=torch.bool)}
    instances["masks"][0, 4:8, 2:6] = True
    out = resize_prediction({"instances": instances}, (20, 40))["instances"]
    assert out["masks"].shape == (1, 20, 40) and out["masks"].dtype == torch.bool
    assert out["masks"].sum() == 4 * 16
    assert out["boxes"].tolist() == [[4.0, 8.0, 12.0, 16.0]]
    boxes_only = resize_prediction({"instances": {"boxes": torch.tensor([[1.0, 1.0, 2.0, 2.0]])}}, (30, 30), (10, 10))
    assert boxes_only["instances"]["boxes"].tolist() == [[3.0, 3.0, 6.0, 6.0]]


def test_weights_round_trip_and_errors(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    path = save_weights(model, tmp_path / "w.safetensors")
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    load_weights(other, path)
    assert torch.equal(other[0].weight, model[0].weight)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(DataError, match="weights file not found"):
        load_weights(other, tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(DataError, match="bad.safetensors: cannot read weights"):
        load_weights(other, tmp_path / "bad.safetensors")
    with pytest.raises(DataError, match="do not match the model"):
        load_weights(torch.nn.Linear(2, 2), path)


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="--device must be"):
        resolve_device("tpu")


def test_crop_padding_fills_void_in_the_class_mask_and_zero_in_instance_masks():
    from torchvision import tv_tensors

    from segbench.engine.config import TrainConfig
    from segbench.engine.data import TrainView, train_transform

    image = tv_tensors.Image(torch.full((3, 8, 8), 7, dtype=torch.uint8))
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 2:6, 2:6] = True
    sample = {"image": image, "meta": {},
              "target": {"labels": torch.tensor([0.0, 1.0]), "mask": tv_tensors.Mask(torch.ones(8, 8, dtype=torch.uint8)),
                         "masks": tv_tensors.Mask(masks), "classes": torch.tensor([1]), "iscrowd": torch.tensor([0]),
                         "boxes": tv_tensors.BoundingBoxes(torch.tensor([[2.0, 2.0, 6.0, 6.0]]), format="XYXY",
                                                           canvas_size=(8, 8))}}
    keys = frozenset({"mask", "masks", "boxes"})
    view = TrainView([sample], keys, train_transform(TrainConfig(crop_size=12, hflip=False), keys))
    target = view[0]["target"]
    assert target["mask"].shape == target["masks"].shape[1:] == (12, 12)
    assert int((target["mask"] == 255).sum()) == 144 - 64  # the padded border is void in the class mask
    assert int(target["masks"].sum()) == 16  # and outside every instance
    assert view[0]["image"].shape == (3, 12, 12)


def test_a_batch_of_different_sizes_is_padded_images_with_zero_masks_with_void():
    """mmseg's collate: bottom/right padding, 0 after normalisation for images, 255 for the class mask."""
    from segbench.engine.data import Normalizer, pad_targets

    images = [torch.full((3, 2, 3), 200, dtype=torch.uint8), torch.full((3, 4, 2), 100, dtype=torch.uint8)]
    normalize = Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"))
    batch = normalize(images)
    assert tuple(batch.shape) == (2, 3, 4, 3)
    expected = (200 - 127.5) / 63.75
    assert torch.allclose(batch[0, :, :2, :3], torch.full((3, 2, 3), expected))
    assert batch[0, :, 2:].abs().sum() == 0 and batch[1, :, :, 2:].abs().sum() == 0
    targets = [{"mask": torch.zeros(2, 3, dtype=torch.long), "masks": torch.ones(1, 2, 3, dtype=torch.bool),
                "boxes": torch.tensor([[0.0, 0.0, 3.0, 2.0]])},
               {"mask": torch.ones(4, 2, dtype=torch.long)}]
    padded = pad_targets(targets, images, batch.shape[-2:])
    assert padded[0]["mask"].tolist() == [[0, 0, 0], [0, 0, 0], [255, 255, 255], [255, 255, 255]]
    assert padded[0]["masks"].sum() == 6 and tuple(padded[0]["masks"].shape) == (1, 4, 3)
    assert padded[0]["boxes"].tolist() == [[0.0, 0.0, 3.0, 2.0]]
    assert padded[1]["mask"][:, 2].tolist() == [255] * 4 and padded[1]["mask"][:, :2].sum() == 8
    assert [t["valid_size"] for t in padded] == [(2, 3), (4, 2)]
    same = normalize([images[0], images[0]])
    assert tuple(same.shape) == (2, 3, 2, 3)


def test_a_recipe_without_a_crop_size_gets_the_datasets_and_the_default_recipe_follows_the_dataset():
    from segbench.engine.config import default_recipe, resolve_config
    from segbench.plugins import get_registry

    registry = get_registry()
    weldon, voc, shapes = registry.method("weldon"), registry.dataset("voc2012"), registry.dataset("shapes")
    assert default_recipe(weldon, voc)[0] == "paper" and "voc2012" in default_recipe(weldon, voc)[1]
    assert default_recipe(weldon, shapes)[0] == "quick"
    assert voc.crop_size == 512 and shapes.crop_size == 0
    quick = weldon.recipes["quick"]
    assert "crop_size" not in quick.train
    assert resolve_config(weldon, voc, {}, "quick").train.crop_size == 512
    assert resolve_config(weldon, shapes, {}, "quick").train.crop_size == 0
    assert resolve_config(weldon, voc, {}, "quick", {"crop_size": 0}).train.crop_size == 0


def test_caffe_multipliers_put_lr_and_decay_per_parameter_biases_included():
    """Caffe's lr_mult / decay_mult: weights x1, biases x2 without decay, the new layer x10 (x20 for its bias)."""
    from segbench.nn.multipliers import caffe_multipliers

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Conv2d(3, 4, 3)
            self.fc7 = torch.nn.Conv2d(4, 4, 1)
            self.fc8 = torch.nn.Conv2d(4, 2, 1)

        def param_multipliers(self, head_lr_mult):
            return caffe_multipliers(self, ["fc8"], head_lr_mult)

    net = Net()
    config = TrainConfig(lr=1e-3, weight_decay=5e-4, head_lr_mult=10.0)
    groups = param_groups(net, config)
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    expected = {"backbone.weight": (1e-3, 5e-4), "backbone.bias": (2e-3, 0.0), "fc7.weight": (1e-3, 5e-4),
                "fc7.bias": (2e-3, 0.0), "fc8.weight": (1e-2, 5e-4), "fc8.bias": (2e-2, 0.0)}
    for name, param in net.named_parameters():
        assert by_param[id(param)] == pytest.approx(expected[name]), name
    optimizer = build_optimizer(net, config)
    got = sorted((round(g["lr"], 12), round(g["weight_decay"], 12)) for g in optimizer.param_groups)
    assert got == [(1e-3, 5e-4), (2e-3, 0.0), (1e-2, 5e-4), (2e-2, 0.0)]


def test_elastic_deformation_moves_image_and_mask_together_and_keeps_labels():
    """torchvision's ElasticTransform in the training transform: mask values stay labels (nearest), off at 0."""
    from torchvision import tv_tensors

    from segbench.engine.data import train_transform

    torch.manual_seed(0)
    assert train_transform(TrainConfig(hflip=False)) is None  # alpha 0: no transform at all
    transform = train_transform(TrainConfig(hflip=False, elastic_alpha=30.0, elastic_sigma=4.0), {"mask"})
    mask = torch.zeros(32, 32, dtype=torch.uint8)
    mask[8:24, 8:24] = 3
    image = (mask * 80).expand(3, 32, 32).clone()
    out_image, target = transform(tv_tensors.Image(image), {"mask": tv_tensors.Mask(mask)})
    out_mask = target["mask"]
    assert set(out_mask.unique().tolist()) <= {0, 3, 255} and not torch.equal(out_mask, mask)
    inside = out_mask == 3
    assert inside.any() and (out_image[0][inside] > 120).float().mean() > 0.9  # the image moved with the mask
    with pytest.raises(ConfigError, match="elastic_alpha"):
        TrainConfig(elastic_alpha=-1.0).validate()
