"""U-Net (Ronneberger, Fischer, Brox, MICCAI 2015): contracting and expanding paths joined by feature copies.

``forward`` is the bare network (input sizes it accepts: a multiple of
``2**depth`` for ``same`` padding, a ``valid`` size such as 572 for ``valid``);
``loss`` and ``predict`` frame any image size around it, and ``predict`` applies
the overlap-tile strategy of :mod:`segbench_unet.tiling` to images larger than
a tile. See the plugin README for what follows the paper and what differs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segbench.engine.tta import class_argmax
from segbench.errors import ConfigError
from segbench_unet.tiling import CONVS, KERNEL, TileGeometry, framed_logits, tiled_probabilities

IGNORE_INDEX = 255
BACKGROUND = 0  # the weight map's background class (segbench's segmentation datasets: 0)


def double_conv(in_channels: int, out_channels: int, padding: str, batch_norm: bool) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by (batch norm and) ReLU: one level of either path."""
    layers: list[nn.Module] = []
    for i in range(CONVS):
        layers.append(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, KERNEL,
                                padding=KERNEL // 2 if padding == "same" else 0, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The central ``size`` window of ``x`` (the paper's "copy and crop" of the contracting features)."""
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[..., top:top + size[0], left:left + size[1]]


class UNet(nn.Module):
    """U-Net with ``depth`` 2x2 poolings; level ``l`` has ``base_channels * 2**l`` channels."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 4,
        base_channels: int = 64,
        padding: str = "same",
        batch_norm: bool = True,
        dropout: float = 0.0,
        tile_size: int = 512,
        tile_overlap: int | None = None,
        weight_map: bool = False,
        w0: float = 10.0,
        sigma: float = 5.0,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"unet: num_classes must be an integer >= 2, got {num_classes!r}")
        if not isinstance(base_channels, int) or isinstance(base_channels, bool) or base_channels < 1:
            raise ConfigError(f"unet: base_channels must be a positive integer, got {base_channels!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ConfigError(f"unet: dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(weight_map, bool):
            raise ConfigError(f"unet: weight_map must be true or false, got {weight_map!r}")
        if isinstance(w0, bool) or not isinstance(w0, (int, float)) or not w0 >= 0:
            raise ConfigError(f"unet: w0 must be a number >= 0, got {w0!r}")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
            raise ConfigError(f"unet: sigma must be a number > 0 (pixels), got {sigma!r}")
        self.weight_map, self.w0, self.sigma = weight_map, float(w0), float(sigma)
        self.geometry = TileGeometry.create(depth, padding, tile_size, tile_overlap)
        self.num_classes = num_classes
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList(
            double_conv(3 if level == 0 else widths[level - 1], widths[level], padding, batch_norm)
            for level in range(depth)
        )
        self.bottom = double_conv(widths[depth - 1], widths[depth], padding, batch_norm)
        self.dropout = nn.Dropout(dropout)  # the paper: drop-out at the end of the contracting path
        # level l of the expanding path: 2x2 up-convolution halving the channels, concat the copy, two convs
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2)
                                for level in range(depth))
        self.dec = nn.ModuleList(double_conv(2 * widths[level], widths[level], padding, batch_norm)
                                 for level in range(depth))
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        """The paper's initialisation: Gaussian with standard deviation sqrt(2 / N), N = inputs of a unit."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.ConvTranspose2d):  # each output sees in_channels inputs (2x2, stride 2)
                nn.init.normal_(m.weight, std=(2.0 / m.in_channels) ** 0.5)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
                nn.init.zeros_(m.bias)

    # -- network -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the bare network (``same``: ``[B, C, H, W]``; ``valid``: smaller by the context per side)."""
        copies = []
        for block in self.down:
            x = block(x)
            copies.append(x)
            x = F.max_pool2d(x, 2)
        x = self.dropout(self.bottom(x))
        for level in reversed(range(len(self.down))):
            x = self.up[level](x)
            x = torch.cat([center_crop(copies[level], x.shape[-2:]), x], dim=1)
            x = self.dec[level](x)
        return self.head(x)

    def logits(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        """Logits ``[B, C, H, W]`` at the image size, one pass over the mirrored frame (training or inference)."""
        return framed_logits(self, images, self.geometry, train=train)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax ``[B, C, H, W]``: one pass when the frame fits a tile, else the overlap-tile strategy.

        float32 (float64 for a float64 batch), whatever the autocast dtype of the logits.
        """
        height, width = images.shape[-2:]
        dtype = torch.promote_types(images.dtype, torch.float32)
        if self.geometry.fits(height, width):
            return self.logits(images).to(dtype).softmax(dim=1)
        probs = images.new_empty((images.shape[0], self.num_classes, height, width), dtype=dtype)
        for i in range(images.shape[0]):
            tiled_probabilities(self, images[i], self.num_classes, self.geometry, out=probs[i])
        return probs

    # -- segbench method API -----------------------------------------------------------------
    def pixel_weights(self, targets: list[dict[str, Any]]) -> torch.Tensor:
        """The paper's weight maps ``[B, H, W]`` (float32, on the masks' device), one per target, computed from its
        ``mask`` (and instance ``masks`` when present) at the mask's size: the size of the training logits."""
        from segbench.nn.weight_map import unet_weight_map

        return torch.stack([unet_weight_map(t["mask"], t.get("masks"), w0=self.w0, sigma=self.sigma,
                                            background=BACKGROUND, ignore_index=IGNORE_INDEX) for t in targets])

    def loss(self, images: torch.Tensor, targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Per-pixel softmax cross-entropy, mean over labelled pixels (255 ignored; 0 when none is labelled);
        with ``weight_map`` each pixel's term is weighted by the paper's ``w(x)`` (still divided by the labelled
        pixels: the paper's weighted sum up to a constant per tile)."""
        logits = self.logits(images, train=True)
        masks = torch.stack([t["mask"] for t in targets]).to(device=logits.device, dtype=torch.long)
        if masks.shape[-2:] != logits.shape[-2:]:
            raise ValueError(f"target masks are {tuple(masks.shape[-2:])}, images {tuple(logits.shape[-2:])}")
        if self.weight_map:
            from segbench.nn.weight_map import weighted_pixel_loss

            weights = self.pixel_weights(targets).to(logits.device)
            return {"loss": weighted_pixel_loss(logits, masks, weights, IGNORE_INDEX, normalize="pixels")}
        total = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX, reduction="sum")
        return {"loss": total / (masks != IGNORE_INDEX).sum().clamp(min=1)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per image: ``mask`` (argmax), ``score_maps`` (softmax) and ``scores`` (per-class max of the maps)."""
        probs = self.probabilities(images)
        masks = class_argmax(probs)  # = probs.argmax(dim=1), faster on the CPU
        scores = probs.flatten(2).amax(dim=2)
        return [{"mask": m, "score_maps": p, "scores": s} for m, p, s in zip(masks, probs, scores)]
