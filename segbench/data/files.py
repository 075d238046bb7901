"""What the on-disk datasets share: reading images and masks, the checks, ``skip_bad`` and the fingerprint.

Images are decoded with ``torchvision.io.decode_jpeg`` (libjpeg-turbo; it
raises on a truncated file) and, for anything else (PNG, GIF, CMYK JPEG...),
with PIL; masks with PIL, whose ``P`` and ``L`` modes give the stored indices
(a palette PNG is never converted to RGB).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from segbench.data.checks import ERROR, Problem, error, warning
from segbench.errors import ConfigError, DataError

__all__ = [
    "FORMAT_VERSION",
    "FileDataset",
    "FileProblem",
    "check_image",
    "image_size",
    "jpeg_complete",
    "mask_size",
    "out_of_range",
    "read_index_png",
    "read_lines",
    "read_rgb",
]

FORMAT_VERSION = 1
"""Part of every fingerprint; bumped when a loader would give different samples from the same files."""

try:  # libjpeg-turbo / libpng through torchvision (deprecated there since 0.29 in favour of TorchCodec): else PIL
    from torchvision.io import ImageReadMode as _ImageReadMode
    from torchvision.io import decode_jpeg as _decode_jpeg
    from torchvision.io import decode_png as _decode_png

    _RGB = _ImageReadMode.RGB
    _UNCHANGED = _ImageReadMode.UNCHANGED
except ImportError:  # pragma: no cover - a torchvision without its image decoders
    _decode_jpeg = _decode_png = None
    _RGB = _UNCHANGED = None

_JPEG = b"\xff\xd8"
_PNG = b"\x89PNG"
_EOI = b"\xff\xd9"
_TAIL = 4096  # bytes at the end of a JPEG searched for the end-of-image marker


class FileProblem(DataError):
    """A :class:`DataError` about one file: ``path: message``."""

    def __init__(self, path: Any, message: str) -> None:
        self.path, self.message = os.fspath(path), message
        super().__init__(f"{self.path}: {message}")


# -- reading ------------------------------------------------------------------------------------------
def read_rgb(path: Any) -> torch.Tensor:
    """The image at ``path`` as uint8 ``[3, H, W]`` RGB (grey and CMYK converted); :class:`FileProblem` if it fails."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = bytearray(handle.read())
    except FileNotFoundError:
        raise FileProblem(path, "missing file") from None
    except OSError as exc:
        raise FileProblem(path, f"cannot read ({exc.strerror})") from None
    if _decode_jpeg is not None and data[:2] == _JPEG:
        try:
            return _decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=_RGB)
        except RuntimeError:
            pass  # truncated, arithmetic-coded, odd colour space: PIL decides
    try:
        with Image.open(io.BytesIO(data)) as img:
            array = np.array(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise FileProblem(path, _unreadable(exc)) from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def read_index_png(path: Any, what: str = "mask") -> np.ndarray:
    """A label PNG as uint8 ``[H, W]`` indices (palette ``P`` or grey ``L`` mode, never RGB).

    libpng (through torchvision) reads the palette indices about 3.5x faster
    than PIL; anything it does not give as one 8-bit channel goes to PIL,
    which decides and names the problem.
    """
    path = os.fspath(path)
    if _decode_png is not None:
        try:
            with open(path, "rb") as handle:
                data = bytearray(handle.read())
            if data[:4] == _PNG:
                decoded = _decode_png(torch.frombuffer(data, dtype=torch.uint8), _UNCHANGED)
                if decoded.shape[0] == 1 and decoded.dtype == torch.uint8:
                    return decoded[0].numpy()
        except (OSError, RuntimeError):
            pass  # missing, truncated or odd: PIL below gives the message
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise FileProblem(path, f"{what} is a mode {img.mode} image; expected palette indices (mode P or L)")
            return np.array(img)
    except FileNotFoundError:
        raise FileProblem(path, "missing file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise FileProblem(path, _unreadable(exc, what)) from None


VOID_COLOR = (224, 224, 192)
"""The VOC palette's colour of index 255: void in a colour-coded RGB mask (unless a class has that colour)."""


def read_label_png(path: Any, colors: Sequence[Sequence[int]] | None = None, what: str = "mask") -> np.ndarray:
    """A label PNG as uint8 ``[H, W]`` indices: palette or grey as stored (:func:`read_index_png`); with
    ``colors`` (one ``(r, g, b)`` per class) an RGB mask too, each colour mapped to its class."""
    if colors is None:
        return read_index_png(path, what)
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            if img.mode in ("RGB", "RGBA"):
                return colors_to_indices(np.asarray(img.convert("RGB")), colors, path, what)
    except FileNotFoundError:
        raise FileProblem(path, "missing file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise FileProblem(path, _unreadable(exc, what)) from None
    return read_index_png(path, what)


def colors_to_indices(rgb: np.ndarray, colors: Sequence[Sequence[int]], path: Any, what: str = "mask") -> np.ndarray:
    """uint8 ``[H, W]`` class indices of an RGB mask ``[H, W, 3]``: ``colors[k]`` gives ``k``, :data:`VOID_COLOR`
    255; any other colour is a :class:`FileProblem` naming it and a pixel."""
    table = np.asarray(colors, dtype=np.int64).reshape(-1, 3)
    keys = (table[:, 0] << 16) | (table[:, 1] << 8) | table[:, 2]
    values = np.arange(len(keys), dtype=np.int64)
    void = (VOID_COLOR[0] << 16) | (VOID_COLOR[1] << 8) | VOID_COLOR[2]
    if void not in keys:
        keys, values = np.append(keys, void), np.append(values, 255)
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    flat = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    position = np.minimum(np.searchsorted(keys, flat), len(keys) - 1)
    unknown = keys[position] != flat
    if unknown.any():
        y, x = (int(v[0]) for v in np.nonzero(unknown))
        raise FileProblem(path, f"{what} has colour {tuple(int(v) for v in rgb[y, x])} at pixel (x {x}, y {y}), "
                                f"which is no class's colour")
    return values[position].astype(np.uint8)


def present_classes(mask: np.ndarray, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """The class indices a uint8 mask holds, and its values that are neither a class nor 255, in one pass."""
    counts = np.bincount(mask.ravel(), minlength=256)
    present = np.flatnonzero(counts[:num_classes])
    return present, _strays(counts, num_classes)


def _strays(counts: np.ndarray, num_classes: int) -> list[int]:
    """The values of a mask's value histogram ``counts`` (changed in place) that are neither a class nor 255."""
    counts[:num_classes] = 0
    counts[255] = 0
    return np.flatnonzero(counts).tolist()


def labels_from_classes(present: np.ndarray, num_classes: int, background: int | None) -> torch.Tensor:
    """float32 ``[C]`` multi-hot image labels of the classes ``present`` in a mask, the background never labelled."""
    labels = torch.zeros(num_classes, dtype=torch.float32)
    labels[torch.from_numpy(np.asarray(present, dtype=np.int64))] = 1.0
    if background is not None:
        labels[background] = 0.0
    return labels


def hash_split(key: str, seed: int, val_fraction: float) -> str:
    """``"val"`` or ``"train"`` for sample ``key``: ``val`` when ``sha256(f"{seed}/{key}")`` (its first 15 hex
    digits as a fraction of 16**15) is below ``val_fraction``. A sample's split depends on nothing else."""
    value = int(hashlib.sha256(f"{seed}/{key}".encode()).hexdigest()[:15], 16) / 16 ** 15
    return "val" if value < val_fraction else "train"


def check_split_options(name: str, val_fraction: Any, split_seed: Any) -> None:
    """A :class:`ConfigError` unless ``0 < val_fraction < 1`` and ``split_seed`` is an integer."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ConfigError(f"dataset '{name}': option val_fraction must be a number between 0 and 1 (exclusive), "
                          f"got {val_fraction!r}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise ConfigError(f"dataset '{name}': option split_seed must be an integer, got {split_seed!r}")


def image_size(path: Any, what: str = "image") -> tuple[int, int]:
    """``(width, height)`` from the file header, without decoding pixels."""
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise FileProblem(path, "missing file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise FileProblem(path, _unreadable(exc, what)) from None


def mask_size(path: Any, what: str = "mask", rgb: bool = False) -> tuple[int, int]:
    """``(width, height)`` of a label PNG from its header; a non-index mode is a :class:`FileProblem`
    (``rgb``: colour-coded RGB masks are accepted too)."""
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            if img.mode not in (("P", "L", "RGB", "RGBA") if rgb else ("P", "L")):
                raise FileProblem(path, f"{what} is a mode {img.mode} image; expected palette indices (mode P or L)")
            return img.size
    except FileNotFoundError:
        raise FileProblem(path, "missing file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise FileProblem(path, _unreadable(exc, what)) from None


def jpeg_complete(path: Any) -> bool:
    """False for a JPEG without an end-of-image marker near its end (truncated); True for other formats."""
    with open(path, "rb") as handle:
        if handle.read(2) != _JPEG:
            return True
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(2, size - _TAIL))
        return _EOI in handle.read()


def _unreadable(exc: BaseException, what: str = "image") -> str:
    text = str(exc)
    if "truncated" in text.lower():
        return f"{what} does not open (truncated file)"
    if "cannot identify" in text:
        return f"{what} does not open (not an image file)"
    return f"{what} does not open ({text})"


def read_lines(path: Path, what: str, *, first_token: bool = True) -> list[str]:
    """The first token (or, ``first_token=False``, the whole stripped text) of every non-empty line of a
    split list; a missing list is a :class:`FileProblem`."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileProblem(path, f"missing file ({what})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FileProblem(path, f"cannot read ({exc})") from None
    lines = (line.strip() for line in text.splitlines())
    return [line.split()[0] if first_token else line for line in lines if line]


def check_inside(names: Iterable[str], folder: Path, source: Path, what: str = "id",
                 labels: Sequence[str] | None = None) -> None:
    """A :class:`DataError` naming ``source`` and the line (or entry) when one of ``names``, joined to ``folder``,
    leaves it: an absolute path, a ``..`` step, or a sub-folder that is a symlink out of ``folder``. A symlinked
    ``folder`` itself and symlinked files are allowed (common for data kept on another disk). ``labels`` name the
    entries in the message (``image 17627``); else the list's line is found."""
    base = folder.resolve()
    for number, name in enumerate(names, 1):
        parts = Path(name.replace("\\", "/")).parts
        escapes = Path(name).is_absolute() or ".." in parts
        if not escapes and len(parts) > 1:  # a sub-folder on the way must stay inside once its links are followed
            parent = (folder / Path(*parts[:-1])).resolve()
            escapes = parent != base and base not in parent.parents
        if escapes:
            where = labels[number - 1] if labels else line_of(source, name) or f"{what} {number}"
            raise DataError(f"{source}: {where}: {name!r} points outside {folder}; every {what} must name a file "
                            f"inside the dataset root")


def line_of(source: Path, name: str) -> str:
    """``"line K"`` of the first line of a text list that holds ``name``; "" for other sources."""
    if source.suffix != ".txt":
        return ""
    try:
        for number, line in enumerate(source.read_text(errors="replace").splitlines(), 1):
            if name in line:
                return f"line {number}"
    except OSError:
        pass
    return ""


def check_image(path: Path, index: int | None, full: bool) -> tuple[list[Problem], tuple[int, int] | None]:
    """Problems of one image, and its ``(width, height)`` when it opens.

    Cheap: the file exists, its header opens, a JPEG ends with its end-of-image
    marker (else it is decoded to decide). ``full``: every pixel is decoded.
    """
    try:
        size = image_size(path)
        if full or not jpeg_complete(path):
            read_rgb(path)
    except FileProblem as exc:
        return [error(exc.path, exc.message, index)], None
    except OSError as exc:
        return [error(path, f"cannot read ({exc.strerror})", index)], None
    return [], size


def out_of_range(mask: np.ndarray, num_classes: int) -> list[int]:
    """The values of a uint8 mask that are neither a class (0..C-1) nor 255, sorted."""
    if mask.size == 0:
        return []
    if mask.dtype == np.uint8 and num_classes < 255:
        # one cheap pass: v + 1 wraps 255 to 0, so every value is fine iff max(v + 1) <= C
        if int((mask + np.uint8(1)).max()) <= num_classes:
            return []
    elif int(mask.max()) < num_classes:
        return []
    return _strays(np.bincount(mask.ravel(), minlength=256), num_classes)


def values_message(values: list[int], num_classes: int, what: str = "mask") -> str:
    """``mask has value 77 outside the classes 0..20 and 255`` (at most five values shown)."""
    shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
    return f"{what} has value{'s' if len(values) > 1 else ''} {shown} outside the classes 0..{num_classes - 1} and 255"


# -- the dataset base ------------------------------------------------------------------------------------
class FileDataset(torch.utils.data.Dataset):
    """A split of a dataset read from disk: ``records`` (one per sample), checks, ``skip_bad``, ``fingerprint``.

    Subclasses fill ``self.records`` and implement ``_check_record(i, full)``,
    ``_fingerprint_files(h)`` (feed the annotation contents to a hashlib
    object) and ``__getitem__``. ``listed`` is the number of samples the split
    lists, ``official`` the official release's (None: no count check) and
    ``split_source`` the file (or folder) that defines the split.
    """

    name: str = ""
    classes: tuple[str, ...] = ()
    background: int | None = 0

    def __init__(self, root: Any, split: str, *, skip_bad: bool = False, strict: bool = False,
                 download: bool = False) -> None:
        for key, value in (("skip_bad", skip_bad), ("strict", strict), ("download", download)):
            if not isinstance(value, bool):
                raise ConfigError(f"dataset '{self.name}': option {key} must be true or false, got {value!r}")
        self.root = Path(root).expanduser() if root is not None else None
        self.split = split
        self.skip_bad = skip_bad
        self.strict = strict
        self.skipped = 0
        """Samples dropped by ``skip_bad`` (0 without it)."""
        self.skipped_ids: list[str] = []
        self.records: list[Any] = []
        self.listed = 0
        self.official: int | None = None
        self.split_source: Any = None
        self.release = self.name
        """How split-count messages name the official release (``coco 2017``)."""
        self.target_keys: frozenset[str] | None = None
        self._cheap: list[Problem] | None = None
        self._fingerprint: str | None = None

    # -- to implement ------------------------------------------------------------------------------
    def _check_record(self, index: int, full: bool) -> list[Problem]:
        raise NotImplementedError

    def _fingerprint_files(self, digest: Any) -> None:
        raise NotImplementedError

    def _identity(self) -> Mapping[str, Any]:
        """Options that change the samples (besides the files), for the fingerprint."""
        return {}

    def _record_id(self, record: Any) -> str:
        return str(record.id)

    # -- provided -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def select_targets(self, keys: Iterable[str] | None) -> "FileDataset":
        """Build only these target keys from now on (None: all); the costly ones (``mask``, ``masks``) are skipped.

        The cheap keys (``labels``, ``labels_ignore``, ``boxes``, ``classes``,
        ``iscrowd``) are always there. The engine may call it with the keys a
        method trains on or the metrics read.
        """
        self.target_keys = None if keys is None else frozenset(keys)
        return self

    def wants(self, key: str) -> bool:
        """Whether samples carry target ``key`` (see :meth:`select_targets`)."""
        return self.target_keys is None or key in self.target_keys

    @property
    def ids(self) -> list[str]:
        """The sample ids, in dataset order."""
        return [self._record_id(r) for r in self.records]

    def _split_problems(self) -> list[Problem]:
        """Problems of the whole split: by default, a sample count that differs from the official one."""
        if self.official is None or self.listed == self.official:
            return []
        return [warning(self.split_source, f"split '{self.split}' lists {self.listed} images; the official "
                                          f"{self.release} {self.split} has {self.official}")]

    def check(self, full: bool = False) -> list[Problem]:
        """Every problem found (see :mod:`segbench.data.checks`); the cheap walk is done once and kept."""
        if not full and self._cheap is not None:
            return list(self._cheap)
        problems = self._split_problems()
        for index in range(len(self.records)):
            problems.extend(self._check_record(index, full))
        if not full:
            self._cheap = list(problems)
        return problems

    def _drop_bad(self) -> None:
        """``skip_bad``: drop every sample with an error from the cheap walk, counting them."""
        problems = self.check(full=False)
        bad = {p.index for p in problems if p.index is not None and p.level == ERROR}
        if not bad:
            return
        new_index: dict[int, int] = {}
        kept = []
        for i, record in enumerate(self.records):
            if i in bad:
                self.skipped_ids.append(self._record_id(record))
            else:
                new_index[i] = len(kept)
                kept.append(record)
        self.records = kept
        self.skipped = len(bad)
        self._cheap = [
            p if p.index is None else Problem(p.level, p.path, p.message, new_index[p.index])
            for p in problems if p.index not in bad
        ]
        self._fingerprint = None

    @property
    def fingerprint(self) -> str:
        """SHA-256 (16 hex digits) of the loader version, split, options, sample list and annotation contents."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            head = {"format": FORMAT_VERSION, "dataset": self.name, "split": self.split, **self._identity()}
            digest.update(json.dumps(head, sort_keys=True, default=str).encode())
            digest.update("\n".join(self.ids).encode())
            self._fingerprint_files(digest)
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def _index(self, index: int) -> int:
        n = len(self.records)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"{self.name} {self.split}: index out of range (length {n})")
        return index

    def __repr__(self) -> str:
        skipped = f", skipped={self.skipped}" if self.skipped else ""
        return f"{type(self).__name__}(split={self.split!r}, len={len(self)}, root={str(self.root)!r}{skipped})"


def file_digest(path: Path, digest: Any) -> None:
    """Feed ``path``'s bytes (or a marker when it is missing) to ``digest``."""
    try:
        digest.update(path.read_bytes())
    except OSError:
        digest.update(b"<missing>")


def sizes_digest(paths: Iterable[Path], digest: Any) -> None:
    """Feed each file's size (-1 when missing) to ``digest``: images are identified by (name, size), not bytes."""
    sizes = []
    for path in paths:
        try:
            sizes.append(os.stat(path).st_size)
        except OSError:
            sizes.append(-1)
    digest.update(np.asarray(sizes, dtype=np.int64).tobytes())


def need_root(name: str, root: Any, hint: str) -> Path:
    """``root`` as a directory, or a :class:`DataError` saying how to give one."""
    if root is None:
        raise DataError(f"dataset '{name}' needs a root directory: pass --root DIR or set SEGBENCH_DATA "
                        f"(then $SEGBENCH_DATA/{name} is used); {hint}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: no such directory; {hint}")
    return path
