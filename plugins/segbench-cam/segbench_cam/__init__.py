"""segbench-cam: class activation maps (Zhou, Khosla, Lapedriza, Oliva, Torralba, CVPR 2016) as a segbench plugin.

Registration only; torch and the model are imported when the method is built,
so ``segbench list`` stays fast.
"""

from __future__ import annotations

from segbench import MethodSpec, Recipe, hookimpl

__version__ = "0.1.0"

PAPER = (
    "B. Zhou, A. Khosla, A. Lapedriza, A. Oliva, A. Torralba. Learning Deep Features for Discriminative "
    "Localization. CVPR 2016."
)

OPTIONS = {
    "backbone": "test_resnet",  # any timm model with features_only
    "out_index": 2,  # feature level used (timm out_indices; -1 = last); CAM wants a high-resolution last conv
    "output_stride": None,  # dilate the backbone to this stride (8, 16) where timm supports it
    "pretrained": False,  # timm's ImageNet weights (needs the hub or its cache)
    "weights": None,  # a local .pth/.safetensors file for the backbone (implies pretrained)
    "backbone_args": None,  # extra timm.create_model arguments, e.g. {"zero_init_last": False}
    "extra_conv": 0,  # channels of the paper's extra 3x3 conv + ReLU before the GAP; 0 = none
    "dropout": 0.0,  # dropout on the GAP features before the linear classifier
}

SHAPES_MODEL = {
    "backbone": "test_resnet",
    "out_index": 2,  # layer2, stride 8: 8x8 maps at 64 px, 12x12 at 96 px
    "backbone_args": {"zero_init_last": False},  # timm zero-inits each block's last BN: slow start from scratch
}
SHAPES_TRAIN = {"batch_size": 32, "optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4, "schedule": "poly",
                "warmup_steps": 50, "threads": 2}

_CAM = "metalbubble/CAM"  # the authors' release (Caffe models)
_SEGBENCH = "deviation: segbench's choice; the authors released no VGG16-GAP training setup"

RECIPES = [
    Recipe(
        "quick",
        "CPU quickstart on shapes: tiny timm ResNet cut at stride 8, 64 px images, 4000 training images, AdamW, "
        "1500 steps",
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
        "GPU: VGG16-GAP as the authors' model: ImageNet VGG16 cut after conv5_3 (14x14 at 224 px), an extra 3x3 "
        "conv with 1024 channels, GAP, dropout 0.5, linear layer; 224 px, SGD lr 1e-3 (x10 for the new layers), "
        "batch 40, 2500 steps (segbench's schedule: no VGG16-GAP solver was released)",
        train={"steps": 2500, "batch_size": 40, "optimizer": "sgd", "lr": 1e-3, "head_lr_mult": 10.0,
               "momentum": 0.9, "weight_decay": 1e-4, "schedule": "poly", "warmup_steps": 0, "crop_size": 224,
               "scale_min": 0.9, "scale_max": 1.1, "eval_size": 224},
        model={"backbone": "vgg16", "out_index": 4, "pretrained": True, "backbone_args": None, "extra_conv": 1024,
               "dropout": 0.5},
        data={"image_size": 224},
        sources={
            **{k: _SEGBENCH for k in ("steps", "batch_size", "head_lr_mult", "weight_decay", "schedule",
                                      "warmup_steps", "scale_min", "scale_max")},
            "optimizer": f"{_CAM} models/solver_imagenet_googlenetCAM.prototxt:4-11 (Caffe SGD, the GoogLeNet-GAP "
                         "solver)",
            "lr": f"{_CAM} models/solver_imagenet_googlenetCAM.prototxt:4 (base_lr 0.001, the GoogLeNet-GAP solver)",
            "momentum": f"{_CAM} models/solver_imagenet_googlenetCAM.prototxt:10",
            "crop_size": f"{_CAM} models/train_val_googlenetCAM.prototxt:12 (224 px crops)",
            "eval_size": f"{_CAM} models/deploy_vgg16CAM.prototxt:5-6 (224 x 224 input)",
            "backbone": f"{_CAM} models/deploy_vgg16CAM.prototxt:1 (VGG_ILSVRC_16_layers)",
            "out_index": f"{_CAM} models/deploy_vgg16CAM.prototxt:306-321 (conv5_3, no pool5: 14 x 14, :359-362)",
            "pretrained": "deviation: ImageNet weights, then fine-tuned on the benchmark; the paper trains "
                          "VGG16-GAP on ImageNet itself",
            "backbone_args": "segbench: timm's defaults, no extra arguments",
            "extra_conv": f"{_CAM} models/deploy_vgg16CAM.prototxt:327-332 (CAM_conv: 3x3, 1024)",
            "dropout": f"{_CAM} models/deploy_vgg16CAM.prototxt:366-373 (CAM_dropout 0.5 after the GAP)",
        },
        deviations=(
            "`pretrained`: ImageNet VGG16 fine-tuned with multi-label BCE on the benchmark; the paper trains "
            "VGG16-GAP on ImageNet (softmax).",
            "No box localization (thresholded CAM -> bounding box); the CAMs are scored by segbench's metrics.",
            "`steps`, `batch_size`, `head_lr_mult`, `weight_decay`, `schedule`, `warmup_steps`: segbench's (no "
            "VGG16-GAP solver was released).",
            "`scale_min`, `scale_max`: segbench's random 0.9-1.1 scale before the 224 px crop.",
            "CAMs include the classifier's bias (a constant per class), so that their mean is the score.",
        ),
    ),
]


def build(num_classes: int, **options):
    """Build a :class:`segbench_cam.model.CAM` (imports torch)."""
    from segbench_cam.model import build_cam

    return build_cam(num_classes, **options)


@hookimpl
def register_methods(register) -> None:
    """Register the ``cam`` method."""
    register(
        MethodSpec(
            name="cam",
            build=build,
            supervision="image",
            outputs={"scores", "score_maps"},
            options=OPTIONS,
            recipes=RECIPES,
            description="CAM: global average pooling then a linear classifier; class activation maps from its weights",
            paper=PAPER,
        )
    )
