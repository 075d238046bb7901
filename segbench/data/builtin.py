"""Built-in datasets, registered through the same hook as external plugins.

This module is imported by ``segbench list``: it must not import torch.
Each ``build`` imports its implementation when the dataset is really needed.
"""

from __future__ import annotations

from typing import Any, Callable

from segbench import hookimpl
from segbench.specs import DatasetSpec

SHAPES_CLASSES = ("background", "disc", "square", "triangle", "star", "ring", "cross")
"""Class names of ``shapes``; index 0 is the background."""

SHAPES_OPTIONS: dict[str, Any] = {
    "image_size": 96,  # side of the square images, pixels
    "num_train": 2000,
    "num_val": 500,
    "num_test": 500,
    "seed": 0,  # sample i of a split depends only on (seed, split, i) and the scene options
    "min_objects": 1,
    "max_objects": 4,
    "min_size": 0.12,  # object diameter (circumscribed circle), fraction of the image side
    "max_size": 0.45,
    "min_visible": 0.3,  # an object keeps at least this fraction of its area visible (else redrawn)
    "void_width": 1,  # void (255) band along object outlines, pixels on each side; 0 = none
    "clutter": 1.0,  # strength of background distractors (stripes, blobs, bars, noise); 0 = plain gradient
}
"""Options of ``shapes`` with their defaults; each is a ``--set`` key."""


def shapes_metric_defaults(options) -> dict:
    """Metric defaults for shapes at the resolved options: the pointing tolerances scale with the image."""
    size = options.get("image_size", SHAPES_OPTIONS["image_size"])
    return {"loc_map": {"tolerance": shapes_pointing_tolerance(size)},
            "pointing_game": {"tolerance": shapes_pointing_game_tolerance(size)}}


def shapes_pointing_game_tolerance(image_size: int) -> int:
    """The pointing game's tolerance on ``shapes``: Zhang et al.'s 15 px scaled as ``loc_map``'s 18 px is
    (:func:`shapes_pointing_tolerance`): ``image_size * 4 / 96 * 15 / 18`` rounded, at least 1 (3 px at 96 px)."""
    return max(1, int(image_size * 4 / 96 * 15 / 18 + 0.5))


def shapes_pointing_tolerance(image_size: int) -> int:
    """Pointing tolerance in pixels for ``shapes`` at ``image_size``.

    The 18 px of the pointing protocol is meant for ~224-500 px images; shapes
    uses 4 px at 96 px and scales linearly: ``image_size * 4 / 96`` rounded
    to the nearest integer (halves up), at least 1.
    """
    return max(1, int(image_size * 4 / 96 + 0.5))


def _build_shapes(root: Any, split: str, **options: Any):
    from segbench.data.shapes import ShapesDataset

    return ShapesDataset(split, **options)


SHAPES = DatasetSpec(
    name="shapes",
    build=_build_shapes,
    classes=SHAPES_CLASSES,
    splits=("train", "val", "test"),
    annotations=frozenset({"labels", "mask", "boxes", "classes", "masks", "iscrowd"}),
    options=SHAPES_OPTIONS,
    background=0,
    train_split="train",
    eval_split="val",
    metric_defaults=shapes_metric_defaults,
    needs_root=False,
    default_recipe="quick",
    description=(
        "Synthetic scenes generated on the fly: 1-4 discs, squares, triangles, stars, rings and "
        "crosses of random size, colour and rotation over cluttered textured backgrounds; "
        "every annotation kind."
    ),
)


# -- real datasets (read from disk; see docs/datasets.md) ---------------------------------------------
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
"""PASCAL VOC class names in the devkit's order; index 0 is the background."""

COCO_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)
"""The 80 COCO thing categories as (category id, name); class index k (1..80) is the k-th of them."""

COCO_CLASSES = ("background",) + tuple(name for _, name in COCO_CATEGORIES)

MIT67_CLASSES = (
    "airport_inside", "artstudio", "auditorium", "bakery", "bar", "bathroom", "bedroom", "bookstore", "bowling",
    "buffet", "casino", "children_room", "church_inside", "classroom", "cloister", "closet", "clothingstore",
    "computerroom", "concert_hall", "corridor", "deli", "dentaloffice", "dining_room", "elevator",
    "fastfood_restaurant", "florist", "gameroom", "garage", "greenhouse", "grocerystore", "gym", "hairsalon",
    "hospitalroom", "inside_bus", "inside_subway", "jewelleryshop", "kindergarden", "kitchen", "laboratorywet",
    "laundromat", "library", "livingroom", "lobby", "locker_room", "mall", "meeting_room", "movietheater",
    "museum", "nursery", "office", "operating_room", "pantry", "poolinside", "prisoncell", "restaurant",
    "restaurant_kitchen", "shoeshop", "stairscase", "studiomusic", "subway", "toystore", "trainstation",
    "tv_studio", "videostore", "waitingroom", "warehouse", "winecellar",
)
"""MIT Indoor 67 class names: the folder names under ``Images/``, sorted."""

SCENE15_CLASSES = (
    "bedroom", "coast", "forest", "highway", "industrial", "insidecity", "kitchen", "livingroom", "mountain",
    "office", "opencountry", "store", "street", "suburb", "tallbuilding",
)
"""15-Scene class names, sorted; folders such as ``MITcoast``, ``CALsuburb`` or ``PARoffice`` map to them."""

OFFICIAL_COUNTS: dict[str, dict[str, int]] = {
    "voc2012": {"train": 1464, "val": 1449, "trainval": 2913, "trainaug": 10582},
    "voc2007": {"trainval": 5011, "test": 4952},
    "coco2017": {"train": 118287, "val": 5000},
    "coco2014": {"train": 82783, "val": 40504},
    "mit67": {"train": 5360, "test": 1340},
    "scene15": {"train": 1500, "test": 2985},  # at 100 training images per class
}
"""Images per split in the official releases; ``data check`` compares against these."""

ARCHIVES: dict[str, tuple[dict[str, Any], ...]] = {
    "voc2012": (
        {"url": "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
         "md5": "6cd6e144f989b92b3379bac3b3de84fd"},
        {"url": "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
         "md5": "82b4d87ceb2ed10f6038a1cba92111cb", "for": "trainaug (SBD)"},
    ),
    "voc2007": (
        {"url": "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar",
         "md5": "c52e279531787c972589f7e41ab4ae64"},
        {"url": "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
         "md5": "b6e924de25625d8de591ea690078ad9f"},
    ),
    "coco2017": (
        {"url": "http://images.cocodataset.org/zips/train2017.zip", "md5": "cced6f7f71b7629ddf16f17bbcfab6b2"},
        {"url": "http://images.cocodataset.org/zips/val2017.zip", "md5": "442b8da7639aecaf257c1dceb8ba8c80"},
        {"url": "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
         "md5": "f4bbac642086de4f52a3fdda2de5fa2c"},
    ),
    "coco2014": (
        {"url": "http://images.cocodataset.org/zips/train2014.zip", "md5": "0da8c0bd3d6becc4dcb32757491aca88"},
        {"url": "http://images.cocodataset.org/zips/val2014.zip", "md5": "a3d79f5ed8d289b7a7554ce06a5782b3"},
        {"url": "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
         "md5": "0a379cfc70b0e71301e0f377548639bd"},
    ),
    "mit67": (
        {"url": "http://groups.csail.mit.edu/vision/LabelMe/NewImages/indoorCVPR_09.tar",
         "sha1": "0b252516e746ba428b96af408d2e8162d9b08ac5"},
        {"url": "http://web.mit.edu/torralba/www/TrainImages.txt", "md5": None},
        {"url": "http://web.mit.edu/torralba/www/TestImages.txt", "md5": None},
    ),
    "scene15": (  # a web page, not an archive: download by hand
        {"url": "https://figshare.com/articles/dataset/15-Scene_Image_Dataset/7007177", "md5": None,
         "manual": True},
    ),
}
"""Official archives and their checksums (None where no published checksum is known; see docs/datasets.md)."""

FILE_OPTIONS: dict[str, Any] = {
    "download": False,  # fetch the official archives into the root when its layout is missing (needs internet)
    "skip_bad": False,  # drop samples with problems (counted in dataset.skipped) instead of stopping the run
    "strict": False,  # split counts that differ from the official ones are errors, not warnings
}
"""Options every on-disk dataset takes."""


MULTI_LABEL: dict[str, dict[str, Any]] = {"accuracy": {"single_label": False}}
SINGLE_LABEL: dict[str, dict[str, Any]] = {"accuracy": {"single_label": True}}
"""Metric defaults: ``accuracy`` reports nothing on multi-label datasets and insists on one label per image."""


def _build(module: str, cls: str, **fixed: Any) -> Callable[..., Any]:
    def build(root: Any, split: str, **options: Any):
        import importlib

        return getattr(importlib.import_module(f"segbench.data.{module}"), cls)(root, split, **fixed, **options)

    build.__name__ = f"build_{cls}"
    return build


VOC2012 = DatasetSpec(
    name="voc2012",
    build=_build("voc", "VOC2012"),
    classes=VOC_CLASSES,
    splits=("train", "val", "trainval", "trainaug"),
    annotations=frozenset({"labels", "labels_ignore", "mask", "boxes", "classes"}),
    options={**FILE_OPTIONS, "sbd_root": None},
    path_options=("sbd_root",),
    background=0,
    train_split="train",
    eval_split="val",
    crop_size=512,  # training crop of a recipe that sets none: mmsegmentation's VOC 2012 crop
    metric_defaults=MULTI_LABEL,
    description=(
        "PASCAL VOC 2012 segmentation: class masks (255 void), image labels and boxes from the XML "
        "(difficult-only classes ignored), instance masks where SegmentationObject has them; trainaug = SBD"
    ),
    citation=(
        "M. Everingham, L. Van Gool, C. K. I. Williams, J. Winn, A. Zisserman. The PASCAL Visual Object Classes "
        "(VOC) Challenge. IJCV 88(2), 2010; trainaug: B. Hariharan, P. Arbelaez, L. Bourdev, S. Maji, J. Malik. "
        "Semantic Contours from Inverse Detectors. ICCV 2011."
    ),
    url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
)

VOC2007 = DatasetSpec(
    name="voc2007",
    build=_build("voc", "VOC2007"),
    classes=VOC_CLASSES,
    splits=("trainval", "test"),
    annotations=frozenset({"labels", "labels_ignore", "boxes", "classes"}),
    options=dict(FILE_OPTIONS),
    background=0,
    train_split="trainval",
    eval_split="test",
    crop_size=448,  # training crop of a recipe that sets none: the WSL papers' VOC 2007 input
    metric_defaults={"cls_map": {"variant": "voc07"}, "loc_map": {"variant": "voc07"}, **MULTI_LABEL},
    description=(
        "PASCAL VOC 2007 classification and localization: multi-label from the XML with the devkit's "
        "difficult rule (labels_ignore), boxes; 11-point AP (voc07) by default"
    ),
    citation=(
        "M. Everingham, L. Van Gool, C. K. I. Williams, J. Winn, A. Zisserman. The PASCAL Visual Object Classes "
        "(VOC) Challenge. IJCV 88(2), 2010."
    ),
    url="http://host.robots.ox.ac.uk/pascal/VOC/voc2007/",
)

COCO = DatasetSpec(
    name="coco",
    build=_build("coco", "COCO"),
    classes=COCO_CLASSES,
    splits=("train", "val"),
    annotations=frozenset({"labels", "mask", "boxes", "classes", "masks", "iscrowd"}),
    options={**FILE_OPTIONS, "year": 2017},
    background=0,
    train_split="train",
    eval_split="val",
    crop_size=512,  # training crop of a recipe that sets none: mmsegmentation's COCO crop
    metric_defaults=MULTI_LABEL,
    description=(
        "MS COCO instances (2014 or 2017 layout, --set year=): labels, boxes, instance masks, iscrowd, and a "
        "semantic mask of the 80 things (overlaps of different classes and crowd regions void)"
    ),
    citation=(
        "T.-Y. Lin, M. Maire, S. Belongie, J. Hays, P. Perona, D. Ramanan, P. Dollar, C. L. Zitnick. "
        "Microsoft COCO: Common Objects in Context. ECCV 2014."
    ),
    url="https://cocodataset.org/#download",
)

MIT67 = DatasetSpec(
    name="mit67",
    build=_build("scenes", "MIT67"),
    classes=MIT67_CLASSES,
    splits=("train", "test"),
    annotations=frozenset({"labels"}),
    options=dict(FILE_OPTIONS),
    background=None,
    train_split="train",
    eval_split="test",
    crop_size=224,  # training crop of a recipe that sets none: ImageNet-sized scene input
    metric_defaults=SINGLE_LABEL,
    description="MIT Indoor 67 scenes: single-label, the official TrainImages.txt / TestImages.txt split (80/20)",
    citation="A. Quattoni, A. Torralba. Recognizing Indoor Scenes. CVPR 2009.",
    url="https://web.mit.edu/torralba/www/indoor.html",
)

SCENE15 = DatasetSpec(
    name="scene15",
    build=_build("scenes", "Scene15"),
    classes=SCENE15_CLASSES,
    splits=("train", "test"),
    annotations=frozenset({"labels"}),
    options={**FILE_OPTIONS, "split_seed": 0, "train_per_class": 100},
    background=None,
    train_split="train",
    eval_split="test",
    crop_size=224,  # training crop of a recipe that sets none: ImageNet-sized scene input
    metric_defaults=SINGLE_LABEL,
    description="15-Scene: single-label, train_per_class (100) images per class drawn by a seeded hash rule",
    citation=(
        "S. Lazebnik, C. Schmid, J. Ponce. Beyond Bags of Features: Spatial Pyramid Matching for Recognizing "
        "Natural Scene Categories. CVPR 2006."
    ),
    url="https://figshare.com/articles/dataset/15-Scene_Image_Dataset/7007177",
)


# -- datasets from files, no code (classes from the files; see docs/datasets.md) -------------------------------
FROM_FILES = ("<classes from files>",)
"""The placeholder class tuple of a spec whose classes are read from its files (``classes_from_files``)."""

CHECK_OPTIONS: dict[str, Any] = {"skip_bad": False, "strict": False}
"""Options of the datasets read from a user's files (nothing to download)."""

SPLIT_OPTIONS: dict[str, Any] = {"val_fraction": 0.2, "split_seed": 0}
"""The hash split of one set of files into train and val (``segbench.data.files.hash_split``)."""


def from_files(name: str, build: Callable[..., Any], splits: tuple[str, ...], annotations: set[str],
               options: dict[str, Any], description: str, **extra: Any) -> DatasetSpec:
    """The spec of a dataset whose classes are read from its files: the placeholder classes, train on ``train``,
    evaluate on ``val``, multi-label metric defaults."""
    return DatasetSpec(name=name, build=build, classes=FROM_FILES, splits=splits, annotations=frozenset(annotations),
                       options={**CHECK_OPTIONS, **options}, background=None, train_split="train", eval_split="val",
                       metric_defaults=MULTI_LABEL, classes_from_files=True, description=description, **extra)


FOLDER = from_files(
    "folder", _build("folder", "FolderDataset"), ("train", "val", "test"), {"labels", "mask"},
    {**SPLIT_OPTIONS, "void": 255, "background": "auto"},
    "Your own images/ + masks/ (palette or grey PNGs) + classes.txt or datumaro's dataset_meta.json; "
    "labels derived from the masks; splits/{train,val,test}.txt or a seeded hash split",
)

VOC_FORMAT = from_files(
    "voc_format", _build("voc", "VOCFormat"), ("train", "val", "trainval", "test"), {"labels", "mask"},
    {"background": "auto"},
    "Any data in the PASCAL VOC segmentation layout (CVAT / datumaro exports): classes from labelmap.txt, "
    "classes.txt or VOC's 21; Annotations/ optional (labels from the masks without it)",
)

COCO_FORMAT = from_files(
    "coco_format", _build("coco", "CocoFormat"), ("train", "val"),
    {"labels", "mask", "boxes", "classes", "masks", "iscrowd"},
    {**SPLIT_OPTIONS, "annotations": None, "images": None, "train_annotations": None, "train_images": None},
    "Any COCO instances file (--set annotations=FILE --set images=DIR): classes from its categories, "
    "background prepended; train from train_annotations or a seeded hash split of the one file",
    path_options=("annotations", "images", "train_annotations", "train_images"),
)

REAL_DATASETS = (VOC2012, VOC2007, COCO, MIT67, SCENE15, FOLDER, VOC_FORMAT, COCO_FORMAT)
"""The on-disk datasets, in registration order."""


@hookimpl
def register_datasets(register) -> None:
    """Register the built-in datasets."""
    register(SHAPES)
    for spec in REAL_DATASETS:
        register(spec)
