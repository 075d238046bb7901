"""segbench-deeplab: DeepLab v1 (LargeFOV), v2 (ASPP), v3 and v3+ as a segbench plugin.

Registration only; torch and the model are imported when a method is built,
so ``segbench list`` stays fast.
"""

from __future__ import annotations

from typing import Any

from segbench import ConfigError, MethodSpec, Recipe, hookimpl

__version__ = "0.1.0"

PAPERS = {
    "v1": "L.-C. Chen, G. Papandreou, I. Kokkinos, K. Murphy, A. L. Yuille. Semantic Image Segmentation with "
          "Deep Convolutional Nets and Fully Connected CRFs. ICLR 2015 (arXiv:1412.7062).",
    "v2": "L.-C. Chen, G. Papandreou, I. Kokkinos, K. Murphy, A. L. Yuille. DeepLab: Semantic Image Segmentation "
          "with Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs. IEEE TPAMI 40(4), 2018 "
          "(arXiv:1606.00915, 2016).",
    "v3": "L.-C. Chen, G. Papandreou, F. Schroff, H. Adam. Rethinking Atrous Convolution for Semantic Image "
          "Segmentation. arXiv:1706.05587, 2017.",
    "v3plus": "L.-C. Chen, Y. Zhu, G. Papandreou, F. Schroff, H. Adam. Encoder-Decoder with Atrous Separable "
              "Convolution for Semantic Image Segmentation. ECCV 2018 (arXiv:1802.02611).",
}

# Option defaults are the papers' architectures (from scratch: pretrained=False); the quick and bench
# recipes shrink them for the CPU, the paper recipes add ImageNet weights and the published schedules.
_COMMON: dict[str, Any] = {
    "pretrained": False,  # timm's ImageNet weights (hub or its local cache)
    "weights": None,  # a local .pth/.safetensors file of the timm model (implies pretrained)
    "backbone_args": None,  # extra timm.create_model arguments, e.g. {"zero_init_last": False}
    "freeze_bn": False,  # backbone batch norm fixed (statistics and affine), as DeepLab v2 trained ResNet-101
    "eval_scales": [1.0],  # test-time input scales, probabilities averaged (papers: 0.5 ... 1.75)
    "eval_flip": False,  # also average the left-right flipped input
}
_ASPP_V3: dict[str, Any] = {
    "backbone": "resnet101",
    "output_stride": 16,  # training output stride (8, 16 or 32)
    "eval_output_stride": None,  # evaluate at another output stride with the same weights (v3: 8)
    "multi_grid": [1, 2, 4],  # relative rates of the last stage's blocks (None: timm's dilations)
    "aspp_rates": [6, 12, 18],  # at the training output stride; scaled when eval_output_stride differs
    "aspp_channels": 256,
    "image_pooling": True,  # ASPP's image-level branch
    "separable": False,  # atrous depthwise-separable convolutions in ASPP (and the v3+ decoder)
    "dropout": 0.1,  # after the ASPP projection
}
OPTIONS: dict[str, dict[str, Any]] = {
    "v1": {
        "backbone": "vgg16",
        "width": 1.0,  # VGG channel multiplier (< 1: timm's VGG with a scaled configuration, from scratch)
        "output_stride": 8,
        "fc_channels": 1024,  # fc6 / fc7 width (LargeFOV: 1024)
        "fc_kernel": 3,  # fc6 kernel (LargeFOV: 3)
        "fc6_rate": 12,  # fc6 atrous rate (LargeFOV: 12)
        "pool5a": True,  # 3x3 stride-1 average pooling before fc6, as the reference LargeFOV model
        "dropout": 0.5,  # after fc6 and fc7
        **_COMMON,
    },
    "v2": {
        "backbone": "resnet101",
        "output_stride": 8,
        "aspp_rates": [6, 12, 18, 24],  # ASPP-L
        "aspp_channels": 0,  # 0: each branch one 3x3 conv to the classes (ResNet); > 0: fc6/fc7/fc8 (VGG)
        "dropout": 0.5,  # in the fc6/fc7 branches (aspp_channels > 0)
        **_COMMON,
    },
    "v3": {**_ASPP_V3, **_COMMON},
    "v3plus": {
        **_ASPP_V3,
        "low_level_stride": 4,  # the decoder's low-level features (ResNet: the first stage's output)
        "low_level_channels": 48,  # their 1x1 projection
        "decoder_channels": 256,  # the decoder's two 3x3 convolutions
        **_COMMON,
    },
}

_NAMES = {"v1": "deeplab_v1", "v2": "deeplab_v2", "v3": "deeplab_v3", "v3plus": "deeplab_v3plus"}
_DESCRIPTIONS = {
    "v1": "DeepLab-LargeFOV: VGG16 at output stride 8 (atrous conv5, fc6 3x3 rate 12), bilinear upsampling",
    "v2": "DeepLab v2: ASPP, four parallel atrous branches (rates 6, 12, 18, 24) summed, on ResNet-101",
    "v3": "DeepLab v3: ASPP with batch norm, 1x1 branch and image pooling; multi-grid; output stride 16 / 8",
    "v3plus": "DeepLab v3+: the v3 encoder plus a decoder fusing stride-4 features (48-channel projection)",
}

# -- recipes -------------------------------------------------------------------------------------
_TINY_RESNET = {"backbone": "test_resnet", "backbone_args": {"zero_init_last": False}}
_SMALL: dict[str, dict[str, Any]] = {
    # 96 px images: a 12x12 map at output stride 8 (6x6 at 16); the papers' rates shrunk in proportion to
    # their 41x41 (v1/v2, 321 px at stride 8) and 33x33 (v3/v3+, 513 px at stride 16) maps
    "v1": {"backbone": "vgg16_bn", "width": 0.125, "fc_channels": 128, "fc6_rate": 4, "dropout": 0.0},
    "v2": {**_TINY_RESNET, "output_stride": 8, "aspp_rates": [2, 4, 6, 8]},
    "v3": {**_TINY_RESNET, "output_stride": 8, "aspp_rates": [2, 4, 6], "aspp_channels": 64, "dropout": 0.0},
    "v3plus": {**_TINY_RESNET, "output_stride": 16, "aspp_rates": [1, 2, 3], "aspp_channels": 64,
               "separable": True, "low_level_channels": 16, "decoder_channels": 48, "dropout": 0.0},
}
_CPU_TRAIN = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "schedule": "cosine", "batch_size": 8,
              "channels_last": True, "threads": 1}
# steps so that each recipe costs about what FCN-8s's does (measured step time relative to fcn8s quick:
# v1 1.4x, v2 1.6x, v3 1.8x, v3+ 1.3x)
_QUICK_STEPS = {"v1": 2500, "v2": 2400, "v3": 2000, "v3plus": 2500}
_BENCH_STEPS = {"v1": 5000, "v2": 4800, "v3": 4000, "v3plus": 5000}

_PAPER: dict[str, dict[str, dict[str, Any]]] = {
    "v1": {
        "model": {"backbone": "vgg16", "pretrained": True, "width": 1.0, "output_stride": 8, "fc_channels": 1024,
                  "fc_kernel": 3, "fc6_rate": 12, "pool5a": True, "dropout": 0.5},
        "train": {"steps": 6000, "batch_size": 20, "optimizer": "sgd", "lr": 1e-3, "head_lr_mult": 10.0,
                  "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step", "milestones": [2000, 4000],
                  "crop_size": 321, "hflip": True},
    },
    "v2": {
        "model": {"backbone": "resnet101", "pretrained": True, "output_stride": 8, "aspp_rates": [6, 12, 18, 24],
                  "aspp_channels": 0, "freeze_bn": True},
        "train": {"steps": 20000, "batch_size": 10, "optimizer": "sgd", "lr": 2.5e-4, "head_lr_mult": 10.0,
                  "momentum": 0.9, "weight_decay": 5e-4, "schedule": "poly", "poly_power": 0.9,
                  "crop_size": 321, "scale_min": 0.5, "scale_max": 1.5, "hflip": True},
    },
    "v3": {
        "model": {"backbone": "resnet101", "pretrained": True, "output_stride": 16, "eval_output_stride": 8,
                  "multi_grid": [1, 2, 4], "aspp_rates": [6, 12, 18], "aspp_channels": 256,
                  "eval_scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "eval_flip": True},
        "train": {"steps": 30000, "batch_size": 16, "optimizer": "sgd", "lr": 7e-3, "momentum": 0.9,
                  "weight_decay": 1e-4, "schedule": "poly", "poly_power": 0.9, "crop_size": 513,
                  "scale_min": 0.5, "scale_max": 2.0, "hflip": True},
    },
    "v3plus": {
        "model": {"backbone": "resnet101", "pretrained": True, "output_stride": 16, "eval_output_stride": 8,
                  "multi_grid": [1, 2, 4], "aspp_rates": [6, 12, 18], "aspp_channels": 256,
                  "eval_scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "eval_flip": True},
        "train": {"steps": 30000, "batch_size": 16, "optimizer": "sgd", "lr": 7e-3, "momentum": 0.9,
                  "weight_decay": 1e-4, "schedule": "poly", "poly_power": 0.9, "crop_size": 513,
                  "scale_min": 0.5, "scale_max": 2.0, "hflip": True},
    },
}
# v1 and v2 report their headline numbers after the fully connected CRF (segbench-densecrf, DeepLab's parameters);
# --postprocess none gives the networks alone (the papers' "before CRF" rows)
_PAPER_POSTPROCESS = {"v1": ("densecrf",), "v2": ("densecrf",)}
_PAPER_TEXT = {
    "v1": "GPU: ImageNet VGG16 (fc6/fc7 decimated to 1024 x 3x3), LargeFOV at output stride 8; SGD momentum 0.9, "
          "lr 1e-3 (x10 on the head), weight decay 5e-4, batch 20, 321 px crops, 6000 iterations, x0.1 every "
          "2000; predictions refined by the dense CRF (--postprocess none: without)",
    "v2": "GPU: ImageNet ResNet-101 (batch norm frozen), ASPP-L (6, 12, 18, 24) at output stride 8; SGD momentum "
          "0.9, lr 2.5e-4 (x10 on ASPP), poly 0.9, weight decay 5e-4, batch 10, 321 px crops, random scale "
          "0.5-1.5, 20000 iterations; predictions refined by the dense CRF (--postprocess none: without)",
    "v3": "GPU: ImageNet ResNet-101, output stride 16 in training and 8 in evaluation, multi-grid (1, 2, 4), ASPP "
          "(6, 12, 18) with image pooling; SGD momentum 0.9, lr 7e-3, poly 0.9, batch 16, 513 px crops, random "
          "scale 0.5-2.0, 30000 iterations; evaluation at scales 0.5-1.75 with flips",
    "v3plus": "GPU: the v3 recipe plus the decoder (stride-4 features, 48-channel projection, two 3x3 convs)",
}


def _recipes(version: str) -> list[Recipe]:
    small = _SMALL[version]
    return [
        Recipe(
            "quick",
            f"CPU quickstart on shapes (<= 3 minutes): {small['backbone']} from scratch at output stride "
            f"{small.get('output_stride', 8)}, "
            f"96 px, 4000 training images, {_QUICK_STEPS[version]} AdamW steps of 8 images, cosine, 1 thread",
            train={**_CPU_TRAIN, "steps": _QUICK_STEPS[version], "warmup_steps": 100},
            model=dict(small),
            data={"image_size": 96, "num_train": 4000},
        ),
        Recipe(
            "bench",
            f"shapes leaderboard (<= 6 minutes on 2 cores): the quick network, 10000 training images, "
            f"{_BENCH_STEPS[version]} AdamW steps of 8 images, cosine, 1 thread",
            train={**_CPU_TRAIN, "steps": _BENCH_STEPS[version], "warmup_steps": 200},
            model=dict(small),
            data={"image_size": 96, "num_train": 10000},
        ),
        Recipe("paper", _PAPER_TEXT[version], train=dict(_PAPER[version]["train"]),
               model=dict(_PAPER[version]["model"]), postprocess=_PAPER_POSTPROCESS.get(version, ())),
    ]


def _build(version: str):
    name = _NAMES[version]

    def build(num_classes: int, **options: Any):
        unknown = set(options) - set(OPTIONS[version])
        if unknown:
            raise ConfigError(f"{name}: unknown option(s) {sorted(unknown)}; options are {sorted(OPTIONS[version])}")
        from segbench_deeplab.model import DeepLab

        return DeepLab(num_classes, version, **{**OPTIONS[version], **options})

    build.__name__ = f"build_{name}"
    build.__doc__ = f"Build {name}: ``build(num_classes, **options) -> DeepLab``."
    return build


def method_specs() -> list[MethodSpec]:
    """The four DeepLab method specs."""
    return [
        MethodSpec(
            name=_NAMES[version],
            build=_build(version),
            supervision="pixel",
            outputs={"mask", "score_maps", "scores"},
            options=dict(OPTIONS[version]),
            recipes=_recipes(version),
            description=_DESCRIPTIONS[version],
            paper=PAPERS[version],
        )
        for version in ("v1", "v2", "v3", "v3plus")
    ]


@hookimpl
def register_methods(register) -> None:
    """Register deeplab_v1, deeplab_v2, deeplab_v3 and deeplab_v3plus."""
    for spec in method_specs():
        register(spec)
