"""Atrous timm backbones for DeepLab: output stride, VGG surgery, multi-grid and an output-stride switch.

Every backbone is a timm ``features_only`` model created through
:func:`segbench.nn.backbones.create_backbone`. ResNets (and most timm CNNs)
take ``output_stride`` from timm itself. timm's VGG refuses ``output_stride``
(a bare ``assert``), so :func:`segbench.nn.vgg.atrous_vgg` adapts timm's own
VGG modules in place, as DeepLab-LargeFOV did to VGG16: the pools past the output stride keep
their size (3x3, stride 1, pad 1) and the convolutions after each of them are
dilated by a further factor 2.

:class:`StrideSwitch` holds the geometry (stride, padding, dilation of every
convolution, and the parameter-free layers) of one backbone at several output
strides and applies one of them in place, so the same weights run at output
stride 16 in training and 8 in evaluation (DeepLab v3).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from segbench.errors import ConfigError
from segbench.nn.backbones import create_backbone
from segbench.nn.vgg import atrous_vgg, is_vgg  # shared with other plugins; re-exported here

OUTPUT_STRIDES = (8, 16, 32)
NET_STRIDE = 32  # the nominal stride of every backbone's last map (timm CNNs)
__all__ = ["OUTPUT_STRIDES", "StrideSwitch", "apply_multi_grid", "atrous_vgg", "build_backbone", "is_vgg",
           "last_stage"]


def build_backbone(
    method: str,
    name: str,
    output_stride: int,
    *,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    backbone_args: Mapping[str, Any] | None = None,
    width: float = 1.0,
    meta: bool = False,
) -> nn.Module:
    """A timm ``features_only`` backbone whose last map is at ``output_stride``.

    ``width`` scales the channels of a VGG (timm's ``VGG`` class with its
    configuration scaled; from scratch only). ``meta=True`` builds it on the
    meta device (no memory, no weights): used to read another output stride's
    geometry. Errors are one-line :class:`ConfigError` naming the option.
    """
    args = dict(backbone_args or {})
    if is_vgg(name):
        with _device(meta):
            if width != 1.0:
                if pretrained or weights:
                    raise ConfigError(f"{method}: option width={width}: pretrained VGG weights need width=1.0")
                model = _scaled_vgg(method, name, width, args)
            else:
                model = _create(method, name, None, pretrained and not meta, None if meta else weights, args)
        atrous_vgg(model, output_stride)
        return model
    if width != 1.0:
        raise ConfigError(f"{method}: option width applies to VGG backbones only, got width={width} with '{name}'")
    with _device(meta):
        return _create(method, name, output_stride, pretrained and not meta, None if meta else weights, args)


def _device(meta: bool):
    """``torch.device("meta")`` as a context (layers built without memory), or a no-op context."""
    return torch.device("meta") if meta else contextlib.nullcontext()


def _create(method, name, output_stride, pretrained, weights, args):
    try:
        return create_backbone(name, pretrained=pretrained, weights=weights, output_stride=output_stride, **args)
    except ConfigError as exc:
        if "unknown timm backbone" in str(exc):
            raise ConfigError(f"{method}: option backbone: {exc}") from exc
        if output_stride is not None and "output_stride" in str(exc):
            raise ConfigError(
                f"{method}: option output_stride={output_stride}: backbone '{name}' cannot give it (timm refuses it)"
            ) from exc
        raise ConfigError(f"{method}: {exc}") from exc
    except TypeError as exc:  # timm models without the argument: "unexpected keyword argument 'output_stride'"
        if output_stride is not None and "output_stride" in str(exc):
            raise ConfigError(
                f"{method}: option output_stride={output_stride}: backbone '{name}' cannot give it "
                f"(its timm model has no output_stride argument)"
            ) from exc
        raise ConfigError(f"{method}: backbone '{name}' rejects options {args}: {exc}") from exc


def _scaled_vgg(method: str, name: str, width: float, args: dict) -> nn.Module:
    """timm's VGG class with every width scaled by ``width`` (at least 4 channels), features_only."""
    from timm.models import build_model_with_cfg
    from timm.models.vgg import VGG, cfgs

    base = name.split(".")[0]
    cfg_name = base.split("_")[0]
    if cfg_name not in cfgs or base not in (cfg_name, f"{cfg_name}_bn"):
        raise ConfigError(f"{method}: option width needs one of timm's vgg11/13/16/19(_bn), got '{name}'")
    if not 0.0 < width <= 1.0:
        raise ConfigError(f"{method}: option width must be in (0, 1], got {width!r}")
    cfg = [v if v == "M" else max(4, int(round(v * width))) for v in cfgs[cfg_name]]
    if base.endswith("_bn"):
        args.setdefault("norm_layer", nn.BatchNorm2d)
    try:
        return build_model_with_cfg(
            VGG, base, False, model_cfg=cfg, features_only=True,
            feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3, 4, 5)), **args,
        )
    except TypeError as exc:
        raise ConfigError(f"{method}: backbone '{name}' rejects options {args}: {exc}") from exc


def last_stage(model: nn.Module) -> nn.Module | None:
    """The module of the backbone's last feature map (``layer4`` for timm ResNets), None when not found."""
    name = model.feature_info.module_name()[-1]
    for candidate in (name, name.replace(".", "_")):  # flattened features_only models name "features.30" features_30
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def apply_multi_grid(method: str, model: nn.Module, grid: Sequence[int], output_stride: int) -> list[int]:
    """DeepLab v3 multi-grid: block ``i`` of the last stage gets rate ``(32 / output_stride) * grid[i]``.

    Every 3x3 (k x k) convolution of block ``i`` gets that dilation (and the
    padding that keeps the size): the bottleneck's ``conv2``, both convolutions
    of a basic block. A stage with more blocks than ``grid`` repeats its last
    value; fewer blocks use the first values. Returns the rates applied.
    """
    stage = last_stage(model)
    blocks = list(stage.children()) if isinstance(stage, nn.Sequential) else []
    if not blocks or not all(_spatial_convs(b) for b in blocks):
        raise ConfigError(
            f"{method}: option multi_grid needs a ResNet-like backbone whose last stage is a sequence of blocks "
            f"(set multi_grid=None for this backbone)"
        )
    base = max(1, NET_STRIDE // output_stride)
    rates = []
    for i, block in enumerate(blocks):
        rate = base * int(grid[min(i, len(grid) - 1)])
        for conv in _spatial_convs(block):
            conv.dilation = (rate, rate)
            conv.padding = (rate * (conv.kernel_size[0] // 2), rate * (conv.kernel_size[1] // 2))
        rates.append(rate)
    return rates


def _spatial_convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1 and m.groups == 1]


class StrideSwitch:
    """The geometry of one backbone at several output strides; :meth:`apply` sets one in place.

    A layout maps each leaf module name to either the convolution's
    ``(stride, padding, dilation)`` or, for a layer without parameters or
    buffers (pools, identities), the layer itself. Weights are never touched.
    """

    def __init__(self) -> None:
        self.layouts: dict[int, dict[str, Any]] = {}

    @staticmethod
    def layout(model: nn.Module) -> dict[str, Any]:
        """The geometry of ``model`` as it is now."""
        out: dict[str, Any] = {}
        for name, module in model.named_modules():
            if not name or any(True for _ in module.children()):
                continue
            if isinstance(module, nn.modules.conv._ConvNd):
                out[name] = (tuple(module.stride), module.padding, tuple(module.dilation),
                             tuple(module.weight.shape))
            elif not any(True for _ in module.parameters()) and not any(True for _ in module.buffers()):
                out[name] = module
        return out

    def add(self, method: str, output_stride: int, reference: dict[str, Any], layout: dict[str, Any]) -> None:
        """Add ``layout`` for ``output_stride``; it must have the same layers and weight shapes as ``reference``."""
        same = set(layout) == set(reference) and all(
            isinstance(layout[k], tuple) == isinstance(reference[k], tuple)
            and (not isinstance(layout[k], tuple) or layout[k][3] == reference[k][3])
            for k in layout
        )
        if not same:
            raise ConfigError(
                f"{method}: option eval_output_stride={output_stride}: this backbone's layers differ between "
                f"output strides, so the same weights cannot switch"
            )
        for key, entry in layout.items():  # keep the reference's own layer where nothing differs
            ref = reference[key]
            if not isinstance(entry, tuple) and type(entry) is type(ref) and entry.extra_repr() == ref.extra_repr():
                layout[key] = ref
        self.layouts[output_stride] = layout

    def apply(self, model: nn.Module, output_stride: int) -> None:
        """Set every convolution's stride/padding/dilation and swap the parameter-free layers for ``output_stride``."""
        for name, entry in self.layouts[output_stride].items():
            if isinstance(entry, tuple):
                conv = model.get_submodule(name)
                conv.stride, conv.padding, conv.dilation = entry[0], entry[1], entry[2]
            else:
                parent, _, child = name.rpartition(".")
                holder = model.get_submodule(parent) if parent else model
                if getattr(holder, child) is not entry:
                    setattr(holder, child, entry)
