"""Class lists read from files: ``classes.txt``, CVAT/datumaro's ``labelmap.txt``, datumaro's ``dataset_meta.json``.

Each reader returns a :class:`ClassList`: the names in index order, the RGB
colour of each class where the file gives colours (RGB masks are mapped to
indices with them), and the background index where the file names one.
:func:`pick_background` applies the default rule (the class named
``background`` or ``_background_``) or a user's choice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from segbench.errors import ConfigError, DataError

__all__ = ["BACKGROUND_NAMES", "ClassList", "pick_background", "read_classes_txt", "read_dataset_meta",
           "read_labelmap"]

BACKGROUND_NAMES = ("background", "_background_")
"""Class names taken as the background when no option says otherwise (case-insensitive)."""


@dataclass(frozen=True)
class ClassList:
    """Class ``names`` in index order, from ``source``; ``colors`` (one ``(r, g, b)`` per class) or None;
    ``background`` the index the file itself names (datumaro's ``background_label``) or None."""

    names: tuple[str, ...]
    source: Path
    colors: tuple[tuple[int, int, int], ...] | None = None
    background: int | None = None


def _unique(names: Sequence[str], source: Path, where: Sequence[str]) -> None:
    """A :class:`DataError` naming the file, the line (``where``) and the name of the first repeated class."""
    first: dict[str, str] = {}
    for name, place in zip(names, where):
        if name in first:
            raise DataError(f"{source}: {place}: class '{name}' repeats {first[name]}; every class must be "
                            f"listed once")
        first[name] = place


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def read_classes_txt(path: Path) -> ClassList:
    """``classes.txt``: one class name per line (blank lines skipped); index = position among the names."""
    names, lines = [], []
    for number, line in enumerate(_text(path).splitlines(), 1):
        if line.strip():
            names.append(line.strip())
            lines.append(f"line {number}")
    if not names:
        raise DataError(f"{path}: no class names (one per line)")
    _unique(names, path, lines)
    return ClassList(tuple(names), path)


def read_labelmap(path: Path) -> ClassList:
    """A VOC ``labelmap.txt`` as CVAT and datumaro write it: ``name:r,g,b:parts:actions`` lines, ``#`` comments."""
    names, colors, lines = [], [], []
    for number, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.partition(":")
        color = rest.partition(":")[0].strip()
        try:
            rgb = tuple(int(v) for v in color.split(",")) if color else None
        except ValueError:
            rgb = None
        if not name.strip() or rgb is None or len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise DataError(f"{path}: line {number}: expected 'name:r,g,b::', got {line.strip()!r}")
        names.append(name.strip())
        colors.append(rgb)
        lines.append(f"line {number}")
    if not names:
        raise DataError(f"{path}: no classes ('name:r,g,b::' lines)")
    _unique(names, path, lines)
    return ClassList(tuple(names), path, tuple(colors))


def read_dataset_meta(path: Path) -> ClassList:
    """datumaro's ``dataset_meta.json``: ``label_map`` (index -> name), optional ``segmentation_colors``
    (``[r, g, b]`` per index) and ``background_label`` (an index)."""
    try:
        doc = json.loads(_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    label_map = doc.get("label_map") if isinstance(doc, dict) else None
    if not isinstance(label_map, dict) or not label_map:
        raise DataError(f"{path}: no 'label_map' object (index -> class name)")
    try:
        by_index = {int(k): v for k, v in label_map.items()}
    except ValueError:
        raise DataError(f"{path}: label_map keys must be class indices, got {sorted(label_map)}") from None
    indices = sorted(by_index)
    if indices != list(range(len(indices))):
        raise DataError(f"{path}: label_map indices must be 0..{len(indices) - 1} without gaps, got {indices}")
    names = [str(by_index[i]).strip() for i in indices]
    _unique(names, path, [f"label_map key {i}" for i in indices])
    colors = doc.get("segmentation_colors")
    if colors is not None:
        ok = isinstance(colors, list) and len(colors) == len(names) and all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in colors)
        if not ok:
            raise DataError(f"{path}: segmentation_colors must hold one [r, g, b] (0..255) per class "
                            f"({len(names)})")
        colors = tuple(tuple(c) for c in colors)
    background = doc.get("background_label")
    if background is not None:
        try:
            background = int(background)
        except (TypeError, ValueError):
            raise DataError(f"{path}: background_label must be a class index, got {background!r}") from None
        if not 0 <= background < len(names):
            raise DataError(f"{path}: background_label {background} is not a class index (0..{len(names) - 1})")
    return ClassList(tuple(names), path, colors, background)


def pick_background(classes: ClassList, choice: Any = "auto") -> int | None:
    """The background index: ``choice`` (a class name, an index, or ``"none"`` / None for no background); with
    ``"auto"`` the file's own, else the class named ``background`` / ``_background_``, else None."""
    names = classes.names
    if choice is None:
        return None
    if choice == "auto":
        if classes.background is not None:
            return classes.background
        lowered = [n.lower() for n in names]
        return next((lowered.index(b) for b in BACKGROUND_NAMES if b in lowered), None)
    if isinstance(choice, str) and choice.lower() == "none":
        return None
    if isinstance(choice, int) and not isinstance(choice, bool):
        if 0 <= choice < len(names):
            return choice
    elif isinstance(choice, str) and choice in names:
        return names.index(choice)
    raise ConfigError(f"option background must be a class of {classes.source} (a name or index 0..{len(names) - 1}), "
                      f"auto or none, got {choice!r}")
