"""segbench-pronet: ProNet (Sun, Paluri, Collobert, Nevatia, Bourdev, CVPR 2016) as a segbench plugin.

Registration only; torch and the model are imported when the method is built,
so ``segbench list`` stays fast.
"""

from __future__ import annotations

from segbench import MethodSpec, Recipe, hookimpl

__version__ = "0.1.0"

PAPER = (
    "C. Sun, M. Paluri, R. Collobert, R. Nevatia, L. Bourdev. ProNet: Learning to Propose Object-specific "
    "Boxes for Cascaded Neural Networks. CVPR 2016 (arXiv:1511.03776)."
)

OPTIONS = {
    "backbone": "test_resnet",  # proposal network: any timm model with features_only
    "out_index": 2,  # its feature level (timm out_indices; -1 = last); later stages are not built
    "output_stride": None,  # dilate it to stride 8 or 16 where timm supports it
    "pretrained": False,  # timm's ImageNet weights for both networks (hub or its cache)
    "weights": None,  # a local .pth/.safetensors file for the proposal backbone (implies pretrained)
    "backbone_args": None,  # extra timm.create_model arguments for the proposal backbone
    "dropout": 0.0,  # 2-D dropout before the class-map convolution
    "scales": (1.0,),  # image scales of the fully convolutional proposal network (its streams)
    "pool": "lse",  # spatial pooling of each scale's maps: lse | max | avg; then max over scales
    "lse_r": 5.0,  # sharpness r of the log-sum-exp pooling
    "box_sizes": (0.25, 0.45),  # proposal window sides, fractions of the map side
    "top_k": 3,  # boxes per class re-scored by the cascade (after NMS)
    "top_classes": 0,  # classes per image whose boxes are re-scored, best first (0 = every class but the background)
    "nms_iou": 0.5,  # NMS IoU between the proposals of one class
    "train_boxes": 3,  # crops per training image for the cascade (positive classes first, then hard negatives)
    "crop_size": 32,  # side of the crops the cascade sees, pixels
    "crop_labels": "image",  # image: a crop carries its image's labels | class: other present classes ignored
    "cascade_backbone": "test_resnet",  # the second network (timm, features_only; global average pooling)
    "cascade_out_index": -1,  # its feature level
    "cascade_args": None,  # extra timm.create_model arguments for it
    "cascade_weight": 1.0,  # weight of the cascade's loss
    "fuse": "mean",  # box score: mean of first-level and cascade logits | cascade (the cascade's alone)
    "background": 0,  # class index never proposed (segbench datasets: 0); None = none
}

_ZERO_INIT = {"zero_init_last": False}  # timm zero-inits each block's last BN: slow start from scratch
SHAPES_MODEL = {
    "backbone": "test_resnet",
    "out_index": 2,  # layer2, stride 8: 8x8 maps at 64 px, 12x12 at 96 px
    "backbone_args": _ZERO_INIT,
    "cascade_backbone": "test_resnet",
    "cascade_args": _ZERO_INIT,
    "scales": (1.0,),
    "pool": "lse",
    "lse_r": 5.0,
    "box_sizes": (0.25, 0.45),
    "top_k": 3,
    "top_classes": 0,
    "crop_size": 32,
}
SHAPES_TRAIN = {"batch_size": 32, "optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4, "schedule": "poly",
                "warmup_steps": 50, "threads": 2}

_SEGBENCH = "deviation: segbench's choice; the paper's value was not verified here"

RECIPES = [
    Recipe(
        "quick",
        "CPU quickstart on shapes (about 2 minutes on 2 idle cores): tiny timm ResNets for both levels, one "
        "scale, 64 px images, 4000 training images, AdamW, 1200 steps",
        train={**SHAPES_TRAIN, "steps": 1200},
        model=SHAPES_MODEL,
        data={"image_size": 64, "num_train": 4000},
    ),
    Recipe(
        "bench",
        "shapes leaderboard (under 6 minutes on 2 cores): the quick model at the default 96 px, 1800 steps",
        train={**SHAPES_TRAIN, "steps": 1800},
        model=SHAPES_MODEL,
        data={},
    ),
    Recipe(
        "paper",
        "GPU: ImageNet ResNet-50 proposal FCN at 3 scales of 448 px images, LSE pooling, top-5 boxes of the "
        "3 best classes re-scored by an ImageNet ResNet-50 on 224 px crops; SGD lr 1e-2, batch 16 "
        "(a modern stand-in for the paper's networks, segbench's values; see the deviations)",
        train={"steps": 10000, "batch_size": 16, "optimizer": "sgd", "lr": 1e-2, "momentum": 0.9,
               "weight_decay": 1e-4, "schedule": "poly", "warmup_steps": 200, "crop_size": 448,
               "scale_min": 0.7, "scale_max": 1.3, "eval_size": 448},
        model={"backbone": "resnet50", "out_index": -1, "pretrained": True, "backbone_args": None,
               "cascade_backbone": "resnet50", "cascade_out_index": -1, "cascade_args": None,
               "scales": (0.5, 0.75, 1.0), "pool": "lse", "lse_r": 5.0, "box_sizes": (0.2, 0.35, 0.5, 0.75),
               "top_k": 5, "top_classes": 3, "crop_size": 224, "train_boxes": 4},
        data={"image_size": 448},
        sources={
            **{k: _SEGBENCH for k in ("steps", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
                                      "schedule", "warmup_steps", "scale_min", "scale_max", "eval_size")},
            "crop_size": "deviation: segbench's choices (train: 448 px image crops; model: 224 px cascade crops), "
                         "not verified",
            "backbone": "deviation: ImageNet ResNet-50, segbench's stand-in for the paper's proposal CNN",
            "cascade_backbone": "deviation: ImageNet ResNet-50, segbench's stand-in for the paper's cascade CNN",
            "pretrained": "deviation: timm's ImageNet weights for both networks (resnet50.a1_in1k), segbench's choice",
            "out_index": "segbench: the last stage of each network",
            "cascade_out_index": "segbench: the last stage of each network",
            "backbone_args": "segbench: timm's defaults, no extra arguments",
            "cascade_args": "segbench: timm's defaults, no extra arguments",
            **{k: _SEGBENCH for k in ("scales", "pool", "lse_r", "box_sizes", "top_k", "top_classes",
                                      "train_boxes")},
        },
        deviations=(
            "`backbone`, `cascade_backbone`, `pretrained`: ImageNet ResNet-50s stand in for the paper's proposal "
            "and cascade CNNs.",
            "Both levels train at once on the current proposals; the paper trains the proposal network first, then "
            "the cascade.",
            "One cascade level (a chain of two networks); the paper's tree cascades and deeper chains are not "
            "implemented.",
            "Boxes are `box_sizes` windows over the scale-averaged map, not each cell's receptive window at its "
            "scale.",
            "`scales`, `pool`, `lse_r`, `top_k`, `top_classes`, `train_boxes`, `crop_size`: segbench's values, not "
            "verified.",
            "`steps`, `batch_size`, `optimizer`, `lr`, `momentum`, `weight_decay`, `schedule`, `warmup_steps`: "
            "segbench's.",
            "`scale_min`, `scale_max`, `eval_size`: segbench's random 0.7-1.3 scale and 448 px images.",
            "The image score fuses both levels' logits (mean); the paper's combination rule was not verified.",
        ),
    ),
]


def build(num_classes: int, **options):
    """Build a :class:`segbench_pronet.model.ProNet` (imports torch)."""
    from segbench_pronet.model import build_pronet

    return build_pronet(num_classes, **options)


@hookimpl
def register_methods(register) -> None:
    """Register the ``pronet`` method."""
    register(
        MethodSpec(
            name="pronet",
            build=build,
            supervision="image",
            outputs={"scores", "score_maps", "instances"},
            options=OPTIONS,
            recipes=RECIPES,
            description="ProNet: multi-scale FCN class maps -> object-specific boxes -> cascade re-scoring, "
                        "image-level labels",
            paper=PAPER,
        )
    )
