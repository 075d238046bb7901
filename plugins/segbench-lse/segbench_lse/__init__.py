"""segbench-lse: log-sum-exp pooling (Pinheiro and Collobert, CVPR 2015) and SPLeaP (Kulkarni et al., ECCV 2016).

Registration only; torch and the models are imported when a method is built,
so ``segbench list`` stays fast.
"""

from __future__ import annotations

from segbench import MethodSpec, Recipe, hookimpl

__version__ = "0.1.0"

LSE_PAPER = (
    "P. O. Pinheiro, R. Collobert. From Image-level to Pixel-level Labeling with Convolutional Networks. CVPR 2015."
)
SPLEAP_PAPER = (
    "P. Kulkarni, F. Jurie, J. Zepeda, P. Perez, L. Chevallier. SPLeaP: Soft Pooling of Learned Parts for "
    "Image Classification. ECCV 2016."
)

BACKBONE_OPTIONS = {
    "backbone": "test_resnet",  # any timm model with features_only
    "out_index": 2,  # feature level the maps are computed on (timm out_indices; -1 = last)
    "output_stride": None,  # dilate the backbone to this stride (8, 16) where timm supports it
    "pretrained": False,  # timm's ImageNet weights (needs the hub or its cache)
    "weights": None,  # a local .pth/.safetensors file for the backbone (implies pretrained)
    "backbone_args": None,  # extra timm.create_model arguments, e.g. {"zero_init_last": False}
}
LSE_OPTIONS = {
    **BACKBONE_OPTIONS,
    "beta": 5.0,  # LSE sharpness, > 0: small = average pooling, large = max pooling
    "learn_beta": False,  # learn beta (as exp(log_beta), so it stays positive)
    "loss": "bce",  # bce (multi-label) | softmax (the paper's cross-entropy over classes)
    "dropout": 0.0,  # 2-D dropout on the features before the class-map convolution
}
SPLEAP_OPTIONS = {
    **BACKBONE_OPTIONS,
    "num_parts": 32,  # P learned part detectors
    "part_hidden": 0,  # 0: linear (1x1 conv) part detectors; > 0: 1x1 conv, ReLU, 1x1 conv (non-linear)
    "part_pool": "softmax",  # softmax-weighted mean | lse, per part over positions
    "beta": 5.0,  # initial sharpness of the soft pooling, > 0 (one per part)
    "learn_beta": True,  # learn each part's sharpness (as exp(log_beta))
    "dropout": 0.0,  # 2-D dropout on the features before the part detectors
}

SHAPES_BACKBONE = {
    "backbone": "test_resnet",
    "out_index": 2,  # layer2, stride 8: 8x8 maps at 64 px, 12x12 at 96 px
    "backbone_args": {"zero_init_last": False},  # timm zero-inits each block's last BN: slow start from scratch
}
SHAPES_TRAIN = {"batch_size": 32, "optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4, "schedule": "poly",
                "warmup_steps": 50, "threads": 2}
QUICK_DATA = {"image_size": 64, "num_train": 4000}
PAPER_TRAIN = {"steps": 2500, "batch_size": 40, "optimizer": "sgd", "lr": 1e-3, "head_lr_mult": 10.0,
               "momentum": 0.9, "weight_decay": 1e-4, "schedule": "poly", "warmup_steps": 0, "crop_size": 224,
               "scale_min": 0.9, "scale_max": 1.1, "eval_size": 224}
PAPER_BACKBONE = {"backbone": "vgg16", "out_index": 4, "pretrained": True, "backbone_args": None}


_SEGBENCH = "deviation: segbench's choice; the paper's value was not verified here"
_TRAIN_SOURCES = {k: _SEGBENCH for k in PAPER_TRAIN}
_BACKBONE_SOURCES = {
    "backbone": "deviation: ImageNet VGG16 conv1-conv5_3, segbench's stand-in for the paper's network",
    "out_index": "deviation: conv5_3 (stride 16), segbench's choice",
    "pretrained": "deviation: timm's ImageNet VGG16 weights, segbench's choice",
    "backbone_args": "segbench: timm's defaults, no extra arguments",
}
_TRAIN_DEVIATIONS = (
    "`steps`, `batch_size`, `optimizer`, `lr`, `head_lr_mult`, `momentum`, `weight_decay`: segbench's choices, "
    "not the paper's.",
    "`schedule`, `warmup_steps`, `crop_size`, `scale_min`, `scale_max`, `eval_size`: segbench's (poly, 224 px, "
    "random 0.9-1.1 scale).",
)
LSE_SOURCES = {
    **_TRAIN_SOURCES, **_BACKBONE_SOURCES,
    "beta": "deviation: the paper's r was not verified here; 5 is segbench's default",
    "loss": "deviation: softmax cross-entropy over classes, recalled from the paper (not verified)",
    "dropout": _SEGBENCH,
}
LSE_DEVIATIONS = (
    "`backbone`, `out_index`, `pretrained`: ImageNet VGG16 to conv5_3; the paper uses Overfeat's layers plus "
    "four extra conv layers.",
    "Trained on the benchmark's split; the paper trains on ImageNet images of the VOC classes (no VOC training "
    "images).",
    "No image-level prior, smoothing priors or superpixels at test time; masks come from the engine's "
    "score-map rule.",
    "`beta` 5 (the paper's r), `loss` softmax and `dropout` 0.5 were not verified against the paper.",
    *_TRAIN_DEVIATIONS,
)
SPLEAP_SOURCES = {
    **_TRAIN_SOURCES, **_BACKBONE_SOURCES,
    **{k: "deviation: segbench's reading of the paper's abstract; not verified"
       for k in ("num_parts", "part_hidden", "beta", "learn_beta", "dropout")},
}
SPLEAP_DEVIATIONS = (
    "Only the paper's abstract was read: the parts, the soft pooling and the recipe are segbench's reading of it.",
    "`num_parts`, `part_hidden`: 256 two-layer conv part detectors trained by back-propagation, not the paper's "
    "boosted part classifiers.",
    "`beta`, `learn_beta`: a learned softmax-weighted mean per part over the cells, segbench's parametric soft "
    "pooling.",
    "`backbone`, `out_index`, `pretrained`: regions are the cells of one ImageNet VGG16 conv5_3 map at one "
    "scale, not region proposals.",
    "`dropout` 0.5 is segbench's; the class maps (`score_maps`) are segbench's too: the paper classifies images "
    "only.",
    *_TRAIN_DEVIATIONS,
)


def _recipes(shapes_model: dict, paper_model: dict, paper_text: str, sources: dict,
             deviations: tuple[str, ...]) -> list[Recipe]:
    return [
        Recipe("quick", "CPU quickstart on shapes: tiny timm ResNet cut at stride 8, 64 px images, 4000 training "
               "images, AdamW, 1500 steps", train={**SHAPES_TRAIN, "steps": 1500}, model=shapes_model,
               data=QUICK_DATA),
        Recipe("bench", "shapes leaderboard (under 6 minutes on 2 cores): the quick model at the default 96 px, "
               "2400 steps", train={**SHAPES_TRAIN, "steps": 2400}, model=shapes_model, data={}),
        Recipe("paper", paper_text, train=PAPER_TRAIN, model=paper_model, data={"image_size": 224},
               sources=sources, deviations=deviations),
    ]


LSE_RECIPES = _recipes(
    {**SHAPES_BACKBONE, "beta": 5.0},
    {**PAPER_BACKBONE, "beta": 5.0, "loss": "softmax", "dropout": 0.5},
    "GPU: ImageNet-pretrained VGG16 cut after conv5_3 (stride 16), LSE beta 5, softmax cross-entropy, 224 px, "
    "SGD lr 1e-3 (x10 for the head), batch 40, 2500 steps (the paper used Overfeat plus four extra layers, "
    "trained on ImageNet images)",
    LSE_SOURCES, LSE_DEVIATIONS,
)
SPLEAP_RECIPES = _recipes(
    {**SHAPES_BACKBONE, "num_parts": 32, "beta": 5.0, "learn_beta": True},
    {**PAPER_BACKBONE, "num_parts": 256, "part_hidden": 512, "beta": 5.0, "learn_beta": True, "dropout": 0.5},
    "GPU: ImageNet-pretrained VGG16 cut after conv5_3 (stride 16), 256 non-linear part detectors, learned soft "
    "pooling, 224 px, SGD lr 1e-3 (x10 for the head), batch 40, 2500 steps (segbench's reading of the paper)",
    SPLEAP_SOURCES, SPLEAP_DEVIATIONS,
)


def build_lse(num_classes: int, **options):
    """Build a :class:`segbench_lse.model.LSENet` (imports torch)."""
    from segbench_lse.model import build_lse as build

    return build(num_classes, **options)


def build_spleap(num_classes: int, **options):
    """Build a :class:`segbench_lse.spleap.SPLeaP` (imports torch)."""
    from segbench_lse.spleap import build_spleap as build

    return build(num_classes, **options)


@hookimpl
def register_methods(register) -> None:
    """Register the ``lse`` and ``spleap`` methods."""
    register(
        MethodSpec(
            name="lse",
            build=build_lse,
            supervision="image",
            outputs={"scores", "score_maps"},
            options=LSE_OPTIONS,
            recipes=LSE_RECIPES,
            description="class maps from a 1x1 conv, log-sum-exp pooling (1/beta) log mean exp(beta z), image labels",
            paper=LSE_PAPER,
        )
    )
    register(
        MethodSpec(
            name="spleap",
            build=build_spleap,
            supervision="image",
            outputs={"scores", "score_maps"},
            options=SPLEAP_OPTIONS,
            recipes=SPLEAP_RECIPES,
            description="SPLeaP (small): learned part detectors, learned soft pooling per part, linear classifier",
            paper=SPLEAP_PAPER,
        )
    )
