"""segbench-fcn: FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer, Darrell) as a segbench plugin.

Registration only; torch and the model are imported when a method is built,
so ``segbench list`` stays fast.
"""

from __future__ import annotations

from typing import Any

from segbench import MethodSpec, Recipe, hookimpl

__version__ = "0.1.0"

PAPER = (
    "J. Long, E. Shelhamer, T. Darrell. Fully Convolutional Networks for Semantic Segmentation. CVPR 2015; "
    "E. Shelhamer, J. Long, T. Darrell. Fully Convolutional Networks for Semantic Segmentation. "
    "IEEE TPAMI 39(4), 2017 (arXiv:1605.06211, 2016)."
)

OPTIONS: dict[str, Any] = {
    "backbone": "test_resnet",  # any timm model with feature maps at strides 8, 16 and 32
    "pretrained": False,  # timm's ImageNet weights (needs the hub or its cache); for VGG also fc6/fc7
    "weights": None,  # a local .pth/.safetensors file of the timm model (implies pretrained)
    "fc_channels": 4096,  # width of fc6 / fc7 (the paper: 4096)
    "fc_kernel": 7,  # fc6 kernel (the paper: 7, VGG's fc6 as a convolution), padded to keep the size
    "dropout": 0.5,  # after fc6 and fc7 (the paper: 0.5)
    "taps": "auto",  # pool (max-pool of the stride s/2 map: VGG's pool3/pool4) | stage | auto (pool for vgg*)
    "learn_upsampling": True,  # the x2 upsamplings start bilinear and are learned (CVPR) or stay fixed
    "pool4_scale": 1.0,  # multiply pool4 before score_pool4 (PAMI at-once: 0.01)
    "pool3_scale": 1.0,  # multiply pool3 before score_pool3 (PAMI at-once: 0.0001)
    "loss_reduction": "mean",  # mean over labelled pixels | sum (the papers' unnormalised loss)
}

_SMALL = {"backbone": "test_resnet", "fc_channels": 256, "fc_kernel": 3, "dropout": 0.0}
_CPU_TRAIN = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "schedule": "cosine", "batch_size": 8,
              "channels_last": True, "threads": 1}

# PAMI "heavy" all-at-once learning, as voc-fcn8s-atonce / voc-fcn32s in the reference repository.
_PAPER_TRAIN = {"steps": 300_000, "batch_size": 1, "optimizer": "sgd", "lr": 1e-10, "momentum": 0.99,
                "weight_decay": 5e-4, "schedule": "constant", "warmup_steps": 0, "head_lr_mult": 1.0,
                "hflip": False}
_PAPER_MODEL = {"backbone": "vgg16", "pretrained": True, "fc_channels": 4096, "fc_kernel": 7, "dropout": 0.5,
                "taps": "pool", "learn_upsampling": False, "loss_reduction": "sum"}


def _recipes(variant: str) -> list[Recipe]:
    skips = {"32s": {}, "16s": {"pool4_scale": 0.01}, "8s": {"pool4_scale": 0.01, "pool3_scale": 1e-4}}[variant]
    steps = {"32s": 100_000, "16s": 300_000, "8s": 300_000}[variant]
    return [
        Recipe(
            "quick",
            "CPU quickstart on shapes (about 2.5 minutes): timm test_resnet from scratch, fc6/fc7 256 wide "
            "(3x3 fc6), 96 px, 4000 training images, 3000 AdamW steps of 8 images, cosine, 1 thread",
            train={**_CPU_TRAIN, "steps": 3000, "warmup_steps": 100},
            model=dict(_SMALL),
            data={"image_size": 96, "num_train": 4000},
        ),
        Recipe(
            "bench",
            "shapes leaderboard (about 4.5 minutes, <= 6 on 2 cores): the quick network, 10000 training "
            "images, 6500 AdamW steps of 8 images, cosine, 1 thread",
            train={**_CPU_TRAIN, "steps": 6500, "warmup_steps": 200},
            model=dict(_SMALL),
            data={"image_size": 96, "num_train": 10000},
        ),
        Recipe(
            "paper",
            f"GPU: FCN-{variant} on ImageNet VGG16 (fc6/fc7 from the classifier), PAMI heavy learning "
            f"all-at-once: SGD momentum 0.99, lr 1e-10 on the unnormalised (summed) loss, batch 1, "
            f"weight decay 5e-4, fixed lr, {steps} iterations, fixed bilinear upsampling"
            + (", skip inputs scaled as in the at-once reference" if skips else ""),
            train={**_PAPER_TRAIN, "steps": steps},
            model={**_PAPER_MODEL, **skips},
        ),
    ]


def _build(variant: str):
    def build(num_classes: int, **options: Any):
        from segbench_fcn.model import FCN

        return FCN(num_classes, variant=variant, **options)

    build.__name__ = f"build_fcn{variant}"
    build.__doc__ = f"Build FCN-{variant}: ``build(num_classes, **options) -> FCN``."
    return build


_DESCRIPTIONS = {
    "32s": "FCN-32s: fully convolutional net, class scores at stride 32 upsampled x32 (no skips)",
    "16s": "FCN-16s: FCN-32s plus a skip from pool4 (stride 16), fused after a learned x2 upsampling",
    "8s": "FCN-8s: FCN-16s plus a skip from pool3 (stride 8), then x8 bilinear upsampling",
}


def method_specs() -> list[MethodSpec]:
    """The three FCN method specs (fcn32s, fcn16s, fcn8s)."""
    return [
        MethodSpec(
            name=f"fcn{variant}",
            build=_build(variant),
            supervision="pixel",
            outputs={"mask", "score_maps", "scores"},
            options=dict(OPTIONS),
            recipes=_recipes(variant),
            description=_DESCRIPTIONS[variant],
            paper=PAPER,
        )
        for variant in ("32s", "16s", "8s")
    ]


@hookimpl
def register_methods(register) -> None:
    """Register fcn32s, fcn16s and fcn8s."""
    for spec in method_specs():
        register(spec)
