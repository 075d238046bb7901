"""Deep MIL: conv class maps, global max pooling, per-class log-loss, multi-scale training and test-time
max fusion over scales (Oquab et al., CVPR 2015)."""

from __future__ import annotations

import math
import os
from numbers import Real
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segbench.errors import ConfigError
from segbench.nn.heads import ClassMapHead
from segbench.nn.backbones import feature_backbone
from segbench.nn.checks import check_int, check_number
from segbench.nn.losses import multilabel_bce
from segbench.nn.multiscale import max_over_scales, multiscale_max
from segbench.nn.vgg import VGGFC, is_vgg, load_vgg_classifier

NAME = "deepmil"
MAX_SCALE = 4.0


def _is_scale(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and 0 < value <= MAX_SCALE


def check_eval_scales(eval_scales: Sequence[float]) -> tuple[float, ...]:
    """Validated test-time scales; one-line :class:`ConfigError` otherwise."""
    if isinstance(eval_scales, (str, bytes)) or not isinstance(eval_scales, Sequence) or not eval_scales \
            or not all(_is_scale(s) for s in eval_scales):
        raise ConfigError(
            f"{NAME}: eval_scales must be a non-empty list of factors in (0, {MAX_SCALE:g}], got {eval_scales!r}"
        )
    return tuple(float(s) for s in eval_scales)


def check_scales(train_scales: Sequence[float] | None, train_scale_range: Sequence[float] | None):
    """Validated ``(scales, range)``; at most one is set. One-line :class:`ConfigError` otherwise."""
    if train_scales is not None:
        if isinstance(train_scales, (str, bytes)) or not isinstance(train_scales, Sequence) or not train_scales \
                or not all(_is_scale(s) for s in train_scales):
            raise ConfigError(
                f"{NAME}: train_scales must be a non-empty list of factors in (0, {MAX_SCALE:g}] or none, "
                f"got {train_scales!r}"
            )
        train_scales = tuple(float(s) for s in train_scales)
    if train_scale_range is not None:
        ok = isinstance(train_scale_range, Sequence) and not isinstance(train_scale_range, (str, bytes)) \
            and len(train_scale_range) == 2 and all(_is_scale(s) for s in train_scale_range) \
            and train_scale_range[0] <= train_scale_range[1]
        if not ok:
            raise ConfigError(
                f"{NAME}: train_scale_range must be [low, high] with 0 < low <= high <= {MAX_SCALE:g} or none, "
                f"got {train_scale_range!r}"
            )
        train_scale_range = (float(train_scale_range[0]), float(train_scale_range[1]))
    if train_scales is not None and train_scale_range is not None:
        raise ConfigError(f"{NAME}: set train_scales or train_scale_range, not both")
    return train_scales, train_scale_range


class DeepMIL(nn.Module):
    """Class maps ``[B, C, h, w]`` from a fully convolutional net, scores = their global maximum.

    ``backbone`` (timm features_only, cut at ``out_index``) -> with
    ``vgg_fc``, VGG's fc6 (7x7, 4,096, zero-padded by 3) and fc7 (1x1,
    4,096) as convolutions with ReLU and dropout (the paper's C6 / C7,
    :class:`segbench.nn.vgg.VGGFC`; copied from timm's ImageNet classifier
    with ``pretrained`` / ``weights``, ``fc_pretrained`` says whether they
    were) -> optional adaptation layer (1x1 conv to ``adapt_channels``,
    ReLU: the paper's FCa) -> dropout, 1x1 conv to ``C`` maps (FCb) ->
    global max pooling.
    The loss is the sum over classes of the binary log-loss, averaged over
    images. In training, each batch may be rescaled by one random factor
    (``train_scales``: one of the listed factors; ``train_scale_range``:
    uniform in ``[low, high]``) before the forward pass. In ``predict`` the
    batch runs at each factor of ``eval_scales`` (resized as in training):
    the class maps are resized (bilinear) to the scale-1 map size and fused by
    their elementwise maximum, the scores are the maximum over scales of each
    scale's global max; ``eval_scales=[1.0]`` is a single pass.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        backbone: str = "test_resnet",
        out_index: int = 2,
        output_stride: int | None = None,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        backbone_args: Mapping[str, Any] | None = None,
        adapt_channels: int = 0,
        dropout: float = 0.0,
        train_scales: Sequence[float] | None = None,
        train_scale_range: Sequence[float] | None = None,
        eval_scales: Sequence[float] = (1.0,),
        vgg_fc: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(vgg_fc, bool):
            raise ConfigError(f"{NAME}: vgg_fc must be true or false, got {vgg_fc!r}")
        if vgg_fc and not is_vgg(str(backbone)):
            raise ConfigError(f"{NAME}: vgg_fc=True needs a VGG backbone (its fc6/fc7), got backbone={backbone!r}")
        adapt_channels = check_int(NAME, "adapt_channels", adapt_channels, 0)
        dropout = check_number(NAME, "dropout", dropout, 0.0, low_open=False, high=0.99)
        self.train_scales, self.train_scale_range = check_scales(train_scales, train_scale_range)
        self.eval_scales = check_eval_scales(eval_scales)
        self.num_classes = num_classes
        self.backbone, channels = feature_backbone(
            NAME, backbone, out_index, output_stride, pretrained, weights, backbone_args
        )
        self.stride = int(self.backbone.feature_info.reduction()[-1])
        self.vgg_fc = vgg_fc
        self.fc_pretrained = False  # True once fc6/fc7 hold ImageNet VGG's classifier (vgg_fc)
        if vgg_fc:
            if self.stride != 32:
                raise ConfigError(f"{NAME}: vgg_fc=True needs the VGG cut at pool5 (out_index 5 or -1), "
                                  f"got out_index={out_index}")
            self.fc = VGGFC(channels, dropout=dropout)
            channels = self.fc.out_channels
            if pretrained or weights:
                self.fc_pretrained = load_vgg_classifier(self.fc.fc6, self.fc.fc7, backbone, weights)
        else:
            self.fc = nn.Identity()
        if adapt_channels:
            self.adapt = nn.Sequential(nn.Conv2d(channels, adapt_channels, 1), nn.ReLU(inplace=True))
            channels = adapt_channels
        else:
            self.adapt = nn.Identity()
        self.head = ClassMapHead(channels, num_classes, dropout=dropout)

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised images -> class maps ``[B, C, h, w]`` at the feature resolution."""
        return self.head(self.adapt(self.fc(self.backbone(images)[-1])))

    def param_multipliers(self, head_lr_mult: float) -> dict[str, tuple[float, float]] | None:
        """With ``vgg_fc``: fc6 / fc7 (transferred layers, as the backbone) at x1, the adaptation layers at
        x ``head_lr_mult``, weight decay everywhere; without it None, the engine's rule (the same split)."""
        if not self.vgg_fc:
            return None
        return {name: (1.0, 1.0) if name.startswith(("backbone.", "fc.")) else (float(head_lr_mult), 1.0)
                for name, _ in self.named_parameters()}

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[B, C]`` (global max of each class map) and class maps ``[B, C, h, w]``."""
        maps = self.class_maps(images)
        return maps.float().flatten(2).amax(-1), maps

    def draw_scale(self) -> float:
        """This step's rescaling factor (1.0 when multi-scale training is off); uses torch's global generator."""
        if self.train_scales is not None:
            return self.train_scales[int(torch.randint(len(self.train_scales), ()))]
        if self.train_scale_range is not None:
            low, high = self.train_scale_range
            return low + (high - low) * float(torch.rand(()))
        return 1.0

    def rescale(self, images: torch.Tensor, scale: float) -> torch.Tensor:
        """The batch resized by ``scale`` (bilinear, antialiased when shrinking), never below one feature cell."""
        if scale == 1.0:
            return images
        h, w = images.shape[-2:]
        size = (max(round(h * scale), self.stride), max(round(w * scale), self.stride))
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)

    def loss(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Sum over classes of the log-loss ``log(1 + exp(-y s))`` (= BCE with logits), averaged over images."""
        if self.training:
            images = self.rescale(images, self.draw_scale())
        scores, _ = self(images)
        return {"loss": multilabel_bce(NAME, scores, targets, reduction="sum")}

    def multiscale(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[B, C]`` and class maps ``[B, C, h, w]`` max-fused over ``eval_scales``.

        Each scale resizes the batch as :meth:`rescale` (bilinear, antialiased
        when shrinking, never below one feature cell); the maps are resized to
        the map size at scale 1.0 (bilinear) and fused by their elementwise
        maximum; the scores are the maximum over scales of each scale's global
        max (at least the global max of the fused maps, which resizing may
        smooth). With ``eval_scales == (1.0,)`` this is :meth:`forward`.
        """
        maps, per_scale = multiscale_max(self.class_maps, images, self.eval_scales, antialias=True,
                                         min_size=self.stride)
        scores = max_over_scales([m.float().flatten(2).amax(-1) for m in per_scale])
        return scores, maps

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict]:
        """Per image: ``scores`` ``[C]`` (global max) and ``score_maps`` ``[C, h, w]`` (class maps before pooling),
        both max-fused over ``eval_scales`` (:meth:`multiscale`)."""
        scores, maps = self.multiscale(images)
        return [{"scores": s, "score_maps": m} for s, m in zip(scores.float(), maps.float())]


def build_deepmil(num_classes: int, **options) -> DeepMIL:
    """``MethodSpec.build``: a :class:`DeepMIL` for ``num_classes`` classes."""
    return DeepMIL(num_classes, **options)
