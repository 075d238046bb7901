"""segbench-deconvnet: DeconvNet (Noh, Hong, Han) as a segbench plugin.

Registration only; torch, timm and the model are imported when the method is
built, so ``segbench list`` stays fast.
"""

from __future__ import annotations

from typing import Any

from segbench import MethodSpec, Recipe, hookimpl

__version__ = "0.1.0"

PAPER = (
    "H. Noh, S. Hong, B. Han. Learning Deconvolution Network for Semantic Segmentation. ICCV 2015 "
    "(arXiv:1505.04366); reference implementation HyeonwooNoh/DeconvNet (Caffe)."
)

OPTIONS: dict[str, Any] = {
    "backbone": "vgg16_bn",  # timm VGG with batch norm: vgg11_bn | vgg13_bn | vgg16_bn (the paper) | vgg19_bn
    "pretrained": False,  # timm's ImageNet weights (hub or its cache), conv layers and fc6/fc7
    "weights": None,  # a local .pth/.safetensors file of the timm model (implies pretrained)
    "width": 1.0,  # channel multiplier of the VGG layers and their mirror (the paper: 1.0)
    "depth": 5,  # VGG blocks (max-poolings) kept (the paper: 5)
    "fc_channels": 4096,  # width of fc6 / fc7 (the paper: 4096)
    "fc_kernel": 7,  # fc6 kernel, unpadded, and fc6-deconv's (the paper: 7, pool5 7x7 -> 1x1)
    "final_relu": True,  # ReLU after deconv1_2's batch norm, before the score layer (the paper: yes)
}

# CPU: timm's smallest VGG layout (vgg11_bn: 8 convolutions) at 1/4 width, from scratch. Without the last
# ReLU: a narrow last decoder layer otherwise marks foreground by all-zero features (see the README).
_SMALL = {"backbone": "vgg11_bn", "width": 0.25, "depth": 5, "fc_channels": 128, "final_relu": False}
_CPU_TRAIN = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "schedule": "cosine", "batch_size": 8,
              "channels_last": True, "threads": 1}

# The reference solvers: SGD, lr 0.01, momentum 0.9, weight decay 5e-4, 8 x iter_size 8 = 64 crops of 224 px
# (250 px resized, random crop, mirror); stage 1 20000 iterations (step 9000), stage 2 40000 (step 10000).
_PAPER_TRAIN = {"steps": 60_000, "batch_size": 64, "optimizer": "sgd", "lr": 1e-2, "momentum": 0.9,
                "weight_decay": 5e-4, "schedule": "poly", "warmup_steps": 0, "crop_size": 224, "hflip": True,
                "train_split": "trainaug"}
_PAPER_MODEL = {"backbone": "vgg16_bn", "pretrained": True, "width": 1.0, "depth": 5, "fc_channels": 4096,
                "fc_kernel": 7, "final_relu": True}

_REF = "HyeonwooNoh/DeconvNet"
_S1 = f"{_REF} training/001_stage_1"
_S2 = f"{_REF} training/002_stage_2"
_PAPER_SOURCES = {
    "steps": f"deviation: the two stages' total: {_S1}/solver.prototxt:8 (20,000) + {_S2}/solver.prototxt:8 (40,000)",
    "batch_size": f"{_S1}/stage_1_train.prototxt:12 (batch 8) x {_S1}/solver.prototxt:6 (iter_size 8)",
    "optimizer": f"{_S1}/solver.prototxt (Caffe SGD)",
    "lr": f"{_S1}/solver.prototxt:2 and {_S2}/solver.prototxt:2 (base_lr 0.01)",
    "momentum": f"{_S1}/solver.prototxt:9",
    "weight_decay": f"{_S1}/solver.prototxt:10",
    "schedule": f"deviation: poly over both stages; each reference stage steps x0.1 ({_S1}/solver.prototxt:3-5: "
                f"at 9,000; {_S2}/solver.prototxt:3-5: at 10,000)",
    "warmup_steps": f"{_S1}/solver.prototxt:2-5 (no warm-up)",
    "crop_size": f"{_S1}/stage_1_train.prototxt:21 (crop 224; the reference resizes to 250 x 250 first, :14-15)",
    "hflip": f"{_S1}/stage_1_train.prototxt:22 (mirror: true)",
    "train_split": f"{_REF} data/get_data.sh:10 (stage 2 trains on VOC2012_SEG_AUG, the SBD-augmented VOC 2012)",
    "backbone": f"{_S1}/stage_1_train.prototxt:52-191 (VGG16 convolutions, each followed by batch norm)",
    "pretrained": f"{_S1}/start_train.sh:4 (ImageNet VGG16 with fc6/fc7 as convolutions, model/VGG_conv/README.md:1)",
    "width": f"{_S1}/stage_1_train.prototxt:52-191 (VGG16's 64-512 channels)",
    "depth": f"{_S1}/stage_1_train.prototxt:70-191 (five 2x2 max-poolings with switches)",
    "fc_channels": f"{_S1}/stage_1_train.prototxt:196-208 (fc6, fc7: 4096)",
    "fc_kernel": f"{_S1}/stage_1_train.prototxt:198, 215-217 (fc6 7 x 7, fc6-deconv 7 x 7)",
    "final_relu": f"{_S1}/stage_1_train.prototxt:386-392 (debn1_2, derelu1_2, then seg-score)",
}
_PAPER_DEVIATIONS = (
    "One stage on whole images: the paper's two-stage training (object-centred crops 20k it., then harder "
    "proposals 40k) is missing.",
    "No proposal aggregation at test: the paper segments ~50 object proposals per image and takes the "
    "pixel-wise maximum.",
    "`steps` 60000 (the stages' total) with a `schedule` poly; each reference stage restarts at lr 0.01 and "
    "steps x0.1 once.",
    "`crop_size`: 224 px crops at the image's own scale; the reference resizes each (object-centred) image to "
    "250 x 250 first.",
    "`backbone`, `pretrained`: timm vgg16_bn (ImageNet-trained with batch norm); the reference adds BN to a "
    "plain ImageNet VGG16.",
    "No EDeconvNet ensemble with FCN-8s and no CRF (the paper's best rows).",
    "Caffe's bias lr x2 and no bias decay (blobs_lr 1/2) are not reproduced; BN keeps running statistics.",
)

RECIPES = [
    Recipe(
        "quick",
        "CPU quickstart on shapes (about 2.5 minutes): timm vgg11_bn layout at 1/4 width (16..128 channels) "
        "mirrored, fc6/fc7 128 wide with a 2x2 fc6 (pool5 2x2 -> 1x1), no ReLU before the score, from scratch, "
        "64 px, 4000 training images, 1500 AdamW steps of 8 images, cosine, 1 thread",
        train={**_CPU_TRAIN, "steps": 1500, "warmup_steps": 100},
        model={**_SMALL, "fc_kernel": 2},
        data={"image_size": 64, "num_train": 4000},
    ),
    Recipe(
        "bench",
        "shapes leaderboard (<= 6 minutes on 2 cores): the quick network at 96 px with a 3x3 fc6 (pool5 3x3 -> "
        "1x1), 10000 training images, 1800 AdamW steps of 8 images, cosine, 1 thread",
        train={**_CPU_TRAIN, "steps": 1800, "warmup_steps": 100},
        model={**_SMALL, "fc_kernel": 3},
        data={"image_size": 96, "num_train": 10000},
    ),
    Recipe(
        "paper",
        "GPU: DeconvNet on ImageNet VGG16-bn (timm, torchvision weights; fc6/fc7 from the classifier), "
        "224 px crops, batch 64, SGD lr 0.01 momentum 0.9 weight decay 5e-4, 60000 steps (the two stages' "
        "total) with a poly schedule, one stage on whole images (no proposals), on VOC 2012 trainaug where the "
        "dataset has it",
        train=dict(_PAPER_TRAIN),
        model=dict(_PAPER_MODEL),
        sources=dict(_PAPER_SOURCES),
        deviations=_PAPER_DEVIATIONS,
    ),
]


def build_deconvnet(num_classes: int, **options: Any):
    """Build DeconvNet: ``build(num_classes, **options) -> DeconvNet``."""
    from segbench_deconvnet.model import DeconvNet

    return DeconvNet(num_classes, **options)


def method_specs() -> list[MethodSpec]:
    """The DeconvNet method spec."""
    return [
        MethodSpec(
            name="deconvnet",
            build=build_deconvnet,
            supervision="pixel",
            outputs={"mask", "score_maps", "scores"},
            options=dict(OPTIONS),
            recipes=RECIPES,
            description="DeconvNet: VGG16 convolution network mirrored by a deconvolution network that unpools "
                        "with the pooling switches (batch norm everywhere)",
            paper=PAPER,
        )
    ]


@hookimpl
def register_methods(register) -> None:
    """Register deconvnet."""
    for spec in method_specs():
        register(spec)
