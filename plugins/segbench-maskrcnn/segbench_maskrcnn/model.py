"""Mask R-CNN (He, Gkioxari, Dollar, Girshick) from torchvision's detection models, with segbench's method API.

:class:`MaskRCNN` *is* ``torchvision.models.detection.MaskRCNN`` (same modules,
same state dict keys, so torchvision's COCO checkpoint loads into it), built
with the sizes given as options, plus:

* ``loss(images, targets)``: segbench targets -> torchvision targets (crowd
  instances and degenerate boxes dropped, classes mapped to 1..K), and
  torchvision's five losses;
* ``predict(images)``: ``instances`` (bool masks), ``mask``, ``score_maps`` and
  ``scores`` (see :mod:`segbench_maskrcnn.outputs`).

The images arrive normalised by the engine, so the detector's transform does
not normalise again; it resizes only when ``image_min_size`` is set.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torchvision.models.detection import mask_rcnn as tv_mask_rcnn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from segbench.errors import ConfigError, DataError
from segbench_maskrcnn import outputs
from segbench_maskrcnn.backbones import (
    TORCHVISION_BACKBONES,
    build_backbone,
    is_torchvision,
    load_matching,
    read_state_dict,
    torchvision_state_dict,
)

# class-specific layers: re-initialised when a checkpoint was trained for another number of classes
CLASS_LAYERS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


class DetectorTransform(GeneralizedRCNNTransform):
    """torchvision's transform without normalisation (segbench normalises), resizing only when ``min_size``.

    ``min_size=None`` keeps each image at the size it arrives in; otherwise
    torchvision's rule (shorter side to ``min_size``, a random choice in
    training when several are given, longer side at most ``max_size``).
    """

    def __init__(self, min_size: Sequence[int] | None, max_size: int) -> None:
        super().__init__(min_size or (0,), max_size, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
        self.keep_size = not min_size

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def resize(self, image, target=None):
        if self.keep_size:
            return image, target
        return super().resize(image, target)


class MaskRCNN(tv_mask_rcnn.MaskRCNN):
    """torchvision's Mask R-CNN for ``num_classes`` dataset classes (background included) with segbench's API."""

    def __init__(self, num_classes: int, **options: Any) -> None:
        opts = check_options(num_classes, options)
        weights = opts["weights"]
        weights_state = read_state_dict(weights) if weights else None
        whole_model = weights_state is not None and _is_detector_state(weights_state)
        pretrained = False if whole_model else opts["pretrained"]  # a whole model's file replaces every weight
        imagenet = pretrained in (True, "imagenet")
        coco_state = None
        if pretrained == "coco":  # fetched first: offline, fail before building anything
            coco_state = torchvision_state_dict(tv_mask_rcnn.MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url,
                                                "Mask R-CNN ResNet-50-FPN COCO")
        torchvision_body = is_torchvision(opts["backbone"])
        frozen_bn = torchvision_body and (bool(pretrained) or weights is not None)
        backbone = build_backbone(
            opts["backbone"], imagenet=imagenet,
            timm_weights=weights if (weights and not whole_model and not torchvision_body) else None,
            trainable_layers=opts["trainable_layers"],
            out_channels=opts["out_channels"], fpn_strides=opts["fpn_strides"], frozen_bn=frozen_bn,
            timm_args=opts["backbone_args"],
        )
        levels = [str(i) for i in range(len(opts["fpn_strides"]))]
        anchors = AnchorGenerator(tuple((s,) for s in opts["anchor_sizes"]),
                                  (tuple(opts["aspect_ratios"]),) * len(opts["anchor_sizes"]))
        box_pool = MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2)
        mask_pool = MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2)
        rep, width = opts["representation_size"], opts["mask_head_channels"]
        fg = [c for c in range(num_classes) if c != opts["background"]]
        super().__init__(
            backbone,
            num_classes=None,
            rpn_anchor_generator=anchors,
            rpn_pre_nms_top_n_train=opts["rpn_pre_nms_top_n_train"],
            rpn_pre_nms_top_n_test=opts["rpn_pre_nms_top_n_test"],
            rpn_post_nms_top_n_train=opts["rpn_post_nms_top_n_train"],
            rpn_post_nms_top_n_test=opts["rpn_post_nms_top_n_test"],
            rpn_batch_size_per_image=opts["rpn_batch_size_per_image"],
            box_roi_pool=box_pool,
            box_head=TwoMLPHead(backbone.out_channels * 7 * 7, rep),
            box_predictor=FastRCNNPredictor(rep, len(fg) + 1),
            box_score_thresh=opts["box_score_thresh"],
            box_detections_per_img=opts["box_detections_per_img"],
            box_batch_size_per_image=opts["box_batch_size_per_image"],
            mask_roi_pool=mask_pool,
            mask_head=tv_mask_rcnn.MaskRCNNHeads(backbone.out_channels, [width] * opts["mask_head_layers"], 1),
            mask_predictor=tv_mask_rcnn.MaskRCNNPredictor(width, width, len(fg) + 1),
        )
        self.transform = DetectorTransform(opts["image_min_size"], opts["image_max_size"])
        self.options = opts
        self.num_classes = num_classes
        self.background = opts["background"]
        # dataset class -> detector label (1..K, 0 = background) and back
        to_label = torch.full((num_classes,), -1, dtype=torch.int64)
        to_label[fg] = torch.arange(1, len(fg) + 1)
        self.register_buffer("to_label", to_label, persistent=False)
        self.register_buffer("to_class", torch.tensor([opts["background"], *fg], dtype=torch.int64),
                             persistent=False)
        if coco_state is not None:
            self._load_detector(coco_state, "torchvision's COCO checkpoint")
            from torchvision.models.detection._utils import overwrite_eps

            overwrite_eps(self, 0.0)  # as torchvision does for these weights
        if whole_model:
            self._load_detector(weights_state, str(weights))
        elif weights_state is not None and torchvision_body:  # the ResNet classifier's weights
            loaded, problems = load_matching(self.backbone.body, weights_state)
            if not loaded or problems:
                raise ConfigError(f"mask_rcnn: {weights} is neither a Mask R-CNN nor a {opts['backbone'][:-4]} "
                                  f"state dict ({problems[0] if problems else 'no tensor fits'})")

    def _load_detector(self, state: dict, source: str) -> None:
        loaded, problems = load_matching(self, state, skip=CLASS_LAYERS)
        if problems:
            raise ConfigError(f"mask_rcnn: weights from {source} do not fit the options "
                              f"({len(problems)} tensors, e.g. {problems[0]}); use the default head sizes")

    # -- segbench method API -------------------------------------------------------------
    def loss(self, images: torch.Tensor, targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """torchvision's five Mask R-CNN losses (RPN objectness and box, classifier, box regression, mask).

        Each image is cut back to its ``valid_size`` (the engine pads a batch of
        different sizes), so the detector resizes the image itself, not its
        padding: objects get the paper's scale (shorter side 800).
        """
        if not self.training:
            raise RuntimeError("mask_rcnn: loss() needs training mode (call model.train())")
        full = tuple(images.shape[-2:])
        sizes = [tuple(t.get("valid_size") or full) for t in targets]
        crops = [image[:, :h, :w] for image, (h, w) in zip(images, sizes)]
        detector_targets = [self._detector_target(self._crop_target(t, full, size), i, size)
                            for i, (t, size) in enumerate(zip(targets, sizes))]
        return self(crops, detector_targets)

    @staticmethod
    def _crop_target(target: dict[str, Any], full, size) -> dict[str, Any]:
        """The instance masks of ``target`` without the batch padding (from ``full`` back to ``size``)."""
        masks = target.get("masks")
        if masks is None or tuple(size) == tuple(full):
            return target
        h, w = size
        return {**target, "masks": torch.as_tensor(masks).reshape(-1, *full)[:, :h, :w]}

    def _detector_target(self, target: dict[str, Any], index: int, size) -> dict[str, torch.Tensor]:
        device = self.to_label.device
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        classes = torch.as_tensor(target["classes"], dtype=torch.int64, device=device).reshape(-1)
        n = len(classes)
        masks = target.get("masks")
        masks = (torch.as_tensor(masks, device=device).reshape(n, *size) if masks is not None
                 else torch.zeros((n, *size), dtype=torch.bool, device=device))
        crowd = target.get("iscrowd")
        crowd = (torch.as_tensor(crowd, device=device).reshape(-1).bool() if crowd is not None
                 else torch.zeros(n, dtype=torch.bool, device=device))
        if len(boxes) != n or len(crowd) != n:
            raise DataError(f"mask_rcnn: target {index} has {len(boxes)} boxes, {n} classes, {len(crowd)} "
                            "iscrowd flags")
        if n and ((classes < 0) | (classes >= self.num_classes)).any():
            raise DataError(f"mask_rcnn: target {index} has classes outside 0..{self.num_classes - 1}")
        labels = self.to_label[classes]
        if (labels < 0).any():
            raise DataError(f"mask_rcnn: target {index} has an instance of the background class {self.background}")
        keep = ~crowd & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, masks = boxes[keep], masks[keep].bool() & box_regions(boxes[keep], size)
        return {"boxes": boxes, "labels": labels[keep], "masks": masks.to(torch.uint8)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, Any]]:
        """Per image: ``instances``, ``mask``, ``score_maps`` and ``scores`` at the input size."""
        was_training = self.training
        self.eval()
        try:
            detections = self(list(images))
        finally:
            self.train(was_training)
        return [self._prediction(d, images.shape[-2:]) for d in detections]

    def _prediction(self, detection: dict[str, torch.Tensor], size) -> dict[str, Any]:
        opts = self.options
        probs = detection["masks"].reshape(-1, *size).float()
        classes = self.to_class[detection["labels"]]
        scores = detection["scores"].float()
        masks = probs >= opts["instance_mask_threshold"]
        return {
            "instances": {"boxes": detection["boxes"].float(), "classes": classes, "scores": scores, "masks": masks},
            "mask": outputs.label_map(masks, classes, scores, self.background, opts["mask_score_threshold"]),
            "score_maps": outputs.score_maps(probs, classes, scores, self.num_classes, self.background),
            "scores": outputs.class_scores(classes, scores, self.num_classes, self.background),
        }


def box_regions(boxes: torch.Tensor, size) -> torch.Tensor:
    """bool ``[N, H, W]``: the pixels each XYXY box touches (its edges rounded outwards).

    Instance masks are cut to their boxes, a guard against targets whose masks
    spill outside their boxes (the engine's crop pads instance masks with 0).
    """
    h, w = size
    x1, y1 = boxes[:, 0].floor()[:, None], boxes[:, 1].floor()[:, None]
    x2, y2 = boxes[:, 2].ceil()[:, None], boxes[:, 3].ceil()[:, None]
    xs = torch.arange(w, device=boxes.device, dtype=boxes.dtype)[None]
    ys = torch.arange(h, device=boxes.device, dtype=boxes.dtype)[None]
    return ((ys >= y1) & (ys < y2))[:, :, None] & ((xs >= x1) & (xs < x2))[:, None, :]


def _is_detector_state(state: dict) -> bool:
    return any(k.startswith("roi_heads.") for k in state) and any(k.startswith("backbone.") for k in state)


# -- options ---------------------------------------------------------------------------------
def check_options(num_classes: int, options: dict[str, Any]) -> dict[str, Any]:
    """The options merged over the defaults and checked; a bad one is a one-line ``ConfigError``."""
    from segbench_maskrcnn import OPTIONS

    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ConfigError(f"mask_rcnn has no option(s) {', '.join(sorted(unknown))}; "
                          f"options: {', '.join(sorted(OPTIONS))}")
    o = {**OPTIONS, **options}

    def bad(key: str, rule: str) -> ConfigError:
        return ConfigError(f"mask_rcnn: option {key} {rule}, got {o[key]!r}")

    if not _is_int(num_classes) or num_classes < 2:
        raise ConfigError(f"mask_rcnn: num_classes must be an integer >= 2, got {num_classes!r}")
    if not _is_int(o["background"]) or not 0 <= o["background"] < num_classes:
        raise bad("background", f"must be the background class index in 0..{num_classes - 1}")
    if not isinstance(o["backbone"], str) or not o["backbone"]:
        raise bad("backbone", f"must be one of {', '.join(TORCHVISION_BACKBONES)} or a timm model name")
    if not (isinstance(o["pretrained"], bool) or o["pretrained"] in ("imagenet", "coco")):
        raise bad("pretrained", "must be false, true (= imagenet), imagenet or coco")
    if o["pretrained"] == "coco" and o["backbone"] != "resnet50_fpn":
        raise bad("pretrained", "coco needs backbone resnet50_fpn (torchvision's COCO Mask R-CNN)")
    if o["backbone_args"] is not None and not isinstance(o["backbone_args"], dict):
        raise bad("backbone_args", "must be a dict of timm.create_model arguments or None")
    if o["weights"] is not None and not isinstance(o["weights"], (str, os.PathLike)):
        raise bad("weights", "must be a file path or None")
    if o["trainable_layers"] is not None and (not _is_int(o["trainable_layers"])
                                              or not 0 <= o["trainable_layers"] <= 5):
        raise bad("trainable_layers", "must be None or an integer in 0..5")
    strides = o["fpn_strides"]
    if (not isinstance(strides, (list, tuple)) or not strides or not all(_is_int(s) and s > 0 for s in strides)
            or list(strides) != sorted(set(strides))):
        raise bad("fpn_strides", "must be a non-empty increasing list of positive integers")
    o["fpn_strides"] = tuple(strides)
    sizes = o["anchor_sizes"]
    if not isinstance(sizes, (list, tuple)) or not all(_is_number(s) and s > 0 for s in sizes):
        raise bad("anchor_sizes", "must be a list of positive anchor sizes (pixels), one per pyramid level")
    if len(sizes) != len(strides) + 1:
        raise bad("anchor_sizes", f"must have one size per pyramid level: {len(strides) + 1} "
                                  f"(fpn_strides {list(strides)} plus the max-pooled level)")
    ratios = o["aspect_ratios"]
    if not isinstance(ratios, (list, tuple)) or not ratios or not all(_is_number(r) and r > 0 for r in ratios):
        raise bad("aspect_ratios", "must be a non-empty list of positive height/width ratios")
    min_size = o["image_min_size"]
    if min_size in (None, 0):
        o["image_min_size"] = None
    elif _is_int(min_size) and min_size > 0:
        o["image_min_size"] = (int(min_size),)
    elif isinstance(min_size, (list, tuple)) and min_size and all(_is_int(s) and s > 0 for s in min_size):
        o["image_min_size"] = tuple(int(s) for s in min_size)
    else:
        raise bad("image_min_size", "must be 0 (keep the input size), a positive integer or a list of them")
    positive = ("image_max_size", "out_channels", "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test",
                "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test", "rpn_batch_size_per_image",
                "box_batch_size_per_image", "box_detections_per_img", "representation_size",
                "mask_head_channels", "mask_head_layers")
    for key in positive:
        if not _is_int(o[key]) or o[key] < 1:
            raise bad(key, "must be a positive integer")
    for key in ("box_score_thresh", "instance_mask_threshold", "mask_score_threshold"):
        if not _is_number(o[key]) or not 0 <= o[key] <= 1:
            raise bad(key, "must be a number in [0, 1]")
    return o


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
