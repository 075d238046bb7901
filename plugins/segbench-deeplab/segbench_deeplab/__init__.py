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
    "lr_mults": "head",  # head: the whole head at x head_lr_mult | caffe: the prototxt's lr_mult/decay_mult per layer
    "msc_scales": None,  # DeepLab v2's MSC: input scales (e.g. [1.0, 0.75, 0.5]), score maps max-fused; None = off
}
# options added after records existed, at the value that builds the model as before (kept out of config ids)
LATE_OPTIONS: dict[str, Any] = {"lr_mults": "head", "msc_scales": None}
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
                  "fc_kernel": 3, "fc6_rate": 12, "pool5a": True, "dropout": 0.5, "lr_mults": "caffe"},
        "train": {"steps": 6000, "batch_size": 20, "optimizer": "sgd", "lr": 1e-3, "head_lr_mult": 10.0,
                  "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step", "milestones": [2000, 4000],
                  "crop_size": 321, "hflip": True, "train_split": "trainaug"},
    },
    "v2": {
        "model": {"backbone": "resnet101", "pretrained": True, "output_stride": 8, "aspp_rates": [6, 12, 18, 24],
                  "aspp_channels": 0, "freeze_bn": True, "lr_mults": "caffe", "msc_scales": [1.0, 0.75, 0.5]},
        "train": {"steps": 20000, "batch_size": 10, "optimizer": "sgd", "lr": 2.5e-4, "head_lr_mult": 10.0,
                  "momentum": 0.9, "weight_decay": 5e-4, "schedule": "poly", "poly_power": 0.9,
                  "crop_size": 321, "scale_min": 0.5, "scale_max": 1.5, "hflip": True, "train_split": "trainaug"},
    },
    "v3": {
        "model": {"backbone": "resnet101", "pretrained": True, "output_stride": 16, "eval_output_stride": 8,
                  "multi_grid": [1, 2, 4], "aspp_rates": [6, 12, 18], "aspp_channels": 256,
                  "eval_scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "eval_flip": True},
        "train": {"steps": 30000, "batch_size": 16, "optimizer": "sgd", "lr": 7e-3, "momentum": 0.9,
                  "weight_decay": 1e-4, "schedule": "poly", "poly_power": 0.9, "crop_size": 513,
                  "scale_min": 0.5, "scale_max": 2.0, "hflip": True, "train_split": "trainaug"},
    },
    "v3plus": {
        "model": {"backbone": "resnet101", "pretrained": True, "output_stride": 16, "eval_output_stride": 8,
                  "multi_grid": [1, 2, 4], "aspp_rates": [6, 12, 18], "aspp_channels": 256,
                  "eval_scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "eval_flip": True},
        "train": {"steps": 30000, "batch_size": 16, "optimizer": "sgd", "lr": 7e-3, "momentum": 0.9,
                  "weight_decay": 1e-4, "schedule": "poly", "poly_power": 0.9, "crop_size": 513,
                  "scale_min": 0.5, "scale_max": 2.0, "hflip": True, "train_split": "trainaug"},
    },
}
# v1 and v2 report their headline numbers after the fully connected CRF (segbench-densecrf); --postprocess none
# gives the networks alone (the papers' "before CRF" rows). v1 keeps the post-processor's defaults (DeepLab-LargeFOV's
# v1 values); v2 gets the v2 release's run_densecrf.sh values (theta_alpha 49 where v1 has 121).
_PAPER_POSTPROCESS = {"v1": ("densecrf",), "v2": ("densecrf",)}
_PAPER_POSTPROCESS_OPTIONS = {
    "v2": {"densecrf": {"iterations": 10, "bilateral_weight": 4.0, "theta_alpha": 49.0, "theta_beta": 5.0,
                        "gaussian_weight": 3.0, "theta_gamma": 3.0}},
}
_PAPER_TEXT = {
    "v1": "GPU: ImageNet VGG16 (fc6/fc7 decimated to 1024 x 3x3), LargeFOV at output stride 8; SGD momentum 0.9, "
          "lr 1e-3 (x10 on the head), weight decay 5e-4, batch 20, 321 px crops, 6000 iterations, x0.1 every "
          "2000, on VOC 2012 trainaug where the dataset has it; predictions refined by the dense CRF "
          "(--postprocess none: without)",
    "v2": "GPU: ImageNet ResNet-101 (batch norm frozen), ASPP-L (6, 12, 18, 24) at output stride 8, multi-scale "
          "inputs (MSC: scales 1, 0.75, 0.5, max fusion, a loss per scale and on the fused map); SGD momentum "
          "0.9, lr 2.5e-4 (x10 on ASPP), poly 0.9, weight decay 5e-4, batch 10, 321 px crops, random scale "
          "0.5-1.5, 20000 iterations, on VOC 2012 trainaug where the dataset has it; predictions refined by the "
          "dense CRF with the v2 release's parameters (--postprocess none: without)",
    "v3": "GPU: ImageNet ResNet-101, output stride 16 in training and 8 in evaluation, multi-grid (1, 2, 4), ASPP "
          "(6, 12, 18) with image pooling; SGD momentum 0.9, lr 7e-3, poly 0.9, batch 16, 513 px crops, random "
          "scale 0.5-2.0, 30000 iterations on VOC 2012 trainaug where the dataset has it; evaluation at scales "
          "0.5-1.75 with flips",
    "v3plus": "GPU: the v3 recipe plus the decoder (stride-4 features, 48-channel projection, two 3x3 convs)",
}

_V1 = "Chen et al. ICLR 2015"
_V2 = "Chen et al. TPAMI 2018"
_V3 = "Chen et al. arXiv:1706.05587"
_V3P = "Chen et al. ECCV 2018"
_LFOV = "DeepLab-LargeFOV release (copy: corenel/deeplab-public exper/voc12/config/deeplab_largeFOV)"
_TF = "tensorflow/models research/deeplab/train.py"
_CRF = ("the v2 release's run_densecrf.sh, as copied in yangyi02/segmentation_attention exper/run_densecrf.sh:21-32 "
        "and talent518/deeplab-public-ver2 exper/run_densecrf.sh:25-36")
_MSC_PORT = ("kazuto1011/deeplab-pytorch libs/models/msc.py:36-40 and main.py's training loop (a port of the "
             "Caffe release)")
_NOT_V2 = "deviation: not verified against the paper (the released ResNet-101 prototxts were not reachable here)"

_PAPER_SOURCES: dict[str, dict[str, str]] = {
    "v1": {
        "steps": f"{_LFOV} solver.prototxt:9 (max_iter 6000)",
        "batch_size": f"{_V2}, Sec. 4.1.1 (mini-batch of 20 images; the LargeFOV train.prototxt:30 has 30)",
        "optimizer": f"{_V2}, Sec. 4 (standard SGD)",
        "lr": f"{_V2}, Sec. 4.1.1 (initial learning rate 0.001)",
        "head_lr_mult": f"{_V2}, Sec. 4.1.1 and {_LFOV} train.prototxt:468-469 (x10 on the final classifier "
                        "fc8 only: lr_mults=caffe)",
        "lr_mults": f"{_LFOV} train.prototxt (blobs_lr 1/2 on every layer, 10/20 on fc8; weight_decay 1/0)",
        "momentum": f"{_V2}, Sec. 4.1.1",
        "weight_decay": f"{_V2}, Sec. 4.1.1",
        "schedule": f"{_V2}, Sec. 4.1.1 (x0.1 every 2000 iterations); {_LFOV} solver.prototxt:3-5",
        "milestones": f"{_V2}, Sec. 4.1.1 (every 2000 of the 6000 iterations)",
        "crop_size": f"{_LFOV} train.prototxt:37 (crop_size 321)",
        "hflip": f"{_LFOV} train.prototxt:38 (mirror: true)",
        "train_split": f"{_V2}, Sec. 4.1 and 4.1.1 (fine-tuned on trainaug, 10,582 images)",
        "backbone": f"{_V2}, Sec. 4.1.1 (ImageNet-pretrained VGG-16); deviation line on timm's weights",
        "pretrained": f"{_V2}, Sec. 4.1.1 (VGG-16 pre-trained on ImageNet)",
        "width": f"{_V2}, Sec. 3.1 and 4.1.1 (VGG-16 at full width)",
        "output_stride": f"{_V2}, Sec. 4 (scores subsampled by 8); {_LFOV} train.prototxt:372-385",
        "fc_channels": f"{_V2}, Sec. 4.1.1 (1,024 of the 4,096 fc6/fc7 filters) and Tab. 1",
        "fc_kernel": f"{_V2}, Tab. 1 (DeepLab-LargeFOV: 3x3)",
        "fc6_rate": f"{_V2}, Tab. 1 (r = 12); {_LFOV} train.prototxt:411-414",
        "pool5a": f"{_LFOV} train.prototxt:387-398 (pool5a: 3x3 average pooling, stride 1)",
        "dropout": f"{_LFOV} train.prototxt:429, 459 (dropout 0.5 after fc6 and fc7)",
    },
    "v2": {
        "steps": f"{_V2}, Sec. 4.1.2 (batch size 10 and 20K iterations)",
        "batch_size": f"{_V2}, Sec. 4.1.2",
        "optimizer": f"{_V2}, Sec. 4 (standard SGD)",
        "lr": f"{_NOT_V2}: 2.5e-4 for ResNet-101",
        "head_lr_mult": f"{_V2}, Sec. 4.1.1 (x10 on the final classifier; the ResNet ASPP branches are classifiers)",
        "lr_mults": f"{_V2}, Sec. 4.1.1 and the Caffe convention (bias lr x2, no bias decay; x10/x20 on the "
                    "ASPP classifiers)",
        "momentum": f"{_V2}, Sec. 4.1.1 (stated for the VGG-16 runs)",
        "weight_decay": f"{_V2}, Sec. 4.1.1 (stated for the VGG-16 runs)",
        "schedule": f"{_V2}, Sec. 4.1.2 (poly, used for all later experiments)",
        "poly_power": f"{_V2}, Sec. 4.1.2 (power = 0.9)",
        "crop_size": f"{_NOT_V2}: 321 as the v1 release ({_LFOV} train.prototxt:37)",
        "scale_min": f"{_V2}, Sec. 4.1.2 (random scaling from 0.5 to 1.5)",
        "scale_max": f"{_V2}, Sec. 4.1.2 (random scaling from 0.5 to 1.5)",
        "hflip": f"{_NOT_V2}: mirroring as the v1 release ({_LFOV} train.prototxt:38)",
        "train_split": f"{_V2}, Sec. 4.1 (trainaug, 10,582 images)",
        "backbone": f"{_V2}, Sec. 4.1.2 (ResNet-101)",
        "pretrained": f"{_V2}, Sec. 4 (ImageNet-pretrained); the best models also use MS-COCO (deviation line)",
        "output_stride": f"{_V2}, Sec. 4 (scores subsampled by 8)",
        "aspp_rates": f"{_V2}, Sec. 4.1.2 and Tab. 3 (ASPP-L: r = 6, 12, 18, 24)",
        "aspp_channels": f"{_NOT_V2}: one 3x3 conv to the classes per branch on ResNet-101 (Fig. 7 shows VGG's)",
        "freeze_bn": f"{_NOT_V2}: ResNet-101 batch norm fixed",
        "msc_scales": f"{_V2}, Sec. 3.2 and 4.1.2 (MSC: scales 1, 0.75, 0.5 through shared weights, score maps "
                      f"bilinearly resized to scale 1 and max-fused, in training and testing); the four losses "
                      f"(each scale and the fused map): {_MSC_PORT}",
        "postprocess.densecrf": f"{_CRF}: MAX_ITER 10, Bi_W 4, Bi_X_STD 49, Bi_R_STD 5, POS_W 3, POS_X_STD 3",
    },
    "v3": {
        "steps": f"{_V3}, Sec. 4.1 (30K iterations on trainaug)",
        "batch_size": f"{_V3}, Sec. 4.1 (batch size 16)",
        "optimizer": f"{_TF} (tf.train.MomentumOptimizer)",
        "lr": f"{_V3}, Sec. 4.1 (initial learning rate 0.007)",
        "momentum": f"{_TF}, flag momentum (0.9)",
        "weight_decay": f"{_TF}, flag weight_decay ('Use 0.0001 for ResNet model variants')",
        "schedule": f"{_V3}, Sec. 4.1 (poly)",
        "poly_power": f"{_V3}, Sec. 4.1 (power = 0.9)",
        "crop_size": f"{_V3}, Sec. 4.1 (crop size 513)",
        "scale_min": f"{_V3}, Sec. 4.1 (random scaling from 0.5 to 2.0)",
        "scale_max": f"{_V3}, Sec. 4.1 (random scaling from 0.5 to 2.0)",
        "hflip": f"{_V3}, Sec. 4.1 (random left-right flipping)",
        "train_split": f"{_V3}, Sec. 4 and 4.1 (trainaug, 10,582 images)",
        "backbone": f"{_V3}, Sec. 4 (ResNet-101)",
        "pretrained": f"{_V3}, Sec. 4 (ImageNet-pretrained ResNet)",
        "output_stride": f"{_V3}, Sec. 4.1 (output_stride = 16 in training)",
        "eval_output_stride": f"{_V3}, Sec. 4.3 and Tab. 6 (output_stride = 8 at inference)",
        "multi_grid": f"{_V3}, Sec. 4.3 and Tab. 5 (Multi_Grid = (1, 2, 4) with ASPP)",
        "aspp_rates": f"{_V3}, Sec. 3.3 (rates 6, 12, 18 at output_stride 16; doubled at 8)",
        "aspp_channels": f"{_V3}, Sec. 3.3 (256 filters and batch norm)",
        "eval_scales": f"{_V3}, Sec. 4.2 and Tab. 4 (scales 0.5 to 1.75)",
        "eval_flip": f"{_V3}, Sec. 4.2 and Tab. 4 (left-right flipped inputs)",
    },
}
_V3P_UNVERIFIED = "deviation: v3's value; its use in the v3+ ResNet-101 runs was not verified"
_PAPER_SOURCES["v3plus"] = {
    **{k: f"{_V3P}, Sec. 4 (the same training protocol as v3); " + v for k, v in _PAPER_SOURCES["v3"].items()
       if k not in ("eval_output_stride", "multi_grid", "eval_scales", "eval_flip")},
    "lr": f"{_V3P}, Sec. 4 (the same initial learning rate 0.007)",
    "crop_size": f"{_V3P}, Sec. 4 (crop size 513 x 513)",
    "schedule": f"{_V3P}, Sec. 4 (the same 'poly' policy)",
    "backbone": f"{_V3P}, Sec. 4 (ImageNet-1k pretrained ResNet-101 or modified aligned Xception)",
    "aspp_rates": f"{_V3P}: the v3 encoder; {_V3}, Sec. 3.3 (6, 12, 18)",
    "aspp_channels": f"{_V3P}: the v3 encoder; {_V3}, Sec. 3.3 (256)",
    **{k: _V3P_UNVERIFIED for k in ("eval_output_stride", "multi_grid", "eval_scales", "eval_flip")},
}

_COMMON_DEVIATIONS = {
    "vgg": "`backbone`, `pretrained`: timm vgg16.tv_in1k (torchvision weights, RGB, 2x2 pools 1-3), not the Caffe "
           "VGG16 (BGR, 3x3 pools).",
    "resnet": "`pretrained`: timm's resnet101.a1h_in1k ImageNet weights, not the papers' ResNet-101 "
              "(backbone=resnet101.tv_in1k is closer).",
    "shrink": "Loss on scores upsampled to the label size; the Caffe reference shrinks the labels by 8 "
              "(LargeFOV train.prototxt:486-496).",
}
_PAPER_DEVIATIONS: dict[str, tuple[str, ...]] = {
    "v1": (
        "fc6/fc7 keep every 4th of VGG's 4,096 filters (fc6 kernel subsampled); the paper keeps a random subset "
        "of 1,024.",
        _COMMON_DEVIATIONS["vgg"],
        _COMMON_DEVIATIONS["shrink"],
        "No multi-scale (MSc) skip classifiers: the paper's best model is DeepLab-MSc-CRF-LargeFOV.",
    ),
    "v2": (
        "No MS-COCO pretraining (`pretrained` is ImageNet only); the paper's best val/test models start from "
        "COCO.",
        _COMMON_DEVIATIONS["resnet"],
        "`lr` 2.5e-4, `crop_size` 321, `hflip`, `freeze_bn`, `aspp_channels` 0: recalled as the released "
        "ResNet-101 setup, not verified.",
        "Each MSC loss on scores upsampled to the label size; the Caffe reference shrinks the labels by 8 "
        "(LargeFOV train.prototxt:486-496).",
    ),
    "v3": (
        "No second stage: the paper then trains at output stride 8, BN frozen, lr 0.001, 30K steps on VOC 2012 "
        "trainval.",
        "Batch norm with PyTorch's momentum 0.1 (decay 0.9); the paper trains BN with decay 0.9997.",
        "timm ResNet-101 (7x7 stem) with `pretrained` timm resnet101.a1h_in1k weights, not the paper's TF "
        "ResNet-101.",
        "No MS-COCO or JFT-300M pretraining and no bootstrapping on hard images (the paper's test-set models).",
    ),
    "v3plus": (
        "`backbone` ResNet-101 (7x7 stem); the paper's best encoder is the modified aligned Xception "
        "(--set backbone=xception65 ...).",
        "`multi_grid`, `eval_output_stride`, `eval_scales`, `eval_flip`: v3's values, not verified for v3+'s "
        "ResNet-101 runs.",
        "No second stage at output stride 8 on trainval and no COCO / JFT pretraining (the paper's test-set "
        "models).",
        "Batch norm with PyTorch's momentum 0.1 (decay 0.9); the v3 paper trains BN with decay 0.9997.",
        _COMMON_DEVIATIONS["resnet"],
    ),
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
               model=dict(_PAPER[version]["model"]), postprocess=_PAPER_POSTPROCESS.get(version, ()),
               postprocess_options=_PAPER_POSTPROCESS_OPTIONS.get(version, {}),
               sources=dict(_PAPER_SOURCES[version]), deviations=_PAPER_DEVIATIONS[version]),
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
            late_options=dict(LATE_OPTIONS),
        )
        for version in ("v1", "v2", "v3", "v3plus")
    ]


@hookimpl
def register_methods(register) -> None:
    """Register deeplab_v1, deeplab_v2, deeplab_v3 and deeplab_v3plus."""
    for spec in method_specs():
        register(spec)
