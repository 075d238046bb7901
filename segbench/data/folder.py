"""``folder``: a researcher's own annotated images, no code: ``images/`` + ``masks/`` + a class list.

Layout under ``root``::

    images/{stem}.jpg|.jpeg|.png|.bmp|.tif|.tiff|.webp
    masks/{stem}.png                 palette or grey indices (or RGB with dataset_meta.json colours)
    classes.txt                      one class name per line (index = line order)
      or dataset_meta.json           datumaro's "common semantic segmentation" meta file
    splits/{train,val,test}.txt      optional: stems, one per line

What a sample holds: ``mask`` (the stored indices; the ``void`` value, 255
by default, is void) and ``labels``, derived from the mask: every class present
except the background and void. Without ``splits/``, ``train`` and ``val`` are
a seeded hash split (:func:`segbench.data.files.hash_split`): a stem is in
``val`` when its hash is below ``val_fraction``, so the two never share an
image and a stem's split depends on nothing else; ``test`` needs
``splits/test.txt``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from segbench.data.checks import Problem, error, warning
from segbench.data.classlists import ClassList, pick_background, read_classes_txt, read_dataset_meta
from segbench.data.files import (FileDataset, FileProblem, check_image, check_inside, check_split_options,
                                 file_digest, hash_split, labels_from_classes, line_of, mask_size, need_root,
                                 out_of_range, present_classes, read_label_png, read_lines, read_rgb, sizes_digest,
                                 values_message)
from segbench.errors import ConfigError, DataError

__all__ = ["FolderDataset", "IMAGE_SUFFIXES", "find_class_list"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""File suffixes read as images in ``images/`` (any case); other files there are ignored."""
SHOWN = 3
"""Orphan masks named in the message."""
HINT = ("a folder dataset needs DIR/images/, DIR/masks/ (PNGs with the images' stems) and DIR/classes.txt or "
        "DIR/dataset_meta.json (see docs/datasets.md)")


def find_class_list(base: Path, hint: str = HINT) -> ClassList:
    """``classes.txt`` if there is one, else datumaro's ``dataset_meta.json``; neither is a :class:`DataError`."""
    if (base / "classes.txt").is_file():
        return read_classes_txt(base / "classes.txt")
    if (base / "dataset_meta.json").is_file():
        return read_dataset_meta(base / "dataset_meta.json")
    raise DataError(f"{base}: no class list (classes.txt or dataset_meta.json); {hint}")


@dataclass
class _Record:
    id: str
    image: Path
    mask: Path
    present: np.ndarray | None = None  # the classes of the mask, once decoded (labels without decoding again)


class FolderDataset(FileDataset):
    """A split of a folder of images and masks (the module docstring)."""

    name = "folder"

    def __init__(self, root: Any, split: str = "val", *, void: int = 255, background: Any = "auto",
                 val_fraction: float = 0.2, split_seed: int = 0, skip_bad: bool = False, strict: bool = False) -> None:
        super().__init__(root, split, skip_bad=skip_bad, strict=strict)
        if isinstance(void, bool) or not isinstance(void, int) or not 0 <= void <= 255:
            raise ConfigError(f"dataset 'folder': option void must be a mask value 0..255, got {void!r}")
        check_split_options(self.name, val_fraction, split_seed)
        self.void, self.val_fraction, self.split_seed = void, float(val_fraction), split_seed
        base = need_root(self.name, root, HINT)
        self.image_dir, self.mask_dir, self.split_dir = base / "images", base / "masks", base / "splits"
        for folder in (self.image_dir, self.mask_dir):
            if not folder.is_dir():
                raise DataError(f"{base}: not a folder dataset (missing {folder.name}/); {HINT}")
        self.class_list = find_class_list(base)
        self.classes = self.class_list.names
        self.background = pick_background(self.class_list, background)
        if void < len(self.classes) and void != 255:
            raise ConfigError(f"dataset 'folder': void {void} is class '{self.classes[void]}' of "
                              f"{self.class_list.source}; choose a value that is no class")
        self.colors = self.class_list.colors
        images = self._images()
        self._orphan_masks(images)
        ids = self._split_ids(images)
        self.listed = len(ids)
        self.records = [_Record(i, images[i], self.mask_dir / f"{i}.png") for i in ids]
        if skip_bad:
            self._drop_bad()

    # -- the files -----------------------------------------------------------------------------------
    def _images(self) -> dict[str, Path]:
        """Stem -> image file of every image in ``images/``; two images with one stem are a :class:`DataError`."""
        found: dict[str, Path] = {}
        for entry in sorted(os.scandir(self.image_dir), key=lambda e: e.name):
            path = Path(entry.path)
            if entry.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or entry.is_dir():
                continue
            if path.stem in found:
                raise DataError(f"{path}: another image has the stem '{path.stem}' ({found[path.stem].name}); "
                                f"a mask masks/{path.stem}.png could belong to either")
            found[path.stem] = path
        if not found:
            raise DataError(f"{self.image_dir}: no images ({', '.join(IMAGE_SUFFIXES)}); {HINT}")
        return found

    def _orphan_masks(self, images: dict[str, Path]) -> None:
        """Masks whose stem matches no image: a :class:`DataError` naming the first few and the count."""
        orphans = sorted(p.name for p in self.mask_dir.glob("*.png") if p.stem not in images)
        if orphans:
            more = f" (and {len(orphans) - SHOWN} more)" if len(orphans) > SHOWN else ""
            raise DataError(f"{self.mask_dir}: {len(orphans)} mask(s) match no image in {self.image_dir.name}/: "
                            f"{', '.join(orphans[:SHOWN])}{more}")

    def _split_ids(self, images: dict[str, Path]) -> list[str]:
        if self.split_dir.is_dir() or self.split not in ("train", "val"):
            self.split_source = self.split_dir / f"{self.split}.txt"
            if not self.split_dir.is_dir():
                raise DataError(f"{self.split_source}: missing file: split '{self.split}' needs a list of stems "
                                f"(without splits/, the folder has train and val only: a hash split)")
            ids = read_lines(self.split_source, f"the folder {self.split} list", first_token=False)
            check_inside(ids, self.image_dir, self.split_source)
            for image_id in ids:
                if image_id not in images:
                    raise DataError(f"{self.split_source}: {line_of(self.split_source, image_id)}: '{image_id}' has "
                                    f"no image in {self.image_dir}")
            return ids
        self.split_source = self.image_dir
        return [s for s in sorted(images) if hash_split(s, self.split_seed, self.val_fraction) == self.split]

    # -- samples -------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[self._index(index)]
        image = read_rgb(record.image)
        height, width = (int(v) for v in image.shape[-2:])
        target: dict[str, Any] = {}
        if self.wants("mask") or record.present is None:
            mask = self._load_mask(record, (width, height))
            if self.wants("mask"):
                target["mask"] = tv_tensors.Mask(torch.from_numpy(mask))
        target["labels"] = labels_from_classes(record.present, len(self.classes), self.background)
        meta = {"id": record.id, "path": str(record.image), "orig_size": (height, width)}
        return {"image": tv_tensors.Image(image), "target": target, "meta": meta}

    def _load_mask(self, record: _Record, size: tuple[int, int] | None) -> np.ndarray:
        """The mask, checked against the image size and the classes (``void`` becomes 255); keeps its classes."""
        mask = read_label_png(record.mask, self.colors)
        found = (mask.shape[1], mask.shape[0])
        if size is not None and found != size:
            raise FileProblem(record.mask, f"mask is {found[0]}x{found[1]} px but the image is {size[0]}x{size[1]} px")
        if self.void != 255:
            mask = np.where(mask == self.void, np.uint8(255), mask)
        if record.present is None:  # the classes once (one histogram), then only the cheap range check
            present, bad = present_classes(mask, len(self.classes))
        else:
            present, bad = record.present, out_of_range(mask, len(self.classes))
        if bad:
            raise FileProblem(record.mask, values_message(bad, len(self.classes)) +
                              (f" (void {self.void})" if self.void != 255 else ""))
        record.present = present
        return mask

    # -- checks --------------------------------------------------------------------------------------
    def _split_problems(self) -> list[Problem]:
        """With ``splits/``: evaluation images that are also in ``splits/train.txt`` (a warning)."""
        train_list = self.split_dir / "train.txt"
        if self.split == "train" or self.split_source == self.image_dir or not train_list.is_file():
            return []
        shared = set(self.ids) & set(read_lines(train_list, "the folder train list", first_token=False))
        if not shared:
            return []
        return [warning(self.split_source, f"{len(shared)} image(s) of split '{self.split}' are also in "
                                           f"{train_list.name} (first: {sorted(shared)[0]}): evaluating on them "
                                           f"measures fitting")]

    def _check_record(self, index: int, full: bool) -> list[Problem]:
        record = self.records[index]
        problems, size = check_image(record.image, index, full)
        try:
            if full:
                self._load_mask(record, size)
            else:
                found = mask_size(record.mask, rgb=self.colors is not None)
                if size is not None and found != size:
                    raise FileProblem(record.mask, f"mask is {found[0]}x{found[1]} px but the image is "
                                                   f"{size[0]}x{size[1]} px")
        except FileProblem as exc:
            problems.append(error(exc.path, exc.message, index))
        return problems

    # -- identity ------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        rule = "splits/" if self.split_source != self.image_dir else f"hash {self.split_seed} {self.val_fraction}"
        return {"classes": list(self.classes), "background": self.background, "void": self.void, "split_rule": rule,
                "colors": [list(c) for c in self.colors] if self.colors else None}

    def _fingerprint_files(self, digest: Any) -> None:
        """The class list's bytes, each mask's bytes, each image's name and size."""
        file_digest(self.class_list.source, digest)
        for record in self.records:
            digest.update(record.mask.name.encode())
            file_digest(record.mask, digest)
        digest.update("\n".join(r.image.name for r in self.records).encode())
        sizes_digest((r.image for r in self.records), digest)
