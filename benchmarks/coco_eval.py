"""COCO evaluation at COCO val scale: segbench's ``coco_ap`` beside pycocotools and faster-coco-eval.

    python benchmarks/coco_eval.py [--images 5000] [--dets 100] [--types bbox,segm] [--repeat 1]

Generates a COCO-like ground truth (``--images`` images of 480 x 640, about
7.2 polygon instances each in 80 categories, areas spread over COCO's small,
medium and large ranges) and a results file per type with ``--dets``
detections per image (jittered copies of the objects, some with the wrong
class, and random false positives; RLE masks), writes them as JSON, then
scores the same files with

* ``segbench``: :func:`segbench.metrics.coco.evaluate_files`, the code path of
  ``segbench coco-eval`` and of the ``coco_ap`` metric, default backend
  (and, when that is not ``faster``, also with ``backend="faster"``);
* ``pycocotools``: ``COCO``, ``loadRes``, ``COCOeval`` as in its README;
* ``faster-coco-eval``: its ``COCO``, ``loadRes`` and ``COCOeval_faster``.

Each evaluation runs in a fresh process: wall time from reading the files to
``summarize()`` (imports excluded; best of ``--repeat`` runs, taken
round-robin), its CPU time and the process's peak resident memory. It prints one table per type with the ratios and the
largest difference of the twelve numbers from pycocotools'. Not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 480, 640
CATEGORIES = 80
TOOLS = ("pycocotools", "faster-coco-eval", "segbench", "segbench[faster]")


# -- data ---------------------------------------------------------------------------------------
def blob(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, vertices: int = 12) -> list[float]:
    """A star-convex polygon around (cx, cy), clipped to the image: COCO's ``[x0, y0, x1, y1, ...]``."""
    angles = np.sort(rng.uniform(0, 2 * math.pi, vertices))
    radius = rng.uniform(0.7, 1.0, vertices)
    xs = np.clip(cx + rx * radius * np.cos(angles), 0, WIDTH - 1)
    ys = np.clip(cy + ry * radius * np.sin(angles), 0, HEIGHT - 1)
    return np.round(np.stack([xs, ys], 1).ravel(), 2).tolist()


def generate(images: int, dets: int, seed: int, out: Path) -> tuple[Path, dict[str, Path], int]:
    """Write ``gt.json``, ``bbox.json`` and ``segm.json`` under ``out``; returns the paths and the instance count."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    doc = {"info": {"description": "segbench coco_eval benchmark"}, "images": [], "annotations": [],
           "categories": [{"id": c, "name": f"class{c}", "supercategory": "object"} for c in range(1, CATEGORIES + 1)]}
    bbox_results, segm_results = [], []
    for image_id in range(1, images + 1):
        doc["images"].append({"id": image_id, "height": HEIGHT, "width": WIDTH, "file_name": f"{image_id:012d}.jpg"})
        count = int(np.clip(rng.poisson(7.2), 1, 40))
        objects = []
        for _ in range(count):
            scale = math.exp(rng.uniform(math.log(6), math.log(200)))  # half-sizes: small to large
            cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
            rx, ry = scale * rng.uniform(0.6, 1.4), scale * rng.uniform(0.6, 1.4)
            objects.append((cx, cy, rx, ry, int(rng.integers(1, CATEGORIES + 1))))
        polygons = [blob(rng, *o[:4]) for o in objects]
        rles = mask_utils.frPyObjects(polygons, HEIGHT, WIDTH)
        areas, boxes = mask_utils.area(rles), mask_utils.toBbox(rles)
        for (cx, cy, rx, ry, cat), poly, area, box in zip(objects, polygons, areas, boxes):
            doc["annotations"].append({
                "id": len(doc["annotations"]) + 1, "image_id": image_id, "category_id": cat,
                "segmentation": [poly], "area": float(area), "bbox": [float(v) for v in box],
                "iscrowd": int(rng.random() < 0.01),
            })
        # detections: 1-4 jittered copies per object (10% with a wrong class), random false positives
        shapes, det_polygons, det_scores = [], [], []
        for (cx, cy, rx, ry, cat), poly in zip(objects, polygons):
            for copy in range(int(rng.integers(1, 5))):
                j = rng.normal(0, 0.08 * (1 + copy), 4)  # the first copy is the closest, and scores highest
                xy = np.array(poly).reshape(-1, 2)
                xy = (xy - [cx, cy]) * np.exp(j[2:]) + [cx + j[0] * rx, cy + j[1] * ry]
                xy = np.clip(xy, 0, [WIDTH - 1, HEIGHT - 1])
                det_polygons.append(np.round(xy.ravel(), 2).tolist())
                det_scores.append(rng.beta(5, 2) / (1 + copy))
                shapes.append(int(rng.integers(1, CATEGORIES + 1)) if rng.random() < 0.1 else cat)
        while len(shapes) < dets:  # false positives
            scale = math.exp(rng.uniform(math.log(4), math.log(150)))
            det_polygons.append(blob(rng, rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), scale,
                                     scale * rng.uniform(0.5, 2)))
            det_scores.append(rng.beta(2, 5))
            shapes.append(int(rng.integers(1, CATEGORIES + 1)))
        keep = np.argsort(-np.array(det_scores), kind="stable")[:dets]  # a detector's top-scoring outputs
        rles = mask_utils.frPyObjects([det_polygons[k] for k in keep], HEIGHT, WIDTH)
        boxes = mask_utils.toBbox(rles)
        scores = np.round(np.array(det_scores)[keep], 3)  # 3 decimals: ties, as real detectors' files have
        for cat, rle, box, score in zip([shapes[k] for k in keep], rles, boxes, scores):
            common = {"image_id": image_id, "category_id": cat, "score": float(score)}
            bbox_results.append({**common, "bbox": [round(float(v), 2) for v in box]})
            segm_results.append({**common, "segmentation": {"size": [HEIGHT, WIDTH],
                                                            "counts": rle["counts"].decode("ascii")}})
    paths = {"bbox": out / "bbox.json", "segm": out / "segm.json"}
    gt = out / "gt.json"
    gt.write_text(json.dumps(doc))
    paths["bbox"].write_text(json.dumps(bbox_results))
    paths["segm"].write_text(json.dumps(segm_results))
    return gt, paths, len(doc["annotations"])


# -- one evaluation, in its own process ---------------------------------------------------------------
def worker(tool: str, iou_type: str, gt: str, res: str) -> dict:
    """Evaluate once; returns seconds, the twelve numbers and the peak RSS (MiB) of this process."""
    import contextlib
    import io

    if tool.startswith("segbench"):
        from segbench.metrics.coco import evaluate_files

        backend = "faster" if tool == "segbench[faster]" else None
        cpu, start = _cpu(), time.perf_counter()
        stats = evaluate_files(gt, res, iou_type, backend=backend)[iou_type].stats
    elif tool == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        cpu, start = _cpu(), time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(gt)
            ev = COCOeval(coco_gt, coco_gt.loadRes(res), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = ev.stats
    else:
        from faster_coco_eval import COCO, COCOeval_faster

        cpu, start = _cpu(), time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(gt)
            ev = COCOeval_faster(coco_gt, coco_gt.loadRes(res), iou_type, print_function=lambda *a: None)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = ev.stats[:12]
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "cpu": cpu, "stats": [float(v) for v in stats], "peak_mib": peak}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_worker(tool: str, iou_type: str, gt: Path, res: Path) -> dict:
    command = [sys.executable, __file__, "--worker", tool, iou_type, str(gt), str(res)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{tool} {iou_type} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--types", default="bbox,segm")
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs per tool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="keep the generated files here (default: a temporary folder)")
    parser.add_argument("--worker", nargs=4, metavar=("TOOL", "TYPE", "GT", "RES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return

    from segbench.metrics.coco import DEFAULT_BACKEND

    try:
        import faster_coco_eval
    except ImportError:
        sys.exit("this benchmark needs faster-coco-eval: pip install faster-coco-eval")
    tools = [t for t in TOOLS if not (t == "segbench[faster]" and DEFAULT_BACKEND == "faster")]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        gt, results, instances = generate(args.images, args.dets, args.seed, out)
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.0f} MiB" for p in (gt, *results.values()))
        print(f"{args.images} images, {instances} instances, {args.dets} detections per image "
              f"(generated in {time.perf_counter() - start:.0f} s: {sizes})")
        print(f"pycocotools, faster-coco-eval {faster_coco_eval.__version__}; segbench default backend "
              f"{DEFAULT_BACKEND}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        for iou_type in args.types.split(","):
            runs: dict[str, list[dict]] = {tool: [] for tool in tools}
            for _ in range(args.repeat):  # round-robin, so that the machine's load swings hit every tool
                for tool in tools:
                    runs[tool].append(run_worker(tool, iou_type, gt, results[iou_type]))
            rows = {tool: min(r, key=lambda x: x["seconds"]) for tool, r in runs.items()}
            reference = np.array(rows["pycocotools"]["stats"])
            base, faster = rows["pycocotools"]["seconds"], rows["faster-coco-eval"]["seconds"]
            print(f"\n{iou_type}: AP {reference[0]:.4f}, AP50 {reference[1]:.4f}, AR100 {reference[8]:.4f}")
            print("| tool | wall s (all runs) | speed-up vs pycocotools | vs faster-coco-eval | CPU s | peak MiB "
                  "| max diff |")
            print("|---|---|---|---|---|---|---|")
            for tool, row in rows.items():
                diff = max(float(np.abs(np.array(r["stats"]) - reference).max()) for r in runs[tool])
                every = ", ".join(f"{r['seconds']:.1f}" for r in runs[tool])
                print(f"| {tool} | {row['seconds']:.2f} ({every}) | {base / row['seconds']:.2f}x | "
                      f"{faster / row['seconds']:.2f}x | {row['cpu']:.2f} | {row['peak_mib']:.0f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
