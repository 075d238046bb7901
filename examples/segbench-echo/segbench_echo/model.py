"""The echo model: a 1x1 convolution on a strongly downsampled image, global max pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segbench.errors import ConfigError


class Echo(nn.Module):
    """Class score maps from pixel colours; image scores are their global max."""

    def __init__(self, num_classes: int, downsample: int = 8) -> None:
        super().__init__()
        if not isinstance(downsample, int) or downsample < 1:
            raise ConfigError(f"method 'echo': downsample must be a positive integer, got {downsample!r}")
        self.downsample = downsample
        self.classifier = nn.Conv2d(3, num_classes, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> class score maps ``[B, C, H // downsample, W // downsample]`` (at least 1x1)."""
        height, width = images.shape[-2:]
        size = (max(1, height // self.downsample), max(1, width // self.downsample))
        return self.classifier(F.adaptive_avg_pool2d(images, size))

    def loss(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Multi-label BCE with logits on the global max of the maps."""
        scores = self(images).amax(dim=(-2, -1))
        labels = torch.stack([t["labels"] for t in targets]).to(scores)
        weight = torch.ones_like(labels)
        for i, target in enumerate(targets):  # classes present only as "difficult" do not count
            if "labels_ignore" in target:
                weight[i] = (~target["labels_ignore"].bool()).to(weight)
        return {"bce": F.binary_cross_entropy_with_logits(scores, labels, weight=weight)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """One prediction per image: ``scores`` ``[C]`` and ``score_maps`` ``[C, h, w]`` (logits)."""
        maps = self(images)
        scores = maps.amax(dim=(-2, -1))
        return [{"scores": s, "score_maps": m} for s, m in zip(scores, maps)]
