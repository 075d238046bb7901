"""The overlap-tile strategy of U-Net (Ronneberger et al. 2015, Fig. 2): geometry and tiled inference.

Coordinates. The image is embedded in an infinite *canvas* that mirrors it
(reflect padding, the edge pixel not repeated, as ``numpy.pad(mode="reflect")``)
and is shifted so that canvas position ``p`` holds image pixel ``p - lo``.
Tile ``k`` reads the canvas window ``[k * stride, k * stride + tile_size)`` and
keeps its output on ``[k * stride + margin, (k + 1) * stride + margin)``, i.e. the
image pixels ``[k * stride, (k + 1) * stride)``: consecutive tiles overlap by
``2 * margin`` pixels of context and their kept outputs abut.

Why the result equals one pass over the whole canvas. A U-Net with
``same`` padding is translation-equivariant for shifts that are multiples of
``2**depth`` (its pooling grid), and an output pixel depends only on input
pixels within its *receptive context radius* ``context + 2**depth - 1``, where
``context = (kernel // 2) * convs * (3 * 2**depth - 2)`` is what a ``valid``
U-Net trims on each side (92 at the paper's depth 4: its 572 px tile gives
388 px) and ``2**depth - 1`` comes from the up-convolutions' alignment (the
exact maximum over pixel positions; a unit test checks it by autograd). Every
tile starts at a multiple of ``2**depth`` on the canvas, so a tile's pooling
grid is the canvas' grid, and a kept pixel is at least ``margin >= radius``
pixels from the tile's border, where the zero padding of a ``same``
convolution starts. Hence the kept pixels are exactly those of one pass over
the canvas, up to floating point. With ``same`` padding the margin is also a
multiple of ``2**depth``, so the canvas keeps the image's own pooling grid:
pixels farther than the radius from the image border equal the bare
network's output on the image itself. A ``valid`` U-Net has no padding at
all: its outputs are exact by construction, and the margin needs only cover
the ``context`` it trims.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from segbench.errors import ConfigError

KERNEL = 3  # every convolution of the paper's U-Net is 3x3 ...
CONVS = 2  # ... two per level
PADDINGS = ("same", "valid")


def trimmed_context(depth: int) -> int:
    """Pixels a ``valid`` U-Net trims on each side: ``(kernel // 2) * convs * (3 * 2**depth - 2)`` (92 at depth 4)."""
    return (KERNEL // 2) * CONVS * (3 * 2**depth - 2)


def receptive_radius(depth: int, padding: str) -> int:
    """What ``tile_overlap`` must cover: the receptive context radius (``same``), the trimmed context (``valid``)."""
    return trimmed_context(depth) + (2**depth - 1 if padding == "same" else 0)


def valid_output_size(size: int, depth: int) -> int | None:
    """Output size of a ``valid`` U-Net for an input of ``size`` pixels, ``None`` when the size is not accepted.

    Accepted sizes keep every map positive and even before each 2x2 pooling (572 -> 388 at depth 4).
    """
    trim = CONVS * (KERNEL // 2) * 2
    for _ in range(depth):
        size -= trim
        if size < 2 or size % 2:
            return None
        size //= 2
    size -= trim
    if size < 1:
        return None
    for _ in range(depth):
        size = 2 * size - trim
    return size if size >= 1 else None


def network_size(size: int, depth: int, padding: str) -> int:
    """The smallest input size >= ``size`` the network accepts (a multiple of ``2**depth`` for ``same``)."""
    factor = 2**depth
    if padding == "same":
        return max(factor, math.ceil(size / factor) * factor)
    while valid_output_size(size, depth) is None:
        size += 1
    return size


@dataclass(frozen=True)
class TileGeometry:
    """Tile size, context margin and framing of a U-Net; :meth:`create` validates the options."""

    depth: int
    padding: str
    tile_size: int  # 0: no tiling, one pass framed as in training
    margin: int  # context margin of each tile (the option ``tile_overlap``), >= receptive_radius(depth, padding)

    @property
    def factor(self) -> int:
        return 2**self.depth

    @property
    def context(self) -> int:
        """What a ``valid`` network trims on each side (:func:`trimmed_context`)."""
        return trimmed_context(self.depth)

    @property
    def radius(self) -> int:
        return receptive_radius(self.depth, self.padding)

    @property
    def trim(self) -> int:
        """Pixels the network itself removes on each side (the context for ``valid``, 0 for ``same``)."""
        return self.context if self.padding == "valid" else 0

    @property
    def stride(self) -> int:
        """Output pixels kept per tile along each axis."""
        return self.tile_size - 2 * self.margin

    @classmethod
    def create(cls, depth: int, padding: str, tile_size: int, tile_overlap: int | None) -> "TileGeometry":
        """Check the options; one-line :class:`ConfigError` naming the option otherwise."""
        if padding not in PADDINGS:
            raise ConfigError(f"unet: padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 8:
            raise ConfigError(f"unet: depth must be an integer in 1..8, got {depth!r}")
        if not isinstance(tile_size, int) or isinstance(tile_size, bool) or tile_size < 0:
            raise ConfigError(f"unet: tile_size must be an integer >= 0 (0 = no tiling), got {tile_size!r}")
        factor, radius = 2**depth, receptive_radius(depth, padding)
        where = f"padding={padding!r}, depth={depth}"
        if tile_overlap is not None:
            if not isinstance(tile_overlap, int) or isinstance(tile_overlap, bool):
                raise ConfigError(f"unet: tile_overlap must be an integer or None (auto), got {tile_overlap!r}")
            if tile_overlap < radius:
                raise ConfigError(
                    f"unet: tile_overlap={tile_overlap} is below the receptive context radius {radius} of the "
                    f"network ({where}: {CONVS} {KERNEL}x{KERNEL} convolutions per level); tiles would show seams"
                )
            if padding == "same" and tile_overlap % factor:
                raise ConfigError(
                    f"unet: tile_overlap={tile_overlap} must be a multiple of 2**depth = {factor} ({where}) so the "
                    f"tiles keep the image's pooling grid"
                )
        if tile_size == 0:
            margin = tile_overlap if tile_overlap is not None else _auto_margin(depth, padding, None)
            return cls(depth, padding, 0, margin)
        if padding == "same" and tile_size % factor:
            raise ConfigError(f"unet: tile_size={tile_size} must be a multiple of 2**depth = {factor} ({where})")
        if padding == "valid" and valid_output_size(tile_size, depth) is None:
            below, above = _valid_neighbours(tile_size, depth)
            raise ConfigError(
                f"unet: tile_size={tile_size} is not an input size a valid-padding U-Net accepts ({where}: every "
                f"map must be even before pooling); nearest: {below}, {above}"
            )
        margin = tile_overlap if tile_overlap is not None else _auto_margin(depth, padding, tile_size)
        need = 2 * margin + factor
        if tile_size < need:
            raise ConfigError(
                f"unet: tile_size={tile_size} is smaller than the network's receptive context: it must be >= "
                f"2 * tile_overlap + 2**depth = {need} (tile_overlap={margin}, receptive radius {radius}, {where})"
            )
        if (tile_size - 2 * margin) % factor:
            raise ConfigError(
                f"unet: tile_size - 2 * tile_overlap = {tile_size - 2 * margin} must be a multiple of 2**depth = "
                f"{factor} so the tiles share the pooling grid ({where})"
            )
        return cls(depth, padding, tile_size, margin)

    # -- framing ---------------------------------------------------------------------
    def inference_frame(self, size: int) -> tuple[int, int]:
        """``(lo, canvas)`` of a one-pass prediction along an axis of ``size`` pixels.

        With tiling on, the image is mirrored by ``margin`` on each side (plus what
        the network needs at the end): the frame of the tiles, so one pass and tiles
        agree. With ``tile_size=0`` the frame of training (:meth:`train_frame`).
        """
        if self.tile_size == 0:
            return self.train_frame(size)
        return self.margin, network_size(size + 2 * self.margin, self.depth, self.padding)

    def train_frame(self, size: int) -> tuple[int, int]:
        """``(lo, canvas)`` in training: ``same`` mirrors only at the end up to a multiple of ``2**depth``;
        ``valid`` mirrors the context the network trims on each side (as the paper's tiles)."""
        if self.padding == "same":
            return 0, network_size(size, self.depth, "same")
        return self.context, network_size(size + 2 * self.context, self.depth, "valid")

    def fits(self, height: int, width: int) -> bool:
        """True when one pass is used: tiling is off, or the one-pass canvas is no larger than a tile."""
        if self.tile_size == 0:
            return True
        return max(self.inference_frame(height)[1], self.inference_frame(width)[1]) <= self.tile_size

    def tiles(self, size: int) -> list[int]:
        """Image positions where the kept outputs of the tiles start along an axis of ``size`` pixels."""
        return list(range(0, size, self.stride))


def _auto_margin(depth: int, padding: str, tile_size: int | None) -> int:
    """The smallest exact margin: the receptive radius, rounded up so the tiles keep the pooling grid."""
    factor, radius = 2**depth, receptive_radius(depth, padding)
    if padding == "same":  # a multiple of 2**depth: the frame keeps the image's own pooling grid
        return math.ceil(radius / factor) * factor
    margin = radius
    if tile_size is not None:
        while (tile_size - 2 * margin) % factor and tile_size - 2 * margin > 0:
            margin += 1
    return margin


def _valid_neighbours(size: int, depth: int) -> tuple[int | None, int]:
    below = next((s for s in range(size - 1, 0, -1) if valid_output_size(s, depth) is not None), None)
    return below, network_size(size, depth, "valid")


def _no_grad(fn):
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


# -- tensors -------------------------------------------------------------------------------
def mirror_index(start: int, length: int, size: int, device=None):
    """Indices into an axis of ``size`` pixels for positions ``start .. start + length - 1`` mirrored
    (reflect, edge not repeated) as many times as needed."""
    import torch

    positions = torch.arange(start, start + length, device=device)
    if size == 1:
        return torch.zeros_like(positions)
    period = 2 * (size - 1)
    positions = positions.remainder(period)
    return torch.where(positions < size, positions, period - positions)


def mirror_crop(images, top: int, left: int, height: int, width: int):
    """The window ``[top, top + height) x [left, left + width)`` of the mirrored ``images`` ``[..., H, W]``."""
    h, w = images.shape[-2:]
    if top < 0 or left < 0 or top + height > h or left + width > w:
        rows = mirror_index(top, height, h, images.device)
        cols = mirror_index(left, width, w, images.device)
        return images.index_select(-2, rows).index_select(-1, cols)
    return images[..., top:top + height, left:left + width]


def framed_logits(network, images, geometry: TileGeometry, train: bool = False):
    """Logits ``[B, C, H, W]`` of one pass over the framed (mirrored) batch, cropped back to the images."""
    height, width = images.shape[-2:]
    frame = geometry.train_frame if train else geometry.inference_frame
    (top, canvas_h), (left, canvas_w) = frame(height), frame(width)
    logits = network(mirror_crop(images, -top, -left, canvas_h, canvas_w))
    row, col = top - geometry.trim, left - geometry.trim
    return logits[..., row:row + height, col:col + width]


@_no_grad
def tiled_probabilities(network, image, num_classes: int, geometry: TileGeometry, out=None):
    """Softmax probabilities ``[C, H, W]`` of one image ``[3, H, W]``, one tile of ``tile_size`` at a time.

    Written into ``out`` when given. Runs without autograd; memory beyond one
    tile's forward pass: the ``[C, H, W]`` result.

    Not the engine's sliding window (``slide``, :func:`segbench.engine.tta.slide_predict`): that one averages
    the overlapping outputs of windows cut from the zero-padded image, while the overlap-tile strategy keeps
    only each tile's centre (its context margin mirrored, never averaged), which makes it equal one pass over
    the canvas (module docstring). The two give different numbers, so U-Net keeps its own.
    """
    import torch

    height, width = image.shape[-2:]
    size, margin, stride = geometry.tile_size, geometry.margin, geometry.stride
    offset = margin - geometry.trim  # where the kept output starts in a tile's output
    probs = out if out is not None else torch.empty((num_classes, height, width), device=image.device)
    for top in geometry.tiles(height):
        for left in geometry.tiles(width):
            tile = mirror_crop(image[None], top - margin, left - margin, size, size)
            h, w = min(stride, height - top), min(stride, width - left)
            logits = network(tile)[0, :, offset:offset + h, offset:offset + w]
            probs[:, top:top + h, left:left + w] = logits.to(probs.dtype).softmax(dim=0)
            del logits, tile
    return probs
