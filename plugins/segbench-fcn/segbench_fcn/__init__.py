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
    "lr_mults": "head",  # head: backbone x1, the rest x head_lr_mult | caffe: biases x2 lr, no bias decay
}

_SMALL = {"backbone": "test_resnet", "fc_channels": 256, "fc_kernel": 3, "dropout": 0.0}
_CPU_TRAIN = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "schedule": "cosine", "batch_size": 8,
              "channels_last": True, "threads": 1}

# PAMI "heavy" all-at-once learning, as voc-fcn8s-atonce / voc-fcn32s in the reference repository: whole images
# (crop_size 0: no crop, one image per step), trained on VOC 2012 trainaug where the dataset has it.
_PAPER_TRAIN = {"steps": 300_000, "batch_size": 1, "optimizer": "sgd", "lr": 1e-10, "momentum": 0.99,
                "weight_decay": 5e-4, "schedule": "constant", "warmup_steps": 0, "head_lr_mult": 1.0,
                "hflip": False, "crop_size": 0, "train_split": "trainaug"}
_PAPER_MODEL = {"backbone": "vgg16", "pretrained": True, "fc_channels": 4096, "fc_kernel": 7, "dropout": 0.5,
                "taps": "pool", "learn_upsampling": False, "loss_reduction": "sum", "lr_mults": "caffe"}

_REF = "shelhamer/fcn.berkeleyvision.org"
_REF_DIR = {"32s": "voc-fcn32s", "16s": "voc-fcn8s-atonce", "8s": "voc-fcn8s-atonce"}  # 16s: no at-once reference


def _paper_sources(variant: str) -> dict[str, str]:
    d = f"{_REF} {_REF_DIR[variant]}"
    iterations = {"32s": "25 x 4000 = 100,000", "16s": "75 x 4000 = 300,000", "8s": "75 x 4000 = 300,000"}[variant]
    up, loss = ("58-61", "63-64") if variant == "32s" else ("59-62, 72-75, 85-88", "91-92")
    sources = {
        "steps": f"{d}/solve.py:30-31 ({iterations} iterations; solver.prototxt:15)",
        "batch_size": f"{_REF} voc_layers.py:180-186 (one image per step, the net reshaped to it)",
        "optimizer": f"{d}/solve.py:20 (caffe.SGDSolver)",
        "lr": f"{d}/solver.prototxt:10 (base_lr 1e-10 for the unnormalised loss)",
        "momentum": f"{d}/solver.prototxt:12",
        "weight_decay": f"{d}/solver.prototxt:16",
        "schedule": f"{d}/solver.prototxt:8 (lr_policy fixed)",
        "warmup_steps": f"{d}/solver.prototxt:8 (fixed lr from the first iteration)",
        "head_lr_mult": f"{d}/net.py:8 (lr_mult 1 on every weight; score layers the same)",
        "hflip": f"{_REF} voc_layers.py:180-200 (SBDDSegDataLayer: no mirroring, no cropping)",
        "crop_size": f"{_REF} voc_layers.py:180-186 (whole images; the net is reshaped to each one)",
        "train_split": f"deviation: trainaug (10,582 images); the reference trains on SBD train, 8,498 "
                       f"({d}/net.py:18-20)",
        "backbone": f"{_REF} README.md:26 (ILSVRC VGG-16); deviation line on timm's torchvision weights",
        "pretrained": f"{d}/solve.py:14 (vgg16-fcn.caffemodel: VGG16 with fc6/fc7 as convolutions)",
        "fc_channels": f"{d}/net.py:52-54 (fc6, fc7: 4096)",
        "fc_kernel": f"{d}/net.py:52 (fc6 7 x 7)",
        "dropout": f"{d}/net.py:53, 55 (dropout 0.5 after fc6 and fc7)",
        "taps": f"{d}/net.py:39, 44 (pool3 / pool4: 2 x 2 max-pools of conv3_3 / conv4_3)",
        "learn_upsampling": f"{d}/net.py:{up} (upsampling deconvolutions at lr_mult 0: fixed bilinear)",
        "loss_reduction": f"{d}/net.py:{loss} (SoftmaxWithLoss, normalize=False)",
        "lr_mults": f"{d}/net.py:8 (param lr_mult 1 / 2, decay_mult 1 / 0 on every conv)",
    }
    if variant == "16s":
        dev = "deviation: no at-once FCN-16s in the reference; voc-fcn8s-atonce's value"
        sources.update({
            "steps": f"{dev} ({d}/solve.py:30-31: 300,000); voc-fcn16s: 100,000 from FCN-32s",
            "lr": f"{dev} ({d}/solver.prototxt:10: 1e-10); voc-fcn16s: 1e-12 (voc-fcn16s/solver.prototxt:10)",
            "pool4_scale": f"{dev} ({d}/net.py:65-66: pool4 x 0.01); voc-fcn16s has none (voc-fcn16s/net.py:63)",
        })
    if variant == "8s":
        sources["pool4_scale"] = f"{d}/net.py:65-66 (scale_pool4 0.01)"
        sources["pool3_scale"] = f"{d}/net.py:78-79 (scale_pool3 0.0001)"
    return sources


def _paper_deviations(variant: str) -> tuple[str, ...]:
    d = _REF_DIR[variant]
    lines = []
    if variant == "16s":
        lines += [
            "No at-once FCN-16s in the reference: `steps`, `lr`, `pool4_scale` are voc-fcn8s-atonce's (300k, 1e-10, "
            "pool4 x 0.01).",
            "voc-fcn16s is staged: from a trained FCN-32s, lr 1e-12, 100k iterations, no pool4 scaling "
            "(voc-fcn16s/solve.py:14).",
            "Staged training: the `staged` recipe (voc-fcn16s: lr 1e-12, 100k) with --init a finished fcn32s run.",
        ]
    if variant == "8s":
        lines.append("At-once FCN-8s (voc-fcn8s-atonce, 65.4 seg11valid); the headline voc-fcn8s (65.5) is staged "
                     "from FCN-16s at lr 1e-14.")
    lines += [
        f"`train_split` trainaug (10,582 images); the reference trains on SBD train only, 8,498 ({d}/net.py:18-20).",
        "Evaluated on VOC 2012 val (1,449 images); the reference reports seg11valid (VOC 2011 val minus SBD train).",
        "`backbone`: timm vgg16.tv_in1k (torchvision weights, RGB, ImageNet mean/std), not the Caffe VGG16 (BGR, "
        "mean-subtracted).",
        f"No 100 px input padding: fc6 is padded to keep sizes and fusions resize; the reference pads 100 px and "
        f"crops ({d}/net.py:28).",
    ]
    return tuple(lines)


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
            f"weight decay 5e-4, fixed lr, {steps} iterations of whole images, fixed bilinear upsampling"
            + (", skip inputs scaled as in the at-once reference" if skips else "")
            + ", on VOC 2012 trainaug where the dataset has it"
            + ("; no at-once FCN-16s exists in the reference: FCN-8s at-once's settings" if variant == "16s" else ""),
            train={**_PAPER_TRAIN, "steps": steps},
            model={**_PAPER_MODEL, **skips},
            sources=_paper_sources(variant),
            deviations=_paper_deviations(variant),
        ),
    ]


_STAGED = {  # the PAMI staged protocol: each net from the trained coarser one (voc-fcn16s, voc-fcn8s)
    "16s": {"lr": 1e-12, "from": "fcn32s"},
    "8s": {"lr": 1e-14, "from": "fcn16s"},
}


def _staged_recipe(variant: str) -> Recipe:
    """``staged``: voc-fcn16s / voc-fcn8s, started with ``--init`` from a finished run of the coarser net."""
    stage, d = _STAGED[variant], f"voc-fcn{variant}"
    return Recipe(
        "staged",
        f"GPU: FCN-{variant} staged as the reference {d}: --init a finished {stage['from']} paper run, lr "
        f"{stage['lr']:g}, 100000 iterations, no skip scaling; otherwise as the paper recipe",
        train={**_PAPER_TRAIN, "steps": 100_000, "lr": stage["lr"]},
        model=dict(_PAPER_MODEL),
        sources={**_paper_sources("32s"), "steps": f"{_REF} {d}/solve.py:30-31 (100,000 iterations)",
                 "lr": f"{_REF} {d}/solver.prototxt:10 (base_lr {stage['lr']:g})",
                 "pool4_scale": f"{_REF} {d}/net.py (no scaling layers)"},
        deviations=tuple(line.replace("voc-fcn32s", d) for line in _paper_deviations("32s")),
        requires_init=f"a finished {stage['from']} run (PAMI staged training: segbench run --method "
                      f"{stage['from']} --recipe paper, then --init ITS_RUN_ID)",
    )


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
            recipes=_recipes(variant) + ([_staged_recipe(variant)] if variant in _STAGED else []),
            description=_DESCRIPTIONS[variant],
            paper=PAPER,
            late_options={"lr_mults": "head"},
        )
        for variant in ("32s", "16s", "8s")
    ]


@hookimpl
def register_methods(register) -> None:
    """Register fcn32s, fcn16s and fcn8s."""
    for spec in method_specs():
        register(spec)
