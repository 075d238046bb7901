"""EM-Adapt: a DeepLab-style fully convolutional net trained from image labels by online hard EM."""

from __future__ import annotations

import math
import os
from numbers import Real
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from segbench.errors import ConfigError, DataError
from segbench.nn.backbones import feature_backbone
from segbench.nn.losses import label_weights, weighted_bce
from segbench.nn.pooling import weldon_pool2d
from segbench.nn.vgg import LargeFOVHead, atrous_vgg, is_vgg, load_largefov_classifier
from segbench_emadapt.adaptive_bias import latent_segmentation


LR_MULTS = ("head", "caffe")
VGG_STRIDES = (8, 16, 32)


def check_options(num_classes: Any, options: Mapping[str, Any]) -> None:
    """Raise a one-line :class:`ConfigError` naming the first option out of its accepted range."""
    def integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def number(value: Any) -> bool:
        return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)

    if not integer(num_classes) or num_classes < 2:
        raise ConfigError(f"emadapt: num_classes must be an integer >= 2, got {num_classes!r}")
    for key in ("fg_share", "bg_share"):
        value = options[key]
        if not number(value) or not 0 < value < 1:
            raise ConfigError(f"emadapt: {key} must be a fraction in (0, 1), got {value!r}")
    background = options["background"]
    if background is not None and (not integer(background) or not 0 <= background < num_classes):
        raise ConfigError(
            f"emadapt: background must be a class index in [0, {num_classes - 1}] or None, got {background!r}"
        )
    if not integer(options["sweeps"]) or options["sweeps"] < 1:
        raise ConfigError(f"emadapt: sweeps must be an integer >= 1, got {options['sweeps']!r}")
    if not integer(options["head_channels"]) or options["head_channels"] < 0:
        raise ConfigError(f"emadapt: head_channels must be an integer >= 0 (0 = no fc6/fc7), "
                          f"got {options['head_channels']!r}")
    if not integer(options["head_dilation"]) or options["head_dilation"] < 1:
        raise ConfigError(f"emadapt: head_dilation must be an integer >= 1, got {options['head_dilation']!r}")
    if not number(options["dropout"]) or not 0 <= options["dropout"] < 1:
        raise ConfigError(f"emadapt: dropout must be in [0, 1), got {options['dropout']!r}")
    weight = options["image_loss_weight"]
    if not number(weight) or weight < 0:
        raise ConfigError(f"emadapt: image_loss_weight must be a number >= 0 (0 = off), got {weight!r}")
    warmup = options["em_warmup"]
    if not integer(warmup) or warmup < 0:
        raise ConfigError(f"emadapt: em_warmup must be an integer >= 0 (0 = EM from the first step), got {warmup!r}")
    if warmup and not weight:
        raise ConfigError(f"emadapt: em_warmup={warmup} needs image_loss_weight > 0 (the warm-up trains that loss only)")
    if not isinstance(options["shuffle"], bool):
        raise ConfigError(f"emadapt: shuffle must be true or false, got {options['shuffle']!r}")
    args = options["backbone_args"]
    if args is not None and not isinstance(args, Mapping):
        raise ConfigError(f"emadapt: backbone_args must be a dict of timm model arguments, got {args!r}")
    if not isinstance(options["largefov"], bool):
        raise ConfigError(f"emadapt: largefov must be true or false, got {options['largefov']!r}")
    if options["lr_mults"] not in LR_MULTS:
        raise ConfigError(f"emadapt: lr_mults must be one of {', '.join(LR_MULTS)}, got {options['lr_mults']!r}")
    backbone, stride = options["backbone"], options["output_stride"]
    if options["largefov"]:
        if not is_vgg(str(backbone)):
            raise ConfigError(f"emadapt: largefov=True needs a VGG backbone (DeepLab-LargeFOV is VGG16), "
                              f"got backbone={backbone!r}")
        if not options["head_channels"]:
            raise ConfigError("emadapt: largefov=True needs head_channels > 0 (the width of fc6/fc7; LargeFOV: 1024)")
    if is_vgg(str(backbone)) and stride is not None and stride not in VGG_STRIDES:
        raise ConfigError(f"emadapt: output_stride must be one of {', '.join(map(str, VGG_STRIDES))} or None with "
                          f"a VGG backbone, got {stride!r}")


class EMAdapt(nn.Module):
    """EM-Adapt (Papandreou, Chen, Murphy, Yuille, ICCV 2015) on a timm feature extractor.

    ``backbone`` (timm features_only, cut at ``out_index``, dilated to
    ``output_stride`` where timm supports it; a VGG is made atrous by
    :func:`segbench.nn.vgg.atrous_vgg`) -> optional DeepLab-LargeFOV-like
    head (``fc6``: 3x3 conv with dilation ``head_dilation``, ``fc7``: 1x1,
    both ``head_channels`` wide with ReLU and dropout) -> ``fc8``: 1x1
    classifier = logits ``[B, C, h, w]`` at the feature stride.

    ``largefov=True`` is the paper's network, DeepLab-LargeFOV: a VGG cut
    at pool5 and made atrous (``output_stride=8``: pool4 / pool5 stride 1,
    conv5 dilated 2) -> :class:`segbench.nn.vgg.LargeFOVHead` (pool5a, fc6
    3x3 rate ``head_dilation``, fc7 1x1, ``head_channels`` wide, dropout,
    fc8 N(0, 0.01)); with ImageNet weights (``pretrained`` / ``weights``)
    fc6 / fc7 are decimated from VGG's classifier as DeepLab v1 does
    (:func:`segbench.nn.vgg.load_largefov_classifier`; ``fc_pretrained``
    says whether they were).

    Training is online hard EM: the E-step turns the detached
    log-probabilities and the image labels into a latent segmentation
    (:func:`segbench_emadapt.adaptive_bias.latent_segmentation`), the M-step
    is the per-pixel cross-entropy of the logits against it.
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
        head_channels: int = 0,
        head_dilation: int = 12,
        dropout: float = 0.0,
        fg_share: float = 0.2,
        bg_share: float = 0.4,
        background: int | None = 0,
        sweeps: int = 1,
        shuffle: bool = True,
        image_loss_weight: float = 0.0,
        em_warmup: int = 0,
        largefov: bool = False,
        lr_mults: str = "head",
    ) -> None:
        super().__init__()
        check_options(num_classes, dict(
            fg_share=fg_share, bg_share=bg_share, background=background, sweeps=sweeps,
            head_channels=head_channels, head_dilation=head_dilation, dropout=dropout, shuffle=shuffle,
            backbone_args=backbone_args, image_loss_weight=image_loss_weight, em_warmup=em_warmup,
            largefov=largefov, lr_mults=lr_mults, backbone=backbone, output_stride=output_stride,
        ))
        self.largefov = largefov
        self.lr_mults = lr_mults
        self.fc_pretrained = False  # True once fc6/fc7 hold ImageNet VGG's decimated classifier (largefov)
        self.image_loss_weight = float(image_loss_weight)
        self.em_warmup = em_warmup
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))  # loss calls in training mode
        self.num_classes = num_classes
        self.estep_options = dict(background=background, fg_share=float(fg_share), bg_share=float(bg_share),
                                  sweeps=sweeps, shuffle=shuffle)
        vgg = is_vgg(backbone)
        self.backbone, channels = feature_backbone(  # timm's VGG refuses output_stride: made atrous below
            "emadapt", backbone, out_index, None if vgg else output_stride, pretrained, weights, backbone_args
        )
        if vgg and output_stride is not None:
            atrous_vgg(self.backbone, output_stride)
        if largefov:
            if self.backbone.feature_info.reduction()[-1] != 32:  # timm's nominal stride: 32 is pool5
                raise ConfigError(f"emadapt: largefov=True needs the VGG cut at pool5 (out_index 5 or -1), "
                                  f"got out_index={out_index}")
            self.head = LargeFOVHead(channels, num_classes, head_channels, 3, head_dilation, dropout, pool5a=True)
            self.classifier = nn.Identity()  # fc8 is the head's (head.fc8)
            if pretrained or weights:
                self.fc_pretrained = load_largefov_classifier(self.head.fc6, self.head.fc7, backbone, weights)
            return
        layers: list[nn.Module] = []
        if head_channels:
            layers += [nn.Conv2d(channels, head_channels, 3, padding=head_dilation, dilation=head_dilation),
                       nn.ReLU(inplace=True), nn.Dropout2d(dropout),
                       nn.Conv2d(head_channels, head_channels, 1), nn.ReLU(inplace=True), nn.Dropout2d(dropout)]
            channels = head_channels
        elif dropout:
            layers.append(nn.Dropout2d(dropout))
        self.head = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(channels, num_classes, 1)  # fc8; random init: zero logits would tie everywhere

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C, h, w]`` at the feature stride for normalised images ``[B, 3, H, W]``."""
        return self.classifier(self.head(self.backbone(images)[-1]))

    def param_multipliers(self, head_lr_mult: float) -> dict[str, tuple[float, float]] | None:
        """``lr_mults="caffe"``: DeepLab-LargeFOV's ``lr_mult`` / ``decay_mult`` (its train.prototxt): weights x1,
        biases x2 without weight decay, and x ``head_lr_mult`` (x2 for biases) on fc8 only (``head.fc8`` with
        ``largefov``, else ``classifier``). ``"head"``: None, the engine's rule (everything after the backbone
        at x ``head_lr_mult``)."""
        if self.lr_mults != "caffe":
            return None
        from segbench.nn.multipliers import caffe_multipliers

        return caffe_multipliers(self, ("head.fc8",) if self.largefov else ("classifier",), head_lr_mult)

    def latent(self, logits: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        """E-step: the latent segmentation ``[B, h, w]`` from the log-probabilities and the image labels."""
        labels = torch.stack([t["labels"] for t in targets]).to(logits.device)
        if labels.shape != logits.shape[:2]:
            raise DataError(f"emadapt: labels have shape {tuple(labels.shape)}, expected {tuple(logits.shape[:2])}")
        present = labels > 0.5
        allowed = None
        if any("labels_ignore" in t for t in targets):  # VOC "difficult": may win, is not boosted
            none = torch.zeros(labels.shape[1], dtype=torch.bool)
            allowed = torch.stack([t.get("labels_ignore", none) for t in targets]).to(logits.device, torch.bool)
        log_probs = logits.detach().float().log_softmax(1)
        return latent_segmentation(log_probs, present, allowed=allowed, **self.estep_options)

    def loss(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """M-step: per-pixel cross-entropy of the logits against the E-step's latent segmentation.

        With ``image_loss_weight > 0``, plus that weight times :meth:`image_loss`; during the first
        ``em_warmup`` training calls the E-step and the cross-entropy are skipped (``loss`` is 0) and only
        the image loss trains (neither is in the paper, which starts from an ImageNet classifier).
        """
        logits = self(images).float()
        warming = self.training and int(self.train_steps) < self.em_warmup
        if self.training:
            self.train_steps += 1
        if warming:
            labels = torch.stack([t["labels"] for t in targets])
            if labels.shape != logits.shape[:2]:
                raise DataError(f"emadapt: labels have shape {tuple(labels.shape)}, "
                                f"expected {tuple(logits.shape[:2])}")
            losses = {"loss": logits.new_zeros(())}
        else:
            losses = {"loss": F.cross_entropy(logits, self.latent(logits, targets))}
        if self.image_loss_weight > 0:
            losses["image_loss"] = self.image_loss_weight * self.image_loss(logits, targets)
        return losses

    def image_loss(self, logits: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        """Image-level BCE on each foreground class's pooled logit: the mean of its highest ``fg_share`` cells.

        An auxiliary term for training from scratch (the paper starts from an
        ImageNet classifier): it makes the class maps discriminative before the
        E-step can place the classes. The background and ``labels_ignore``
        classes do not count.
        """
        scores = weldon_pool2d(logits, kmax=self.estep_options["fg_share"], kmin=0)  # [B, C]
        labels, weight = label_weights("emadapt", targets, scores.shape[1], scores.device)
        if self.estep_options["background"] is not None:
            weight[:, self.estep_options["background"]] = 0
        return weighted_bce(scores, labels, weight)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict]:
        """Per image, no labels: ``score_maps`` (softmax of the bilinearly upsampled logits, input size),
        ``mask`` (their argmax, as in the paper's test) and ``scores`` (each class's maximum probability)."""
        logits = F.interpolate(self(images).float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        probs = logits.softmax(1)
        masks = probs.argmax(1)
        scores = probs.flatten(2).amax(2)
        return [{"scores": s, "score_maps": p, "mask": m} for s, p, m in zip(scores, probs, masks)]
