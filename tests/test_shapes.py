"""The synthetic ``shapes`` dataset: registration, determinism and every annotation kind."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2

import segbench
from segbench.data.builtin import SHAPES_CLASSES, shapes_pointing_tolerance
from segbench.data.shapes import GENERATOR_VERSION, ShapesDataset, generate
from segbench.errors import ConfigError
from segbench.plugins import get_registry

SMALL = {"image_size": 64, "num_train": 8, "num_val": 200, "num_test": 8}


@pytest.fixture(scope="module")
def val():
    return ShapesDataset("val", **SMALL)


def _ids(target) -> np.ndarray:
    """Instance id map (0 background, k = k-th instance) rebuilt from the instance masks."""
    masks = target["masks"].numpy()
    assert masks.sum(axis=0).max() <= 1, "instance masks overlap"
    return (masks * np.arange(1, len(masks) + 1)[:, None, None]).sum(axis=0)


# -- registration -------------------------------------------------------------------------------
def test_registered_through_the_builtin_plugin():
    spec = get_registry().dataset("shapes")
    assert spec.plugin == "segbench.data.builtin"
    assert spec.classes == ("background", "disc", "square", "triangle", "star", "ring", "cross")
    assert spec.background == 0 and not spec.needs_root
    assert spec.splits == ("train", "val", "test") and (spec.train_split, spec.eval_split) == ("train", "val")
    assert spec.annotations == {"labels", "mask", "boxes", "classes", "masks", "iscrowd"}
    assert spec.metric_defaults_for(spec.options) == {"loc_map": {"tolerance": 4}, "pointing_game": {"tolerance": 3}}
    assert spec.metric_defaults_for({"image_size": 64}) == {"loc_map": {"tolerance": 3},
                                                            "pointing_game": {"tolerance": 2}}
    for key in ("image_size", "num_train", "num_val", "num_test", "seed", "min_objects", "max_objects", "void_width"):
        assert key in spec.options
    assert (spec.options["image_size"], spec.options["num_train"], spec.options["void_width"]) == (96, 2000, 1)


def test_registration_does_not_import_torch():
    code = "import sys, segbench.data.builtin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("size, expected", [(96, 4), (224, 9), (192, 8), (48, 2), (36, 2), (60, 3), (16, 1), (8, 1)])
def test_pointing_tolerance_scales_with_image_size(size, expected):
    assert shapes_pointing_tolerance(size) == expected


def test_dataset_reports_its_scaled_tolerance():
    assert ShapesDataset("val", image_size=192, num_val=1).metric_defaults == {"loc_map": {"tolerance": 8},
                                                                               "pointing_game": {"tolerance": 7}}


def test_a_late_metric_at_the_datasets_defaults_keeps_the_config_id():
    from segbench.engine.config import identity_dict

    base = {"dataset": "shapes", "data": {"image_size": 96}, "train": {}, "metrics": {"loc_map": {"tolerance": 4}}}
    with_game = {**base, "metrics": {**base["metrics"], "pointing_game": {
        "num_classes": None, "background": None, "tolerance": 3, "subset": "all"}}}
    assert identity_dict(with_game) == identity_dict(base)  # shapes' own 3 px at 96 px is the default here
    changed = {**base, "metrics": {**base["metrics"], "pointing_game": {
        "num_classes": None, "background": None, "tolerance": 15, "subset": "all"}}}
    assert identity_dict(changed)["metrics"]["pointing_game"]["tolerance"] == 15


def test_create_dataset_passes_options():
    ds = segbench.create_dataset("shapes", "test", num_test=3, image_size=48)
    assert len(ds) == 3 and ds[0]["image"].shape == (3, 48, 48)
    with pytest.raises(ConfigError, match="no option"):
        segbench.create_dataset("shapes", "val", colour=1)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_objects": 0}, "max_objects"),
        ({"min_objects": 3, "max_objects": 2}, "max_objects"),
        ({"image_size": 8}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"min_size": 0.5, "max_size": 0.2}, "min_size <= max_size"),
        ({"num_val": 2.5}, "num_val"),
        ({"void_width": 12}, "void_width"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        ShapesDataset("val", **options)


def test_bad_split_and_index():
    with pytest.raises(ConfigError, match="no split 'dev'"):
        ShapesDataset("dev")
    ds = ShapesDataset("val", num_val=2, image_size=48)
    assert ds[-1]["meta"]["id"] == "val_000001"
    with pytest.raises(IndexError):
        ds[2]


# -- determinism ----------------------------------------------------------------------------------
def _flat(sample) -> list[torch.Tensor]:
    t = sample["target"]
    return [sample["image"], t["labels"], t["mask"], t["boxes"], t["classes"], t["masks"], t["iscrowd"]]


def test_same_seed_same_tensors_different_seed_different():
    a = ShapesDataset("val", num_val=4, image_size=48, seed=7)
    b = ShapesDataset("val", num_val=4, image_size=48, seed=7)
    c = ShapesDataset("val", num_val=4, image_size=48, seed=8)
    for i in range(4):
        assert all(torch.equal(x, y) for x, y in zip(_flat(a[i]), _flat(b[i])))
        assert a[i]["meta"] == b[i]["meta"]
    assert not any(torch.equal(a[i]["image"], c[i]["image"]) for i in range(4))
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_a_sample_depends_only_on_seed_split_and_index():
    short = generate("val", 0, 3, image_size=48)
    later = generate("val", 2, 300, image_size=48)  # other chunk boundaries, other neighbours
    assert np.array_equal(short.images[2], later.images[0])
    assert np.array_equal(short.semantic[2], later.semantic[0])
    assert np.array_equal(short.boxes[2], later.boxes[0])
    long = ShapesDataset("val", num_val=300, image_size=48)
    assert torch.equal(long[2]["image"], torch.from_numpy(short.images[2]))
    train = generate("train", 0, 3, image_size=48)
    assert not np.array_equal(train.images, short.images)


def test_generator_output_is_pinned():
    """Same pixels on every machine; a deliberate change must bump GENERATOR_VERSION and this hash."""
    s = generate("val", 0, 4, image_size=64)
    h = hashlib.sha256()
    for a in (s.images, s.instances, s.semantic, *s.classes, *s.boxes):
        h.update(np.ascontiguousarray(a).tobytes())
    assert GENERATOR_VERSION == 1
    assert h.hexdigest() == "4d6449ad3610e384343038aca432d494ca75ff7896457e5c7a309ccd34a5d312"


# -- every annotation kind --------------------------------------------------------------------------
def test_keys_types_shapes_and_dtypes(val):
    s = val[5]
    t = s["target"]
    n = len(t["classes"])
    assert 1 <= n <= 4
    assert isinstance(s["image"], tv_tensors.Image) and s["image"].dtype == torch.uint8
    assert s["image"].shape == (3, 64, 64)
    assert t["labels"].dtype == torch.float32 and t["labels"].shape == (7,)
    assert isinstance(t["mask"], tv_tensors.Mask) and t["mask"].dtype == torch.uint8 and t["mask"].shape == (64, 64)
    assert isinstance(t["boxes"], tv_tensors.BoundingBoxes) and t["boxes"].dtype == torch.float32
    assert t["boxes"].shape == (n, 4) and t["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(t["boxes"].canvas_size) == (64, 64)
    assert t["classes"].dtype == torch.int64 and t["classes"].shape == (n,)
    assert isinstance(t["masks"], tv_tensors.Mask) and t["masks"].dtype == torch.bool
    assert t["masks"].shape == (n, 64, 64)
    assert t["iscrowd"].dtype == torch.bool and t["iscrowd"].shape == (n,) and not t["iscrowd"].any()
    assert s["meta"] == {"id": "val_000005", "path": None, "orig_size": (64, 64)}


def test_boxes_are_the_visible_extent_of_each_instance(val):
    for i in range(0, 200, 7):
        t = val[i]["target"]
        masks = t["masks"]
        assert masks.flatten(1).any(dim=1).all(), "an annotated instance has no visible pixel"
        expected = masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # inclusive -> continuous
        assert torch.equal(t["boxes"].as_subclass(torch.Tensor), expected)


@pytest.mark.parametrize("width", [0, 1, 2])
def test_void_band_and_labels_match_the_instances(width):
    ds = ShapesDataset("val", num_val=24, image_size=64, void_width=width)
    for i in range(len(ds)):
        t = ds[i]["target"]
        ids = _ids(t)
        mask = t["mask"].numpy()
        if width:
            size = 2 * width + 1
            band = (ndimage.maximum_filter(ids, size=size, mode="nearest") != ids) | (
                ndimage.minimum_filter(ids, size=size, mode="nearest") != ids
            )
        else:
            band = np.zeros(ids.shape, dtype=bool)
        assert np.array_equal(mask == 255, band)
        classes = np.concatenate([[0], t["classes"].numpy()])
        assert np.array_equal(mask[~band], classes[ids[~band]])
        labels = t["labels"].numpy()
        assert labels[0] == 0
        assert set(np.flatnonzero(labels)) == set(t["classes"].tolist())
        assert set(np.unique(mask)) - {0, 255} == set(t["classes"].tolist())  # every instance keeps inner pixels


def test_class_and_object_statistics(val):
    counts = np.zeros(7, dtype=int)
    per_image, sides, colours = [], [], {c: [] for c in range(1, 7)}
    for i in range(len(val)):
        s = val[i]
        t = s["target"]
        image = s["image"].numpy()
        per_image.append(len(t["classes"]))
        for c, m, box in zip(t["classes"].tolist(), t["masks"].numpy(), t["boxes"].tolist()):
            counts[c] += 1
            sides.append(max(box[2] - box[0], box[3] - box[1]) / 64)
            colours[c].append(image[:, m].mean(axis=1))
    assert counts[0] == 0 and (counts[1:] >= 40).all(), counts
    assert set(per_image) == {1, 2, 3, 4}
    assert min(sides) < 0.15 and max(sides) > 0.4  # sizes span roughly 12% .. 45% of the side
    overall = np.mean([c for cs in colours.values() for c in cs], axis=0)
    for c, cs in colours.items():  # colour is independent of the class
        assert np.abs(np.mean(cs, axis=0) - overall).max() < 40, (SHAPES_CLASSES[c], np.mean(cs, axis=0), overall)


def test_v2_transforms_move_every_annotation_together(val):
    sample = val[11]
    flipped = v2.RandomHorizontalFlip(p=1.0)(sample)
    t, f = sample["target"], flipped["target"]
    assert torch.equal(flipped["image"], sample["image"].flip(-1))
    assert torch.equal(f["mask"], t["mask"].flip(-1))
    assert torch.equal(f["masks"], t["masks"].flip(-1))
    boxes = t["boxes"].as_subclass(torch.Tensor)
    assert torch.equal(f["boxes"].as_subclass(torch.Tensor)[:, [0, 2]], 64 - boxes[:, [2, 0]])
    assert flipped["meta"] == sample["meta"]


def test_clutter_zero_gives_plain_gradients():
    plain = generate("val", 0, 6, image_size=48, clutter=0.0)
    busy = generate("val", 0, 6, image_size=48)
    for plain_img, busy_img, ids in zip(plain.images, busy.images, plain.instances):
        bg = ids == 0
        # a linear gradient: neighbouring background pixels differ by at most a few levels
        step = np.abs(np.diff(plain_img.astype(int), axis=2))[:, bg[:, 1:] & bg[:, :-1]]
        assert step.max() <= 8
        busy_step = np.abs(np.diff(busy_img.astype(int), axis=2)).mean()
        assert busy_step > step.mean()


@pytest.mark.parametrize("keys, built", [
    ({"labels", "labels_ignore"}, ["labels"]),
    ({"labels", "mask"}, ["labels", "mask"]),
    ({"labels", "boxes"}, ["boxes", "classes", "iscrowd", "labels", "masks"]),
    (None, ["boxes", "classes", "iscrowd", "labels", "mask", "masks"]),
])
def test_select_targets_builds_only_what_is_read_and_the_same_values(keys, built):
    full = ShapesDataset("val", **SMALL)
    some = ShapesDataset("val", **SMALL).select_targets(keys)
    for i in (0, 7, 199):
        a, b = full[i], some[i]
        assert sorted(b["target"]) == built
        assert torch.equal(a["image"], b["image"])
        for key in built:
            assert torch.equal(a["target"][key], b["target"][key])
