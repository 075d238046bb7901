"""Write a dataset of samples to disk in the real PASCAL VOC or MS COCO layout.

``export_voc(dataset, out_dir, split_name)`` writes (``out_dir`` plays the
role of ``VOCdevkit/VOC2012``)::

    JPEGImages/{id}.jpg
    SegmentationClass/{id}.png     palette PNG, VOC palette, class index, 255 void
    SegmentationObject/{id}.png    palette PNG, k = k-th <object> of the XML, 255 void
    Annotations/{id}.xml           filename, size, segmented, object/name/bndbox
                                   (1-based inclusive pixel coordinates), difficult=0
    ImageSets/Segmentation/{split}.txt, ImageSets/Main/{split}.txt (ids)
    ImageSets/Main/{class}_{split}.txt  ("id  1" present, "id -1" absent)

``export_coco(dataset, out_dir, split_name)`` writes::

    {split}2017/{id}.jpg
    annotations/instances_{split}2017.json   images, categories (ids 1..K, the
        classes other than the background, in order), annotations with bbox
        XYWH, area (pixels), iscrowd and segmentation as RLE (counts a str)
        or polygons (``segmentation="polygon"``; holes joined by zero-width cuts)

Both refuse to write into a non-empty directory unless ``overwrite=True`` or
the directory holds an export of the same format that lacks this split; they
return the paths written. ``id`` is each sample's ``meta["id"]``.
"""

from __future__ import annotations

import json
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from segbench.errors import DataError

__all__ = ["export", "export_coco", "export_voc", "voc_palette"]

MARKER = "segbench_export.json"
JPEG_QUALITY = 95


def voc_palette() -> list[int]:
    """The 256-colour PASCAL VOC palette, flat ``[r0, g0, b0, r1, ...]`` (255 -> (224, 224, 192))."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def export(dataset: Any, out_dir: str | os.PathLike, split_name: str, format: str = "voc", **kwargs: Any) -> list[Path]:
    """``export_voc`` or ``export_coco`` by name (``format`` is ``voc`` or ``coco``)."""
    writers = {"voc": export_voc, "coco": export_coco}
    if format not in writers:
        raise DataError(f"unknown export format '{format}'; formats: voc, coco")
    return writers[format](dataset, out_dir, split_name, **kwargs)


# -- VOC -------------------------------------------------------------------------------------------
def export_voc(
    dataset: Any,
    out_dir: str | os.PathLike,
    split_name: str,
    class_names: Sequence[str] | None = None,
    *,
    background: int | None = 0,
    overwrite: bool = False,
    folder: str = "VOC2012",
) -> list[Path]:
    """Write ``dataset`` in the PASCAL VOC layout under ``out_dir``; returns the paths written."""
    names = _class_names(dataset, class_names)
    out = Path(out_dir)
    split_list = out / "ImageSets" / "Segmentation" / f"{split_name}.txt"
    _prepare(out, "voc", split_name, split_list, overwrite)
    palette = voc_palette()
    written: list[Path] = []
    ids: list[str] = []
    present: dict[int, set[str]] = {c: set() for c in range(len(names)) if c != background}
    for image_id, image, target in _samples(dataset):
        ids.append(image_id)
        height, width = image.shape[:2]
        written.append(_save_jpeg(image, out / "JPEGImages" / f"{image_id}.jpg", overwrite))
        classes = _array(target.get("classes"), np.int64, (0,))
        boxes = _array(target.get("boxes"), np.float32, (0, 4))
        for c in classes.tolist():
            if c in present:
                present[c].add(image_id)
        for c in np.flatnonzero(_array(target.get("labels"), np.float32, (0,)) > 0).tolist():
            if c in present:
                present[c].add(image_id)
        if target.get("mask") is not None:
            mask = _array(target["mask"], np.int64, None)
            written.append(_save_png(mask, out / "SegmentationClass" / f"{image_id}.png", palette, overwrite))
            if target.get("masks") is not None:
                objects = np.zeros(mask.shape, dtype=np.int64)
                for k, m in enumerate(_array(target["masks"], bool, None), start=1):
                    objects[m] = k
                objects[mask == 255] = 255
                written.append(_save_png(objects, out / "SegmentationObject" / f"{image_id}.png", palette, overwrite))
        xml = _voc_xml(image_id, width, height, folder, names, classes, boxes, target.get("mask") is not None)
        written.append(_write_text(out / "Annotations" / f"{image_id}.xml", xml, overwrite))
    listing = "".join(f"{i}\n" for i in ids)
    written.append(_write_text(split_list, listing, True))
    written.append(_write_text(out / "ImageSets" / "Main" / f"{split_name}.txt", listing, True))
    for c, having in present.items():
        lines = "".join(f"{i} {1 if i in having else -1:2d}\n" for i in ids)
        written.append(_write_text(out / "ImageSets" / "Main" / f"{names[c]}_{split_name}.txt", lines, True))
    written.append(_update_marker(out, "voc", split_name, names))
    return written


def _voc_xml(image_id, width, height, folder, names, classes, boxes, segmented) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "segbench export"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "1" if segmented else "0"
    for c, (x1, y1, x2, y2) in zip(classes.tolist(), boxes.tolist()):
        # continuous XYXY -> VOC's 1-based inclusive pixel indices
        xmin, ymin = int(np.floor(x1)) + 1, int(np.floor(y1)) + 1
        xmax, ymax = int(np.ceil(x2)), int(np.ceil(y2))
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = names[c]
        ET.SubElement(obj, "pose").text = "Unspecified"
        truncated = xmin == 1 or ymin == 1 or xmax == width or ymax == height
        ET.SubElement(obj, "truncated").text = "1" if truncated else "0"
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            ET.SubElement(box, key).text = str(value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


# -- COCO ------------------------------------------------------------------------------------------
def export_coco(
    dataset: Any,
    out_dir: str | os.PathLike,
    split_name: str,
    class_names: Sequence[str] | None = None,
    *,
    background: int | None = 0,
    segmentation: str = "rle",
    overwrite: bool = False,
    year: str = "2017",
) -> list[Path]:
    """Write ``dataset`` in the MS COCO layout under ``out_dir``; returns the paths written.

    ``segmentation`` is ``rle`` (exact) or ``polygon`` (pixel-centre contours;
    a region with holes is one polygon whose holes are joined by zero-width cuts).
    """
    if segmentation not in ("rle", "polygon"):
        raise DataError(f"segmentation must be 'rle' or 'polygon', got {segmentation!r}")
    from pycocotools import mask as mask_utils

    names = _class_names(dataset, class_names)
    out = Path(out_dir)
    ann_file = out / "annotations" / f"instances_{split_name}{year}.json"
    _prepare(out, "coco", split_name, ann_file, overwrite)
    category = {}
    for c, name in enumerate(names):
        if c != background:
            category[c] = len(category) + 1
    doc: dict[str, Any] = {
        "info": {"description": f"segbench export, split {split_name}", "version": "1.0"},
        "licenses": [],
        "images": [],
        "annotations": [],
        "categories": [{"id": cid, "name": names[c], "supercategory": "object"} for c, cid in category.items()],
    }
    written: list[Path] = []
    for index, (image_id, image, target) in enumerate(_samples(dataset)):
        height, width = image.shape[:2]
        coco_id = index + 1
        file_name = f"{image_id}.jpg"
        written.append(_save_jpeg(image, out / f"{split_name}{year}" / file_name, overwrite))
        doc["images"].append({"id": coco_id, "file_name": file_name, "height": height, "width": width})
        classes = _array(target.get("classes"), np.int64, (0,))
        if len(classes) == 0:
            continue
        boxes = _array(target.get("boxes"), np.float32, (0, 4))
        masks = _array(target.get("masks"), bool, None) if target.get("masks") is not None else None
        crowd = _array(target.get("iscrowd"), bool, None) if target.get("iscrowd") is not None else None
        for k, c in enumerate(classes.tolist()):
            if c not in category:
                raise DataError(f"sample {image_id}: instance of class {c} has no COCO category")
            x1, y1, x2, y2 = (float(v) for v in boxes[k])
            ann: dict[str, Any] = {
                "id": len(doc["annotations"]) + 1,
                "image_id": coco_id,
                "category_id": category[c],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(crowd[k]) if crowd is not None else 0,
            }
            if masks is not None:
                m = masks[k]
                ann["area"] = float(m.sum())
                if segmentation == "rle" or ann["iscrowd"]:
                    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                    ann["segmentation"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
                else:
                    ann["segmentation"] = mask_polygons(m)
            doc["annotations"].append(ann)
    written.append(_write_text(ann_file, json.dumps(doc), True))
    written.append(_update_marker(out, "coco", split_name, names))
    return written


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` of a binary mask, one per connected region.

    Contours run through pixel centres at level 0.5 (``contourpy``), shifted to
    COCO's continuous coordinates; a region's holes are appended to its outline
    through zero-width cuts, so pycocotools' even-odd fill reproduces them.
    """
    import contourpy

    z = np.pad(mask.astype(np.float64), 1)
    gen = contourpy.contour_generator(z=z, fill_type=contourpy.FillType.OuterOffset)
    points, offsets = gen.filled(0.5, 1.5)
    polygons = []
    for pts, offs in zip(points, offsets):
        rings = [pts[offs[i] : offs[i + 1]] - 0.5 for i in range(len(offs) - 1)]  # padded index -> x + 0.5
        anchor = rings[0][:1]
        parts = [rings[0]]
        for hole in rings[1:]:
            parts += [hole, anchor]
        flat = np.concatenate(parts).ravel()
        if len(flat) >= 6:
            polygons.append([round(float(v), 2) for v in flat])
    return polygons


# -- shared ----------------------------------------------------------------------------------------
def _class_names(dataset: Any, class_names: Sequence[str] | None) -> list[str]:
    names = class_names if class_names is not None else getattr(dataset, "classes", None)
    if not names:
        raise DataError("export needs class names: pass class_names or use a dataset with .classes")
    return list(names)


def _samples(dataset: Any) -> Iterator[tuple[str, np.ndarray, dict]]:
    """(id, image uint8 [H, W, 3], target) for every sample."""
    for index in range(len(dataset)):
        sample = dataset[index]
        image_id = str(sample.get("meta", {}).get("id") or f"{index:06d}")
        if not image_id or any(ch in image_id for ch in "/\\") or image_id.startswith("."):
            raise DataError(f"sample {index}: id {image_id!r} cannot be a file name")
        image = _array(sample["image"], np.uint8, None)
        if image.ndim != 3 or image.shape[0] != 3:
            raise DataError(f"sample {image_id}: image must be uint8 [3, H, W], got shape {tuple(image.shape)}")
        yield image_id, np.ascontiguousarray(image.transpose(1, 2, 0)), sample.get("target", {})


def _array(value: Any, dtype: Any, empty_shape: tuple[int, ...] | None) -> np.ndarray:
    if value is None:
        return np.zeros(empty_shape or (0,), dtype=dtype)
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value).astype(dtype, copy=False)


def _prepare(out: Path, fmt: str, split_name: str, split_file: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite`` or it is our export of ``fmt`` without this split."""
    if out.exists() and not out.is_dir():
        raise DataError(f"export: {out} exists and is not a directory")
    if overwrite or not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        marker = None
    if not isinstance(marker, dict) or marker.get("format") != fmt:
        raise DataError(f"export: {out} is not empty; choose an empty directory or pass overwrite=True (--overwrite)")
    if split_file.exists():
        raise DataError(
            f"export: split '{split_name}' already exported to {out} ({split_file.name} exists); "
            "pass overwrite=True (--overwrite) to replace it"
        )


def _update_marker(out: Path, fmt: str, split_name: str, names: list[str]) -> Path:
    path = out / MARKER
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        marker = {}
    splits = sorted(set(marker.get("splits", [])) | {split_name}) if marker.get("format") == fmt else [split_name]
    return _write_text(path, json.dumps({"format": fmt, "splits": splits, "classes": names}, indent=1) + "\n", True)


def _check_free(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise DataError(f"export: {path} exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)


def _save_jpeg(image: np.ndarray, path: Path, overwrite: bool) -> Path:
    _check_free(path, overwrite)
    Image.fromarray(image, mode="RGB").save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return path


def _save_png(index: np.ndarray, path: Path, palette: list[int], overwrite: bool) -> Path:
    _check_free(path, overwrite)
    if index.min(initial=0) < 0 or index.max(initial=0) > 255:
        raise DataError(f"export: {path.name}: label values must be in 0..255")
    img = Image.fromarray(index.astype(np.uint8), mode="P")
    img.putpalette(palette)
    img.save(path, format="PNG")
    return path


def _write_text(path: Path, text: str, overwrite: bool) -> Path:
    """Write ``text`` atomically (temporary file, then rename)."""
    _check_free(path, overwrite)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
