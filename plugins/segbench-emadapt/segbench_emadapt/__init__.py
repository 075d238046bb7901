"""segbench-emadapt: EM-Adapt (Papandreou, Chen, Murphy, Yuille, ICCV 2015) as a segbench plugin.

Registration only; torch and the model are imported when the method is built,
so ``segbench list`` stays fast.
"""

from __future__ import annotations

from segbench import MethodSpec, Recipe, hookimpl

__version__ = "0.1.0"

PAPER = (
    "G. Papandreou, L.-C. Chen, K. Murphy, A. L. Yuille. Weakly- and Semi-Supervised Learning of a Deep "
    "Convolutional Network for Semantic Image Segmentation. ICCV 2015 (arXiv:1502.02734)."
)

OPTIONS = {
    "backbone": "test_resnet",  # any timm model with features_only
    "out_index": 2,  # feature level the logits are computed on (timm out_indices; -1 = last)
    "output_stride": None,  # dilate the backbone to this stride (8, 16) where timm supports it (DeepLab: 8)
    "pretrained": False,  # timm's ImageNet weights (needs the hub or its cache)
    "weights": None,  # a local .pth/.safetensors file for the backbone (implies pretrained)
    "backbone_args": None,  # extra timm.create_model arguments, e.g. {"zero_init_last": False}
    "head_channels": 0,  # DeepLab-LargeFOV fc6 (3x3, dilated) + fc7 (1x1) width; 0 = the classifier alone
    "head_dilation": 12,  # fc6 dilation (LargeFOV: 12 at stride 8)
    "dropout": 0.0,  # 2-D dropout after fc6 and fc7 (DeepLab: 0.5), or on the features without them
    "fg_share": 0.2,  # E-step: each foreground class present wins at least this share of the pixels
    "bg_share": 0.4,  # E-step: the background wins at least this share
    "background": 0,  # index of the background class (always present); None = no background class
    "sweeps": 1,  # E-step: passes over the present classes (a later class may take pixels from an earlier one)
    "shuffle": True,  # E-step: visit the foreground classes in a random order (the reference layer does)
    "image_loss_weight": 0.0,  # not in the paper: + weight x image-level BCE on top-fg_share pooled logits
    "em_warmup": 0,  # not in the paper: first training steps with the image loss only (a classifier warm start)
    "largefov": False,  # the paper's DeepLab-LargeFOV: VGG at pool5, atrous, pool5a, fc6/fc7 decimated from ImageNet
    "lr_mults": "head",  # "caffe": LargeFOV's lr_mult/decay_mult (biases x2 without decay, x head_lr_mult on fc8 only)
}
# options added after records existed, at the value that builds the model as before (kept out of config ids)
LATE_OPTIONS = {"largefov": False, "lr_mults": "head"}

# From scratch, plain EM settles on latent maps that do not depend on the image (measured on shapes: the
# foreground always on the same 7 cells of the top row). A classifier warm start (the image loss alone for
# em_warmup steps, then EM with the image loss kept) stands in for the paper's ImageNet initialisation.
SHAPES_MODEL = {
    "backbone": "test_resnet",
    "out_index": 2,  # layer2, stride 8: 8x8 maps at 64 px
    "backbone_args": {"zero_init_last": False},  # timm zero-inits each block's last BN: slow start from scratch
    "fg_share": 0.1,  # shapes objects cover about 5-10 % of the image each (VOC objects are larger)
    "bg_share": 0.4,
    "image_loss_weight": 1.0,
}
SHAPES_TRAIN = {"batch_size": 32, "optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4, "schedule": "poly",
                "warmup_steps": 50, "threads": 2}

_V2 = "DrSleep/deeplab-public-ver2 (mirror of the authors' DeepLab v2 release)"
_LARGEFOV = ("deviation: DeepLab-LargeFOV's value (Chen et al. TPAMI 2018, Sec. 4.1.1), which EM-Adapt builds "
             "on; not verified against the EM-Adapt paper")
_TPAMI = "Chen et al. TPAMI 2018"
_LFOV = "DeepLab-LargeFOV release (copy: corenel/deeplab-public exper/voc12/config/deeplab_largeFOV)"
_BASE = "Papandreou et al. ICCV 2015 (EM-Adapt trains DeepLab-LargeFOV)"

RECIPES = [
    Recipe(
        "quick",
        "CPU quickstart on shapes (estimated 2 minutes on 2 idle cores): tiny timm ResNet cut at stride 8 with a "
        "1x1 classifier, 1000 warm-up steps on the image loss, then 500 EM steps (shares 10 % per object "
        "class / 40 % background), 64 px, 4000 training images, AdamW",
        train={**SHAPES_TRAIN, "steps": 1500},
        model={**SHAPES_MODEL, "em_warmup": 1000},
        data={"image_size": 64, "num_train": 4000},
    ),
    Recipe(
        "bench",
        "shapes leaderboard (under 6 minutes on 2 cores): the quick model at the default 96 px, 1600 warm-up "
        "steps then 800 EM steps",
        train={**SHAPES_TRAIN, "steps": 2400},
        model={**SHAPES_MODEL, "em_warmup": 1600},
        data={},
    ),
    Recipe(
        "paper",
        "GPU: DeepLab-LargeFOV (ImageNet VGG16 made atrous to stride 8: pool4/pool5 stride 1, conv5 dilated 2, "
        "pool5a; fc6 3x3 rate 12 and fc7, 1024 wide, decimated from VGG's fc6/fc7; fc8), E-step shares 20 % per "
        "foreground class / 40 % background, SGD momentum 0.9, lr 0.001 (x10 on fc8, biases x2 without decay), "
        "weight decay 5e-4, batch 20, 321 px crops, 6000 iterations with x0.1 every 2000, on VOC 2012 trainaug "
        "(SBD, 10,582 images) where the dataset has it",
        train={"steps": 6000, "batch_size": 20, "optimizer": "sgd", "lr": 1e-3, "head_lr_mult": 10.0,
               "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step", "milestones": [2000, 4000],
               "warmup_steps": 0, "crop_size": 321, "eval_size": 0, "train_split": "trainaug"},
        model={"backbone": "vgg16", "out_index": 5, "output_stride": 8, "pretrained": True, "backbone_args": None,
               "largefov": True, "head_channels": 1024, "head_dilation": 12, "dropout": 0.5, "lr_mults": "caffe",
               "fg_share": 0.2, "bg_share": 0.4},
        sources={
            **{k: _LARGEFOV for k in ("batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule",
                                      "milestones")},
            "head_lr_mult": f"deviation: DeepLab-LargeFOV's x10 on fc8 ({_LFOV} train.prototxt:468-469), not "
                            "verified for EM-Adapt",
            "lr_mults": f"deviation: DeepLab-LargeFOV's {_LFOV} train.prototxt (blobs_lr 1/2 on every layer, 10/20 "
                        "on fc8; weight_decay 1/0), not verified for EM-Adapt",
            "steps": "deviation: DeepLab-LargeFOV's 6000 iterations (its solver.prototxt:9), not verified for "
                     "EM-Adapt",
            "crop_size": "deviation: DeepLab-LargeFOV's 321 px crops (its train.prototxt:37), not verified for "
                         "EM-Adapt",
            "warmup_steps": "segbench: no warm-up (Caffe's step policy has none)",
            "eval_size": "segbench: evaluation at each image's own size",
            "train_split": "deviation: VOC 2012 trainaug (SBD), recalled from the paper and not verified here",
            "backbone": f"{_BASE}; {_TPAMI}, Sec. 4.1.1 (ImageNet-pretrained VGG-16); deviation line on timm's "
                        "weights",
            "out_index": f"{_BASE}: fc6 on pool5 (after pool5a), {_LFOV} train.prototxt:372-398",
            "output_stride": f"{_BASE}; {_TPAMI}, Sec. 4 (scores subsampled by 8); {_LFOV} train.prototxt:372-385 "
                             "(pool4/pool5 stride 1, conv5 dilated 2)",
            "pretrained": f"{_BASE}; {_TPAMI}, Sec. 4.1.1 (VGG-16 pre-trained on ImageNet, fc6/fc7 subsampled from "
                          "its classifier)",
            "backbone_args": "segbench: timm's defaults, no extra arguments",
            "largefov": f"{_BASE}; {_TPAMI}, Sec. 4.1.1 and Tab. 1 (DeepLab-LargeFOV); {_LFOV} train.prototxt "
                        "(pool5a: 387-398)",
            "head_channels": f"{_TPAMI}, Sec. 4.1.1 (DeepLab-LargeFOV: 1,024 of VGG's 4,096 fc6/fc7 filters)",
            "head_dilation": f"{_TPAMI}, Tab. 1 (DeepLab-LargeFOV: 3x3, r = 12); {_LFOV} train.prototxt:411-414",
            "dropout": "deviation: DeepLab-LargeFOV's 0.5 after fc6/fc7 (its train.prototxt:429, 459), not "
                       "verified for EM-Adapt",
            "fg_share": f"{_V2} src/caffe/proto/caffe.proto:488 (AdaptiveBiasChannelParameter fg_portion 0.2)",
            "bg_share": "deviation: 0.4 recalled from the paper, not verified (the layer's default bg_portion is "
                        f"0.2, {_V2} src/caffe/proto/caffe.proto:487)",
        },
        deviations=(
            "`steps`, `batch_size`, `optimizer`, `lr`, `head_lr_mult`, `lr_mults`, `momentum`, `weight_decay`: "
            "DeepLab-LargeFOV's, unverified for EM-Adapt.",
            "`schedule`, `milestones`, `crop_size`, `dropout`: DeepLab-LargeFOV's (x0.1 every 2000, 321 px, 0.5), "
            "unverified for EM-Adapt.",
            "`backbone`, `pretrained`: timm vgg16.tv_in1k (torchvision weights, RGB, 2x2 pools 1-3), not the Caffe "
            "VGG16 (BGR, 3x3 pools).",
            "fc6/fc7 keep every 4th of VGG's 4,096 filters (fc6 kernel subsampled); DeepLab-LargeFOV keeps a random "
            "subset of 1,024.",
            "`bg_share` 0.4 and `train_split` trainaug were not verified against the paper.",
            "No fully connected CRF at test time (add --postprocess densecrf).",
            "E-step: a class wins ceil(share x n) pixels; the reference layer floor(share x n) + 1.",
        ),
    ),
]


def build(num_classes: int, **options):
    """Build a :class:`segbench_emadapt.model.EMAdapt` (imports torch)."""
    from segbench_emadapt.model import EMAdapt

    return EMAdapt(num_classes, **options)


@hookimpl
def register_methods(register) -> None:
    """Register the ``emadapt`` method."""
    register(
        MethodSpec(
            name="emadapt",
            build=build,
            supervision="image",
            outputs={"scores", "score_maps", "mask"},
            options=OPTIONS,
            recipes=RECIPES,
            description="EM-Adapt: DeepLab-style FCN trained from image labels; E-step = adaptive class biases "
                        "(present classes cover a target share, absent ones none), M-step = pixel cross-entropy",
            paper=PAPER,
            late_options=LATE_OPTIONS,
        )
    )
