"""segbench-maskrcnn: Mask R-CNN (He, Gkioxari, Dollar, Girshick, ICCV 2017) from torchvision, as a segbench plugin.

Registration only; torch, torchvision and the model are imported when the
method is built, so ``segbench list`` stays fast.
"""

from __future__ import annotations

from typing import Any

from segbench import MethodSpec, Recipe, hookimpl

__version__ = "0.1.0"

PAPER = (
    "K. He, G. Gkioxari, P. Dollar, R. Girshick. Mask R-CNN. ICCV 2017 (arXiv:1703.06870); "
    "the network is torchvision's maskrcnn_resnet50_fpn."
)

OPTIONS: dict[str, Any] = {
    "backbone": "resnet50_fpn",  # resnet{18,34,50,101,152}_fpn (torchvision) or any timm model name (+ an FPN)
    "pretrained": False,  # false | true = imagenet (the body's classifier weights) | coco (torchvision's Mask R-CNN)
    "weights": None,  # a local .pth/.safetensors file: a whole Mask R-CNN (e.g. a segbench run) or the body
    "backbone_args": None,  # extra timm.create_model arguments for a timm backbone, e.g. {"zero_init_last": false}
    "trainable_layers": None,  # torchvision ResNets: stages trained (0-5); None: 3 when pretrained, else 5
    "fpn_strides": [4, 8, 16, 32],  # body maps fed to the FPN (ResNet layer1..layer4); a max-pooled level is added
    "out_channels": 256,  # FPN width
    "anchor_sizes": [32, 64, 128, 256, 512],  # one anchor size (pixels) per pyramid level
    "aspect_ratios": [0.5, 1.0, 2.0],
    "image_min_size": 800,  # torchvision's min_size: shorter side in the detector (list: one at random per
    #                         training image, the last in evaluation); 0 = keep the size the engine gives
    "image_max_size": 1333,  # torchvision's max_size: longer side at most
    "rpn_pre_nms_top_n_train": 2000,  # proposals kept per level before NMS (training)
    "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_train": 2000,  # proposals kept per image after NMS (training)
    "rpn_post_nms_top_n_test": 1000,
    "rpn_batch_size_per_image": 256,  # anchors sampled per image for the RPN loss
    "box_batch_size_per_image": 512,  # RoIs sampled per image for the box and mask heads (1/4 positive)
    "box_detections_per_img": 100,
    "box_score_thresh": 0.05,  # detections kept above this score
    "representation_size": 1024,  # width of the box head's two fully connected layers
    "mask_head_channels": 256,  # width of the mask head's 3x3 convolutions
    "mask_head_layers": 4,  # number of those convolutions
    "instance_mask_threshold": 0.5,  # instance mask = probability >= this
    "mask_score_threshold": 0.5,  # instances pasted into the label map `mask` need this score
    "background": 0,  # the dataset's background class index (detector label 0)
}

PAPER_TRAIN = {
    "steps": 90_000, "batch_size": 16, "optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4,
    "schedule": "step", "milestones": [60_000, 80_000], "warmup_steps": 500, "hflip": True, "eval_batch_size": 8,
    "crop_size": 0,  # whole images: the engine pads a batch, the model cuts each image back before its resize
}
PAPER_MODEL = {"backbone": "resnet50_fpn", "pretrained": "imagenet", "image_min_size": 800,
               "image_max_size": 1333}

# the small CPU network on shapes: a tiny timm ResNet from scratch, narrow FPN and heads, few proposals
SMALL_MODEL = {
    "backbone": "test_resnet",
    "backbone_args": {"zero_init_last": False},  # timm zero-inits each block's last BN: a slow start from scratch
    "fpn_strides": [4, 8, 16, 32],
    "out_channels": 64,
    "anchor_sizes": [16, 32, 64, 128, 256],  # objects are 12-43 px at 96 px
    "image_min_size": 0,  # keep the dataset's image size
    "rpn_pre_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_train": 100,
    "rpn_post_nms_top_n_test": 100,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 64,
    "box_detections_per_img": 20,
    "representation_size": 256,
    "mask_head_channels": 64,
    "mask_head_layers": 2,
}
CPU_TRAIN = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-4, "schedule": "cosine", "batch_size": 4,
             "eval_batch_size": 16, "threads": 1, "grad_clip": 10.0}

_PAPER = "He et al. ICCV 2017"
_DET = "facebookresearch/Detectron"
_DET1X = f"{_DET} configs/12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml"
PAPER_SOURCES = {
    "steps": f"{_DET1X}:13 (MAX_ITER 90000, the 1x schedule); the paper: 160k (deviation line)",
    "batch_size": f"{_PAPER}, Sec. 3.1 (8 GPUs x 2 images: an effective mini-batch of 16)",
    "optimizer": f"{_PAPER}, Sec. 3.1 (SGD, momentum 0.9)",
    "lr": f"{_PAPER}, Sec. 3.1 (learning rate 0.02); {_DET1X}:11",
    "momentum": f"{_PAPER}, Sec. 3.1",
    "weight_decay": f"{_PAPER}, Sec. 3.1 (0.0001); {_DET1X}:9",
    "schedule": f"{_PAPER}, Sec. 3.1 (decreased by 10); {_DET1X}:10-12 (steps_with_decay, gamma 0.1)",
    "milestones": f"{_DET1X}:14 (steps at 60000 and 80000); the paper: 120k of 160k (deviation line)",
    "warmup_steps": f"{_DET} detectron/core/config.py:628 (WARM_UP_ITERS 500; from 1/3 of the lr, :631)",
    "hflip": f"{_DET} detectron/core/config.py:112 (TRAIN.USE_FLIPPED True)",
    "eval_batch_size": "segbench: evaluation batch size (does not change the predictions)",
    "crop_size": f"{_DET1X}:35-36 (no crop: each whole image resized to shorter side 800, longer <= 1333)",
    "backbone": f"{_PAPER}, Sec. 3 (ResNet-50-FPN); {_DET1X}:3",
    "pretrained": f"{_DET1X}:33 (ImageNet R-50); torchvision's ImageNet ResNet-50 here (deviation line)",
    "image_min_size": f"{_PAPER}, Sec. 3.1 (shorter edge 800 pixels); {_DET1X}:35",
    "image_max_size": f"{_DET1X}:36 (MAX_SIZE 1333)",
}
PAPER_DEVIATIONS = (
    "`steps`, `milestones`: Detectron's 1x schedule (90k, x0.1 at 60k and 80k); the paper trains 160k iterations, "
    "x0.1 at 120k.",
    "`warmup_steps`: linear from 0 over 500 steps; Detectron warms up from 1/3 of the lr (config.py:628-631).",
    "`pretrained`: torchvision's ImageNet ResNet-50, not Detectron's MSRA R-50.pkl.",
    "Network, losses and samplers are torchvision's maskrcnn_resnet50_fpn, not the authors' Detectron code.",
)

RECIPES = [
    Recipe(
        "quick",
        "CPU quickstart on shapes (about 2.5 minutes on an idle core): timm test_resnet from scratch + a "
        "64-channel FPN, 96 px, few proposals and small heads, 400 AdamW steps of 4 images, 1 thread",
        train={**CPU_TRAIN, "steps": 400, "warmup_steps": 30},
        model=dict(SMALL_MODEL),
        data={"image_size": 96},
    ),
    Recipe(
        "bench",
        "shapes leaderboard (about 9.5 minutes on 1 core): the quick network, 2000 AdamW steps of 4 images",
        train={**CPU_TRAIN, "steps": 2000, "warmup_steps": 50},
        model=dict(SMALL_MODEL),
        data={"image_size": 96},
    ),
    Recipe(
        "paper",
        "GPU: ResNet-50-FPN from ImageNet weights (frozen BN, stem and layer1 frozen), images 800 px "
        "(longer side <= 1333; whole images, no crop), SGD lr 0.02 momentum 0.9 weight "
        "decay 1e-4, batch 16, 90k steps with x0.1 at 60k and 80k (the 1x COCO schedule): see the README",
        train=PAPER_TRAIN,
        model=PAPER_MODEL,
        sources=PAPER_SOURCES,
        deviations=PAPER_DEVIATIONS,
    ),
]


def build(num_classes: int, **options: Any):
    """Build a :class:`segbench_maskrcnn.model.MaskRCNN` (imports torch and torchvision)."""
    from segbench_maskrcnn.model import MaskRCNN

    return MaskRCNN(num_classes, **options)


def method_spec() -> MethodSpec:
    """The ``mask_rcnn`` method spec."""
    return MethodSpec(
        name="mask_rcnn",
        build=build,
        supervision="instance",
        outputs={"instances", "mask", "score_maps", "scores"},
        options=dict(OPTIONS),
        recipes=RECIPES,
        description="Mask R-CNN: RPN + RoIAlign box and mask heads on a feature pyramid (torchvision); "
                    "also a label map, class score maps and class scores from its instances",
        paper=PAPER,
    )


@hookimpl
def register_methods(register) -> None:
    """Register ``mask_rcnn``."""
    register(method_spec())
