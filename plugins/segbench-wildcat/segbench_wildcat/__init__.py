"""segbench-wildcat: WILDCAT (Durand, Mordan, Thome, Cord, CVPR 2017) as a segbench plugin.

Registration only; torch and the model are imported when the method is built,
so ``segbench list`` stays fast.
"""

from __future__ import annotations

from segbench import MethodSpec, Recipe, hookimpl

__version__ = "0.1.0"

PAPER = (
    "T. Durand, T. Mordan, N. Thome, M. Cord. WILDCAT: Weakly Supervised Learning of Deep ConvNets for Image "
    "Classification, Pointwise Localization and Segmentation. CVPR 2017."
)

# Defaults: the paper's pooling (M = 4, k+ = k- = 20 % of the regions, alpha = 0.7) on the tiny CPU backbone.
# k values are floats so that `--set kmax=3` (a count) and `--set kmax=0.1` (a fraction) both resolve.
OPTIONS = {
    "backbone": "test_resnet",  # any timm model with features_only
    "out_index": 2,  # feature level the class maps are computed on (timm out_indices; -1 = last)
    "output_stride": None,  # dilate the backbone to this stride (8, 16) where timm supports it
    "pretrained": False,  # timm's ImageNet weights (needs the hub or its cache)
    "weights": None,  # a local .pth/.safetensors file for the backbone (implies pretrained)
    "backbone_args": None,  # extra timm.create_model arguments, e.g. {"zero_init_last": False}
    "maps_per_class": 4,  # M: class modalities of the multi-map transfer layer, averaged per class
    "kmax": 0.2,  # k+: highest regions, a fraction in (0, 1) or a whole count >= 1
    "kmin": None,  # k-: lowest regions, same forms; None = same as kmax; 0 = no min term
    "alpha": 0.7,  # weight of the min term (>= 0)
    "dropout": 0.0,  # 2-D dropout on the features before the transfer layer
}

SHAPES_MODEL = {
    "backbone": "test_resnet",
    "out_index": 2,  # layer2, stride 8: 8x8 maps at 64 px, 12x12 at 96 px
    "backbone_args": {"zero_init_last": False},  # timm zero-inits each block's last BN: slow start from scratch
    "maps_per_class": 4,
    "kmax": 3.0,  # WELDON's calibration on shapes: 3 regions beat 10 % / 25 % of an 8x8 map
    "kmin": 3.0,
    "alpha": 0.7,
}
SHAPES_TRAIN = {"batch_size": 32, "optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4, "schedule": "poly",
                "warmup_steps": 50, "threads": 2}

RECIPES = [
    Recipe(
        "quick",
        "CPU quickstart on shapes (about 2 minutes on 2 idle cores): tiny timm ResNet cut at stride 8, M = 4 maps "
        "per class, k+ = k- = 3 regions, alpha 0.7, 64 px, 4000 training images, AdamW, 1500 steps",
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
        "GPU: ImageNet-pretrained ResNet-101 (last stage, stride 32), M = 4, k+ = k- = 0.2, alpha 0.7, 448 px, "
        "SGD momentum 0.9, lr 0.01 for the transfer layer and 0.001 for the backbone, constant, batch 16, "
        "20 epochs of VOC 2007 trainval (the authors' code and paper)",
        train={"steps": 6280, "batch_size": 16, "optimizer": "sgd", "lr": 1e-3, "head_lr_mult": 10.0,
               "momentum": 0.9, "weight_decay": 1e-4, "schedule": "constant", "warmup_steps": 0,
               "crop_size": 448, "scale_min": 0.9, "scale_max": 1.1, "eval_size": 448},
        model={"backbone": "resnet101", "out_index": -1, "pretrained": True, "backbone_args": None,
               "maps_per_class": 4, "kmax": 0.2, "kmin": 0.2, "alpha": 0.7},
    ),
]


def build(num_classes: int, **options):
    """Build a :class:`segbench_wildcat.model.Wildcat` (imports torch)."""
    from segbench_wildcat.model import Wildcat

    return Wildcat(num_classes, **options)


@hookimpl
def register_methods(register) -> None:
    """Register the ``wildcat`` method."""
    register(
        MethodSpec(
            name="wildcat",
            build=build,
            supervision="image",
            outputs={"scores", "score_maps"},
            options=OPTIONS,
            recipes=RECIPES,
            description="WILDCAT: M maps per class (class-wise mean), then k+ max + alpha x k- min region pooling",
            paper=PAPER,
        )
    )
