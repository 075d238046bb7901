"""A tensor type for per-instance masks, so transforms pad them with 0 rather than the void 255 of ``mask``."""

from __future__ import annotations

from torchvision import tv_tensors


class InstanceMasks(tv_tensors.Mask):
    """Per-instance binary masks (N, H, W).

    Transforms v2 picks a fill value by the input's exact type and a kernel by
    its nearest registered base class: this subclass moves like a ``Mask`` but
    pads with the ``"others"`` fill (0), so a padded border never becomes part
    of an instance.
    """
