"""MS COCO instances (2014 and 2017 layouts) through pycocotools.

Layout under ``root``::

    annotations/instances_{split}{year}.json
    {split}{year}/{file_name}            e.g. val2017/000000397133.jpg

Samples are in increasing image id order; every image of the JSON is kept
(also those without annotations). What a sample holds (``segbench.specs``):

- ``boxes`` (``bbox`` XYWH -> XYXY), ``classes``, ``iscrowd`` and ``masks``
  (``annToRLE``: polygons, uncompressed and compressed RLE) for every
  annotation of the image, crowd ones included, in the JSON's order;
- ``labels``: the classes of all those annotations, crowd ones included;
- ``mask``: a semantic mask derived from the instances. Rule: each pixel
  covered by non-crowd instances of one class only gets that class; a pixel
  covered by non-crowd instances of two or more different classes is void
  (255: ambiguous, as an overlap of the annotators' polygons usually is);
  a pixel covered only by crowd regions is void (255); everything else is
  background (0).

Classes: index 0 is the background, 1..80 the categories in increasing id
order. ``dataset.category_ids[c]`` is the COCO id of class ``c`` (None for
the background), ``dataset.class_to_category`` / ``category_to_class`` map
both ways, so predictions can be written back as a COCO results file;
``dataset.annotation_file`` is the ground truth a COCO evaluator can load, and
``dataset.coco`` the loaded ``pycocotools.coco.COCO``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torchvision import tv_tensors

from segbench.data.builtin import ARCHIVES, COCO_CATEGORIES, OFFICIAL_COUNTS
from segbench.data.checks import Problem, error, warning
from segbench.data.files import (FileDataset, FileProblem, check_image, check_inside, need_root, read_rgb,
                                  sizes_digest)
from segbench.errors import ConfigError, DataError

__all__ = ["COCO", "CocoDataset", "CocoFormat", "semantic_from_rles", "semantic_mask"]

YEARS = ("2014", "2017")
VOID = 255


class CocoDataset(FileDataset):
    """A split of a COCO-layout folder.

    ``categories`` (``(id, name)`` pairs) are the ones the file must have
    (the registered ``coco`` passes COCO's 80); None takes them from the file
    (e.g. a ``segbench data export`` of ``shapes``). ``annotation_file`` and
    ``image_dir`` replace the layout's ``annotations/instances_{split}{year}.json``
    and ``{split}{year}/``; ``keep`` (a function of an image's file stem)
    selects the samples of a split drawn from one file.
    """

    def __init__(self, root: Any, split: str = "val", *, year: Any = 2017,
                 categories: Sequence[tuple[int, str]] | None = None, name: str = "coco",
                 official_counts: dict[str, int] | None = None, download: bool = False,
                 skip_bad: bool = False, strict: bool = False, annotation_file: Any = None, image_dir: Any = None,
                 keep: Callable[[str], bool] | None = None) -> None:
        self.name = name
        super().__init__(root, split, skip_bad=skip_bad, strict=strict, download=download)
        self.year = str(year)
        self.release = f"{name} {self.year}"
        self.hint = _hint(self.year)
        if download:
            self._download()
        base = need_root(name, root, self.hint) if annotation_file is None else Path(annotation_file).parent
        self.annotation_file = Path(annotation_file or base / "annotations" / f"instances_{split}{self.year}.json")
        self.image_dir = Path(image_dir or base / f"{split}{self.year}")
        if not self.annotation_file.is_file():
            raise DataError(f"{base}: not a COCO {self.year} layout (missing annotations/{self.annotation_file.name}); "
                            f"{self.hint}")
        if not self.image_dir.is_dir():
            raise DataError(f"{base}: not a COCO {self.year} layout (missing {self.image_dir.name}/); {self.hint}")
        self.split_source = self.annotation_file
        self.coco, self._sha = load_coco(self.annotation_file)
        self._global: list[Problem] = []
        self._set_classes(categories)
        self.records = sorted(self.coco.imgs)
        if keep is not None:
            self.records = [i for i in self.records if keep(Path(str(self.coco.imgs[i].get("file_name", ""))).stem)]
        named = [(i, self.coco.imgs[i].get("file_name")) for i in self.records]
        named = [(i, n) for i, n in named if isinstance(n, str)]
        check_inside([n for _, n in named], self.image_dir, self.annotation_file, "file_name",
                     labels=[f"image {i} file_name" for i, _ in named])
        self.image_ids: list[int] = self.records
        self.listed = len(self.records)
        self.official = (official_counts or {}).get(split)
        self._orphans()
        if skip_bad:
            self._drop_bad()
            self.image_ids = self.records

    # -- classes ------------------------------------------------------------------------------------
    def _set_classes(self, categories: Sequence[tuple[int, str]] | None) -> None:
        found = sorted((int(c["id"]), str(c.get("name", ""))) for c in self.coco.dataset["categories"])
        wanted = [tuple(c) for c in categories] if categories is not None else found
        if categories is not None and found != wanted:
            diff = next(((f, w) for f, w in zip(found, wanted) if f != w), None)
            detail = (f"id {diff[0][0]} is '{diff[0][1]}', expected id {diff[1][0]} '{diff[1][1]}'" if diff
                      else f"{len(found)} categories, expected {len(wanted)}")
            self._global.append(error(self.annotation_file, f"categories are not COCO's {len(wanted)} ({detail})"))
        self.classes = ("background",) + tuple(n for _, n in wanted)
        self.background = 0
        self.category_ids: list[int | None] = [None] + [i for i, _ in wanted]
        self.class_to_category = {k: cid for k, cid in enumerate(self.category_ids) if cid is not None}
        self.category_to_class = {cid: k for k, cid in self.class_to_category.items()}

    def _orphans(self) -> None:
        """Annotations of images the file does not list: they belong to no sample (a warning)."""
        orphans = [a["id"] for a in self.coco.dataset["annotations"] if a["image_id"] not in self.coco.imgs]
        if orphans:
            self._global.append(warning(self.annotation_file, f"{len(orphans)} annotation(s) refer to no image of "
                                                              f"the file (first: annotation {orphans[0]})"))

    # -- samples ------------------------------------------------------------------------------------
    def _record_id(self, record: Any) -> str:
        return Path(self.coco.imgs[record]["file_name"]).stem

    def __getitem__(self, index: int) -> dict[str, Any]:
        from pycocotools import mask as mask_utils

        image_id = self.records[self._index(index)]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        image = read_rgb(path)
        height, width = (int(v) for v in image.shape[-2:])
        if (width, height) != (info.get("width"), info.get("height")):
            raise FileProblem(path, _size_message((width, height), info, self.annotation_file))
        anns = self.coco.imgToAnns.get(image_id, [])
        n = len(anns)
        try:
            classes = np.fromiter((self.category_to_class[a["category_id"]] for a in anns), np.int64, n)
        except KeyError as exc:
            raise FileProblem(self.annotation_file, f"image {image_id}: unknown category id {exc.args[0]}") from None
        crowd = np.fromiter((bool(a.get("iscrowd", 0)) for a in anns), bool, n)
        boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float32).reshape(n, 4)
        boxes[:, 2:] += boxes[:, :2]
        want_masks, want_mask = self.wants("masks"), self.wants("mask")
        rles = [self.coco.annToRLE(a) for a in anns] if n and (want_masks or want_mask) else []
        if want_masks:
            if n:
                decoded = mask_utils.decode(rles)  # uint8 [H, W, N], Fortran order: [N, H, W] is a free view
                masks = torch.from_numpy(decoded.transpose(2, 0, 1).view(np.bool_))
            else:
                masks = torch.zeros((0, height, width), dtype=torch.bool)
        if want_mask:
            if want_masks and n:
                semantic = semantic_mask(decoded, classes, crowd, mask_utils.toBbox(rles))
            else:
                semantic = semantic_from_rles(rles, classes, crowd, height, width)
        labels = torch.zeros(len(self.classes), dtype=torch.float32)
        labels[torch.from_numpy(classes)] = 1.0
        target = {
            "labels": labels,
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(height, width)),
            "classes": torch.from_numpy(classes),
            "iscrowd": torch.from_numpy(crowd),
            "image_id": int(image_id),  # the COCO id, for a COCO evaluator (coco_ap) and results files
        }
        if want_mask:
            target["mask"] = tv_tensors.Mask(torch.from_numpy(semantic))
        if want_masks:
            target["masks"] = tv_tensors.Mask(masks)
        meta = {"id": Path(info["file_name"]).stem, "path": str(path), "orig_size": (height, width),
                "image_id": int(image_id)}
        return {"image": tv_tensors.Image(image), "target": target, "meta": meta}

    # -- checks -------------------------------------------------------------------------------------
    def _split_problems(self) -> list[Problem]:
        return list(self._global) + super()._split_problems()

    def _check_record(self, index: int, full: bool) -> list[Problem]:
        image_id = self.records[index]
        info = self.coco.imgs[image_id]
        file_name = info.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            return [error(self.annotation_file, f"image {image_id} has no file_name", index)]
        path = self.image_dir / file_name
        problems, size = check_image(path, index, full)
        if size is not None and size != (info.get("width"), info.get("height")):
            problems.append(error(path, _size_message(size, info, self.annotation_file), index))
        anns = self.coco.imgToAnns.get(image_id, [])
        for ann in anns:
            message = self._annotation_problem(ann, info)
            if message:
                problems.append(error(self.annotation_file, f"annotation {ann.get('id')}: {message}", index))
        if full and not problems and anns:
            try:
                from pycocotools import mask as mask_utils

                mask_utils.decode([self.coco.annToRLE(a) for a in anns])
            except Exception as exc:  # noqa: BLE001 - pycocotools raises anything on a bad segmentation
                problems.append(error(self.annotation_file, f"image {image_id}: a segmentation does not decode "
                                                            f"({type(exc).__name__}: {exc})", index))
        return problems

    def _annotation_problem(self, ann: dict, info: dict) -> str:
        if ann.get("category_id") not in self.category_to_class:
            return f"unknown category id {ann.get('category_id')!r}"
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and _numbers(bbox)) or bbox[2] < 0 or bbox[3] < 0:
            return f"bbox must be [x, y, width >= 0, height >= 0], got {bbox!r}"
        if ann.get("iscrowd", 0) not in (0, 1, False, True):
            return f"iscrowd must be 0 or 1, got {ann.get('iscrowd')!r}"
        seg = ann.get("segmentation")
        if isinstance(seg, list):
            for k, poly in enumerate(seg):
                if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0 and _numbers(poly)):
                    return f"polygon {k} must be an even list of at least 6 numbers"
            return "" if seg else "empty segmentation"
        if isinstance(seg, dict):
            size = [info.get("height"), info.get("width")]
            if "counts" not in seg or list(seg.get("size") or []) != size:
                return f"RLE needs counts and size {size}, got size {seg.get('size')!r}"
            return ""
        return "no segmentation (polygons or RLE)"

    # -- identity -----------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"year": self.year, "classes": list(self.classes), "file": self.annotation_file.name}

    def _fingerprint_files(self, digest: Any) -> None:
        """The annotation file's bytes (hashed when read) and each image file's size."""
        digest.update(self._sha)
        sizes_digest((self.image_dir / self.coco.imgs[i]["file_name"] for i in self.records), digest)

    # -- download -----------------------------------------------------------------------------------
    def _download(self) -> None:
        """Fetch and extract the official zips (images of this split, annotations) when they are missing."""
        from torchvision.datasets.utils import download_and_extract_archive

        if self.root is None:
            raise DataError(f"dataset '{self.name}': download needs a root (--root DIR or SEGBENCH_DATA)")
        key = f"coco{self.year}"
        if key not in ARCHIVES or self.split not in ("train", "val"):
            raise DataError(f"dataset '{self.name}': no archive known for {self.split}{self.year}")
        images, annotations = ARCHIVES[key][0 if self.split == "train" else 1], ARCHIVES[key][2]
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / f"{self.split}{self.year}").is_dir():
            download_and_extract_archive(images["url"], str(self.root), md5=images["md5"], remove_finished=True)
        if not (self.root / "annotations" / f"instances_{self.split}{self.year}.json").is_file():
            download_and_extract_archive(annotations["url"], str(self.root), md5=annotations["md5"],
                                         remove_finished=True)


class COCO(CocoDataset):
    """``coco``: COCO 2014 or 2017 (``year``) with the 80 official categories."""

    def __init__(self, root: Any, split: str = "val", year: Any = 2017, **options: Any) -> None:
        if str(year) not in YEARS:
            raise ConfigError(f"dataset 'coco': year must be 2014 or 2017, got {year!r}")
        super().__init__(root, split, year=year, categories=COCO_CATEGORIES, name="coco",
                         official_counts=OFFICIAL_COUNTS[f"coco{year}"], **options)


class CocoFormat(CocoDataset):
    """``coco_format``: any COCO instances file and its image folder; classes from its categories.

    ``annotations`` / ``images`` are the file and folder of the evaluation
    split ``val``; ``train`` reads ``train_annotations`` / ``train_images``
    when given, else ``train`` and ``val`` are a seeded hash split of the one
    file's images (``val_fraction``, ``split_seed``): they never share an image.
    Relative paths are taken from ``root`` when there is one.
    """

    def __init__(self, root: Any, split: str = "val", *, annotations: Any = None, images: Any = None,
                 train_annotations: Any = None, train_images: Any = None, val_fraction: float = 0.2,
                 split_seed: int = 0, **options: Any) -> None:
        from segbench.data.files import check_split_options, hash_split

        if annotations is None or images is None:
            raise ConfigError("dataset 'coco_format' needs --set annotations=FILE (a COCO instances JSON) and "
                              "--set images=DIR (the folder its file_names are in)")
        check_split_options("coco_format", val_fraction, split_seed)
        own_train = train_annotations is not None
        if split == "train" and own_train:
            annotations, images = train_annotations, train_images if train_images is not None else images
        paths = [Path(p).expanduser() for p in (annotations, images)]
        if root is not None:
            paths = [p if p.is_absolute() else Path(root).expanduser() / p for p in paths]
        for path, what, ok in ((paths[0], "annotations", paths[0].is_file()), (paths[1], "images", paths[1].is_dir())):
            if not ok:
                raise DataError(f"{path}: no such {'file' if what == 'annotations' else 'directory'} (option "
                                f"{'train_' if split == 'train' and own_train else ''}{what} of coco_format)")
        self.split_rule = "files" if own_train else f"hash {split_seed} {float(val_fraction)}"
        keep = None if own_train else (lambda stem: hash_split(stem, split_seed, val_fraction) == split)
        super().__init__(root, split, categories=None, name="coco_format", annotation_file=paths[0],
                         image_dir=paths[1], keep=keep, **options)
        self.release = "coco_format"

    def _identity(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "file": self.annotation_file.name, "images": self.image_dir.name,
                "split_rule": self.split_rule}


def load_coco(path: Path) -> tuple[Any, bytes]:
    """A ``pycocotools.coco.COCO`` of the file, and the SHA-256 of its bytes; malformed JSON names the position."""
    from pycocotools.coco import COCO as PyCOCO

    data = path.read_bytes()
    sha = hashlib.sha256(data).digest()
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise FileProblem(path, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise FileProblem(path, f"malformed JSON (not UTF-8 at byte {exc.start})") from None
    del data
    _check_structure(doc, path)
    coco = PyCOCO()
    coco.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, sha


def _check_structure(doc: Any, path: Path) -> None:
    """The keys pycocotools' index needs; anything else is checked per image."""
    if not isinstance(doc, dict):
        raise FileProblem(path, f"not a COCO instances file (a JSON {type(doc).__name__}, expected an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise FileProblem(path, f"not a COCO instances file (no '{key}' list)")
    for key, fields in (("images", ("id",)), ("categories", ("id",)), ("annotations", ("id", "image_id",
                                                                                       "category_id"))):
        for k, item in enumerate(doc[key]):
            if not isinstance(item, dict) or any(f not in item for f in fields):
                missing = [f for f in fields if not isinstance(item, dict) or f not in item]
                raise FileProblem(path, f"{key}[{k}] lacks {', '.join(repr(f) for f in missing)}")


def semantic_mask(masks: np.ndarray, classes: np.ndarray, crowd: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W]`` from instance masks ``[H, W, N]`` (the rule in the module docstring).

    ``windows`` ``[N, 4]`` (XYWH, ``pycocotools.mask.toBbox``) bound each
    instance, so each one costs only its own extent.
    """
    height, width, n = masks.shape
    out = np.zeros((height, width), dtype=np.uint8)
    conflict = None
    order = [k for k in range(n) if not crowd[k]] + [k for k in range(n) if crowd[k]]
    for k in order:
        x0, y0, x1, y1 = _window(windows[k], height, width)
        if x1 <= x0:
            continue
        m = masks[y0:y1, x0:x1, k].view(np.bool_)
        region = out[y0:y1, x0:x1]
        if crowd[k]:
            region[m & (region == 0)] = VOID
            continue
        c = classes[k]
        clash = m & (region != 0) & (region != c)
        if clash.any():
            if conflict is None:
                conflict = np.zeros((height, width), dtype=bool)
            conflict[y0:y1, x0:x1] |= clash
        region[m & (region == 0)] = c
    if conflict is not None:
        out[conflict] = VOID
    return out


def semantic_from_rles(rles: list, classes: np.ndarray, crowd: np.ndarray, height: int, width: int) -> np.ndarray:
    """The same mask as :func:`semantic_mask`, from RLEs: one decode per class (their union), not per instance."""
    from pycocotools import mask as mask_utils

    out = np.zeros((height, width), dtype=np.uint8)
    things = sorted({int(c) for c, is_crowd in zip(classes, crowd) if not is_crowd})
    count = None
    for c in things:
        union = mask_utils.merge([r for r, k, is_crowd in zip(rles, classes, crowd) if k == c and not is_crowd])
        x0, y0, x1, y1 = _window(mask_utils.toBbox(union), height, width)
        if x1 <= x0:
            continue
        m = mask_utils.decode(union)[y0:y1, x0:x1].view(np.bool_)
        region = out[y0:y1, x0:x1]
        if len(things) > 1:
            if count is None:
                count = np.zeros((height, width), dtype=np.uint8)
            count[y0:y1, x0:x1] += m
        region[m] = c
    if count is not None:
        out[count > 1] = VOID
    if crowd.any():
        union = mask_utils.merge([r for r, is_crowd in zip(rles, crowd) if is_crowd])
        x0, y0, x1, y1 = _window(mask_utils.toBbox(union), height, width)
        if x1 > x0:
            region = out[y0:y1, x0:x1]
            region[mask_utils.decode(union)[y0:y1, x0:x1].view(np.bool_) & (region == 0)] = VOID
    return out


def _window(xywh: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    x, y, w, h = (float(v) for v in xywh)
    x0, y0 = max(0, int(x)), max(0, int(y))
    x1, y1 = min(width, int(np.ceil(x + w))), min(height, int(np.ceil(y + h)))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else (0, 0, 0, 0)


_NUMBER_TYPES = frozenset({int, float})  # what JSON numbers parse to (bool excluded)


def _numbers(values: list) -> bool:
    """Every item an int or float (loops in C: polygons have thousands of coordinates)."""
    return all(map(_NUMBER_TYPES.__contains__, map(type, values)))


def _size_message(size: tuple[int, int], info: dict, annotation_file: Path) -> str:
    return (f"image is {size[0]}x{size[1]} px but {annotation_file.name} says "
            f"{info.get('width')}x{info.get('height')} px")


def _hint(year: str) -> str:
    return (f"get train{year}.zip / val{year}.zip and annotations_trainval{year}.zip from "
            f"https://cocodataset.org/#download and extract them under the root, or pass --set download=true")
