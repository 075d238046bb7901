"""Single-label scene classification: MIT Indoor 67 (``mit67``) and 15-Scene (``scene15``).

``labels`` is one-hot (the scene's class); there is no background class.

MIT67 layout under ``root`` (the extracted ``indoorCVPR_09.tar`` plus the two
official lists)::

    Images/<class>/<file>.jpg
    TrainImages.txt      "<class>/<file>.jpg" per line (whole lines: a few names have spaces):
                         77-83 per class, 5,360 in all
    TestImages.txt       17-23 per class (100 images per class in all), 1,340 in all

15-Scene layout: one folder per class (``bedroom``, ``CALsuburb``,
``industrial``, ``kitchen``, ``livingroom``, ``MITcoast``, ``MITforest``,
``MIThighway``, ``MITinsidecity``, ``MITmountain``, ``MITopencountry``,
``MITstreet``, ``MITtallbuilding``, ``PARoffice``, ``store``; any case, with
or without the ``MIT``/``CAL``/``PAR`` prefix), directly under ``root`` or
under its only subfolder. There is no official split file; the standard
protocol draws ``train_per_class`` (100) training images per class at random
and tests on the rest. The rule here, reproducible in any language: in each
class, rank the files by ``sha256(f"{split_seed}/{class}/{file name}")`` (hex
digest, ascending) and take the first ``train_per_class`` for ``train``; the
others are ``test``. Changing ``split_seed`` gives another random split (the
papers average over several); a file's membership does not depend on the
other files' names.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torchvision import tv_tensors

from segbench.data.builtin import ARCHIVES, MIT67_CLASSES, OFFICIAL_COUNTS, SCENE15_CLASSES
from segbench.data.checks import Problem, error, warning
from segbench.data.files import (
    FileDataset,
    FileProblem,
    check_image,
    check_inside,
    file_digest,
    need_root,
    read_lines,
    read_rgb,
    sizes_digest,
)
from segbench.errors import ConfigError, DataError

__all__ = ["MIT67", "Scene15", "SceneDataset", "scene15_split"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".pgm", ".tif", ".tiff")
MIT67_LISTS = {"train": "TrainImages.txt", "test": "TestImages.txt"}


@dataclass
class _Record:
    id: str  # "<class>/<file stem>"
    path: Path
    label: int  # -1: unknown class (an error)
    folder: str


class SceneDataset(FileDataset):
    """A list of (image, class) pairs; subclasses build ``records``."""

    background = None

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[self._index(index)]
        if record.label < 0:
            raise FileProblem(record.path, f"unknown class '{record.folder}'")
        image = read_rgb(record.path)
        labels = torch.zeros(len(self.classes), dtype=torch.float32)
        labels[record.label] = 1.0
        height, width = (int(v) for v in image.shape[-2:])
        meta = {"id": record.id, "path": str(record.path), "orig_size": (height, width)}
        return {"image": tv_tensors.Image(image), "target": {"labels": labels}, "meta": meta}

    def _check_record(self, index: int, full: bool) -> list[Problem]:
        record = self.records[index]
        if record.label < 0:
            return [error(record.path, f"unknown class '{record.folder}'; classes: {', '.join(self.classes)}",
                          index)]
        problems, _ = check_image(record.path, index, full)
        return problems

    def _fingerprint_files(self, digest: Any) -> None:
        digest.update(" ".join(str(r.label) for r in self.records).encode())
        sizes_digest((r.path for r in self.records), digest)


class MIT67(SceneDataset):
    """``mit67``: the official ``TrainImages.txt`` / ``TestImages.txt`` split of MIT Indoor 67."""

    name = "mit67"
    classes = MIT67_CLASSES

    def __init__(self, root: Any, split: str = "test", *, classes: Sequence[str] = MIT67_CLASSES,
                 download: bool = False, skip_bad: bool = False, strict: bool = False) -> None:
        super().__init__(root, split, skip_bad=skip_bad, strict=strict, download=download)
        if split not in MIT67_LISTS:
            raise ConfigError(f"dataset 'mit67' has no split '{split}'; splits: train, test")
        self.classes = tuple(classes)
        self.hint = ("get indoorCVPR_09.tar, TrainImages.txt and TestImages.txt from "
                     "https://web.mit.edu/torralba/www/indoor.html into the root (see docs/datasets.md), "
                     "or pass --set download=true")
        if download:
            self._download()
        base = need_root(self.name, root, self.hint)
        folder = next((c for c in (base, base / "indoorCVPR_09") if (c / "Images").is_dir()), None)
        if folder is None:
            raise DataError(f"{base}: not a MIT67 layout (missing Images/); {self.hint}")
        self.folder = folder
        listing = next((d / MIT67_LISTS[split] for d in (folder, base) if (d / MIT67_LISTS[split]).is_file()),
                       folder / MIT67_LISTS[split])
        self.split_source = listing
        # whole lines: a few official names have spaces ("mall/shopping mall.jpg")
        entries = read_lines(listing, f"the MIT67 {split} list", first_token=False)
        check_inside(entries, folder / "Images", listing, "entry")
        index = {c: i for i, c in enumerate(self.classes)}
        for entry in entries:
            entry = entry.replace("\\", "/")
            cls, _, _ = entry.partition("/")
            stem = entry.rsplit(".", 1)[0]
            self.records.append(_Record(stem, folder / "Images" / entry, index.get(cls, -1), cls))
        self.listed = len(self.records)
        self.official = OFFICIAL_COUNTS["mit67"][split] if self.classes == MIT67_CLASSES else None
        if skip_bad:
            self._drop_bad()

    def _fingerprint_files(self, digest: Any) -> None:
        file_digest(self.split_source, digest)
        super()._fingerprint_files(digest)

    def _download(self) -> None:
        from torchvision.datasets.utils import download_and_extract_archive, download_url

        if self.root is None:
            raise DataError("dataset 'mit67': download needs a root (--root DIR or SEGBENCH_DATA)")
        self.root.mkdir(parents=True, exist_ok=True)
        images, train, test = ARCHIVES["mit67"]
        if not (self.root / "Images").is_dir():
            download_and_extract_archive(images["url"], str(self.root), remove_finished=True)
        for item in (train, test):
            name = item["url"].rsplit("/", 1)[1]
            if not (self.root / name).is_file():
                download_url(item["url"], str(self.root), filename=name)


class Scene15(SceneDataset):
    """``scene15``: 15-Scene with ``train_per_class`` training images per class by the seeded hash rule."""

    name = "scene15"
    classes = SCENE15_CLASSES

    def __init__(self, root: Any, split: str = "test", *, split_seed: int = 0, train_per_class: int = 100,
                 download: bool = False, skip_bad: bool = False, strict: bool = False) -> None:
        super().__init__(root, split, skip_bad=skip_bad, strict=strict, download=download)
        if split not in ("train", "test"):
            raise ConfigError(f"dataset 'scene15' has no split '{split}'; splits: train, test")
        for key, value in (("split_seed", split_seed), ("train_per_class", train_per_class)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "train_per_class" else 0):
                raise ConfigError(f"dataset 'scene15': option {key} must be an integer "
                                  f">= {1 if key == 'train_per_class' else 0}, got {value!r}")
        self.split_seed, self.train_per_class = split_seed, train_per_class
        self.hint = f"get the 15-Scene images from {ARCHIVES['scene15'][0]['url']} (see docs/datasets.md)"
        if download:
            raise DataError(f"dataset 'scene15' cannot be downloaded automatically; {self.hint}")
        base = need_root(self.name, root, self.hint)
        self.folder, folders = _scene15_folders(base)
        if not folders:
            raise DataError(f"{base}: not a 15-Scene layout (no class folders such as bedroom/ or MITcoast/); "
                            f"{self.hint}")
        self.split_source = self.folder
        self._layout: list[Problem] = []
        missing = [c for c in self.classes if c not in folders]
        if missing:
            self._layout.append(error(self.folder, f"missing class folder(s): {', '.join(missing)}"))
        for label, cls in enumerate(self.classes):
            if cls not in folders:
                continue
            directory = folders[cls]
            files = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            train = set(scene15_split(cls, files, split_seed, train_per_class))
            if len(files) <= train_per_class:
                self._layout.append(warning(directory, f"class '{cls}' has {len(files)} images: none left for test"))
            for name in files:
                if (name in train) == (split == "train"):
                    self.records.append(_Record(f"{cls}/{Path(name).stem}", directory / name, label, directory.name))
        self.listed = len(self.records)
        self.official = OFFICIAL_COUNTS["scene15"][split] if train_per_class == 100 else None
        if skip_bad:
            self._drop_bad()

    def _split_problems(self) -> list[Problem]:
        return list(self._layout) + super()._split_problems()

    def _identity(self) -> dict[str, Any]:
        return {"split_seed": self.split_seed, "train_per_class": self.train_per_class}


def scene15_split(cls: str, files: Sequence[str], seed: int, per_class: int) -> list[str]:
    """The training files of class ``cls``: the ``per_class`` smallest ``sha256(f"{seed}/{cls}/{name}")``."""
    ranked = sorted(files, key=lambda name: hashlib.sha256(f"{seed}/{cls}/{name}".encode()).hexdigest())
    return ranked[:per_class]


def _canonical(folder: str) -> str | None:
    """``MITcoast`` -> ``coast``, ``CALsuburb`` -> ``suburb``, ``Living Room`` -> ``livingroom``; None if unknown."""
    name = re.sub(r"[^a-z]", "", folder.lower())
    for prefix in ("", "mit", "cal", "par"):
        if name.startswith(prefix) and name[len(prefix):] in SCENE15_CLASSES:
            return name[len(prefix):]
    return None


def _scene15_folders(base: Path) -> tuple[Path, dict[str, Path]]:
    """The folder holding the class folders (``base`` or its only subfolder) and class -> folder."""
    subfolders = sorted(d for d in base.iterdir() if d.is_dir())
    for folder in [base] + subfolders[:1] if len(subfolders) == 1 else [base]:
        found: dict[str, Path] = {}
        for d in sorted(p for p in folder.iterdir() if p.is_dir()):
            cls = _canonical(d.name)
            if cls is not None and cls not in found:
                found[cls] = d
        if found:
            return folder, found
    return base, {}
