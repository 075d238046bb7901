"""Built-in datasets, registered through the same hook as external plugins.

This module is imported by ``segbench list``: it must not import torch.
Each ``build`` imports its implementation when the dataset is really needed.
"""

from __future__ import annotations

from typing import Any

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
    """Metric defaults for shapes at the resolved options: the pointing tolerance scales with the image."""
    return {"loc_map": {"tolerance": shapes_pointing_tolerance(options.get("image_size", SHAPES_OPTIONS["image_size"]))}}


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
    description=(
        "Synthetic scenes generated on the fly: 1-4 discs, squares, triangles, stars, rings and "
        "crosses of random size, colour and rotation over cluttered textured backgrounds; "
        "every annotation kind."
    ),
)


@hookimpl
def register_datasets(register) -> None:
    """Register the built-in datasets."""
    register(SHAPES)
