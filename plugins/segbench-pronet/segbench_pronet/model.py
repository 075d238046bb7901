"""ProNet: a multi-scale fully convolutional proposal network and a cascade classifier on its boxes.

Both networks learn from image-level labels only (Sun et al., CVPR 2016).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from segbench.errors import ConfigError
from segbench.nn.backbones import create_backbone
from segbench.nn.heads import ClassMapHead
from segbench.nn.losses import label_weights, weighted_bce
from segbench_pronet.options import check_options
from segbench_pronet.proposals import Proposals, propose, window_scores


def timm_features(name: str, out_index: int, what: str, backbone_args: Mapping[str, Any] | None, **kwargs):
    """``create_backbone`` cut at ``out_index``; its one-line ConfigErrors name the option ``what``."""
    try:
        return create_backbone(name, out_indices=(out_index,), **kwargs, **dict(backbone_args or {}))
    except ConfigError as exc:
        raise ConfigError(f"pronet: {what}: {exc} (out_index={out_index}, args={backbone_args})") from exc


def spatial_pool(maps: torch.Tensor, pool: str, r: float = 5.0) -> torch.Tensor:
    """``[B, C, h, w] -> [B, C]``: max, mean, or log-sum-exp ``(1/r) log(mean(exp(r x)))``."""
    flat = maps.flatten(2)
    if pool == "max":
        return flat.amax(-1)
    if pool == "avg":
        return flat.mean(-1)
    return (torch.logsumexp(r * flat, dim=-1) - math.log(flat.shape[-1])) / r


class CascadeNet(nn.Module):
    """The second-level classifier: a timm backbone on image crops, global average pooling, a linear layer."""

    def __init__(self, num_classes: int, backbone: str, out_index: int, pretrained: bool,
                 backbone_args: Mapping[str, Any] | None) -> None:
        super().__init__()
        self.backbone = timm_features(backbone, out_index, "cascade_backbone", backbone_args, pretrained=pretrained)
        self.fc = nn.Linear(self.backbone.feature_info.channels()[-1], num_classes)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """``[N, 3, s, s]`` crops -> logits ``[N, C]``."""
        return self.fc(self.backbone(crops)[-1].mean((2, 3)))


class ProNet(nn.Module):
    """ProNet (Sun, Paluri, Collobert, Nevatia, Bourdev, CVPR 2016) on timm backbones.

    Proposal network: ``backbone`` (cut at ``out_index``) + a 1x1 class-map
    head, run on the image at each of ``scales``; each scale's maps are pooled
    (``pool``: LSE, max or mean) and the image score is the maximum over
    scales. Proposals: windows of ``box_sizes`` over the scale-averaged maps
    (:mod:`segbench_pronet.proposals`). Cascade: the ``top_k`` boxes of each of
    the ``top_classes`` best classes are cropped from the image
    (``roi_align``, ``crop_size`` px) and classified by :class:`CascadeNet`.
    """

    def __init__(self, num_classes: int, **options: Any) -> None:
        super().__init__()
        o = check_options(num_classes, options)
        self.num_classes = num_classes
        self.scales, self.pool, self.lse_r = o["scales"], o["pool"], o["lse_r"]
        self.box_sizes, self.top_k, self.top_classes = o["box_sizes"], o["top_k"], o["top_classes"]
        self.nms_iou, self.train_boxes, self.crop_size = o["nms_iou"], o["train_boxes"], o["crop_size"]
        self.crop_labels, self.fuse, self.cascade_weight = o["crop_labels"], o["fuse"], o["cascade_weight"]
        self.background = o["background"]
        self.backbone = timm_features(o["backbone"], o["out_index"], "backbone", o["backbone_args"],
                                      pretrained=o["pretrained"], weights=o["weights"],
                                      output_stride=o["output_stride"])
        self.head = ClassMapHead(self.backbone.feature_info.channels()[-1], num_classes, dropout=o["dropout"])
        self.cascade = CascadeNet(num_classes, o["cascade_backbone"], o["cascade_out_index"], o["pretrained"],
                                  o["cascade_args"])

    # -- first level -------------------------------------------------------------------------
    def scale_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The class maps ``[B, C, h_s, w_s]`` of the image resized by each scale."""
        maps = []
        height, width = images.shape[-2:]
        for s in self.scales:
            x = images
            if s != 1.0:
                size = (max(int(round(height * s)), 8), max(int(round(width * s)), 8))
                x = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=s < 1)
            maps.append(self.head(self.backbone(x)[-1]))
        return maps

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """First-level image scores ``[B, C]`` (max over scales of the pooled maps) and the maps averaged
        over scales at the finest scale's resolution ``[B, C, h, w]``."""
        maps = self.scale_maps(images)
        scores = torch.stack([spatial_pool(m, self.pool, self.lse_r) for m in maps]).amax(0)
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        resized = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                   for m in maps]
        return scores, torch.stack(resized).mean(0)

    # -- cascade -----------------------------------------------------------------------------
    def crops(self, images: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """``roi_align`` crops ``[N, 3, crop_size, crop_size]`` of ``boxes`` (XYXY pixels) of the images."""
        rois = torch.cat([image_index[:, None].to(boxes), boxes], 1)
        return roi_align(images, rois.to(images.dtype), self.crop_size, 1.0, 2, aligned=True)

    def _candidate_classes(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` with the background at -inf (it is never proposed)."""
        scores = scores.detach().clone()
        if self.background is not None:
            scores[:, self.background] = -math.inf
        return scores

    def training_boxes(self, scores: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor,
                       image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image ``train_boxes`` (image, class, box): the best window of its positive classes first,
        then of its highest-scoring negative classes (hard negatives)."""
        with torch.no_grad():
            windows, boxes = window_scores(maps.detach(), image_size, self.box_sizes)  # [B, C, N], [N, 4]
            priority = self._candidate_classes(scores) + 1e4 * labels
            n = min(self.train_boxes, int(torch.isfinite(priority[0]).sum()))
            classes = priority.topk(n, dim=1).indices  # [B, n]
            best = windows.gather(1, classes[:, :, None].expand(-1, -1, windows.shape[2])).argmax(2)  # [B, n]
            image = torch.arange(scores.shape[0], device=scores.device)[:, None].expand(-1, n)
            return image.reshape(-1), classes.reshape(-1), boxes[best.reshape(-1)]

    def loss(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Multi-label BCE on the first-level scores plus, weighted by ``cascade_weight``, BCE of the
        cascade on crops of the proposed boxes labelled with their image's labels."""
        scores, maps = self(images)
        labels, weight = label_weights("pronet", targets, self.num_classes, scores.device)
        loss_proposal = weighted_bce(scores, labels, weight)
        image, classes, boxes = self.training_boxes(scores, maps, labels, tuple(images.shape[-2:]))
        logits = self.cascade(self.crops(images, image, boxes))
        crop_labels, crop_weight = labels[image], weight[image].clone()
        if self.crop_labels == "class":  # the other classes present in the image may be outside the crop
            keep = crop_weight[torch.arange(len(classes)), classes]
            crop_weight = crop_weight * (1.0 - crop_labels)
            crop_weight[torch.arange(len(classes)), classes] = keep
        loss_cascade = weighted_bce(logits, crop_labels, crop_weight)
        return {"loss_proposal": loss_proposal, "loss_cascade": self.cascade_weight * loss_cascade}

    # -- prediction --------------------------------------------------------------------------
    def proposals(self, scores: torch.Tensor, maps: torch.Tensor, image_size: tuple[int, int]) -> Proposals:
        """The ``top_k`` boxes of each of the ``top_classes`` best classes (all but the background when 0)."""
        candidates = self._candidate_classes(scores)
        allowed = torch.isfinite(candidates)
        if self.top_classes:
            k = min(self.top_classes, int(allowed[0].sum()))
            active = torch.zeros_like(allowed)
            active.scatter_(1, candidates.topk(k, dim=1).indices, True)
            allowed &= active
        return propose(maps, image_size, self.box_sizes, self.top_k, self.nms_iou, allowed)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict]:
        """Per image: ``scores`` ``[C]`` (first-level scores; re-scored classes take the best box's score),
        ``score_maps`` ``[C, h, w]`` (first-level maps averaged over scales) and ``instances`` (the re-scored
        boxes in input pixels, their classes, and sigmoid scores; no masks)."""
        scores, maps = self(images)
        scores, maps = scores.float(), maps.float()
        props = self.proposals(scores, maps, tuple(images.shape[-2:]))
        final = scores.clone()
        box_logits = props.scores.new_zeros(0)
        if props.boxes.numel():
            cascade = self.cascade(self.crops(images, props.image, props.boxes)).float()
            second = cascade.gather(1, props.classes[:, None]).squeeze(1)
            first = scores[props.image, props.classes]
            box_logits = (first + second) / 2 if self.fuse == "mean" else second
            flat = final.view(-1)
            flat.scatter_reduce_(0, props.image * self.num_classes + props.classes, box_logits, "amax",
                                 include_self=False)
        out = []
        for b in range(images.shape[0]):
            pick = (props.image == b).nonzero().squeeze(1)
            pick = pick[box_logits[pick].argsort(descending=True)]
            instances = {"boxes": props.boxes[pick].float(), "classes": props.classes[pick],
                         "scores": torch.sigmoid(box_logits[pick])}
            out.append({"scores": final[b], "score_maps": maps[b], "instances": instances})
        return out


def build_pronet(num_classes: int, **options: Any) -> ProNet:
    """``MethodSpec.build``: a :class:`ProNet` for ``num_classes`` classes."""
    return ProNet(num_classes, **options)
