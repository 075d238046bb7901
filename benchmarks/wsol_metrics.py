"""Speed of ``max_box_acc`` and ``pxap`` beside straightforward references, same numbers asserted.

    python benchmarks/wsol_metrics.py [--box-images 1000] [--pxap-images 1000] [--threads 1]

(a) ``max_box_acc`` on single-label images of 20 classes at 224 x 224 with
smooth synthetic maps (7 x 7 random maps upsampled bilinearly), one or two
boxes per image, the default grid (``np.arange(0, 1, 0.01)``) and IoU
30/50/70, against a per-image, per-threshold loop written here
(``scipy.ndimage.label`` of each thresholded map, the components' boxes from
``find_objects``): the per-threshold counts must be identical. (b) ``pxap``
on images of 320 x 480 (one object class, void border) with maps on the bin
grid (multiples of 1/1024, ``bins=1024``) against scikit-learn's
``average_precision_score`` on the flattened pixels: the same value to 1e-6;
memory is the peak of ``tracemalloc`` (NumPy's allocations) while updating,
for a tenth of the images and for all of them. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

import segbench
from segbench.metrics.wsol_maps import normalise, quantise

CLASSES, BOX_SIZE, PX_SIZE, BATCH = 20, 224, (320, 480), 50


def box_batches(images: int, seed: int = 0):
    """Batches of (predictions, targets): one labelled class per image, 1-2 boxes of it, smooth maps."""
    g = torch.Generator().manual_seed(seed)
    for lo in range(0, images, BATCH):
        n = min(BATCH, images - lo)
        maps = F.interpolate(torch.rand(n, CLASSES, 7, 7, generator=g), size=(BOX_SIZE, BOX_SIZE), mode="bilinear",
                             align_corners=False)
        preds, targets = [], []
        for i in range(n):
            c = int(torch.randint(1, CLASSES, (1,), generator=g))
            k = int(torch.randint(1, 3, (1,), generator=g))
            xy = torch.randint(0, BOX_SIZE - 40, (k, 2), generator=g).float()
            wh = torch.randint(20, 120, (k, 2), generator=g).float()
            boxes = torch.cat([xy, (xy + wh).clamp(max=BOX_SIZE)], 1)
            labels = torch.zeros(CLASSES)
            labels[c] = 1
            preds.append({"score_maps": maps[i]})
            targets.append({"boxes": boxes, "classes": torch.full((k,), c), "labels": labels})
        yield preds, targets


def loop_box_counts(batches, interval: float = 0.01, ious=(30, 50, 70)) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward reference: every image, every threshold, label and box the components."""
    grid = np.arange(0, 1, interval)
    cuts = np.array(sorted(set(ious) | {50})) / 100
    largest = np.zeros((grid.size, cuts.size), dtype=np.int64)
    every = np.zeros((grid.size, cuts.size), dtype=np.int64)
    eight = np.ones((3, 3), dtype=bool)
    for preds, targets in batches:
        for p, t in zip(preds, targets):
            c = int(t["classes"][0])
            q = quantise(normalise(p["score_maps"][c], "reference"))
            gt = t["boxes"].numpy().astype(np.float64)
            for k, threshold in enumerate(grid):
                labels, count = ndimage.label(q > int(threshold * q.max()), eight)
                if count:
                    sizes = np.bincount(labels.ravel())[1:]
                    boxes = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop]
                                      for s in ndimage.find_objects(labels)], dtype=np.float64)
                else:
                    sizes, boxes = np.ones(1), np.array([[0.0, 0.0, 1.0, 1.0]])
                lo = np.maximum(boxes[:, None, :2], gt[None, :, :2])
                hi = np.minimum(boxes[:, None, 2:], gt[None, :, 2:])
                inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
                area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
                iou = (inter / (area(boxes)[:, None] + area(gt)[None, :] - inter)).max(1)
                largest[k] += iou[int(np.argmax(sizes))] >= cuts
                every[k] += iou.max() >= cuts
    return largest, every


def bench_boxes(images: int) -> list[tuple]:
    """Batch by batch (the maps of 5,000 images would take 4 GB): our update, then the loop, timed apart."""
    metric = segbench.create_metric("max_box_acc", num_classes=CLASSES, background=0)
    ours = loop = 0.0
    largest = every = 0
    for batch in box_batches(images):
        start = time.perf_counter()
        metric.update(*batch)
        ours += time.perf_counter() - start
        start = time.perf_counter()
        counts = loop_box_counts([batch])
        loop += time.perf_counter() - start
        largest, every = largest + counts[0], every + counts[1]
    state = metric.state_tensors()
    assert np.array_equal(state["correct_largest"].numpy(), largest)
    assert np.array_equal(state["correct_all"].numpy(), every)
    out = metric.compute()
    return [(f"max_box_acc update, {images} images x {CLASSES} classes, 224 x 224, 100 thresholds",
             f"{ours:.2f} s ({1e3 * ours / images:.1f} ms/image)", f"{loop:.2f} s ({loop / ours:.1f}x)",
             f"identical counts; max_box_acc {out['max_box_acc']:.4f}, v2 {out['max_box_acc_v2']:.4f}")]


def pxap_batches(images: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    h, w = PX_SIZE
    for lo in range(0, images, 10):
        n = min(10, images - lo)
        maps = F.interpolate(torch.rand(n, 2, 10, 15, generator=g), size=PX_SIZE, mode="bilinear",
                             align_corners=False)
        maps = torch.round(maps * 1024) / 1024
        maps[:, :, 0, 0], maps[:, :, 0, 1] = 0.0, 1.0  # min 0 and max 1: normalisation keeps the grid values
        masks = (F.interpolate(torch.rand(n, 1, 5, 8, generator=g), size=PX_SIZE, mode="bilinear")[:, 0] > 0.5).long()
        masks[:, :, :3] = 255
        yield [{"score_maps": m} for m in maps], [{"mask": m} for m in masks]


def run_pxap(images: int) -> tuple[float, float, float]:
    """Our pxap over ``images``: (seconds of update and compute, value, peak traced MiB while updating)."""
    metric = segbench.create_metric("pxap", background=0, bins=1024)
    seconds, peak = 0.0, 0.0
    for preds, targets in pxap_batches(images):
        tracemalloc.start()
        start = time.perf_counter()
        metric.update(preds, targets)
        seconds += time.perf_counter() - start
        peak = max(peak, tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
    start = time.perf_counter()
    value = metric.compute()["pxap"]
    return seconds + time.perf_counter() - start, value, peak


def run_sklearn(images: int) -> tuple[float, float, float]:
    """average_precision_score on every valid pixel: (seconds of gathering and scoring, value, peak traced MiB)."""
    from sklearn.metrics import average_precision_score

    truth, scores, seconds = [], [], 0.0
    tracemalloc.start()
    for preds, targets in pxap_batches(images):
        start = time.perf_counter()
        for p, t in zip(preds, targets):
            valid = (t["mask"] != 255).numpy()
            truth.append((t["mask"].numpy() == 1)[valid])
            scores.append(normalise(p["score_maps"][1], "sklearn")[valid])
        seconds += time.perf_counter() - start
    start = time.perf_counter()
    value = average_precision_score(np.concatenate(truth), np.concatenate(scores))
    seconds += time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, value, peak


def bench_pxap(images: int) -> list[tuple]:
    small = max(1, images // 10)
    _, _, peak_small = run_pxap(small)
    ours, value, peak = run_pxap(images)
    theirs, expected, their_peak = run_sklearn(images)
    assert abs(value - expected) < 1e-6, (value, expected)
    return [(f"pxap update+compute, {images} images of 320 x 480, bins=1024",
             f"{ours:.2f} s, peak {peak_small:.0f} MiB at {small} images, {peak:.0f} MiB at {images}",
             f"average_precision_score: {theirs:.2f} s ({theirs / ours:.1f}x), peak {their_peak:.0f} MiB",
             f"|diff| {abs(value - expected):.1e} (pxap {value:.6f})")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--box-images", type=int, default=1000)
    parser.add_argument("--pxap-images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    if args.box_images:
        rows += bench_boxes(args.box_images)
    if args.pxap_images:
        rows += bench_pxap(args.pxap_images)
    from tabulate import tabulate

    print(tabulate(rows, headers=["case", "segbench", "reference", "values"], tablefmt="github"))


if __name__ == "__main__":
    main()
