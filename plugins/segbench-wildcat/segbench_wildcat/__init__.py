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
    "halve": False,  # divide the pooled score by 2 when the min term is on, as the authors' code (paper recipe)
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

_REF = "durandtibo/wildcat.pytorch"  # the authors' PyTorch code

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
        "GPU: the authors' VOC 2007 demo (wildcat.pytorch): ImageNet ResNet-101 (last stage, stride 32), M = 8, "
        "k+ = k- = 0.2, alpha 0.7, (max + alpha min) / 2, every image warped to 448 x 448 (train and test), SGD momentum 0.9, lr 0.01 for the transfer layer "
        "and 0.001 for the backbone, constant, batch 16, 20 epochs of VOC 2007 trainval (6280 steps)",
        train={"steps": 6280, "batch_size": 16, "optimizer": "sgd", "lr": 1e-3, "head_lr_mult": 10.0,
               "momentum": 0.9, "weight_decay": 1e-4, "schedule": "constant", "warmup_steps": 0,
               "warp_size": 448, "crop_size": 0, "scale_min": 1.0, "scale_max": 1.0, "hflip": True,
               "eval_size": 448},
        model={"backbone": "resnet101", "out_index": -1, "pretrained": True, "backbone_args": None,
               "maps_per_class": 8, "kmax": 0.2, "kmin": 0.2, "alpha": 0.7, "halve": True},
        sources={
            "steps": f"{_REF} README.md:25 (--epochs 20): 20 epochs x 314 steps of 16 of VOC 2007 trainval's "
                     "5,011 images",
            "batch_size": f"{_REF} README.md:25 (--batch-size 16)",
            "optimizer": f"{_REF} wildcat/demo_voc2007.py:65-68 (torch.optim.SGD)",
            "lr": f"{_REF} README.md:25 (--lr 0.01 --lrp 0.1: the pretrained layers at 0.001, wildcat/models.py:42-45)",
            "head_lr_mult": f"{_REF} README.md:25 (--lrp 0.1: the transfer layer at 10x the backbone's lr)",
            "momentum": f"{_REF} wildcat/demo_voc2007.py:27",
            "weight_decay": f"{_REF} wildcat/demo_voc2007.py:29",
            "schedule": f"{_REF} wildcat/engine.py:47-48, 319-326 (the demo sets no epoch_step: the lr never decays)",
            "warmup_steps": f"{_REF} wildcat/engine.py:319-326 (no warm-up)",
            "warp_size": f"{_REF} wildcat/engine.py:135 (Warp(448): every training image to 448 x 448)",
            "crop_size": f"{_REF} wildcat/engine.py:134-139 (no crop after the warp)",
            "scale_min": f"{_REF} wildcat/engine.py:134-139 (no random scale)",
            "scale_max": f"{_REF} wildcat/engine.py:134-139 (no random scale)",
            "hflip": f"{_REF} wildcat/engine.py:136 (MultiScaleCrop-free pipeline: Warp, RandomHorizontalFlip)",
            "eval_size": f"{_REF} wildcat/engine.py:145 (test images warped to 448 x 448)",
            "backbone": f"{_REF} wildcat/demo_voc2007.py:57 (resnet101_wildcat)",
            "out_index": f"{_REF} wildcat/models.py:14-22 (conv1 through layer4, stride 32)",
            "pretrained": f"{_REF} wildcat/demo_voc2007.py:57 (pretrained=True: torchvision's ImageNet ResNet-101)",
            "backbone_args": "segbench: timm's defaults, no extra arguments",
            "maps_per_class": f"{_REF} README.md:25 (--maps 8)",
            "kmax": f"{_REF} README.md:25 (--k 0.2)",
            "kmin": f"{_REF} wildcat/pooling.py:84-85 (kmin None -> kmax; the demo passes none, demo_voc2007.py:57)",
            "alpha": f"{_REF} README.md:25 (--alpha 0.7)",
            "halve": f"{_REF} wildcat/pooling.py:41-43 ((max + alpha min) / 2 when the min term is on)",
        },
        deviations=(
            "`pretrained`: timm's resnet101.a1h_in1k weights, not torchvision's ResNet-101 of the reference "
            "(backbone=resnet101.tv_in1k is that one).",
            "Fractional k rounds half up with at least one region; the reference's round() is half to even and may "
            "select none.",
            "Segmentation uses the engine's score-map rule, not the paper's own segmentation post-processing.",
        ),
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
            late_options={"halve": False},
        )
    )
