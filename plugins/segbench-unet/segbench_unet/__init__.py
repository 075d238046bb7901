"""segbench-unet: U-Net (Ronneberger, Fischer, Brox) with the overlap-tile strategy, as a segbench plugin.

Registration only; torch and the model are imported when the method is built,
so ``segbench list`` stays fast.
"""

from __future__ import annotations

from typing import Any

from segbench import MethodSpec, Recipe, hookimpl

__version__ = "0.1.0"

PAPER = (
    "O. Ronneberger, P. Fischer, T. Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
    "MICCAI 2015, LNCS 9351, pp. 234-241 (arXiv:1505.04597)."
)

OPTIONS: dict[str, Any] = {
    "depth": 4,  # 2x2 max-poolings in the contracting path (the paper: 4)
    "base_channels": 64,  # channels of the first level, doubled at each level (the paper: 64)
    "padding": "same",  # same (zero-padded 3x3 convolutions) | valid (the paper: unpadded, copies cropped)
    "batch_norm": True,  # batch norm after every 3x3 convolution (the paper has none)
    "dropout": 0.0,  # drop-out at the end of the contracting path (the paper uses drop-out there)
    "tile_size": 512,  # input tile of the overlap-tile inference (the paper: 572 with valid padding); 0 = off
    "tile_overlap": None,  # context margin of each tile, >= the receptive context radius; None = the smallest exact
    "weight_map": False,  # weight the loss by the paper's w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / 2 sigma^2) (eq. 2)
    "w0": 10.0,  # the weight map's border weight (the paper: 10)
    "sigma": 5.0,  # the weight map's border width in pixels (the paper: about 5)
}
# Options added after records of unet existed, at the value that trains as before (kept out of config ids there).
LATE_OPTIONS: dict[str, Any] = {"weight_map": False, "w0": 10.0, "sigma": 5.0}

_SMALL = {"depth": 3, "base_channels": 8, "padding": "same", "batch_norm": True, "tile_size": 256}
_CPU_TRAIN = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "schedule": "cosine", "batch_size": 8,
              "channels_last": True, "threads": 1}

# The paper: SGD with momentum 0.99, one large tile per step (batch 1), unpadded convolutions, drop-out at the
# end of the contracting path, no batch norm. The learning rate and the number of steps are not in the paper.
_PAPER_TRAIN = {"steps": 50_000, "batch_size": 1, "optimizer": "sgd", "lr": 1e-2, "momentum": 0.99,
                "weight_decay": 0.0, "schedule": "constant", "warmup_steps": 0, "crop_size": 388,
                "scale_min": 1.0, "scale_max": 1.0, "hflip": True, "elastic_alpha": 5400.0, "elastic_sigma": 50.0}
_PAPER_MODEL = {"depth": 4, "base_channels": 64, "padding": "valid", "batch_norm": False, "dropout": 0.5,
                "tile_size": 572, "tile_overlap": None, "weight_map": True, "w0": 10.0, "sigma": 5.0}

_PAPER = "Ronneberger et al. MICCAI 2015"
_NOT_GIVEN = "deviation: not given in the paper; segbench's choice"
_PAPER_SOURCES = {
    "steps": _NOT_GIVEN,
    "batch_size": f"{_PAPER}, Sec. 3 (the batch reduced to a single image)",
    "optimizer": f"{_PAPER}, Sec. 3 (Caffe's stochastic gradient descent)",
    "lr": _NOT_GIVEN,
    "momentum": f"{_PAPER}, Sec. 3 (high momentum, 0.99)",
    "weight_decay": _NOT_GIVEN,
    "schedule": _NOT_GIVEN,
    "warmup_steps": _NOT_GIVEN,
    "crop_size": f"{_PAPER}, Fig. 1 (a 388 x 388 output tile of a 572 x 572 input)",
    "scale_min": f"{_PAPER}, Sec. 3.1 (shift, rotation, deformation and grey-value augmentation; no rescaling)",
    "scale_max": f"{_PAPER}, Sec. 3.1 (no rescaling)",
    "hflip": "deviation: flips (with the random crop's shifts) stand in for the paper's shifts and rotations "
             "(Sec. 3.1)",
    "elastic_alpha": f"{_PAPER}, Sec. 3.1 (random elastic deformations, displacements of 10 px standard "
                     "deviation): alpha 5400 gives a 10 px std at sigma 50 (measured on torchvision's field)",
    "elastic_sigma": "deviation: torchvision's ElasticTransform smoothed by sigma 50 px stands in for the paper's "
                     "coarse 3 x 3 grid with bicubic interpolation (Sec. 3.1)",
    "depth": f"{_PAPER}, Sec. 2 and Fig. 1 (four 2x2 max-poolings)",
    "base_channels": f"{_PAPER}, Fig. 1 (64 channels at the first level, doubled at each)",
    "padding": f"{_PAPER}, Sec. 2 (unpadded 3x3 convolutions; copies cropped)",
    "batch_norm": f"{_PAPER}, Sec. 2 (conv + ReLU, no normalisation)",
    "dropout": "deviation: the rate is not given; the paper has drop-out at the end of the contracting path "
               "(Sec. 3.1)",
    "tile_size": f"{_PAPER}, Fig. 1 and Fig. 2 (overlap-tile with 572 px input tiles)",
    "tile_overlap": "segbench: the smallest exact margin for the tiles (the network's receptive context)",
    "weight_map": f"{_PAPER}, Sec. 3, eq. 2 (w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / 2 sigma^2): class balance plus "
                  "the borders between touching cells)",
    "w0": f"{_PAPER}, Sec. 3 (w0 = 10)",
    "sigma": f"{_PAPER}, Sec. 3 (sigma ~ 5 pixels)",
}
_PAPER_DEVIATIONS = (
    "`weight_map` computed per training crop (w_c: the crop's class frequencies); the paper pre-computes it per "
    "image, frequencies over the training set.",
    "`elastic_sigma`: torchvision's smoothed random field (sigma 50, 10 px std), not the paper's 3 x 3 grid; "
    "`hflip` stands in for rotations.",
    "`lr`, `steps`, `schedule`, `weight_decay`, `warmup_steps`, `dropout` rate: not given in the paper "
    "(0.01, 50000, constant, 0, 0, 0.5).",
    "Training crops are mirrored at their borders (context not real); the paper trains on large tiles with real "
    "context.",
    "Runs on VOC / COCO / shapes; the paper's tasks are EM stacks and cell tracking (two classes), not "
    "comparable numbers.",
)

RECIPES = [
    Recipe(
        "quick",
        "CPU quickstart on shapes (about 2.5 minutes): U-Net depth 3, 8 base channels, same padding, batch norm, "
        "96 px, 4000 training images, 1200 AdamW steps of 8 images, cosine, 1 thread",
        train={**_CPU_TRAIN, "steps": 1200, "warmup_steps": 100},
        model=dict(_SMALL),
        data={"image_size": 96, "num_train": 4000},
    ),
    Recipe(
        "bench",
        "shapes leaderboard (<= 6 minutes on 2 cores): the quick network, 10000 training images, 2800 AdamW "
        "steps of 8 images, cosine, 1 thread",
        train={**_CPU_TRAIN, "steps": 2800, "warmup_steps": 200},
        model=dict(_SMALL),
        data={"image_size": 96, "num_train": 10000},
    ),
    Recipe(
        "paper",
        "GPU: the paper's U-Net (depth 4, 64 channels, valid padding, no batch norm, drop-out 0.5), 572 px input "
        "tiles -> 388 px outputs (crop 388 mirrored by 92 px), the paper's weight map (w0 10, sigma 5), SGD "
        "momentum 0.99, batch 1, lr 0.01 (not given in the paper), 50000 steps, elastic deformations "
        "(10 px std) and flips",
        train=dict(_PAPER_TRAIN),
        model=dict(_PAPER_MODEL),
        sources=dict(_PAPER_SOURCES),
        deviations=_PAPER_DEVIATIONS,
    ),
]


def build_unet(num_classes: int, **options: Any):
    """Build a U-Net: ``build(num_classes, **options) -> UNet``."""
    from segbench_unet.model import UNet

    return UNet(num_classes, **options)


def method_specs() -> list[MethodSpec]:
    """The U-Net method spec."""
    return [
        MethodSpec(
            name="unet",
            build=build_unet,
            supervision="pixel",
            outputs={"mask", "score_maps", "scores"},
            options=dict(OPTIONS),
            recipes=RECIPES,
            description="U-Net: contracting/expanding paths with feature copies; overlap-tile inference "
                        "(mirrored borders, exact and memory-bounded for any image size)",
            paper=PAPER,
            late_options=dict(LATE_OPTIONS),
        )
    ]


@hookimpl
def register_methods(register) -> None:
    """Register unet."""
    for spec in method_specs():
        register(spec)
