"""PASCAL VOC from its official layout: ``voc2012`` (segmentation, with SBD's ``trainaug``) and ``voc2007``.

Layout (``root`` is ``VOCdevkit/VOC20xx`` itself, or a folder holding
``VOCdevkit/VOC20xx`` or ``VOC20xx``)::

    JPEGImages/{id}.jpg
    Annotations/{id}.xml                 objects: name, difficult, bndbox (1-based, inclusive)
    SegmentationClass/{id}.png           palette indices: class, 255 = void
    SegmentationObject/{id}.png          palette indices: k = k-th object of the XML, 255 = void
    ImageSets/Segmentation/{split}.txt   voc2012 splits
    ImageSets/Main/{split}.txt           voc2007 splits

What a sample holds (``segbench.specs``):

- ``labels``: the classes of the XML's objects not marked difficult;
  ``labels_ignore``: the classes present *only* as difficult objects (the
  devkit's ``0`` in ``{class}_{split}.txt``: left out of that class's AP,
  neither positive nor negative), with ``labels`` 0 there.
- ``boxes`` / ``classes``: every object of the XML, difficult ones included
  (``meta["difficult"]`` flags them), in XML order; VOC's 1-based inclusive
  ``xmin..xmax`` becomes continuous ``x1 = xmin - 1``, ``x2 = xmax``.
- ``mask`` (voc2012): the ``SegmentationClass`` indices as stored, 255 kept as void.
- ``masks`` (voc2012, only where ``SegmentationObject/{id}.png`` exists):
  ``masks[k] = object_png == k + 1``, aligned with ``boxes``.

``trainaug`` (10,582 images): ``(VOC train | SBD train | SBD val) - VOC val``
unless a list ``ImageSets/Segmentation/trainaug.txt`` (or ``train_aug.txt``,
or ``ImageSets/SegmentationAug/train_aug.txt``) exists; masks from
``SegmentationClassAug/{id}.png`` when that folder exists, else from VOC's
``SegmentationClass`` where the image has one, else from SBD's
``cls/{id}.mat`` (``GTcls.Segmentation``, no void).
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torchvision import tv_tensors

from segbench.data.builtin import ARCHIVES, OFFICIAL_COUNTS, VOC_CLASSES
from segbench.data.checks import Problem, error, warning
from segbench.data.classlists import ClassList, pick_background, read_classes_txt, read_labelmap
from segbench.data.files import (
    FileDataset,
    FileProblem,
    check_image,
    check_inside,
    file_digest,
    labels_from_classes,
    mask_size,
    need_root,
    out_of_range,
    present_classes,
    read_index_png,
    read_label_png,
    read_lines,
    read_rgb,
    sizes_digest,
    values_message,
)
from segbench.errors import ConfigError, DataError

__all__ = ["VOC2007", "VOC2012", "VOCAnnotation", "VOCDataset", "VOCFormat", "find_voc_dir", "parse_voc_xml"]

TASKS = ("segmentation", "classification")
AUG_LISTS = ("ImageSets/Segmentation/trainaug.txt", "ImageSets/Segmentation/train_aug.txt",
             "ImageSets/SegmentationAug/train_aug.txt")


@dataclass
class VOCAnnotation:
    """An ``Annotations/{id}.xml``: ``size`` (width, height) or None, and one entry per object in XML order."""

    size: tuple[int, int] | None
    names: list[str]
    boxes: np.ndarray  # float32 [N, 4], continuous XYXY
    difficult: np.ndarray  # bool [N]


def parse_voc_xml(data: bytes, path: Any) -> VOCAnnotation:
    """Parse one VOC annotation; a malformed one is a :class:`FileProblem` naming the position or the object."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise FileProblem(path, f"malformed XML ({exc})") from None
    if root.tag != "annotation":
        raise FileProblem(path, f"not a VOC annotation (root element <{root.tag}>)")
    size = None
    try:
        width, height = (int(float(root.findtext(f"size/{k}") or "")) for k in ("width", "height"))
        if width > 0 and height > 0:
            size = (width, height)
    except ValueError:
        pass
    names, boxes, difficult = [], [], []
    for k, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise FileProblem(path, f"object {k} has no <name>")
        box = obj.find("bndbox")
        if box is None:
            raise FileProblem(path, f"object {k} ({name}) has no <bndbox>")
        try:
            x1, y1, x2, y2 = (float(box.findtext(t) or "") for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            raise FileProblem(path, f"object {k} ({name}): <bndbox> is not four numbers") from None
        if x2 < x1 or y2 < y1:
            raise FileProblem(path, f"object {k} ({name}): empty box (xmin {x1:g}, ymin {y1:g}, "
                                    f"xmax {x2:g}, ymax {y2:g})")
        names.append(name)
        boxes.append((x1 - 1, y1 - 1, x2, y2))
        difficult.append((obj.findtext("difficult") or "0").strip() not in ("0", ""))
    return VOCAnnotation(size, names, np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                         np.asarray(difficult, dtype=bool))


def find_voc_dir(root: Any, year: str, hint: str, name: str | None = None) -> Path:
    """The ``VOC{year}`` folder: ``root`` itself, ``root/VOCdevkit/VOC{year}`` or ``root/VOC{year}``."""
    base = need_root(name or f"voc{year}", root, hint)
    candidates = (base, base / "VOCdevkit" / f"VOC{year}", base / f"VOC{year}")
    for folder in candidates:
        if (folder / "JPEGImages").is_dir():
            return folder
    named = next((c for c in candidates[1:] if c.is_dir()), base)
    raise DataError(f"{named}: not a VOC{year} layout (missing JPEGImages/); {hint}")


@dataclass
class _Record:
    id: str
    image: Path
    xml: Path
    xml_sha: bytes = b""
    ann: VOCAnnotation | None = None
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    mask: Path | None = None
    objects: Path | None = None
    problem: Problem | None = None  # found while parsing the XML: the sample is unusable
    present: np.ndarray | None = None  # without Annotations/: the classes of the mask, once decoded


class VOCDataset(FileDataset):
    """A split of a VOC-layout folder (``task`` segmentation: masks required; classification: XML only).

    ``classes`` are the names the XML may use (index 0 the background); the
    registered ``voc2012`` / ``voc2007`` use VOC's 21, and any other class set
    (e.g. a ``segbench data export`` of ``shapes``) works the same way.
    ``colors`` (one ``(r, g, b)`` per class) also reads colour-coded RGB class
    masks (CVAT's and datumaro's VOC exports). ``annotations_optional``: a
    layout without ``Annotations/`` is read too, with labels derived from the
    class mask (every class present but the background) and no boxes.
    """

    def __init__(self, root: Any, split: str, *, year: str = "2012", task: str = "segmentation",
                 classes: Sequence[str] = VOC_CLASSES, background: int | None = 0, name: str | None = None,
                 official_counts: dict[str, int] | None = None, sbd_root: Any = None, download: bool = False,
                 skip_bad: bool = False, strict: bool = False, colors: Sequence[Sequence[int]] | None = None,
                 annotations_optional: bool = False) -> None:
        if task not in TASKS:
            raise ConfigError(f"VOC task must be one of {', '.join(TASKS)}, got {task!r}")
        self.name = name or f"voc{year}"
        self.classes = tuple(classes)
        self.background = background
        super().__init__(root, split, skip_bad=skip_bad, strict=strict, download=download)
        self.year, self.task = str(year), task
        self.hint = _hint(self.name, self.year)
        if download:
            self._download(sbd_root)
        self.voc_dir = find_voc_dir(root, self.year, self.hint, self.name)
        self.colors = colors
        self.has_xml = not annotations_optional or (self.voc_dir / "Annotations").is_dir()
        self.sbd_dir: Path | None = None
        self.aug_dir: Path | None = None
        self.official = (official_counts or {}).get(split)
        self._class_index = {c: i for i, c in enumerate(self.classes) if i != background}
        ids = self._split_ids(sbd_root)
        check_inside(ids, self.voc_dir / "JPEGImages", Path(self.split_source))
        self.listed = len(ids)
        self.records = [self._record(i) for i in ids]
        if skip_bad:
            self._drop_bad()

    # -- the split -----------------------------------------------------------------------------------
    def _split_ids(self, sbd_root: Any) -> list[str]:
        folder = "Segmentation" if self.task == "segmentation" else "Main"
        if self.split != "trainaug" or self.task != "segmentation":
            self.split_source = self.voc_dir / "ImageSets" / folder / f"{self.split}.txt"
            return read_lines(self.split_source, f"the {self.name} {self.split} list")
        aug_dir = self.voc_dir / "SegmentationClassAug"
        self.aug_dir = aug_dir if aug_dir.is_dir() else None
        self.sbd_dir = self._find_sbd(sbd_root)
        for relative in AUG_LISTS:
            if (self.voc_dir / relative).is_file():
                self.split_source = self.voc_dir / relative
                return read_lines(self.split_source, "the trainaug list")
        seg = self.voc_dir / "ImageSets" / "Segmentation"
        train = read_lines(seg / "train.txt", f"the {self.name} train list")
        val = set(read_lines(seg / "val.txt", f"the {self.name} val list"))
        if self.sbd_dir is not None:
            self.split_source = self.sbd_dir
            sbd = read_lines(self.sbd_dir / "train.txt", "the SBD train list")
            sbd += read_lines(self.sbd_dir / "val.txt", "the SBD val list")
            return sorted((set(train) | set(sbd)) - val)
        if self.aug_dir is not None:
            self.split_source = self.aug_dir
            return sorted(({p.stem for p in self.aug_dir.glob("*.png")} | set(train)) - val)
        raise DataError(
            f"{self.voc_dir}: no source for split 'trainaug': put SBD (cls/*.mat, train.txt, val.txt) in "
            f"{(self.root or self.voc_dir) / 'SBD'} or pass --set sbd_root=DIR, or add a SegmentationClassAug/ folder "
            f"(see docs/datasets.md), or pass --set download=true"
        )

    def _find_sbd(self, sbd_root: Any) -> Path | None:
        if sbd_root is not None:
            path = Path(sbd_root).expanduser()
            for candidate in (path, path / "dataset", path / "benchmark_RELEASE" / "dataset"):
                if (candidate / "cls").is_dir():
                    return candidate
            raise DataError(f"{path}: not an SBD layout (missing cls/); get benchmark.tgz from "
                            f"{ARCHIVES['voc2012'][1]['url']}")
        bases = [self.voc_dir, self.voc_dir.parent, self.voc_dir.parent.parent]
        if self.root is not None:
            bases.insert(0, self.root)
        for base in bases:
            for candidate in (base / "SBD", base / "benchmark_RELEASE" / "dataset"):
                if (candidate / "cls").is_dir():
                    return candidate
        return None

    def _record(self, image_id: str) -> _Record:
        voc = self.voc_dir
        record = _Record(image_id, voc / "JPEGImages" / f"{image_id}.jpg", voc / "Annotations" / f"{image_id}.xml")
        if self.task == "segmentation":
            record.mask = self._mask_path(image_id)
            objects = voc / "SegmentationObject" / f"{image_id}.png"
            record.objects = objects if objects.is_file() else None
        if not self.has_xml:  # labels from the class mask when it is decoded; no boxes, no instances
            record.ann, record.objects = VOCAnnotation(None, [], np.zeros((0, 4), np.float32), np.zeros(0, bool)), None
            return record
        try:
            data = record.xml.read_bytes()
        except FileNotFoundError:
            record.problem = error(record.xml, "missing file")
            return record
        except OSError as exc:
            record.problem = error(record.xml, f"cannot read ({exc.strerror})")
            return record
        record.xml_sha = hashlib.sha256(data).digest()
        try:
            ann = parse_voc_xml(data, record.xml)
        except FileProblem as exc:
            record.problem = error(exc.path, exc.message)
            return record
        unknown = [(k, n) for k, n in enumerate(ann.names, start=1) if n not in self._class_index]
        if unknown:
            k, n = unknown[0]
            record.problem = error(record.xml, f"object {k}: unknown class '{n}'; classes: "
                                               f"{', '.join(self._class_index)}")
            return record
        record.ann = ann
        record.classes = np.asarray([self._class_index[n] for n in ann.names], dtype=np.int64)
        return record

    def _mask_path(self, image_id: str) -> Path:
        voc_mask = self.voc_dir / "SegmentationClass" / f"{image_id}.png"
        if self.split != "trainaug":
            return voc_mask
        if self.aug_dir is not None:
            return self.aug_dir / f"{image_id}.png"
        if voc_mask.is_file() or self.sbd_dir is None:
            return voc_mask
        return self.sbd_dir / "cls" / f"{image_id}.mat"

    # -- samples -------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[self._index(index)]
        if record.problem is not None:
            raise FileProblem(record.problem.path, record.problem.message)
        image = read_rgb(record.image)
        height, width = image.shape[-2:]
        ann = record.ann
        c = len(self.classes)
        labels = torch.zeros(c, dtype=torch.float32)
        ignore = torch.zeros(c, dtype=torch.bool)
        easy = record.classes[~ann.difficult]
        if not self.has_xml:  # labels from the mask's classes, found once and kept
            if record.present is None or self.wants("mask"):
                mask = self._load_mask(record, record.mask, "mask", (width, height))
            if record.present is None:
                record.present = present_classes(mask, c)[0]
            labels = labels_from_classes(record.present, c, self.background)
        labels[torch.from_numpy(easy)] = 1.0
        ignore[torch.from_numpy(record.classes)] = True
        ignore[torch.from_numpy(easy)] = False
        target: dict[str, Any] = {
            "labels": labels,
            "labels_ignore": ignore,
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(ann.boxes.copy()), format="XYXY",
                                              canvas_size=(height, width)),
            "classes": torch.from_numpy(record.classes.copy()),
        }
        if record.mask is not None and self.wants("mask"):
            if self.has_xml:
                mask = self._load_mask(record, record.mask, "mask", (width, height))
            target["mask"] = tv_tensors.Mask(torch.from_numpy(mask))
        if record.objects is not None and self.wants("masks"):
            objects = self._load_mask(record, record.objects, "object mask", (width, height))
            ids = torch.arange(1, len(record.classes) + 1, dtype=torch.uint8)[:, None, None]
            target["masks"] = tv_tensors.Mask(torch.from_numpy(objects)[None] == ids)
        meta = {"id": record.id, "path": str(record.image), "orig_size": (int(height), int(width)),
                "difficult": ann.difficult.tolist()}
        return {"image": tv_tensors.Image(image), "target": target, "meta": meta}

    def _load_mask(self, record: _Record, path: Path, what: str, size: tuple[int, int] | None) -> np.ndarray:
        """A class mask (``what`` "mask", PNG or SBD .mat) or object mask, checked against the image and classes."""
        if path.suffix == ".mat":
            array = _read_mat(path)
        elif self.colors is not None and what == "mask":
            array = read_label_png(path, self.colors, what)
        else:
            array = read_index_png(path, what)
        found = (array.shape[1], array.shape[0])
        if size is not None and found != size:
            raise FileProblem(path, _size_message(what, found, size))
        if what == "mask":
            bad = out_of_range(array, len(self.classes))
            if bad:
                raise FileProblem(path, values_message(bad, len(self.classes)))
        elif record.ann is not None:
            n = len(record.classes)
            bad = out_of_range(array, n + 1)
            if bad:
                raise FileProblem(path, f"object mask has object {bad[0]} but the XML lists {n} objects")
        return array

    # -- checks --------------------------------------------------------------------------------------
    def _check_record(self, index: int, full: bool) -> list[Problem]:
        record = self.records[index]
        problems, size = check_image(record.image, index, full)
        if record.problem is not None:
            p = record.problem
            problems.append(Problem(p.level, p.path, p.message, index))
        elif size is not None and record.ann is not None and record.ann.size is not None and record.ann.size != size:
            problems.append(warning(record.xml, "XML <size> is {}x{} px but the image is {}x{} px".format(
                *record.ann.size, *size), index))
        for path, what in ((record.mask, "mask"), (record.objects, "object mask")):
            if path is None:
                continue
            try:
                if full:
                    self._load_mask(record, path, what, size)
                elif path.suffix == ".mat":
                    if not path.is_file():
                        raise FileProblem(path, "missing file")
                else:
                    found = mask_size(path, what, rgb=self.colors is not None and what == "mask")
                    if size is not None and found != size:
                        raise FileProblem(path, _size_message(what, found, size))
            except FileProblem as exc:
                problems.append(error(exc.path, exc.message, index))
        return problems

    # -- identity ------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"task": self.task, "year": self.year, "classes": list(self.classes)}

    def _fingerprint_files(self, digest: Any) -> None:
        """XML bytes (hashed when parsed), mask bytes, and each JPEG's size."""
        for record in self.records:
            digest.update(record.xml_sha or b"<unreadable>")
            for path in (record.mask, record.objects):
                if path is not None:
                    digest.update(path.name.encode())
                    _digest_file(path, digest)
        sizes_digest((r.image for r in self.records), digest)

    # -- download ------------------------------------------------------------------------------------
    def _download(self, sbd_root: Any) -> None:
        """Fetch the official archives with torchvision's VOC / SBD classes when the layout lacks them."""
        from torchvision import datasets

        if self.root is None:
            raise DataError(f"dataset '{self.name}': download needs a root (--root DIR or SEGBENCH_DATA)")
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            voc = find_voc_dir(self.root, self.year, self.hint)
        except DataError:
            voc = None
        if self.year == "2007":
            needed = "test" if self.split == "test" else "trainval"
            if voc is None or not (voc / "ImageSets" / "Main" / f"{needed}.txt").is_file():
                datasets.VOCDetection(str(self.root), year="2007", image_set=needed, download=True)
        elif voc is None:
            datasets.VOCSegmentation(str(self.root), year=self.year, image_set="trainval", download=True)
        if self.split == "trainaug" and sbd_root is None:
            self.voc_dir = find_voc_dir(self.root, self.year, self.hint)
            if self._find_sbd(None) is None and not (self.voc_dir / "SegmentationClassAug").is_dir():
                datasets.SBDataset(str(self.root / "SBD"), image_set="train", mode="segmentation", download=True)


class VOC2012(VOCDataset):
    """``voc2012``: PASCAL VOC 2012 segmentation splits (train, val, trainval, trainaug)."""

    def __init__(self, root: Any, split: str = "val", **options: Any) -> None:
        super().__init__(root, split, year="2012", task="segmentation", name="voc2012",
                         official_counts=OFFICIAL_COUNTS["voc2012"], **options)


class VOC2007(VOCDataset):
    """``voc2007``: PASCAL VOC 2007 classification / localization (trainval, test)."""

    def __init__(self, root: Any, split: str = "test", **options: Any) -> None:
        super().__init__(root, split, year="2007", task="classification", name="voc2007",
                         official_counts=OFFICIAL_COUNTS["voc2007"], **options)


FORMAT_HINT = ("voc_format reads a folder holding JPEGImages/, SegmentationClass/ and "
               "ImageSets/Segmentation/{split}.txt (Annotations/ optional), classes from labelmap.txt or classes.txt "
               "(see docs/datasets.md)")


class VOCFormat(VOCDataset):
    """``voc_format``: any data in the VOC segmentation layout (a CVAT or datumaro export, a VOC-style set).

    Classes from ``labelmap.txt`` (``name:r,g,b::`` lines, in the VOC folder
    or the root), else ``classes.txt``, else VOC's 21 (with the VOC palette's
    colours); ``background`` picks the background (the class named
    ``background`` by default). ``Annotations/`` is optional.
    """

    def __init__(self, root: Any, split: str = "val", *, background: Any = "auto", **options: Any) -> None:
        voc_dir = find_voc_dir(root, "2012", FORMAT_HINT, "voc_format")
        class_list = _voc_format_classes(voc_dir, Path(root).expanduser())
        super().__init__(root, split, year="2012", task="segmentation", name="voc_format",
                         classes=class_list.names, background=pick_background(class_list, background),
                         colors=class_list.colors, annotations_optional=True, **options)
        self.hint = FORMAT_HINT

    def _identity(self) -> dict[str, Any]:
        return {**super()._identity(), "background": self.background, "annotations": self.has_xml,
                "colors": [list(c) for c in self.colors] if self.colors else None}


def _voc_format_classes(voc_dir: Path, root: Path) -> ClassList:
    """The class list of a VOC-layout folder: labelmap.txt, else classes.txt, else VOC's 21 in the VOC palette."""
    for folder in dict.fromkeys((voc_dir, root)):
        if (folder / "labelmap.txt").is_file():
            return read_labelmap(folder / "labelmap.txt")
    for folder in dict.fromkeys((voc_dir, root)):
        if (folder / "classes.txt").is_file():
            return read_classes_txt(folder / "classes.txt")
    from segbench.data.export import voc_palette

    palette = np.asarray(voc_palette(), dtype=np.int64).reshape(256, 3)[: len(VOC_CLASSES)]
    return ClassList(VOC_CLASSES, voc_dir, tuple(tuple(int(v) for v in c) for c in palette))


def _read_mat(path: Path) -> np.ndarray:
    """SBD's ``cls/{id}.mat``: ``GTcls.Segmentation`` as uint8 ``[H, W]``."""
    try:
        from scipy.io import loadmat
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        raise DataError("reading SBD .mat masks needs scipy: pip install scipy") from None
    try:
        mat = loadmat(os.fspath(path), squeeze_me=True, struct_as_record=False)
        seg = np.asarray(mat["GTcls"].Segmentation)
    except FileNotFoundError:
        raise FileProblem(path, "missing file") from None
    except (KeyError, AttributeError, ValueError, TypeError, OSError) as exc:
        raise FileProblem(path, f"not an SBD class mask (GTcls.Segmentation): {exc}") from None
    if seg.ndim != 2 or seg.min(initial=0) < 0 or seg.max(initial=0) > 255:
        raise FileProblem(path, f"not an SBD class mask (GTcls.Segmentation of shape {seg.shape})")
    return seg.astype(np.uint8)


def _digest_file(path: Path, digest: Any) -> None:
    file_digest(path, digest)


def _size_message(what: str, found: tuple[int, int], expected: tuple[int, int]) -> str:
    return f"{what} is {found[0]}x{found[1]} px but the image is {expected[0]}x{expected[1]} px"


def _hint(name: str, year: str) -> str:
    key = f"voc{year}" if f"voc{year}" in ARCHIVES else "voc2012"
    archives = ", ".join(a["url"] for a in ARCHIVES[key][: 1 if key == "voc2012" else 2])
    return f"get {archives} and extract it under the root (see docs/datasets.md), or pass --set download=true"
