"""Evaluation at real sizes: post-processing + metrics per image against the model's own forward (not a test).

What ``evaluate()`` does for an image-supervised method after the forward, on COCO-sized inputs
(81 classes):
- the 37 genuine val2017 images of ../shared/data/coco (their class masks, boxes and labels);
- a generated set (``--generated``, 500 by default) of 480 x 640 images: one to three box-shaped
  objects with a 3-pixel void border, their boxes and labels;
each with the outputs of a stride-32 network, as WELDON's at the image's size: class score maps
``81 x ceil(H/32) x ceil(W/32)`` (seeded random values) and image scores that keep the image's
classes and now and then another.

Per image: the prediction resized to the image's size, the class-map rule (``cam_mask``), then
every metric a WELDON run on COCO gets (accuracy, cls_map, loc_map, loc_map@centre, miou,
trimap), updated per batch of 8.
- ``before``: the code before issue 13's item 5, copied below: all 81 maps resized, the dense
  rule (min-max normalisation, ``where`` and ``zeros_like`` over all 81 maps at full size, the
  argmax over them), ``miou`` image by image;
- ``after``: segbench's own path (``segbench.engine.evaluate.finish_prediction`` with the run's
  chain): the rule over the kept classes only, ``miou`` over the batch in one pass;
- ``after, no score-map metric``: the same without loc_map, where the engine resizes the kept
  classes' maps only.
The anchor: the forward of WELDON's ``paper`` model (timm resnet101, random weights, k=15) on a
1 x 3 x 480 x 640 input, median of ``--forward-runs``, same threads, same process.
Goal: post-processing + all metrics <= 0.25x the forward; every metric value identical before
and after.

Run: ``python benchmarks/eval_cost.py [--quick] [--generated 500] [--threads 0]`` (14 minutes on
the shared 2-core machine, most of it the ``before`` column; ``--quick``, 8 genuine and 40
generated images: about 1.5 minutes).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

import segbench
from segbench.engine.data import targets_to
from segbench.engine.evaluate import finish_prediction, needs_full_score_maps
from segbench.metrics.average_precision import get_tensor
from segbench.metrics.confusion import MeanIoU
from segbench.postprocess.cam import CamMask

SHARED = Path(os.environ.get("SEGBENCH_SHARED_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
COCO_ROOT = SHARED / "coco"
C, STRIDE, BATCH = 81, 32, 8
GENERATED_SIZE = (480, 640)


# -- the inputs ---------------------------------------------------------------------------------------------
def real_targets(limit: int) -> list[tuple[tuple[int, int], dict]]:
    """(original size, target) of the genuine COCO val2017 images, as the engine hands them to metrics."""
    dataset = segbench.create_dataset("coco", "val", root=COCO_ROOT)
    dataset.select_targets({"labels", "mask", "boxes", "classes"})
    out = []
    for i in range(min(limit, len(dataset))):
        sample = dataset[i]
        target = {k: v for k, v in sample["target"].items() if k in ("labels", "mask", "boxes", "classes")}
        out.append((tuple(sample["meta"]["orig_size"]), targets_to([target], "cpu")[0]))
    return out


def generated_target(index: int) -> tuple[tuple[int, int], dict]:
    """A 480 x 640 image with one to three box-shaped objects (3-pixel void border), its boxes and labels."""
    g = torch.Generator().manual_seed(index)
    height, width = GENERATED_SIZE
    mask = torch.zeros(GENERATED_SIZE, dtype=torch.int64)
    boxes, classes = [], []
    for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
        cls = int(torch.randint(1, C, (1,), generator=g))
        h = int(torch.randint(40, height // 2, (1,), generator=g))
        w = int(torch.randint(40, width // 2, (1,), generator=g))
        y, x = int(torch.randint(0, height - h, (1,), generator=g)), int(torch.randint(0, width - w, (1,), generator=g))
        mask[y:y + h, x:x + w] = 255
        mask[y + 3:y + h - 3, x + 3:x + w - 3] = cls
        boxes.append([x, y, x + w, y + h])
        classes.append(cls)
    labels = torch.zeros(C)
    labels[classes] = 1.0
    target = {"labels": labels, "mask": mask, "boxes": torch.tensor(boxes, dtype=torch.float32),
              "classes": torch.tensor(classes)}
    return GENERATED_SIZE, target


def network_output(size: tuple[int, int], labels: torch.Tensor, seed: int) -> dict:
    """Stride-32 class maps and image scores: the labelled classes score about +1, the others about -2."""
    g = torch.Generator().manual_seed(10_000 + seed)
    h, w = -(-size[0] // STRIDE), -(-size[1] // STRIDE)
    return {"scores": torch.randn(C, generator=g) * 0.6 - 2.0 + 3.0 * labels,
            "score_maps": torch.randn(C, h, w, generator=g)}


def metric_objects(score_map_metrics: bool = True, before: bool = False) -> dict[str, Any]:
    """The metrics a WELDON run on COCO gets (``miou`` as it was with ``before``)."""
    fill = {"num_classes": C, "background": 0}
    metrics = {"accuracy": segbench.create_metric("accuracy", single_label=False, **fill),
               "cls_map": segbench.create_metric("cls_map", **fill)}
    if score_map_metrics:
        metrics["loc_map"] = segbench.create_metric("loc_map", **fill)
        metrics["loc_map@centre"] = segbench.create_metric("loc_map", point="centre", **fill)
    metrics["miou"] = BeforeMeanIoU(num_classes=C) if before else segbench.create_metric("miou", num_classes=C)
    metrics["trimap"] = segbench.create_metric("trimap", num_classes=C)
    return metrics


# -- the code before (issue 13, item 5), kept as the "before" column ----------------------------------------
def before_resize(prediction: dict, size: tuple[int, int]) -> dict:
    """Every class's score map resized to the image's size (the engine's ``resize_prediction`` then)."""
    out = {}
    for key, value in prediction.items():
        value = value.float()
        if key == "score_maps" and tuple(value.shape[-2:]) != tuple(size):
            value = F.interpolate(value[None], size=size, mode="bilinear", align_corners=False)[0]
        out[key] = value.detach().float().cpu()
    return out


def before_cam_mask(prediction: dict, background: int = 0, bg_threshold: float = 0.5, score_threshold: float = 0.0,
                    classes: str = "predicted") -> dict:
    """The dense class-map rule: every class normalised, masked and argmaxed at full size."""
    maps = prediction["score_maps"].float()
    scores = prediction.get("scores")
    c = maps.shape[0]
    foreground = torch.ones(c, dtype=torch.bool)
    foreground[background] = False
    if classes == "all" or scores is None:
        keep = foreground.clone()
    else:
        scores = scores.float().flatten()
        keep = foreground & (scores >= score_threshold)
        if not keep.any() and foreground.any():
            keep[int(scores.masked_fill(~foreground, float("-inf")).argmax())] = True
    flat = maps.flatten(1)
    low = flat.min(1).values[:, None, None]
    span = flat.max(1).values[:, None, None] - low
    normalised = torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))
    out = torch.where(keep[:, None, None], normalised, torch.zeros_like(maps))
    out[background] = float(bg_threshold)
    return {**prediction, "mask": out.argmax(0), "mask_scores": out}


class BeforeMeanIoU(MeanIoU):
    """``miou`` updated image by image: aminmax twice, an add and a bincount per image, each over all its pixels."""

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        c, ignore = self.num_classes, self.ignore_index
        for p, t in zip(predictions, targets):
            pred = get_tensor(p, "mask", "prediction", self.name).reshape(-1).to(torch.int64)
            gt = get_tensor(t, "mask", "target", self.name).as_subclass(torch.Tensor).reshape(-1).to(torch.int64)
            p_low, p_high = (int(v) for v in torch.aminmax(pred))
            g_low, g_high = (int(v) for v in torch.aminmax(gt))
            assert p_low >= 0 and p_high < c and g_low >= 0 and (g_high < c or g_high == ignore)
            if self._buffer is None or self._buffer.numel() < pred.numel():
                self._buffer = torch.empty(pred.numel(), dtype=torch.int64)
            counts = torch.bincount(torch.add(pred, gt, alpha=c, out=self._buffer[: pred.numel()]), minlength=c * c)
            assert not (counts.numel() > c * c and counts[c * c:ignore * c].any())
            self.confmat += counts[: c * c].view(c, c)


# -- timing -------------------------------------------------------------------------------------------------
def forward_seconds(runs: int) -> float:
    """Median seconds of WELDON's ``paper`` model forward (resnet101, k=15) on 1 x 3 x 480 x 640, after a warm-up."""
    model = segbench.create_method("weldon", C, backbone="resnet101", out_index=-1, pretrained=False,
                                   kmax=15.0, kmin=15.0, alpha=1.0).eval()
    x = torch.randn(1, 3, *GENERATED_SIZE, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        for i in range(runs + 1):
            start = time.perf_counter()
            model.predict(x)
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def evaluate_cost(items: list[tuple[tuple[int, int], dict]], finish: Callable[[dict, tuple[int, int]], dict],
                  metrics: dict[str, Any]) -> tuple[dict[str, float], dict]:
    """Seconds per stage over ``items`` (``finish``: resize + cam_mask per image; metrics per batch), and the values."""
    stages = {"resize + cam_mask": 0.0, **{name: 0.0 for name in metrics}}
    with torch.inference_mode():
        for start in range(0, len(items), BATCH):
            chunk = items[start:start + BATCH]
            outputs = [network_output(size, target["labels"], start + k) for k, (size, target) in enumerate(chunk)]
            predictions = []
            for (size, _), output in zip(chunk, outputs):
                begin = time.perf_counter()
                predictions.append(finish(output, size))
                stages["resize + cam_mask"] += time.perf_counter() - begin
            targets = [target for _, target in chunk]
            for name, metric in metrics.items():
                begin = time.perf_counter()
                metric.update(predictions, targets)
                stages[name] += time.perf_counter() - begin
    values = {}
    for name, metric in metrics.items():
        values[name] = (metric.compute(), metric.per_class() if hasattr(metric, "per_class") else None)
    return stages, values


def same_values(a: dict, b: dict) -> bool:
    """Every metric in both: equal values (NaN equal to NaN) and per-class lists."""
    def equal(x, y):
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(equal(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(equal(u, v) for u, v in zip(x, y))
        if isinstance(x, float) and math.isnan(x):
            return isinstance(y, float) and math.isnan(y)
        return x == y

    return all(equal(a[name], b[name]) for name in a.keys() & b.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 genuine and 40 generated images")
    parser.add_argument("--generated", type=int, default=500, help="generated 480 x 640 images")
    parser.add_argument("--forward-runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    real_count, generated = (8, 40) if args.quick else (37, args.generated)
    chain = [CamMask(num_classes=C, background=0)]

    def before(output, size):
        return before_cam_mask(before_resize(output, size))

    def after(metrics):
        full_maps = needs_full_score_maps(metrics.values(), chain)
        return lambda output, size: finish_prediction(output, None, size, size, chain, full_maps)

    forward = forward_seconds(args.forward_runs)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; forward of WELDON paper (resnet101, "
          f"1x3x480x640): {forward * 1e3:.0f} ms (median of {args.forward_runs})")
    sets = [(f"COCO val2017, {real_count} genuine", real_targets(real_count)),
            (f"generated 480x640, {generated}", [generated_target(i) for i in range(generated)])]
    for label, items in sets:
        t_before, v_before = evaluate_cost(items, before, metric_objects(before=True))
        metrics = metric_objects()
        t_after, v_after = evaluate_cost(items, after(metrics), metrics)
        metrics = metric_objects(score_map_metrics=False)
        t_lazy, v_lazy = evaluate_cost(items, after(metrics), metrics)
        n = len(items)
        print(f"\n{label} images, ms per image (x forward)")
        print(f"{'stage':22} {'before':>16} {'after':>16} {'after, no loc_map':>18}")
        for stage in t_before:
            lazy = f"{t_lazy[stage] / n * 1e3:9.1f}" if stage in t_lazy else ""
            before_ms, after_ms = t_before[stage] / n * 1e3, t_after[stage] / n * 1e3
            print(f"{stage:22} {before_ms:9.1f}        {after_ms:9.1f}        {lazy:>11}")
        totals = [sum(t.values()) / n for t in (t_before, t_after, t_lazy)]
        print(f"{'total':22} " + "  ".join(f"{t * 1e3:7.1f} ({t / forward:.3f}x)" for t in totals))
        print(f"same values before / after: {'yes' if same_values(v_before, v_after) else 'NO'}; "
              f"after / no loc_map: {'yes' if same_values(v_after, v_lazy) else 'NO'}")


if __name__ == "__main__":
    main()
