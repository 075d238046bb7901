"""segbench-wsloc: weakly supervised localization with beam search over deep feature maps (Bency et al.,
ECCV 2016) as a segbench plugin.

Registration only; torch and the model are imported when the method is built,
so ``segbench list`` stays fast.
"""

from __future__ import annotations

from segbench import MethodSpec, Recipe, hookimpl

__version__ = "0.1.0"

PAPER = (
    "A. J. Bency, H. Kwon, H. Lee, S. Karthikeyan, B. S. Manjunath. Weakly Supervised Localization using "
    "Deep Feature Maps. ECCV 2016."
)

OPTIONS = {
    "backbone": "test_resnet",  # any timm model with features_only
    "out_index": 2,  # feature level searched (timm out_indices; -1 = last); later stages are not built
    "output_stride": None,  # dilate the backbone to stride 8 or 16 where timm supports it
    "pretrained": False,  # timm's ImageNet weights (hub or its cache)
    "weights": None,  # a local .pth/.safetensors file for the backbone (implies pretrained)
    "backbone_args": None,  # extra timm.create_model arguments
    "head": "linear",  # classifier on the pooled features: linear | mlp (one hidden layer)
    "hidden": 256,  # width of the mlp head's hidden layer
    "dropout": 0.0,  # dropout before the last linear layer
    "region": "crop",  # a box's features: crop (mean inside the box) | mask (zero outside, mean over the map)
    "beam": 5,  # beam width: states kept per step
    "beam_steps": 0,  # beam search steps; 0 = h + w of the feature map (was "steps", clashing with train.steps)
    "step": 1,  # cells a side moves per successor
    "min_size": 2,  # smallest box side, cells
    "top_classes": 0,  # classes searched per image, best scores first; 0 = every class but the background
    "max_boxes": 3,  # instances per searched class (final beam after NMS)
    "nms_iou": 0.5,  # NMS IoU between a class's final beam boxes
    "background": 0,  # class index never searched (segbench datasets: 0); None = none
}

SHAPES_MODEL = {
    "backbone": "test_resnet",
    "out_index": 2,  # layer2, stride 8: 8x8 maps at 64 px, 12x12 at 96 px
    "backbone_args": {"zero_init_last": False},  # timm zero-inits each block's last BN: slow start from scratch
    "head": "linear",
    "region": "crop",
    "beam": 5,
    "min_size": 2,
}
SHAPES_TRAIN = {"batch_size": 32, "optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4, "schedule": "poly",
                "warmup_steps": 50, "threads": 2}

_SEGBENCH = "deviation: segbench's choice; the paper's value was not verified here"

RECIPES = [
    Recipe(
        "quick",
        "CPU quickstart on shapes (about 1.5 minutes on 2 idle cores): tiny timm ResNet cut at stride 8, "
        "global average pooling + linear, 64 px, 4000 training images, AdamW, 1500 steps; beam search of "
        "width 5 on the 8x8 feature grid, boxes of at least 2x2 cells",
        train={**SHAPES_TRAIN, "steps": 1500},
        model=SHAPES_MODEL,
        data={"image_size": 64, "num_train": 4000},
    ),
    Recipe(
        "bench",
        "shapes leaderboard (under 6 minutes on 2 cores): the quick model at the default 96 px, 2400 steps",
        train={**SHAPES_TRAIN, "steps": 2400},
        model=SHAPES_MODEL,
        data={},
    ),
    Recipe(
        "paper",
        "GPU: ImageNet VGG16 fine-tuned on image labels, searched on conv5_3 (stride 16) with the features "
        "outside a box masked, fc6/fc7-like MLP head; 448 px, SGD lr 1e-3, batch 16 (segbench's values; see the "
        "deviations)",
        train={"steps": 8000, "batch_size": 16, "optimizer": "sgd", "lr": 1e-3, "head_lr_mult": 10.0,
               "momentum": 0.9, "weight_decay": 5e-4, "schedule": "poly", "warmup_steps": 0, "crop_size": 448,
               "scale_min": 0.7, "scale_max": 1.3, "eval_size": 448},
        model={"backbone": "vgg16", "out_index": 4, "pretrained": True, "backbone_args": None, "head": "mlp",
               "hidden": 4096, "dropout": 0.5, "region": "mask", "beam": 10, "top_classes": 0},
        data={"image_size": 448},
        sources={
            **{k: _SEGBENCH for k in ("steps", "batch_size", "optimizer", "lr", "head_lr_mult", "momentum",
                                      "weight_decay", "schedule", "warmup_steps", "crop_size", "scale_min",
                                      "scale_max", "eval_size")},
            "backbone": "deviation: VGG16 only; by the README's review the paper also fine-tunes GoogLeNet (not "
                        "verified)",
            "out_index": "deviation: conv5_3 only; the layers and scales the paper combines were not verified",
            "pretrained": "deviation: timm's ImageNet VGG16 (torchvision weights), not verified against the paper",
            "backbone_args": "segbench: timm's defaults, no extra arguments",
            "head": _SEGBENCH, "hidden": _SEGBENCH, "dropout": _SEGBENCH,
            "region": "deviation: masking the features outside a box, segbench's reading of the paper",
            "beam": _SEGBENCH,
            "top_classes": "segbench: every class but the background is searched, so maps compare across images",
        },
        deviations=(
            "`backbone`, `out_index`: one VGG16 conv5_3 map; the paper also uses GoogLeNet and combines layers and "
            "scales.",
            "`head`, `hidden`, `dropout`: an fc6/fc7-like MLP on the pooled box features, segbench's reading of the "
            "classifier.",
            "`beam`, `region`: beam width 10 and masked regions are segbench's; the paper's beam and moves were not "
            "verified.",
            "Heat map: each cell keeps the best score of the beam states covering it, not the paper's map of "
            "visited boxes.",
            "`pretrained`: timm's ImageNet VGG16 (torchvision weights); the paper's initialisation was not verified.",
            "`steps`, `batch_size`, `optimizer`, `lr`, `head_lr_mult`, `momentum`, `weight_decay`: segbench's "
            "choices.",
            "`schedule`, `warmup_steps`, `crop_size`, `scale_min`, `scale_max`, `eval_size`: segbench's (poly, "
            "448 px, 0.7-1.3 scale).",
        ),
    ),
]


def build(num_classes: int, **options):
    """Build a :class:`segbench_wsloc.model.WSLoc` (imports torch)."""
    from segbench_wsloc.model import build_wsloc

    return build_wsloc(num_classes, **options)


@hookimpl
def register_methods(register) -> None:
    """Register the ``wsloc`` method."""
    register(
        MethodSpec(
            name="wsloc",
            build=build,
            supervision="image",
            outputs={"scores", "score_maps", "instances"},
            options=OPTIONS,
            recipes=RECIPES,
            description="Bency et al.: classifier on image labels, beam search over feature-map boxes that "
                        "best explain each class score",
            paper=PAPER,
            renamed_options={"beam_steps": "steps"},
        )
    )
