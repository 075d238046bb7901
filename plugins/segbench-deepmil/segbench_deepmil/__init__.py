"""segbench-deepmil: "Is object localization for free?" (Oquab, Bottou, Laptev, Sivic, CVPR 2015) as a segbench plugin.

Registration only; torch and the model are imported when the method is built,
so ``segbench list`` stays fast.
"""

from __future__ import annotations

from segbench import MethodSpec, Recipe, hookimpl

__version__ = "0.1.0"

PAPER = (
    "M. Oquab, L. Bottou, I. Laptev, J. Sivic. Is object localization for free? Weakly-supervised learning "
    "with convolutional neural networks. CVPR 2015."
)

OPTIONS = {
    "backbone": "test_resnet",  # any timm model with features_only
    "out_index": 2,  # feature level the class maps are computed on (timm out_indices; -1 = last)
    "output_stride": None,  # dilate the backbone to this stride (8, 16) where timm supports it
    "pretrained": False,  # timm's ImageNet weights (needs the hub or its cache)
    "weights": None,  # a local .pth/.safetensors file for the backbone (implies pretrained)
    "backbone_args": None,  # extra timm.create_model arguments, e.g. {"zero_init_last": False}
    "adapt_channels": 0,  # the paper's adaptation layer FCa (1x1 conv + ReLU) with this many channels; 0 = none
    "dropout": 0.0,  # 2-D dropout before the class-map convolution (FCb)
    "train_scales": None,  # multi-scale training: rescale each batch by one of these factors, e.g. [0.7, 1.0, 1.3]
    "train_scale_range": None,  # or by a factor drawn uniformly in [low, high], e.g. [0.7, 1.4] (the paper's)
    "eval_scales": [1.0],  # test-time scales, class maps and scores max-fused over them; [1.0] = one pass
    "vgg_fc": False,  # VGG's fc6 (7x7, 4096) / fc7 (1x1, 4096) as convolutions on pool5 (the paper's C6/C7)
}
# options added after records existed, at the value that behaves as before (kept out of config ids)
LATE_OPTIONS = {"eval_scales": [1.0], "vgg_fc": False}

# test-time scales of the paper recipe: the ends of the training range [0.7, 1.4] and 1 (segbench's choice)
PAPER_EVAL_SCALES = [0.7, 1.0, 1.4]

SHAPES_MODEL = {
    "backbone": "test_resnet",
    "out_index": 2,  # layer2, stride 8: 8x8 maps at 64 px, 12x12 at 96 px
    "backbone_args": {"zero_init_last": False},  # timm zero-inits each block's last BN: slow start from scratch
}
SHAPES_TRAIN = {"batch_size": 32, "optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4, "schedule": "poly",
                "warmup_steps": 50, "threads": 2}

_UNVERIFIED = "deviation: segbench's choice; the paper's value was not verified here"

RECIPES = [
    Recipe(
        "quick",
        "CPU quickstart on shapes: tiny timm ResNet cut at stride 8, global max pooling, 64 px images, 4000 "
        "training images, AdamW, 1500 steps (single scale)",
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
        "GPU: ImageNet VGG16 up to pool5 (stride 32, as the paper's network), its fc6/fc7 as convolutions (C6/C7, "
        "transferred), a random adaptation layer of 2048 channels (dropout 0.5), global max pooling, batches "
        "rescaled by a factor in [0.7, 1.4], 448 px crops, "
        "SGD lr 1e-3 (x10 for the new layers), batch 16, 6000 steps (segbench's schedule; see the deviations); "
        "test images at scales 0.7, 1, 1.4, class maps and scores max-fused",
        train={"steps": 6000, "batch_size": 16, "optimizer": "sgd", "lr": 1e-3, "head_lr_mult": 10.0,
               "momentum": 0.9, "weight_decay": 1e-4, "schedule": "poly", "warmup_steps": 0, "crop_size": 448,
               "scale_min": 1.0, "scale_max": 1.0, "eval_size": 448},
        model={"backbone": "vgg16", "out_index": 5, "pretrained": True, "backbone_args": None,
               "vgg_fc": True, "adapt_channels": 2048, "dropout": 0.5, "train_scale_range": [0.7, 1.4],
               "eval_scales": list(PAPER_EVAL_SCALES)},
        data={"image_size": 448},
        sources={
            **{k: _UNVERIFIED for k in ("steps", "batch_size", "optimizer", "lr", "head_lr_mult", "momentum",
                                        "weight_decay", "schedule", "warmup_steps", "crop_size", "eval_size")},
            "scale_min": "segbench: no engine rescaling; the model rescales each batch (train_scale_range)",
            "scale_max": "segbench: no engine rescaling; the model rescales each batch (train_scale_range)",
            "backbone": "deviation: ImageNet VGG16 stands in for the paper's Krizhevsky-style network (C1-C5)",
            "out_index": "Oquab et al. CVPR 2015, network architecture (C6 on top of C5): pool5 of VGG16, stride 32",
            "vgg_fc": "Oquab et al. CVPR 2015, network architecture (C6, C7: the ImageNet network's FC6, FC7 "
                      "applied as convolutions, transferred; FCa, FCb on top)",
            "pretrained": "deviation: not verified against the paper (ImageNet weights for the transferred layers "
                          "C1-C7)",
            "backbone_args": "segbench: timm's defaults, no extra arguments",
            "adapt_channels": "deviation: FCa of 2048 units recalled from the paper (not verified), starts random "
                              "on C7 (fc7)",
            "dropout": "deviation: not verified against the paper (0.5 after fc6, fc7 and before FCb)",
            "train_scale_range": "deviation: [0.7, 1.4] recalled from the paper (not verified); one factor per "
                                 "batch",
            "eval_scales": "deviation: not verified: the paper max-fuses test-time scales, whose values were not "
                           "reachable here; 0.7, 1, 1.4 (the training range's ends and 1) are segbench's",
        },
        deviations=(
            "`vgg_fc`: C6 is VGG's 7x7 fc6 zero-padded by 3 (maps keep pool5's size); the paper's C6 padding was not "
            "verified.",
            "`backbone`: ImageNet VGG16 stands in for the paper's Krizhevsky-style network (C1-C5, C6/C7 = VGG's "
            "fc6/fc7).",
            "`eval_scales` 0.7, 1, 1.4 (max fusion of maps and scores): segbench's; the paper's test-time scales "
            "were not verified.",
            "`train_scale_range`: one random factor per batch (images of a batch share a size), not per image.",
            "`adapt_channels` 2048, `dropout` 0.5, `train_scale_range` [0.7, 1.4], `pretrained`: recalled from the "
            "paper, not verified here.",
            "`steps`, `batch_size`, `lr`, `head_lr_mult`, `momentum`, `weight_decay`, `schedule`, `warmup_steps`: "
            "segbench's, not the paper's.",
            "`optimizer`, `crop_size`, `eval_size`: segbench's choices (SGD, 448 px); the paper's were not verified.",
            "Trained on the benchmark's split; the paper trains on VOC 2012 trainval and COCO train.",
        ),
    ),
]


def build(num_classes: int, **options):
    """Build a :class:`segbench_deepmil.model.DeepMIL` (imports torch)."""
    from segbench_deepmil.model import build_deepmil

    return build_deepmil(num_classes, **options)


@hookimpl
def register_methods(register) -> None:
    """Register the ``deepmil`` method."""
    register(
        MethodSpec(
            name="deepmil",
            build=build,
            supervision="image",
            outputs={"scores", "score_maps"},
            options=OPTIONS,
            recipes=RECIPES,
            description="Deep MIL: fully convolutional class maps, global max pooling, per-class log-loss, multi-scale",
            paper=PAPER,
            late_options=LATE_OPTIONS,
        )
    )
