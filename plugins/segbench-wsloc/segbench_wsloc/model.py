"""Bency et al. (ECCV 2016): a classifier trained on image labels, then a beam search over boxes of its
feature map for the regions that best explain each class score."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn
from torchvision.ops import batched_nms

from segbench.errors import ConfigError
from segbench.nn.backbones import create_backbone
from segbench.nn.losses import multilabel_bce
from segbench_wsloc.beam import beam_search
from segbench_wsloc.boxpool import BoxMeans
from segbench_wsloc.options import check_options


def timm_features(name: str, out_index: int, backbone_args: Mapping[str, Any] | None, **kwargs):
    """``create_backbone`` cut at ``out_index``; its one-line ConfigErrors name the method."""
    try:
        return create_backbone(name, out_indices=(out_index,), **kwargs, **dict(backbone_args or {}))
    except ConfigError as exc:
        raise ConfigError(f"wsloc: {exc} (out_index={out_index}, backbone_args={backbone_args})") from exc


class WSLoc(nn.Module):
    """Classifier ``backbone -> global average pooling -> head`` (linear, or a one-hidden-layer MLP) on
    image labels; at prediction, per (image, class) a beam search for the box whose pooled features
    (the mean inside the box, ``region="crop"``; or the mean over the whole map with the features
    outside the box zeroed, ``region="mask"``) the head scores highest for that class.

    Box features come from a summed-area table (:class:`~segbench_wsloc.boxpool.BoxMeans`), equal to
    torchvision's ``roi_align`` with one sample per cell on these whole-cell boxes but O(1) per box."""

    def __init__(self, num_classes: int, **options: Any) -> None:
        super().__init__()
        o = check_options(num_classes, options)
        self.num_classes = num_classes
        self.region, self.beam, self.steps, self.step = o["region"], o["beam"], o["beam_steps"], o["step"]
        self.min_size, self.top_classes, self.max_boxes = o["min_size"], o["top_classes"], o["max_boxes"]
        self.nms_iou, self.background = o["nms_iou"], o["background"]
        self.backbone = timm_features(o["backbone"], o["out_index"], o["backbone_args"], pretrained=o["pretrained"],
                                      weights=o["weights"], output_stride=o["output_stride"])
        channels = self.backbone.feature_info.channels()[-1]
        if o["head"] == "mlp":
            self.body = nn.Sequential(nn.Linear(channels, o["hidden"]), nn.ReLU(inplace=True), nn.Dropout(o["dropout"]))
            channels = o["hidden"]
        else:
            self.body = nn.Dropout(o["dropout"]) if o["dropout"] > 0 else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> feature map ``[B, D, h, w]``."""
        return self.backbone(images)[-1]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores ``[B, C]`` (head on the globally averaged features) and the feature map."""
        feats = self.features(images)
        return self.fc(self.body(feats.mean((2, 3)))), feats

    def loss(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Multi-label BCE with logits on the image scores; classes in ``labels_ignore`` do not count."""
        scores, _ = self(images)
        return {"loss": multilabel_bce("wsloc", scores, targets)}

    # -- the beam search ---------------------------------------------------------------------
    def region_logits(self, pool: BoxMeans, image: torch.Tensor, classes: torch.Tensor,
                      boxes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Class ``classes[g]`` logit of each box ``boxes[g, i]`` (whole cells, XYXY) of image ``image[g]``:
        ``[G, n]``. ``pool`` gives a box's mean features (as ``roi_align`` with a sample per cell would)."""
        g, n, _ = boxes.shape
        h, w = grid
        flat = boxes.reshape(-1, 4)
        pooled = pool(image.repeat_interleave(n), flat)
        if self.region == "mask":  # zero outside the box, then the global mean
            area = ((flat[:, 2] - flat[:, 0]) * (flat[:, 3] - flat[:, 1])).to(pooled.dtype)
            pooled = pooled * (area / (h * w))[:, None]
        hidden = self.body(pooled)
        cls = classes.repeat_interleave(n)
        logits = (hidden * self.fc.weight[cls]).sum(1) + self.fc.bias[cls]
        return logits.view(g, n)

    def search_groups(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, class) pairs searched: the ``top_classes`` best classes of each image (0: every class),
        never the background."""
        candidates = scores.detach().clone()
        if self.background is not None:
            candidates[:, self.background] = -math.inf
        allowed = torch.isfinite(candidates)
        if self.top_classes:
            k = min(self.top_classes, int(allowed[0].sum()))
            active = torch.zeros_like(allowed)
            active.scatter_(1, candidates.topk(k, dim=1).indices, True)
            allowed &= active
        image, classes = allowed.nonzero(as_tuple=True)
        return image, classes

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict]:
        """Per image: ``scores`` ``[C]`` (the classifier's), ``score_maps`` ``[C, h, w]`` (searched classes:
        the beam search's map; others: the class activation map shifted so that its maximum is the class
        score) and ``instances`` (the final beam's boxes after NMS, input pixels, sigmoid scores)."""
        scores, feats = self(images)
        scores, feats = scores.float(), feats.float()
        b, _, h, w = feats.shape
        height, width = images.shape[-2:]
        cam = self.fc(self.body(feats.permute(0, 2, 3, 1))).permute(0, 3, 1, 2).float()  # [B, C, h, w]
        maps = cam - cam.amax((2, 3), keepdim=True) + scores[:, :, None, None]
        image, classes = self.search_groups(scores)
        boxes = torch.zeros(0, 4, device=feats.device)
        box_scores = torch.zeros(0, device=feats.device)
        box_image = box_class = torch.zeros(0, dtype=torch.long, device=feats.device)
        if image.numel():
            pool = BoxMeans(feats)
            result = beam_search(lambda bx: self.region_logits(pool, image, classes, bx, (h, w)), image.numel(), h, w,
                                 self.beam, self.steps, self.step, self.min_size, device=feats.device)
            maps[image, classes] = result.heat
            group = torch.arange(image.numel(), device=feats.device)[:, None].expand_as(result.valid)
            keep_valid = result.valid.reshape(-1)
            scale = torch.tensor([width / w, height / h, width / w, height / h], device=feats.device)
            boxes = (result.boxes.reshape(-1, 4)[keep_valid].float() * scale)
            box_scores = result.scores.reshape(-1)[keep_valid]
            group = group.reshape(-1)[keep_valid]
            keep = batched_nms(boxes, box_scores, group, self.nms_iou)  # by decreasing score
            keep = keep[torch.sort(group[keep], stable=True).indices]
            first = torch.searchsorted(group[keep], group[keep])
            keep = keep[torch.arange(keep.numel(), device=keep.device) - first < self.max_boxes]
            boxes, box_scores, group = boxes[keep], box_scores[keep], group[keep]
            box_image, box_class = image[group], classes[group]
        out = []
        for i in range(b):
            pick = (box_image == i).nonzero().squeeze(1)
            pick = pick[box_scores[pick].argsort(descending=True)]
            instances = {"boxes": boxes[pick], "classes": box_class[pick], "scores": torch.sigmoid(box_scores[pick])}
            out.append({"scores": scores[i], "score_maps": maps[i], "instances": instances})
        return out


def build_wsloc(num_classes: int, **options: Any) -> WSLoc:
    """``MethodSpec.build``: a :class:`WSLoc` for ``num_classes`` classes."""
    return WSLoc(num_classes, **options)
