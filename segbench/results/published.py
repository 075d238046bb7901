"""Published reference numbers (``leaderboards/published.csv``) and display names.

The CSV has one row per (method variant, dataset, split, metric) number, in
percent as printed in the papers, with its source and whether the number was
read in that source (``verified``). See ``docs/leaderboard.md``.
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Any

from segbench.errors import SegbenchError

PUBLISHED_ENV = "SEGBENCH_PUBLISHED"
COLUMNS = ("method", "display_name", "dataset", "split", "metric", "value", "source", "verified", "note")

METHOD_NAMES: dict[str, str] = {
    "deepmil": "Deep MIL",
    "pronet": "ProNet",
    "wsloc": "WSLocalization",
    "weldon": "WELDON",
    "wildcat": "WILDCAT",
    "spn": "SPN",
    "cam": "CAM",
    "lse": "LSE",
    "spleap": "SPLeaP",
    "emadapt": "EM-Adapt",
    "fcn32s": "FCN-32s",
    "fcn16s": "FCN-16s",
    "fcn8s": "FCN-8s",
    "deeplab_v1": "DeepLab v1",
    "deeplab_v2": "DeepLab v2",
    "deeplab_v3": "DeepLab v3",
    "deeplab_v3plus": "DeepLab v3+",
    "deconvnet": "DeconvNet",
    "unet": "U-Net",
    "mask_rcnn": "Mask R-CNN",
    "densecrf": "CRF",
}
"""Display names of the known method keys, in the order leaderboard rows are listed."""

DATASET_NAMES: dict[str, str] = {
    "shapes": "Shapes",
    "voc2007": "VOC 2007",
    "voc2012": "VOC 2012",
    "coco": "MS COCO",
    "mit67": "MIT67",
    "scene15": "15-Scene",
}
"""Display names of the known dataset keys, in the order leaderboard columns are listed."""

METRIC_NAMES: dict[str, str] = {
    "miou": "mIoU",
    "loc_map": "Pointing localization mAP",
    "cls_map": "Classification mAP",
    "coco_ap": "COCO AP",
    "coco_ap_segm": "COCO mask AP",
    "coco_ap_bbox": "COCO box AP",
    "accuracy": "Accuracy",
}
"""Display names of the usual metric keys, in the order ``metric="auto"`` tries them."""


class PublishedError(SegbenchError):
    """The published-references CSV is missing or malformed."""


def display_method(name: str) -> str:
    """``"wildcat"`` -> ``"WILDCAT"``, ``"deeplab_v1+densecrf"`` -> ``"DeepLab v1 + CRF"``; unknown names unchanged.
    A test-time tag stays: ``"deeplab_v3 [flip]"`` -> ``"DeepLab v3 [flip]"``."""
    name, sep, tag = name.partition(" [")
    shown = " + ".join(METHOD_NAMES.get(part, part) for part in name.split("+"))
    return f"{shown} [{tag}" if sep else shown


def display_dataset(name: str) -> str:
    """``"voc2012"`` -> ``"VOC 2012"``; unknown names unchanged."""
    return DATASET_NAMES.get(name, name)


def display_metric(name: str) -> str:
    """``"loc_map"`` -> ``"Pointing localization mAP"``; unknown names unchanged."""
    return METRIC_NAMES.get(name, name)


def default_published_path() -> Path:
    """``$SEGBENCH_PUBLISHED``, else ``leaderboards/published.csv`` of the source checkout."""
    if os.environ.get(PUBLISHED_ENV):
        return Path(os.environ[PUBLISHED_ENV])
    return Path(__file__).resolve().parents[2] / "leaderboards" / "published.csv"


_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def read_published(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Rows of the published CSV, validated: ``value`` a float in [0, 100] or None, ``verified`` a bool.

    A bad file raises a one-line :class:`PublishedError` naming the file and the row (file line number).
    """
    path = Path(path) if path is not None else default_published_path()
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise PublishedError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
            rows, seen = [], {}
            for raw in reader:
                row = _parse_row(raw, path, reader.line_num)
                key = tuple(row[k] for k in ("method", "display_name", "dataset", "split", "metric"))
                if key in seen:
                    raise PublishedError(f"{path}, row {reader.line_num}: duplicates row {seen[key]} ({', '.join(key)})")
                seen[key] = reader.line_num
                rows.append(row)
    except OSError as exc:
        raise PublishedError(f"cannot read published references {path}: {exc.strerror or exc}") from None
    except csv.Error as exc:
        raise PublishedError(f"{path}: not valid CSV ({exc})") from None
    return rows


def _parse_row(raw: dict[str, Any], path: Path, line: int) -> dict[str, Any]:
    def fail(what: str) -> None:
        raise PublishedError(f"{path}, row {line}: {what}")

    if None in raw:
        fail("more fields than columns")
    row = {k: (raw.get(k) or "").strip() for k in COLUMNS}
    for key in ("method", "dataset", "metric"):
        if not _KEY_RE.match(row[key]):
            fail(f"{key} {row[key]!r} must be a lower-case name (letters, digits, _)")
    for key in ("display_name", "source"):
        if not row[key]:
            fail(f"{key} is empty")
    verified = row["verified"].lower()
    if verified not in ("true", "false"):
        fail(f"verified must be true or false, got {row['verified']!r}")
    row["verified"] = verified == "true"
    if row["value"] == "":
        if row["verified"]:
            fail("a verified row needs a value")
        row["value"] = None
    else:
        try:
            value = float(row["value"])
        except ValueError:
            fail(f"value {row['value']!r} is not a number")
        if not math.isfinite(value) or not 0.0 <= value <= 100.0:
            fail(f"value {row['value']} must be a percentage in [0, 100]")
        row["value"] = value
    return row


def load_published(path: str | os.PathLike | None = None):
    """The published references as a pandas DataFrame with the CSV's columns (``value`` float, NaN when unknown)."""
    import pandas as pd

    rows = read_published(path)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    frame["verified"] = frame["verified"].astype(bool)
    return frame


__all__ = [
    "COLUMNS", "DATASET_NAMES", "METHOD_NAMES", "METRIC_NAMES", "PublishedError", "default_published_path",
    "display_dataset", "display_method", "display_metric", "load_published", "read_published",
]
