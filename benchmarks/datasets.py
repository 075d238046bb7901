"""Dataset loading speed and the COCO index's memory, side by side with their anchors (not a test).

1. Throughput, images per second through a ``torch.utils.data.DataLoader``
   (0 and 2 workers, batches of 8, the engine's collate), of
   - a VOC-layout folder: the 101 genuine VOC2012 JPEGs and XMLs of
     ../shared/data with a class mask per image (the 3 genuine ones, box-shaped
     masks with a void border for the others) and its 1 object mask;
   - a COCO-layout folder: the 37 genuine val2017 images and annotations;
   - a ``folder`` dataset (images/ + masks/ + classes.txt) of the same 101
     VOC images and class masks, whose labels are derived from the masks;
   against a bare loop that only decodes the same JPEGs with the same decoder
   (``segbench.data.files.read_rgb``). Goal: at least 0.8 of the bare loop.
   A second anchor decodes the same files a sample with masks must decode
   (the JPEG and the label PNGs for VOC; the JPEG and every instance's
   segmentation through pycocotools for COCO), so that its ratio is
   segbench's own overhead.
   Each dataset is timed with every target (the default), with ``labels`` and
   ``mask`` (what a pixel-supervised method trains on) and with ``labels``
   only (an image-supervised method), see ``FileDataset.select_targets``.
2. Peak memory of building the ``coco`` dataset object from a generated
   5,000-image, 36,000-annotation instances file, against pycocotools'
   ``COCO()`` on the same file, each in a fresh process (peak RSS above the
   RSS before the build, after the imports; Linux ``clear_refs`` resets the
   peak). Goal: at most 1.5x.

Run: ``python benchmarks/datasets.py [--passes N] [--only VOC,COCO,folder] [--no-memory]`` (about two minutes
on 2 cores; ``--only VOC,folder --no-memory`` took 64 s on the busy machine of 2026-12-08).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("SEGBENCH_SHARED_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
VOC12 = SHARED / "voc2012" / "VOCdevkit" / "VOC2012"
COCO_ROOT = SHARED / "coco"


# -- throughput ---------------------------------------------------------------------------------------------
def make_voc(out: Path) -> Path:
    """A VOC2012 layout of the 101 genuine images: real masks where they exist, box masks elsewhere."""
    from PIL import Image

    from segbench.data.builtin import VOC_CLASSES
    from segbench.data.export import voc_palette

    voc = out / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    ids = sorted(p.stem for p in (VOC12 / "JPEGImages").glob("*.jpg"))
    for image_id in ids:
        for sub, ext in (("JPEGImages", "jpg"), ("Annotations", "xml")):
            shutil.copy(VOC12 / sub / f"{image_id}.{ext}", voc / sub / f"{image_id}.{ext}")
        for sub in ("SegmentationClass", "SegmentationObject"):
            if (VOC12 / sub / f"{image_id}.png").exists():
                shutil.copy(VOC12 / sub / f"{image_id}.png", voc / sub / f"{image_id}.png")
        if not (voc / "SegmentationClass" / f"{image_id}.png").exists():
            width, height = Image.open(voc / "JPEGImages" / f"{image_id}.jpg").size
            mask = np.zeros((height, width), dtype=np.uint8)
            for obj in ET.parse(voc / "Annotations" / f"{image_id}.xml").getroot().findall("object"):
                box = [int(float(obj.findtext(f"bndbox/{k}"))) for k in ("xmin", "ymin", "xmax", "ymax")]
                mask[box[1] - 1:box[3], box[0] - 1:box[2]] = 255
                mask[box[1] + 2:box[3] - 3, box[0] + 2:box[2] - 3] = VOC_CLASSES.index(obj.findtext("name"))
            png = Image.fromarray(mask, mode="P")
            png.putpalette(voc_palette())
            png.save(voc / "SegmentationClass" / f"{image_id}.png")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    return out


def make_folder(voc: Path, out: Path) -> Path:
    """A ``folder`` dataset of a VOC layout's images and class masks (links), with VOC's classes in classes.txt."""
    from segbench.data.builtin import VOC_CLASSES

    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True)
    for image in sorted((voc / "JPEGImages").glob("*.jpg")):
        (out / "images" / image.name).symlink_to(image)
        (out / "masks" / f"{image.stem}.png").symlink_to(voc / "SegmentationClass" / f"{image.stem}.png")
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in VOC_CLASSES))
    (out / "splits").mkdir()
    (out / "splits" / "train.txt").write_text("".join(f"{p.stem}\n" for p in sorted((out / "images").iterdir())))
    return out


class BareJPEGs:
    """Decodes the JPEGs, nothing else: the anchor."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from segbench.data.files import read_rgb

        return read_rgb(self.paths[index])


class BareVOCFiles(BareJPEGs):
    """The second anchor for VOC: decodes the JPEG and the label PNGs a sample carries, nothing else."""

    def __init__(self, paths: list[str], pngs: list[list[str]]) -> None:
        super().__init__(paths)
        self.pngs = pngs

    def __getitem__(self, index: int):
        import torch

        from segbench.data.files import read_index_png

        return [super().__getitem__(index)] + [torch.from_numpy(read_index_png(p)) for p in self.pngs[index]]


class BareCOCOFiles(BareJPEGs):
    """The second anchor for COCO: decodes the JPEG and every instance's segmentation with pycocotools."""

    def __init__(self, paths: list[str], coco, image_ids: list[int]) -> None:
        super().__init__(paths)
        self.coco, self.image_ids = coco, image_ids

    def __getitem__(self, index: int):
        import torch
        from pycocotools import mask as mask_utils

        anns = self.coco.imgToAnns.get(self.image_ids[index], [])
        masks = mask_utils.decode([self.coco.annToRLE(a) for a in anns]) if anns else np.zeros((0, 0, 0), np.uint8)
        return [super().__getitem__(index), torch.from_numpy(masks)]


def _first(batch):
    return batch


def images_per_second(dataset, workers: int, passes: int) -> float:
    """Best of ``passes`` full passes over ``dataset``, images per second."""
    import torch

    from segbench.engine.data import collate

    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=False, num_workers=workers,
                                         collate_fn=_first if isinstance(dataset, BareJPEGs) else collate,
                                         persistent_workers=workers > 0, worker_init_fn=_one_thread)
    best = 0.0
    for _ in range(passes + 1):  # the first pass warms the page cache and starts the workers
        start = time.perf_counter()
        count = sum(len(batch["images"] if isinstance(batch, dict) else batch) for batch in loader)
        best = max(best, count / (time.perf_counter() - start))
    return best


def _one_thread(_worker: int) -> None:
    import torch

    torch.set_num_threads(1)


TARGETS = ((None, "all targets"), (frozenset({"labels", "mask"}), "labels + mask"),
           (frozenset({"labels"}), "labels only"))


def throughput(passes: int, only: tuple[str, ...] = ("VOC", "COCO", "folder")) -> list[tuple[str, int, float, float,
                                                                                          float]]:
    """Rows ``(dataset and targets, workers, segbench, bare JPEG, bare decode of the same files)`` in images/s."""
    from segbench.data.coco import COCO
    from segbench.data.folder import FolderDataset
    from segbench.data.voc import VOC2012

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        voc = VOC2012(make_voc(Path(tmp) / "voc"), "train")
        folder = FolderDataset(make_folder(voc.voc_dir, Path(tmp) / "folder"), "train")
        coco = COCO(COCO_ROOT, "val")
        voc_jpegs = [str(r.image) for r in voc.records]
        folder_jpegs = [str(r.image) for r in folder.records]
        coco_jpegs = [str(coco.image_dir / coco.coco.imgs[i]["file_name"]) for i in coco.image_ids]
        coco_files = BareCOCOFiles(coco_jpegs, coco.coco, list(coco.image_ids))  # the same for both mask sets
        folder_files = BareVOCFiles(folder_jpegs, [[str(r.mask)] for r in folder.records])  # JPEG + PNG
        files = {  # the second anchor for each target set: what a sample with those targets must decode
            ("VOC", None): BareVOCFiles(voc_jpegs, [[str(p) for p in (r.mask, r.objects) if p] for r in voc.records]),
            ("VOC", TARGETS[1][0]): BareVOCFiles(voc_jpegs, [[str(r.mask)] for r in voc.records]),
            ("COCO", None): coco_files,
            ("COCO", TARGETS[1][0]): coco_files,
            ("folder", None): folder_files,
            ("folder", TARGETS[1][0]): folder_files,
        }
        sets = (("VOC", voc, voc_jpegs), ("COCO", coco, coco_jpegs), ("folder", folder, folder_jpegs))
        for name, dataset, jpegs in (s for s in sets if s[0] in only):
            for workers in (0, 2):
                jpeg_anchor = BareJPEGs(jpegs)
                speed = {}  # anchor -> images/s, each anchor timed once per worker count
                for keys, label in TARGETS:
                    dataset.select_targets(keys)
                    ours = images_per_second(dataset, workers, passes)
                    for anchor in {jpeg_anchor, files.get((name, keys), jpeg_anchor)} - speed.keys():
                        speed[anchor] = images_per_second(anchor, workers, passes)
                    same = speed[files.get((name, keys), jpeg_anchor)]
                    rows.append((f"{name} ({len(dataset)} images), {label}", workers, ours, speed[jpeg_anchor], same))
                dataset.select_targets(None)
    return rows


# -- COCO index memory ----------------------------------------------------------------------------------------
def make_instances(path: Path, images: int = 5000, annotations: int = 36000, seed: int = 0) -> None:
    """A COCO 2017 instances file: 640x480 images, polygons of 8-40 points, 1% crowd (uncompressed RLE)."""
    from segbench.data.builtin import COCO_CATEGORIES

    rng = np.random.default_rng(seed)
    owners = np.sort(rng.integers(1, images + 1, annotations))
    anns = []
    for k, image_id in enumerate(owners.tolist(), start=1):
        cx, cy, r = rng.uniform(40, 600), rng.uniform(40, 440), rng.uniform(5, 40)
        if rng.random() < 0.01:
            counts = rng.integers(1, 400, 2 * int(rng.integers(20, 200))).tolist()
            total = 480 * 640
            counts.append(max(0, total - sum(counts)))
            segmentation = {"size": [480, 640], "counts": counts}
            crowd = 1
        else:
            n = int(rng.integers(8, 41))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = r * rng.uniform(0.6, 1.0, n)
            points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).round(2)
            segmentation = [points.ravel().tolist()]
            crowd = 0
        anns.append({"id": k, "image_id": image_id, "category_id": COCO_CATEGORIES[k % 80][0],
                     "segmentation": segmentation, "area": float(np.pi * r * r), "iscrowd": crowd,
                     "bbox": [round(cx - r, 2), round(cy - r, 2), round(2 * r, 2), round(2 * r, 2)]})
    doc = {"info": {"description": "generated by benchmarks/datasets.py"}, "licenses": [],
           "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": 480, "width": 640}
                      for i in range(1, images + 1)],
           "annotations": anns,
           "categories": [{"id": i, "name": n, "supercategory": "thing"} for i, n in COCO_CATEGORIES]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


_MEMORY_CHILD = r"""
import sys, tracemalloc
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
which, root = sys.argv[1], sys.argv[2]
from pycocotools.coco import COCO as PyCOCO
import segbench.data.coco
open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS to the current RSS
before = rss("VmRSS:")
tracemalloc.start()
if which == "pycocotools":
    obj = PyCOCO(root + "/annotations/instances_val2017.json")
else:
    obj = segbench.data.coco.COCO(root, "val")
traced = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(rss("VmHWM:") - before, rss("VmRSS:") - before, traced)
"""


def coco_memory() -> dict[str, tuple[int, int, int]]:
    """{builder: (peak RSS over the start, RSS kept, tracemalloc peak)} in bytes, each in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        make_instances(Path(tmp) / "annotations" / "instances_val2017.json")
        (Path(tmp) / "val2017").mkdir()
        out = {}
        for which in ("pycocotools", "segbench"):
            result = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, which, tmp], capture_output=True,
                                    text=True, check=True)
            out[which] = tuple(int(v) for v in result.stdout.split()[-3:])
        out["file"] = (os.path.getsize(Path(tmp) / "annotations" / "instances_val2017.json"), 0, 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3, help="timed passes per configuration (best kept)")
    parser.add_argument("--only", default="VOC,COCO,folder", help="datasets to time (comma-separated)")
    parser.add_argument("--no-memory", action="store_true", help="skip the COCO index memory measurement")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print("Loading throughput (images/s through a DataLoader, best of %d passes)" % args.passes)
    print(f"{'dataset':<40} {'workers':>7} {'ours':>7} {'bare JPEG':>10} {'ratio':>6} {'bare files':>11} {'ratio':>6}")
    for name, workers, ours, bare, same in throughput(args.passes, tuple(args.only.split(","))):
        print(f"{name:<40} {workers:>7} {ours:>7.1f} {bare:>10.1f} {ours / bare:>6.2f} {same:>11.1f} {ours / same:>6.2f}")
    if args.no_memory:
        return
    memory = coco_memory()
    mib = 1 << 20
    print(f"\nCOCO index, 5,000 images / 36,000 annotations ({memory['file'][0] / mib:.1f} MiB of JSON)")
    print(f"{'builder':<14} {'peak RSS':>10} {'RSS kept':>10} {'tracemalloc peak':>17}")
    for which in ("pycocotools", "segbench"):
        peak, kept, traced = memory[which]
        print(f"{which:<14} {peak / mib:>8.1f} M {kept / mib:>8.1f} M {traced / mib:>15.1f} M")
    print(f"ratio (peak RSS): {memory['segbench'][0] / memory['pycocotools'][0]:.2f}  "
          f"(tracemalloc: {memory['segbench'][2] / memory['pycocotools'][2]:.2f}); goal <= 1.5")


if __name__ == "__main__":
    main()
