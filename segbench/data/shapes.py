"""The synthetic ``shapes`` dataset: procedural scenes that carry every annotation kind.

A scene is a textured, cluttered background (a colour gradient, then optional
stripes, smooth colour blobs and thick bars, then pixel noise over everything)
with ``min_objects``..``max_objects`` objects of six classes: disc, square,
triangle, star, ring and cross. Each object has a random size (its
circumscribed circle's diameter is ``min_size``..``max_size`` times the image
side), position, rotation, colour (independent of its class, chosen to
contrast with the background under it) and a linear shading. Later objects
occlude earlier ones; objects may be cut by the image border. An object left
with less than ``min_visible`` of its area visible, or with no pixel outside
the void band, is removed and another is drawn in its place, so every object
in the image is annotated.

Determinism: sample ``i`` of split ``s`` is drawn from its own
``numpy.random.Generator(PCG64(SeedSequence([seed, crc32(s), i])))``, using
only ``random()`` and raw draws, whose streams numpy keeps stable. The pixel
noise comes from one tile seeded by ``seed`` and the image size. Pixel arithmetic uses only
IEEE-exact float32 operations (+, -, *, /, comparisons, floor, rint; the few
sines and cosines are scalars from the C library), so a sample depends neither
on the machine, nor on the split's length, nor on which other samples were
generated with it.

Annotations (see ``segbench.specs``): ``mask`` holds the class of each pixel,
with 255 on a void band ``void_width`` pixels wide on each side of every
object outline (a pixel is void when the ``(2w+1) x (2w+1)`` square around
it, clipped to the image, meets another instance or the background; the image
border is not an outline). Instance ``masks`` are the visible pixels of each
object (void band included), ``boxes`` their XYXY extent in continuous pixel
coordinates (columns a..b give x1 = a, x2 = b + 1).
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torchvision import tv_tensors

from segbench.data.builtin import SHAPES_CLASSES, SHAPES_OPTIONS, shapes_metric_defaults, shapes_pointing_tolerance
from segbench.errors import ConfigError, DataError

__all__ = [
    "CLASSES",
    "GENERATOR_VERSION",
    "ShapesDataset",
    "ShapesSplit",
    "check_options",
    "generate",
    "pointing_tolerance",
]

CLASSES = SHAPES_CLASSES
GENERATOR_VERSION = 1
"""Bumped whenever the same options would give different pixels."""

pointing_tolerance = shapes_pointing_tolerance

DISC, SQUARE, TRIANGLE, STAR, RING, CROSS = range(1, 7)
_CHUNK = 256  # samples generated together (and kept) on first access
INSTANCE_KEYS = frozenset({"boxes", "classes", "masks", "iscrowd"})  # built together, or not at all
_BLOB_GRID = 6  # control points per side of the smooth blob field
_MAX_BARS = 3
_F0, _F1, _F255 = np.float32(0), np.float32(1), np.float32(255)
_COLOUR_TRIES = 6
_MIN_CONTRAST = 90.0  # RGB distance between an object's colour and the background under it
_STAR_D = math.cos(2 * math.pi / 5)  # pentagram: lines at this distance from the centre
_STAR_AREA = 5 * math.sin(math.pi / 5) * (math.cos(2 * math.pi / 5) / math.cos(math.pi / 5))  # R = 1
_SQRT3_2 = math.sqrt(3) / 2
_HALF_SQUARE = 1 / math.sqrt(2)
_BG_PARAMS = 25 + _BLOB_GRID * _BLOB_GRID + 9 * _MAX_BARS + 3  # the last 3: noise amplitude and offset


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` merged over the defaults and checked; a bad one is a ``ConfigError``."""
    unknown = set(options) - set(SHAPES_OPTIONS)
    if unknown:
        raise ConfigError(
            f"dataset 'shapes' has no option(s) {', '.join(sorted(unknown))}; "
            f"options: {', '.join(sorted(SHAPES_OPTIONS))}"
        )
    opts = {**SHAPES_OPTIONS, **options}

    def bad(key: str, rule: str) -> ConfigError:
        return ConfigError(f"dataset 'shapes': option {key} {rule}, got {opts[key]!r}")

    for key in ("image_size", "num_train", "num_val", "num_test", "seed", "min_objects", "max_objects", "void_width"):
        if isinstance(opts[key], bool) or not isinstance(opts[key], (int, np.integer)):
            raise bad(key, "must be an integer")
        opts[key] = int(opts[key])
    for key in ("min_size", "max_size", "min_visible", "clutter"):
        if isinstance(opts[key], bool) or not isinstance(opts[key], (int, float)):
            raise bad(key, "must be a number")
        opts[key] = float(opts[key])
    if not 16 <= opts["image_size"] <= 1024:
        raise bad("image_size", "must be between 16 and 1024")
    for key in ("num_train", "num_val", "num_test", "seed", "void_width"):
        if opts[key] < 0:
            raise bad(key, "must be >= 0")
    if not 1 <= opts["min_objects"] <= 10:
        raise bad("min_objects", "must be between 1 and 10")
    if not opts["min_objects"] <= opts["max_objects"] <= 10:
        raise bad("max_objects", f"must be between min_objects ({opts['min_objects']}) and 10")
    if not 0 < opts["min_size"] <= opts["max_size"] <= 1:
        raise bad("max_size" if opts["min_size"] > 0 else "min_size", "must satisfy 0 < min_size <= max_size <= 1")
    if not 0 <= opts["min_visible"] <= 1:
        raise bad("min_visible", "must be between 0 and 1")
    if not 0 <= opts["clutter"] <= 2:
        raise bad("clutter", "must be between 0 and 2")
    radius = opts["max_size"] * opts["image_size"] / 2
    if radius < 2 * opts["void_width"] + 2:
        raise ConfigError(
            f"dataset 'shapes': the largest objects (max_size {opts['max_size']} x image_size "
            f"{opts['image_size']} = {2 * radius:.1f} px) are too small for void_width {opts['void_width']}; "
            f"raise max_size or image_size, or lower void_width"
        )
    return opts


@dataclass
class ShapesSplit:
    """Samples ``start..start+len`` of a split as compact arrays.

    ``images`` uint8 ``[B, 3, S, S]``; ``instances`` uint8 ``[B, S, S]``
    (0 background, k = k-th visible object in drawing order, 1-based; the void
    band keeps the instance id); ``semantic`` uint8 ``[B, S, S]`` (class, 255
    void); ``classes[b]`` int64 ``[N]`` and ``boxes[b]`` float32 ``[N, 4]``.
    """

    images: np.ndarray
    instances: np.ndarray
    semantic: np.ndarray
    classes: list[np.ndarray]
    boxes: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.images)


# -- randomness --------------------------------------------------------------------------------
def split_code(split: str) -> int:
    """A stable integer for a split name (CRC-32 of its UTF-8 bytes)."""
    return zlib.crc32(split.encode("utf-8"))


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that sample ``index`` of ``split`` draws from, and nothing else."""
    return np.random.Generator(np.random.PCG64([seed, split_code(split), index]))


class _Canvas:
    """Per image size: pixel-centre coordinates, blob interpolation tables, the noise tile."""

    _cache: dict[tuple[int, int], "_Canvas"] = {}

    def __init__(self, size: int, seed: int) -> None:
        f32 = np.float32
        self.size = size
        self.x = ((np.arange(size, dtype=f32) + f32(0.5)) / f32(size))[None, :]  # [1, S] in (0, 1)
        self.y = self.x.reshape(size, 1)
        pos = (np.arange(size, dtype=np.float64) + 0.5) / size * (_BLOB_GRID - 1)
        self.i0 = np.minimum(np.floor(pos).astype(np.intp), _BLOB_GRID - 2)
        self.w1 = (pos - self.i0).astype(f32)
        self.w0 = 1 - self.w1
        # uniform noise in [-1, 1], [3, 2S, 2S]; each image reads a window of it
        rng = np.random.Generator(np.random.PCG64([seed, split_code("noise"), size]))
        raw = np.frombuffer(rng.bytes(12 * size * size), dtype=np.uint8).reshape(3, 2 * size, 2 * size)
        self.noise = (raw.astype(f32) - f32(127.5)) / f32(127.5)

    @classmethod
    def get(cls, size: int, seed: int) -> "_Canvas":
        key = (size, seed)
        if key not in cls._cache:
            cls._cache[key] = cls(size, seed)
        return cls._cache[key]


# -- background ---------------------------------------------------------------------------------
def _colour(u: list[float], k: int) -> np.ndarray:
    return np.array(u[k : k + 3], dtype=np.float32).reshape(3, 1, 1) * np.float32(255)


def _clip01(a: np.ndarray) -> None:
    """Clip to [0, 1] in place (the fast path: float32 bounds, ``out``)."""
    a.clip(_F0, _F1, out=a)


def _blend(img: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """``img += (colour - img) * alpha`` in place."""
    d = colour - img
    d *= alpha
    img += d


def _background(rng: np.random.Generator, cv: _Canvas, clutter: float) -> tuple[np.ndarray, tuple | None]:
    """A gradient, then (at random) stripes, blobs and bars: float32 ``[3, S, S]``.

    Also returns the pixel noise to add once the objects are painted (tile,
    row, column, amplitude), or None. The draws ``u``: 0-5 the gradient's
    colours, 6-7 its direction and strength, 8-16 stripes, 17-23 blobs, then
    the blob grid, then the bars (a count, 9 per bar), the last 3 the noise.
    """
    u = rng.random(_BG_PARAMS).tolist()  # Python floats keep the arithmetic in float32
    x, y, size = cv.x, cv.y, cv.size
    # gradient between two colours along a random direction (t stays in [0, 1])
    a = u[6] * 2 * math.pi
    ca, sa = math.cos(a), math.sin(a)
    k = (0.3 + 0.7 * u[7]) / (abs(ca) + abs(sa))
    ca, sa = ca * k, sa * k
    t = x * ca + (y * sa + (0.5 - 0.5 * (ca + sa)))
    c0 = _colour(u, 0)
    img = t * (_colour(u, 3) - c0)  # [3, S, S]: channels first keeps numpy's inner loops long
    img += c0
    strength = min(clutter, 1.0)
    # stripes: a triangle wave along a random direction, soft to hard-edged
    if clutter > 0 and u[8] < 0.5:
        a, freq = u[10] * 2 * math.pi, 2 + 10 * u[9]
        p = x * (math.cos(a) * freq) + (y * (math.sin(a) * freq) + u[11])
        p -= np.rint(p)
        np.abs(p, out=p)  # triangle wave in [0, 0.5]
        sharp, alpha = 1 + 9 * u[12], (0.25 + 0.5 * u[13]) * strength
        p *= 2 * sharp * alpha
        p += (0.5 - sharp / 2) * alpha
        p.clip(_F0, np.float32(alpha), out=p)
        _blend(img, _colour(u, 14), p)
    # blobs: a smooth random field (bilinear over a coarse grid), thresholded
    if clutter > 0 and u[17] < 0.6:
        g = _BLOB_GRID
        grid = np.array(u[24 : 24 + g * g], dtype=np.float32).reshape(g, g)
        i0 = cv.i0
        rows = grid.take(i0, axis=1)  # [g, S]
        rows *= cv.w0
        rows += grid.take(i0 + 1, axis=1) * cv.w1
        field = rows.take(i0, axis=0)
        field *= cv.w0.reshape(size, 1)
        field += rows.take(i0 + 1, axis=0) * cv.w1.reshape(size, 1)
        field -= 0.35 + 0.3 * u[18]
        field *= 4 + 30 * u[19]
        _clip01(field)
        field *= (0.3 + 0.5 * u[20]) * strength
        _blend(img, _colour(u, 21), field)
    # bars: thick straight segments (distractors, not objects)
    base = 24 + _BLOB_GRID * _BLOB_GRID
    for j in range(int(u[base] * (_MAX_BARS + 1)) if clutter > 0 else 0):
        _paint_bar(img, u[base + 1 + 9 * j : base + 10 + 9 * j], size, strength)
    if clutter > 0:  # pixel noise, added after the objects
        img_noise = (cv.noise, int(u[-2] * size), int(u[-1] * size), (4 + 14 * u[-3]) * clutter)
    else:
        img_noise = None
    return img, img_noise


def _paint_bar(img: np.ndarray, p: list[float], size: int, strength: float) -> None:
    """One thick bar painted into ``img`` in place."""
    ax, ay, bx, by = (v * size for v in p[:4])
    half = 0.6 + size / 96 * 2.2 * p[4]
    x0, x1 = max(0, math.floor(min(ax, bx) - half)), min(size, math.ceil(max(ax, bx) + half) + 1)
    y0, y1 = max(0, math.floor(min(ay, by) - half)), min(size, math.ceil(max(ay, by) + half) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    length = math.hypot(bx - ax, by - ay) or 1.0
    tx, ty = (bx - ax) / length, (by - ay) / length
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + (0.5 - ax)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + (0.5 - ay)
    across = xs * -ty + ys * tx
    np.abs(across, out=across)
    along = xs * tx + (ys * ty - length / 2)
    np.abs(along, out=along)
    inside = across <= half
    inside &= along <= length / 2 + half
    # opaque, in a colour pulled towards the background at the bar's middle by 1 - alpha
    alpha = (0.5 + 0.5 * p[5]) * strength
    mid = img[:, min(int((ay + by) / 2), size - 1), min(int((ax + bx) / 2), size - 1)].reshape(3, 1, 1)
    colour = mid + (_colour(p, 6) - mid) * alpha
    np.copyto(img[:, y0:y1, x0:x1], colour, where=inside)


# -- objects ---------------------------------------------------------------------------------
@dataclass
class _Object:
    cls: int
    area: float  # analytic area in pixels (before clipping and occlusion)
    rows: slice
    cols: slice
    mask: np.ndarray  # bool, window clipped to the image
    fill: np.ndarray  # float32 [3, h, w]


def _shape_area(cls: int, param: float) -> float:
    """Area of a class's shape with circumradius 1."""
    if cls == DISC:
        return math.pi
    if cls == SQUARE:
        return 2.0
    if cls == TRIANGLE:
        return 3 * math.sqrt(3) / 4
    if cls == STAR:
        return _STAR_AREA
    if cls == RING:
        return math.pi * (1 - param * param)
    half_length = math.sqrt(1 - param * param)  # cross
    return 8 * param * half_length - 4 * param * param


def _draw_object(rng: np.random.Generator, bg: np.ndarray, opts: dict[str, Any]) -> _Object | None:
    """Draw one object's parameters and rasterise it; ``None`` when it falls outside the image."""
    size = bg.shape[1]
    u = rng.random(8 + 3 * _COLOUR_TRIES).tolist()
    cls = 1 + min(int(u[0] * 6), 5)
    radius = size * (opts["min_size"] + (opts["max_size"] - opts["min_size"]) * u[1]) / 2
    cx, cy = u[2] * size, u[3] * size
    angle = u[4] * 2 * math.pi
    shade = 0.7 * u[5] - 0.35
    band = opts["void_width"] * 2 + 1.5  # thin parts (ring wall, cross arm) stay wider than the void band
    if cls == RING:
        param = min(0.45 + 0.25 * u[6], max(0.25, 1 - band / radius))
    elif cls == CROSS:
        param = min(max(0.2 + 0.15 * u[6], band / 2 / radius), 0.45)
    else:
        param = 0.0
    x0, x1 = max(0, math.floor(cx - radius)), min(size, math.ceil(cx + radius))
    y0, y1 = max(0, math.floor(cy - radius)), min(size, math.ceil(cy + radius))
    if x1 <= x0 or y1 <= y0:
        return None

    # colour: independent of the class; the first candidate that contrasts with the
    # background under the object (centre and 4 points at half radius), else the best one
    r2 = radius / 2
    py = [min(max(int(v), 0), size - 1) for v in (cy, cy - r2, cy + r2, cy, cy)]
    px = [min(max(int(v), 0), size - 1) for v in (cx, cx, cx, cx - r2, cx + r2)]
    under = bg[:, py, px].T.tolist()  # 5 x RGB
    colour, best = None, -1.0
    for k in range(8, 8 + 3 * _COLOUR_TRIES, 3):
        candidate = [v * 255 for v in u[k : k + 3]]
        contrast = min(math.dist(candidate, w) for w in under)
        if contrast > best:
            colour, best = candidate, contrast
        if contrast >= _MIN_CONTRAST:
            break

    f32 = np.float32
    cos, sin = math.cos(angle), math.sin(angle)
    xs = (np.arange(x0, x1, dtype=f32)[None, :] + (0.5 - cx)) * (1 / radius)  # [1, w]
    ys = (np.arange(y0, y1, dtype=f32)[:, None] + (0.5 - cy)) * (1 / radius)  # [h, 1]
    uu = xs * cos + ys * sin  # rotated coordinates
    if cls in (DISC, RING):
        q = xs * xs + ys * ys
        mask = q <= 1
        if cls == RING:
            mask &= q >= param * param
    else:
        vv = ys * cos - xs * sin
        if cls == SQUARE:
            mask = np.maximum(np.abs(uu), np.abs(vv)) <= _HALF_SQUARE
        elif cls == TRIANGLE:
            au = np.abs(uu)
            au *= _SQRT3_2
            au += vv * 0.5
            mask = au <= 0.5
            mask &= vv >= -0.5
        elif cls == STAR:  # a regular pentagram: inside at least 4 of its 5 lines
            count = np.zeros(uu.shape, dtype=np.uint8)
            for k in range(5):
                a = angle + math.pi / 2 + 2 * math.pi * k / 5
                count += (xs * math.cos(a) + ys * math.sin(a)) <= _STAR_D
            mask = count >= 4
        else:  # cross
            au, av = np.abs(uu), np.abs(vv)
            length = math.sqrt(1 - param * param)
            mask = (au <= param) & (av <= length)
            mask |= (av <= param) & (au <= length)
    shading = uu * shade
    shading += 1
    fill = shading * np.array(colour, dtype=f32).reshape(3, 1, 1)
    area = _shape_area(cls, param) * radius * radius
    return _Object(cls, area, slice(y0, y1), slice(x0, x1), mask, fill)


def _compose(bg: np.ndarray, objects: list[_Object]) -> tuple[np.ndarray, np.ndarray]:
    """Paint objects in order over a copy of ``bg``; returns (image float32, instance ids uint8)."""
    img = bg.copy()
    ids = np.zeros(bg.shape[1:], dtype=np.uint8)
    for k, obj in enumerate(objects, start=1):
        np.copyto(img[:, obj.rows, obj.cols], obj.fill, where=obj.mask)
        np.copyto(ids[obj.rows, obj.cols], np.uint8(k), where=obj.mask)
    return img, ids


def void_band(ids: np.ndarray, width: int) -> np.ndarray:
    """Pixels whose ``(2w+1) x (2w+1)`` neighbourhood (clipped to the image) holds another id.

    ``ids`` is ``[..., H, W]``; background counts as id 0, so the band lies on
    both sides of every object outline (and between touching objects), and
    never along the image border.
    """
    if width <= 0:
        return np.zeros(ids.shape, dtype=bool)
    hi, lo = ids.copy(), ids.copy()
    for _ in range(width):  # a (2w+1)^2 max / min filter: w passes of 3 x 3, each separable
        for acc, op in ((hi, np.maximum), (lo, np.minimum)):
            for axis in (-2, -1):
                src = acc.copy()
                head = [slice(None)] * acc.ndim
                tail = [slice(None)] * acc.ndim
                head[axis], tail[axis] = slice(1, None), slice(None, -1)
                op(acc[tuple(head)], src[tuple(tail)], out=acc[tuple(head)])
                op(acc[tuple(tail)], src[tuple(head)], out=acc[tuple(tail)])
    band = hi != ids
    band |= lo != ids
    return band


def _scene(rng: np.random.Generator, bg: np.ndarray, opts: dict[str, Any], name: str):
    """Objects over ``bg`` until enough of them are visible; returns (image, ids, band, objects)."""
    lo, hi = opts["min_objects"], opts["max_objects"]
    want = lo + min(int(rng.random() * (hi - lo + 1)), hi - lo)
    objects: list[_Object] = []
    draws = 0
    while True:
        while len(objects) < want and draws < 20 + 10 * want:
            draws += 1
            obj = _draw_object(rng, bg, opts)
            if obj is not None:
                objects.append(obj)
        img, ids = _compose(bg, objects)
        band = void_band(ids, opts["void_width"])
        n = len(objects) + 1
        code = band.view(np.uint8) << 7  # ids < 128: one count gives the void and the inner pixels
        code |= ids
        counts = np.bincount(code.ravel(), minlength=256)
        inner = counts[1:n]
        visible = inner + counts[129 : 128 + n]
        failing = [
            k for k, obj in enumerate(objects) if inner[k] == 0 or visible[k] < opts["min_visible"] * obj.area
        ]
        if not failing:
            break
        del objects[failing[-1]]  # the topmost: removing it can only uncover the others
    if len(objects) < lo:
        raise DataError(
            f"dataset 'shapes': could not place {lo} visible objects in sample {name}; "
            "lower min_objects, max_size or min_visible"
        )
    return img, ids, band, objects


def _boxes(ids: np.ndarray, objects: list[_Object]) -> np.ndarray:
    """XYXY boxes of the visible pixels of each object, continuous pixel coordinates."""
    boxes = np.zeros((len(objects), 4), dtype=np.float32)
    for k, obj in enumerate(objects):
        m = ids[obj.rows, obj.cols] == k + 1
        cols, rows = m.any(axis=0), m.any(axis=1)
        x1 = obj.cols.start + len(cols) - int(cols[::-1].argmax())
        y1 = obj.rows.start + len(rows) - int(rows[::-1].argmax())
        boxes[k] = (obj.cols.start + int(cols.argmax()), obj.rows.start + int(rows.argmax()), x1, y1)
    return boxes


def generate(split: str, start: int, stop: int, **options: Any) -> ShapesSplit:
    """Samples ``start..stop-1`` of ``split`` (options: see ``segbench list datasets``)."""
    opts = check_options(options)
    size, seed = opts["image_size"], opts["seed"]
    cv = _Canvas.get(size, seed)
    n = max(0, stop - start)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    instances = np.empty((n, size, size), dtype=np.uint8)
    semantic = np.empty((n, size, size), dtype=np.uint8)
    classes: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    lut = np.zeros(256, dtype=np.uint8)
    for j in range(n):
        i = start + j
        rng = sample_rng(seed, split, i)
        bg, noise = _background(rng, cv, opts["clutter"])
        img, ids, band, objects = _scene(rng, bg, opts, f"{split}_{i:06d}")
        if noise is not None:
            tile, oy, ox, amplitude = noise
            img += tile[:, oy : oy + size, ox : ox + size] * amplitude
        img += 0.5
        img.clip(_F0, _F255, out=img)
        images[j] = img  # the uint8 cast truncates: with the 0.5 added, rounds half up
        instances[j] = ids
        cls = np.array([obj.cls for obj in objects], dtype=np.int64)
        lut[1 : len(cls) + 1] = cls
        sem = semantic[j]
        np.take(lut, ids, out=sem)
        sem[band] = 255
        classes.append(cls)
        boxes.append(_boxes(ids, objects))
    return ShapesSplit(images, instances, semantic, classes, boxes)


# -- torch dataset ---------------------------------------------------------------------------------
class ShapesDataset(torch.utils.data.Dataset):
    """Split ``split`` of ``shapes`` as a map-style dataset of samples (``segbench.specs``).

    Samples are generated in chunks of 256 on first access and kept in memory
    (about 5 bytes per pixel). ``transforms`` (optional) is called on each
    sample dict, e.g. a ``torchvision.transforms.v2`` pipeline.
    """

    classes = CLASSES
    background = 0
    fingerprint_from_options = True
    """Samples follow from split, options and generator version alone (no files): see ``train_fingerprint_for_id``."""

    def __init__(self, split: str = "val", transforms: Callable | None = None, **options: Any) -> None:
        if split not in ("train", "val", "test"):
            raise ConfigError(f"dataset 'shapes' has no split '{split}'; splits: train, val, test")
        self.options = check_options(options)
        self.split = split
        self.transforms = transforms
        self._length = self.options[f"num_{split}"]
        self._chunks: dict[int, ShapesSplit] = {}
        self.target_keys: frozenset[str] | None = None

    def __len__(self) -> int:
        return self._length

    def select_targets(self, keys: Iterable[str] | None) -> "ShapesDataset":
        """Build only these target keys from now on (None: all); ``labels`` always.

        The engine calls it with the keys a method trains on or the metrics
        read: a run that learns from image labels skips the masks and boxes
        of every sample (most of the cost of ``__getitem__``).
        """
        self.target_keys = None if keys is None else frozenset(keys)
        return self

    def _wants(self, key: str) -> bool:
        return self.target_keys is None or key in self.target_keys

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def metric_defaults(self) -> dict[str, dict[str, Any]]:
        """Metric options that depend on this dataset's options (the pointing tolerances)."""
        return shapes_metric_defaults(self.options)

    @property
    def fingerprint(self) -> str:
        """Hash of the generator version, the split and every option (so also the length)."""
        text = json.dumps({"generator": GENERATOR_VERSION, "split": self.split, **self.options}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _chunk(self, c: int) -> ShapesSplit:
        if c not in self._chunks:
            start = c * _CHUNK
            self._chunks[c] = generate(self.split, start, min(start + _CHUNK, self._length), **self.options)
        return self._chunks[c]

    def materialize(self) -> "ShapesDataset":
        """Generate every sample now (e.g. before DataLoader workers fork)."""
        for c in range(math.ceil(self._length / _CHUNK)):
            self._chunk(c)
        return self

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"shapes {self.split}: index out of range (length {self._length})")
        chunk = self._chunk(index // _CHUNK)
        j = index % _CHUNK
        size = self.options["image_size"]
        ids = torch.from_numpy(chunk.instances[j])
        classes = torch.from_numpy(chunk.classes[j].copy())
        n = len(classes)
        labels = torch.zeros(len(CLASSES), dtype=torch.float32)
        labels[classes] = 1.0
        target: dict[str, Any] = {"labels": labels}
        if self._wants("mask"):
            target["mask"] = tv_tensors.Mask(torch.from_numpy(chunk.semantic[j]))
        if self.target_keys is None or self.target_keys & INSTANCE_KEYS:  # instances travel as a group
            target["boxes"] = tv_tensors.BoundingBoxes(
                torch.from_numpy(chunk.boxes[j].copy()), format="XYXY", canvas_size=(size, size)
            )
            target["classes"] = classes
            target["masks"] = tv_tensors.Mask(ids[None] == torch.arange(1, n + 1, dtype=torch.uint8)[:, None, None])
            target["iscrowd"] = torch.zeros(n, dtype=torch.bool)
        sample = {
            "image": tv_tensors.Image(torch.from_numpy(chunk.images[j].copy())),
            "target": target,
            "meta": {"id": f"{self.split}_{index:06d}", "path": None, "orig_size": (size, size)},
        }
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def __repr__(self) -> str:
        return f"ShapesDataset(split={self.split!r}, len={self._length}, image_size={self.options['image_size']})"
