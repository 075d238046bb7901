"""segbench-weldon: WELDON (Durand, Thome, Cord, CVPR 2016) as a segbench plugin.

Registration only; torch and the model are imported when the method is built,
so ``segbench list`` stays fast.
"""

from __future__ import annotations

from segbench import MethodSpec, Recipe, hookimpl

__version__ = "0.1.0"

PAPER = (
    "T. Durand, N. Thome, M. Cord. WELDON: Weakly Supervised Learning of Deep Convolutional "
    "Neural Networks. CVPR 2016."
)

OPTIONS = {
    "backbone": "test_resnet",  # any timm model with features_only
    "out_index": 2,  # feature level the class maps are computed on (timm out_indices; -1 = last)
    "output_stride": None,  # dilate the backbone to this stride (8, 16) where timm supports it
    "pretrained": False,  # timm's ImageNet weights (needs the hub or its cache)
    "weights": None,  # a local .pth/.safetensors file for the backbone (implies pretrained)
    "backbone_args": None,  # extra timm.create_model arguments, e.g. {"channels": (32, 64, 64, 96)}
    "maps_per_class": 1,  # WILDCAT-style modalities: class map = mean of M maps
    "kmax": 3.0,  # top regions: a count >= 1 or a fraction in (0, 1)
    "kmin": 3.0,  # lowest regions (negative evidence); 0 = off
    "alpha": 1.0,  # weight of the min term (WELDON: 1)
    "loss": "bce",  # bce | margin (binary hinge on every class)
    "dropout": 0.0,  # 2-D dropout on the features before the class-map convolution
}

SHAPES_MODEL = {
    "backbone": "test_resnet",
    "out_index": 2,  # layer2, stride 8: 8x8 maps at 64 px, 12x12 at 96 px
    "backbone_args": {"zero_init_last": False},  # timm zero-inits each block's last BN: slow start from scratch
    "kmax": 3.0,
    "kmin": 3.0,
    "alpha": 1.0,
}
SHAPES_TRAIN = {"batch_size": 32, "optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4, "schedule": "poly",
                "warmup_steps": 50, "threads": 2}

RECIPES = [
    Recipe(
        "quick",
        "CPU quickstart on shapes (about 1.5 minutes on 2 idle cores): tiny timm ResNet cut at stride 8, "
        "64 px images, 4000 training images, AdamW, 1500 steps",
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
        "GPU: ImageNet-pretrained ResNet-101, WELDON k=15, 224 px, SGD lr 1e-2, batch 40, about 20 epochs of "
        "VOC 2007 trainval (the authors' ResNet-101 reference setup; the CVPR paper used multi-scale VGG16)",
        train={"steps": 2500, "batch_size": 40, "optimizer": "sgd", "lr": 1e-2, "momentum": 0.9,
               "weight_decay": 1e-4, "schedule": "poly", "warmup_steps": 0, "crop_size": 224,
               "scale_min": 0.9, "scale_max": 1.1, "eval_size": 224},
        model={"backbone": "resnet101", "out_index": -1, "pretrained": True, "backbone_args": None,
               "kmax": 15.0, "kmin": 15.0, "alpha": 1.0, "loss": "bce"},
        data={"image_size": 224},
    ),
]


def build(num_classes: int, **options):
    """Build a :class:`segbench_weldon.model.Weldon` (imports torch)."""
    from segbench_weldon.model import build_weldon

    return build_weldon(num_classes, **options)


@hookimpl
def register_methods(register) -> None:
    """Register the ``weldon`` method."""
    register(
        MethodSpec(
            name="weldon",
            build=build,
            supervision="image",
            outputs={"scores", "score_maps"},
            options=OPTIONS,
            recipes=RECIPES,
            description="WELDON: class maps from a 1x1 conv, top-k max + min region pooling, image-level labels",
            paper=PAPER,
        )
    )
