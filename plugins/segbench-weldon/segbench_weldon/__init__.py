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
    "halve": False,  # divide the pooled score by 2 when the min term is on (the authors' PyTorch pooling does)
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

_WSL = "durandtibo/wsl.resnet.torch"  # the authors' ResNet-101 WELDON training code (Torch)
_SP = "durandtibo/spatial-pooling.torch"  # its pooling modules

RECIPES = [
    Recipe(
        "quick",
        "CPU quickstart on shapes (under 2 minutes on 2 idle cores): tiny timm ResNet cut at stride 8, "
        "64 px images, 4000 training images, AdamW, batch 24, 1500 steps, channels-last",
        # batch 24 and channels-last since session 6: batch 32 took 169 s on 2 idle cores (issue 19)
        train={**SHAPES_TRAIN, "steps": 1500, "batch_size": 24, "channels_last": True},
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
        "GPU: the authors' ResNet-101 WELDON setup (wsl.resnet.torch): ImageNet ResNet-101, k = 15, 224 px, SGD "
        "lr 1e-2 momentum 0.9, constant lr, batch 40, 20 epochs of VOC 2007 trainval (2520 steps); the CVPR paper "
        "used multi-scale VGG16",
        train={"steps": 2520, "batch_size": 40, "optimizer": "sgd", "lr": 1e-2, "momentum": 0.9,
               "weight_decay": 1e-4, "schedule": "constant", "warmup_steps": 0, "crop_size": 224,
               "scale_min": 0.9, "scale_max": 1.1, "eval_size": 224, "hflip": False},
        model={"backbone": "resnet101", "out_index": -1, "pretrained": True, "backbone_args": None,
               "kmax": 15.0, "kmin": 15.0, "alpha": 1.0, "loss": "bce", "halve": False},
        data={"image_size": 224},
        sources={
            "steps": f"{_WSL} README.md:33 (-nEpochs 20): 20 epochs x 126 steps of 40 of VOC 2007 trainval's "
                     "5,011 images",
            "batch_size": f"{_WSL} README.md:33 (-batchSize 40)",
            "optimizer": f"{_WSL} README.md:33 (-optim sgd)",
            "lr": f"{_WSL} README.md:33 (-LR 1e-2; -LRp not given: one lr for every layer, opts.lua:34)",
            "momentum": f"{_WSL} opts.lua:35",
            "weight_decay": f"{_WSL} opts.lua:36",
            "schedule": f"{_WSL} trainMultiLabel.lua:258-261 (decay 0: the lr never changes)",
            "warmup_steps": f"{_WSL} trainMultiLabel.lua:258-261 (no warm-up)",
            "crop_size": "deviation: a 224 px crop with the aspect kept; the reference warps every image to "
                         f"224 x 224 ({_WSL} datasets/voc2007-cls.lua:65)",
            "scale_min": "deviation: segbench's random scale; the reference has none (datasets/voc2007-cls.lua:63-69)",
            "scale_max": "deviation: segbench's random scale; the reference has none (datasets/voc2007-cls.lua:63-69)",
            "eval_size": f"{_WSL} datasets/voc2007-cls.lua:65 (test images warped to 224 x 224 too)",
            "hflip": f"{_WSL} opts.lua:51 (preprocessing 'warp': no flip, datasets/voc2007-cls.lua:28-31)",
            "backbone": f"{_WSL} README.md:33 (-netType resnet101-weldon); deviation line on the paper's VGG16",
            "out_index": f"{_WSL} models/resnet101-weldon.lua:29-30 (ResNet-101 through layer4, stride 32)",
            "pretrained": f"{_WSL} models/resnet101-weldon.lua:14-24 (fb.resnet.torch's ImageNet resnet-101.t7)",
            "backbone_args": "segbench: timm's defaults, no extra arguments",
            "kmax": f"{_WSL} README.md:33 (-k 15), models/resnet101-weldon.lua:52",
            "kmin": f"{_SP} WeldonPooling.lua:10 (nMin defaults to nMax; the recipe passes -k only)",
            "alpha": f"{_SP} WeldonPooling.lua:66 (the min mean is added with weight 1)",
            "loss": f"{_WSL} models/init.lua:104-105 (-loss MultiLabel: MultiLabelSoftMarginCriterion)",
            "halve": f"{_SP} WeldonPooling.lua:66 (max + min, not halved; the PyTorch port halves, "
                     "durandtibo/weldon.resnet.pytorch weldon/weldon.py:49)",
        },
        deviations=(
            "`backbone`: ResNet-101 of the authors' later code (wsl.resnet.torch); the CVPR 2016 paper uses a "
            "multi-scale VGG16.",
            "`pretrained`: timm's resnet101.a1h_in1k ImageNet weights, not fb.resnet.torch's resnet-101.t7 "
            "(backbone=resnet101.tv_in1k is closer).",
            "`crop_size`, `scale_min`, `scale_max`: random 0.9-1.1 scale and a 224 px crop; the reference warps "
            "every image to 224 x 224.",
            "SGD without Nesterov momentum; the reference uses Nesterov (trainMultiLabel.lua:28).",
            "No ranking (AP) loss of the paper; the multi-label soft-margin loss of the reference code.",
        ),
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
            late_options={"halve": False},
        )
    )
