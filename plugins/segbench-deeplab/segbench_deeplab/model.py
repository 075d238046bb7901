"""DeepLab v1 (LargeFOV), v2 (ASPP), v3 (ASPP with BN, multi-grid) and v3+ (decoder) on timm backbones.

One class, :class:`DeepLab`, with ``version`` choosing the head; see the
plugin README for what follows the papers and what differs.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segbench.engine.tta import class_argmax
from segbench.errors import ConfigError
from segbench.nn.multiscale import multiscale_max, resize_maps
from segbench.nn.vgg import load_largefov_classifier
from segbench_deeplab.backbone import (
    OUTPUT_STRIDES,
    StrideSwitch,
    apply_multi_grid,
    atrous_vgg,
    build_backbone,
    is_vgg,
)
from segbench_deeplab.heads import ASPP, ASPPSum, Decoder, LargeFOVHead, scale_rates
from segbench_deeplab.inference import multiscale_probabilities

VERSIONS = ("v1", "v2", "v3", "v3plus")
IGNORE_INDEX = 255


class DeepLab(nn.Module):
    """A DeepLab network; ``forward(images)`` returns logits ``[B, C, H, W]`` at the input size.

    In training mode the backbone runs at ``output_stride``; in eval mode at
    ``eval_output_stride`` (when given), with the same weights and the atrous
    rates of the head scaled by ``output_stride / eval_output_stride``.

    ``msc_scales`` (DeepLab v2's multi-scale inputs, MSC): the batch also runs
    at each listed factor through the same weights; the score maps (at the
    output stride) are resized bilinearly to the scale-1 map and fused by
    their maximum at each position. Training sums the cross-entropy of each
    scale's map and of the fused map; prediction uses the fused map.
    """

    def __init__(
        self,
        num_classes: int,
        version: str = "v3",
        *,
        backbone: str = "test_resnet",
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        backbone_args: Mapping[str, Any] | None = None,
        width: float = 1.0,
        output_stride: int = 16,
        eval_output_stride: int | None = None,
        multi_grid: Sequence[int] | None = None,
        fc_channels: int = 1024,
        fc_kernel: int = 3,
        fc6_rate: int = 12,
        pool5a: bool = True,
        aspp_rates: Sequence[int] = (6, 12, 18),
        aspp_channels: int = 256,
        image_pooling: bool = True,
        separable: bool = False,
        low_level_stride: int = 4,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        dropout: float = 0.1,
        freeze_bn: bool = False,
        eval_scales: Sequence[float] = (1.0,),
        eval_flip: bool = False,
        lr_mults: str = "head",
        msc_scales: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if version not in VERSIONS:
            raise ConfigError(f"deeplab: version must be one of {', '.join(VERSIONS)}, got {version!r}")
        if lr_mults not in ("head", "caffe"):
            raise ConfigError(f"deeplab: lr_mults must be head or caffe, got {lr_mults!r}")
        self.lr_mults = lr_mults
        self.method = method = f"deeplab_{version}"
        _check(method, num_classes=num_classes, output_stride=output_stride, eval_output_stride=eval_output_stride,
               multi_grid=multi_grid, aspp_rates=aspp_rates, eval_scales=eval_scales, dropout=dropout,
               backbone_args=backbone_args, positive={"fc_channels": fc_channels, "fc6_rate": fc6_rate,
                                                      "low_level_channels": low_level_channels,
                                                      "decoder_channels": decoder_channels},
               fc_kernel=fc_kernel, aspp_channels=aspp_channels, version=version, msc_scales=msc_scales)
        self.num_classes = num_classes
        self.version = version
        self.output_stride = output_stride
        self.eval_output_stride = eval_output_stride
        self.multi_grid = tuple(multi_grid) if multi_grid else None
        self.eval_scales = tuple(float(s) for s in eval_scales)
        self.eval_flip = bool(eval_flip)
        self.msc_scales = tuple(float(s) for s in msc_scales) if msc_scales else ()  # () = MSC off
        self.freeze_bn = bool(freeze_bn)
        self.vgg = is_vgg(backbone)
        build = dict(pretrained=pretrained, weights=weights, backbone_args=backbone_args, width=width)
        self.backbone = build_backbone(method, backbone, output_stride, **build)
        channels = list(self.backbone.feature_info.channels())
        reductions = list(self.backbone.feature_info.reduction())

        if version == "v1":
            self.head = LargeFOVHead(channels[-1], num_classes, fc_channels, fc_kernel, fc6_rate, dropout, pool5a)
        elif version == "v2":
            self.head = ASPPSum(channels[-1], num_classes, aspp_rates, aspp_channels, dropout)
        else:
            self.aspp = ASPP(channels[-1], aspp_rates, aspp_channels, image_pooling, separable, dropout)
            if version == "v3":
                self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)
            else:
                if low_level_stride not in reductions[:-1] or low_level_stride >= output_stride:
                    raise ConfigError(
                        f"{method}: option low_level_stride={low_level_stride}: backbone '{backbone}' has no "
                        f"feature map at that stride below output_stride={output_stride} (its strides: {reductions})"
                    )
                self.low_index = len(reductions) - 1 - reductions[::-1].index(low_level_stride)
                self.decoder = Decoder(channels[self.low_index], aspp_channels, num_classes, low_level_channels,
                                       decoder_channels, separable)

        # output-stride switch (same weights): VGG re-derives its layers; others copy a meta twin's geometry
        self._switch = StrideSwitch()
        if eval_output_stride and eval_output_stride != output_stride and not self.vgg:
            reference = StrideSwitch.layout(self.backbone)
            self._switch.layouts[output_stride] = reference
            twin = build_backbone(method, backbone, eval_output_stride, backbone_args=backbone_args, meta=True)
            self._switch.add(method, eval_output_stride, reference, StrideSwitch.layout(twin))
        self.current_output_stride = 0
        self.set_output_stride(output_stride)
        if self.freeze_bn:
            for module in self._backbone_norms():
                for param in module.parameters():
                    param.requires_grad_(False)
        self.fc_pretrained = False
        if version == "v1" and self.vgg and (pretrained or weights) and width == 1.0:
            self._load_vgg_classifier(backbone, weights)

    # -- learning rates ------------------------------------------------------------------
    def param_multipliers(self, head_lr_mult: float) -> dict[str, tuple[float, float]] | None:
        """``lr_mults="caffe"``: the prototxts' ``lr_mult`` / ``decay_mult``: x1 weights, x2 biases without decay,
        and x ``head_lr_mult`` (x2 for biases) on the new classifier only: v1's fc8 (DeepLab-LargeFOV
        train.prototxt), v2's ASPP branches (the ``fc1_*`` classifiers). ``"head"``: None, the engine's rule
        (the whole head at x ``head_lr_mult``)."""
        if self.lr_mults != "caffe":
            return None
        from segbench.nn.multipliers import caffe_multipliers

        new = ("head.fc8",) if self.version == "v1" else ("head", "aspp", "classifier", "decoder")
        return caffe_multipliers(self, new, head_lr_mult)

    # -- output stride -------------------------------------------------------------------
    def set_output_stride(self, output_stride: int) -> None:
        """Run the backbone at ``output_stride`` (8, 16 or 32 when available), head rates scaled to match."""
        if output_stride != self.output_stride and output_stride not in self._switch.layouts and not self.vgg:
            raise ConfigError(f"{self.method}: output stride {output_stride} was not prepared (eval_output_stride)")
        if self.vgg:
            atrous_vgg(self.backbone, output_stride)
        elif output_stride in self._switch.layouts:
            self._switch.apply(self.backbone, output_stride)
        if self.multi_grid:
            self.multi_grid_rates = apply_multi_grid(self.method, self.backbone, self.multi_grid, output_stride)
        for name in ("head", "aspp"):  # the decoder's convolutions keep their size (rate 1)
            if hasattr(self, name):
                scale_rates(getattr(self, name), self.output_stride / output_stride)
        self.current_output_stride = output_stride

    def train(self, mode: bool = True) -> "DeepLab":
        """Training mode at ``output_stride``; eval mode at ``eval_output_stride`` (frozen BN stays in eval)."""
        super().train(mode)
        if hasattr(self, "current_output_stride"):
            target = self.output_stride if mode else (self.eval_output_stride or self.output_stride)
            if target != self.current_output_stride:
                self.set_output_stride(target)
        if mode and getattr(self, "freeze_bn", False):
            for module in self._backbone_norms():
                module.eval()
        return self

    def _backbone_norms(self):
        return [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    # -- network ---------------------------------------------------------------------------
    def head_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, C, h, w]`` at the head's resolution (the output stride; v3+: the decoder's)."""
        features = self.backbone(images)
        x = features[-1]
        if self.version in ("v1", "v2"):
            return self.head(x)
        if self.version == "v3":
            return self.classifier(self.aspp(x))
        return self.decoder(self.aspp(x), features[self.low_index])

    def msc_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """MSC: ``(fused, per_scale)`` head logits over ``msc_scales`` (:func:`segbench.nn.multiscale.multiscale_max`):
        each scale's logits at its own size, and their maximum after bilinear resizing to the scale-1 logits."""
        return multiscale_max(self.head_logits, images, self.msc_scales)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits ``[B, C, H, W]`` (bilinear upsampling of the head's scores, MSC-fused when on)."""
        logits = self.msc_logits(images)[0] if self.msc_scales else self.head_logits(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    # -- segbench method API -------------------------------------------------------------------
    def loss(self, images: torch.Tensor, targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Per-pixel softmax cross-entropy over labelled pixels (255 ignored); 0 when every pixel is 255.

        The logits are upsampled (bilinear) to the label size, the masks are
        never shrunk. With ``msc_scales``: one term per scale
        (``loss_x1``, ``loss_x0.75``, ... : that scale's logits upsampled to
        the label size) plus ``loss_fused`` (the max-fused logits), each
        normalised by the labelled pixels, summed by the engine, as the v2
        release's four MSC losses.
        """
        masks = torch.stack([t["mask"] for t in targets]).to(device=images.device, dtype=torch.long)
        if masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"target masks are {tuple(masks.shape[-2:])}, images {tuple(images.shape[-2:])}")
        if not self.msc_scales:
            return {"loss": self._cross_entropy(self(images), masks)}
        fused, per_scale = self.msc_logits(images)
        size = masks.shape[-2:]
        losses = {f"loss_x{scale:g}": self._cross_entropy(resize_maps(logits, size), masks)
                  for scale, logits in zip(self.msc_scales, per_scale)}
        losses["loss_fused"] = self._cross_entropy(resize_maps(fused, size), masks)
        return losses

    @staticmethod
    def _cross_entropy(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy over the labelled pixels, divided by their number (at least 1)."""
        total = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (masks != IGNORE_INDEX).sum().clamp(min=1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per image: ``score_maps`` (softmax, averaged over ``eval_scales`` and flips), ``mask`` (argmax)
        and ``scores`` (each class's maximum probability over the image)."""
        probs = multiscale_probabilities(self, images, self.eval_scales, self.eval_flip)
        masks = class_argmax(probs)  # = probs.argmax(dim=1), faster on the CPU
        scores = probs.flatten(2).amax(dim=2)
        return [{"mask": m, "score_maps": p, "scores": s} for m, p, s in zip(masks, probs, scores)]

    # -- pretrained fc6 / fc7 (DeepLab v1) ---------------------------------------------------------
    def _load_vgg_classifier(self, name: str, weights) -> None:
        """fc6/fc7 from the ImageNet classifier, decimated as in DeepLab v1
        (:func:`segbench.nn.vgg.load_largefov_classifier`).

        timm's VGG keeps fc6/fc7 as convolutions (``pre_logits.fc1`` 7x7x4096,
        ``fc2`` 1x1x4096). Every ``4096 / fc_channels``-th filter (and input of
        fc7) is kept and fc6's 7x7 kernel is subsampled to ``fc_kernel`` taps
        per axis (7 -> 3: taps 0, 3, 6), as the paper turns VGG16 into
        LargeFOV. Left randomly initialised when the shapes do not allow it.
        """
        if load_largefov_classifier(self.head.fc6, self.head.fc7, name, weights):
            self.fc_pretrained = True


def _check(method: str, *, num_classes, output_stride, eval_output_stride, multi_grid, aspp_rates, eval_scales,
           dropout, backbone_args, positive, fc_kernel, aspp_channels, version, msc_scales=None) -> None:
    """One-line :class:`ConfigError` naming the option for every malformed value."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"{method}: num_classes must be an integer >= 2, got {num_classes!r}")
    for key, value in (("output_stride", output_stride), ("eval_output_stride", eval_output_stride)):
        if key == "eval_output_stride" and value is None:
            continue
        if value not in OUTPUT_STRIDES or isinstance(value, bool):
            raise ConfigError(f"{method}: option {key} must be one of 8, 16, 32, got {value!r}")
    if multi_grid is not None and not _positive_ints(multi_grid):
        raise ConfigError(
            f"{method}: option multi_grid must be a list of positive integers or None, got {multi_grid!r}")
    if version != "v1" and (not _positive_ints(aspp_rates) or not aspp_rates):
        raise ConfigError(f"{method}: option aspp_rates must be a non-empty list of positive integers, "
                          f"got {aspp_rates!r}")
    if isinstance(eval_scales, (str, bytes)) or not eval_scales or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in eval_scales):
        raise ConfigError(f"{method}: option eval_scales must be a non-empty list of positive numbers, "
                          f"got {eval_scales!r}")
    if msc_scales is not None and (
            isinstance(msc_scales, (str, bytes)) or not isinstance(msc_scales, (list, tuple))
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s < float("inf")
                       for s in msc_scales)
            or len({float(s) for s in msc_scales}) != len(msc_scales)):
        raise ConfigError(f"{method}: option msc_scales must be a list of distinct positive numbers, or none / [] "
                          f"(off), got {msc_scales!r}")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{method}: option dropout must be in [0, 1), got {dropout!r}")
    if backbone_args is not None and not isinstance(backbone_args, Mapping):
        raise ConfigError(f"{method}: option backbone_args must be a dict of timm model arguments, "
                          f"got {backbone_args!r}")
    for key, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{method}: option {key} must be a positive integer, got {value!r}")
    if not isinstance(fc_kernel, int) or fc_kernel < 1 or fc_kernel % 2 == 0:
        raise ConfigError(f"{method}: option fc_kernel must be a positive odd integer, got {fc_kernel!r}")
    least = 0 if version == "v2" else 1
    if not isinstance(aspp_channels, int) or isinstance(aspp_channels, bool) or aspp_channels < least:
        raise ConfigError(f"{method}: option aspp_channels must be an integer >= {least}, got {aspp_channels!r}")


def _positive_ints(values) -> bool:
    return isinstance(values, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
