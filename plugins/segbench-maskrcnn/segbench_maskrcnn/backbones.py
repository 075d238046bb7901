"""Feature pyramids for Mask R-CNN: torchvision ResNet-FPN (the paper's) or any timm model with an FPN on top.

Both give what torchvision's detection heads expect: ``forward(x)`` returns an
``OrderedDict`` of maps ``"0"..."k-1"`` (one per stride in ``fpn_strides``)
plus ``"pool"`` (a stride-2 max-pool of the last, torchvision's
``LastLevelMaxPool``), all with ``out_channels`` channels.

Pretrained weights fail fast offline (:class:`segbench.errors.OfflineError`),
as :func:`segbench.nn.backbones.create_backbone` does for timm.
"""

from __future__ import annotations

import os
import socket
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from segbench.errors import ConfigError, OfflineError

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
TORCHVISION_BACKBONES = tuple(f"{name}_fpn" for name in TORCHVISION_RESNETS)
DOWNLOAD_HOST = ("download.pytorch.org", 443)
RESNET_STRIDES = {4: "layer1", 8: "layer2", 16: "layer3", 32: "layer4"}


def is_torchvision(name: str) -> bool:
    """True for the torchvision ResNet-FPN names (``resnet50_fpn``, ...); anything else is a timm model."""
    return name in TORCHVISION_BACKBONES


class TimmFPN(nn.Module):
    """A timm ``features_only`` model followed by torchvision's ``FeaturePyramidNetwork``."""

    def __init__(self, body: nn.Module, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        self.body = body
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def build_backbone(
    name: str,
    *,
    imagenet: bool = False,
    timm_weights: str | os.PathLike | None = None,
    trainable_layers: int | None = None,
    out_channels: int = 256,
    fpn_strides: Sequence[int] = (4, 8, 16, 32),
    frozen_bn: bool = False,
    timm_args: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The feature pyramid ``name`` (``resnet50_fpn``, ...: torchvision; any other name: a timm model).

    ``imagenet`` loads the classifier's ImageNet weights into the body (torchvision's
    for the ResNets, timm's otherwise); ``timm_weights`` is a local file for a timm
    body and ``timm_args`` extra ``timm.create_model`` arguments. ``frozen_bn`` uses
    torchvision's ``FrozenBatchNorm2d`` in a torchvision ResNet, as torchvision does
    for pretrained detectors.
    """
    if is_torchvision(name):
        if timm_args:
            raise ConfigError(f"mask_rcnn: backbone_args apply to timm backbones, not to '{name}'")
        return _torchvision_fpn(name[: -len("_fpn")], imagenet, trainable_layers, out_channels, fpn_strides,
                                frozen_bn)
    if trainable_layers is not None:
        raise ConfigError(f"mask_rcnn: trainable_layers applies to the torchvision backbones "
                          f"({', '.join(TORCHVISION_BACKBONES)}), not to timm backbone '{name}'; leave it None")
    return _timm_fpn(name, imagenet, timm_weights, out_channels, fpn_strides, timm_args or {})


def _torchvision_fpn(arch: str, imagenet: bool, trainable_layers: int | None, out_channels: int,
                     fpn_strides: Sequence[int], frozen_bn: bool) -> nn.Module:
    """torchvision's ``_resnet_fpn_extractor`` with a free ``out_channels`` and returned strides."""
    from torchvision.models import resnet
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops import misc as misc_nn_ops
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    bad = [s for s in fpn_strides if s not in RESNET_STRIDES]
    if bad:
        raise ConfigError(f"mask_rcnn: fpn_strides {list(fpn_strides)}: a ResNet has stages at strides "
                          f"{sorted(RESNET_STRIDES)} only")
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    state = None
    if imagenet:  # fetched first: offline, fail before building anything
        enum = getattr(resnet, _weights_enum_name(arch)).IMAGENET1K_V1
        state = torchvision_state_dict(enum.url, f"{arch} ImageNet")
    body = getattr(resnet, arch)(weights=None, norm_layer=norm_layer)
    if state is not None:
        body.load_state_dict(state)
    if trainable_layers is None:  # torchvision's rule: 3 for a pretrained (frozen-BN) body, else all 5
        trainable_layers = 3 if frozen_bn else 5
    layers = trainable_layers
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:layers] + (["bn1"] if layers == 5 else [])
    for pname, parameter in body.named_parameters():
        if not any(pname.startswith(layer) for layer in train):
            parameter.requires_grad_(False)
    return_layers = {RESNET_STRIDES[s]: str(i) for i, s in enumerate(fpn_strides)}
    stage_channels = {4: 64, 8: 128, 16: 256, 32: 512}
    expansion = 4 if arch in ("resnet50", "resnet101", "resnet152") else 1
    in_channels = [stage_channels[s] * expansion for s in fpn_strides]
    return BackboneWithFPN(body, return_layers, in_channels, out_channels, extra_blocks=LastLevelMaxPool())


def _weights_enum_name(arch: str) -> str:
    return f"ResNet{arch[len('resnet'):]}_Weights"


def _timm_fpn(name: str, pretrained: bool, weights: str | os.PathLike | None, out_channels: int,
              fpn_strides: Sequence[int], timm_args: Mapping[str, Any]) -> nn.Module:
    """A timm body whose feature maps at ``fpn_strides`` (the deepest map at each) feed an FPN."""
    from segbench.nn.backbones import create_backbone

    body = create_backbone(name, pretrained=pretrained, weights=weights, **timm_args)
    reductions = list(body.feature_info.reduction())
    channels = list(body.feature_info.channels())
    indices = []
    for stride in fpn_strides:
        if stride not in reductions:
            raise ConfigError(f"mask_rcnn: timm backbone '{name}' has no feature map at stride {stride} "
                              f"(its strides: {reductions}); set fpn_strides")
        indices.append(len(reductions) - 1 - reductions[::-1].index(stride))
    return TimmFPN(_Select(body, indices), [channels[i] for i in indices], out_channels)


class _Select(nn.Module):
    """Keep the maps at ``indices`` of a features_only model's outputs."""

    def __init__(self, model: nn.Module, indices: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.indices = list(indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.model(x)
        return [features[i] for i in self.indices]


# -- weights ---------------------------------------------------------------------------------------
def torchvision_state_dict(url: str, what: str, host: tuple[str, int] = DOWNLOAD_HOST,
                           timeout: float = 2.0) -> dict[str, torch.Tensor]:
    """torchvision weights from the torch hub cache, else downloaded; :class:`OfflineError` at once offline."""
    filename = os.path.basename(url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    if not offline:
        try:
            socket.create_connection(host, timeout=timeout).close()
        except OSError:
            offline = True
    if offline:
        raise OfflineError(
            f"pretrained weights for {what} ({filename}) cannot be downloaded (offline) and are not in "
            f"{cached.parent}; pass a local file with --weights PATH (.pth or .safetensors) or "
            f"--set pretrained=false"
        )
    return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True,
                                              weights_only=True)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` or ``.pth``/``.pt`` file (``weights_only=True``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]  # torchvision references' checkpoints: {"model": ..., "optimizer": ...}
    if not isinstance(state, Mapping):
        raise ConfigError(f"{path}: not a state dict (got {type(state).__name__})")
    return dict(state)


def load_matching(module: nn.Module, state: Mapping[str, Any], skip: Sequence[str] = ()) -> tuple[int, list[str]]:
    """Copy every tensor of ``state`` whose key and shape match ``module``'s.

    Returns how many were copied and what did not fit (a shape that differs, a
    tensor of ``module`` the file lacks). Keys starting with one of ``skip`` may
    differ or be missing silently (class-specific layers for another class count).
    """
    own = module.state_dict()
    keep, problems = {}, []
    for key, value in state.items():
        if key not in own:
            continue
        if tuple(own[key].shape) == tuple(value.shape):
            keep[key] = value
        elif not any(key.startswith(prefix) for prefix in skip):
            problems.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
    module.load_state_dict(keep, strict=False)
    problems += [f"{k} (missing)" for k in own if k not in state and not k.endswith("num_batches_tracked")
                 and not any(k.startswith(prefix) for prefix in skip)]
    return len(keep), problems
