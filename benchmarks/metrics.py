"""Speed of the built-in metrics beside their references, on the same tensors in one run.

    python benchmarks/metrics.py [--repeat 5] [--threads 1] [--miou-threads 1,2]

miou vs torchmetrics MulticlassJaccardIndex (at 1 and 2 threads in turn,
``--miou-threads``; the confusion matrices must be equal), cls_map vs
scikit-learn average_precision_score, loc_map alone. Times are the best of
``--repeat`` runs, on one CPU thread by default (``--threads 0`` keeps
torch's default): on a small shared machine multi-threaded timings swing by
10x. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import segbench


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_miou(repeat: int, threads: tuple[int, ...] = (1, 2)) -> list[tuple]:
    """miou update+compute against torchmetrics, at each thread count in turn; the confusion matrices must be equal."""
    from torchmetrics.classification import MulticlassJaccardIndex

    rows = []
    for c, shape, label in ((21, (8, 512, 512), "VOC-sized"), (81, (8, 480, 640), "COCO-sized")):
        g = torch.Generator().manual_seed(c)
        gts = torch.randint(0, c, shape, generator=g)
        preds = torch.where(torch.rand(gts.shape, generator=g) < 0.7, gts, torch.randint(0, c, gts.shape, generator=g))
        gts[torch.rand(gts.shape, generator=g) < 0.05] = 255
        pred_dicts = [{"mask": p} for p in preds]
        target_dicts = [{"mask": t} for t in gts]

        def ours():
            m = segbench.create_metric("miou", num_classes=c)
            m.update(pred_dicts, target_dicts)
            m.compute()
            m.per_class()
            return m.confmat

        def reference():
            m = MulticlassJaccardIndex(num_classes=c, ignore_index=255, average="none", validate_args=False)
            m.update(preds, gts)
            m.compute()
            return m.confmat

        before = torch.get_num_threads()
        for n in threads:
            torch.set_num_threads(n)
            t_ours, cm_ours = best_time(ours, repeat)
            t_ref, cm_ref = best_time(reference, repeat)
            same = bool(torch.equal(cm_ours, cm_ref))
            case = f"miou {'x'.join(map(str, shape))}, {c} cl, void 255, {n} thr (update+compute)"
            rows.append((case, "torchmetrics", t_ours, t_ref, same))
        torch.set_num_threads(before)
    return rows


def bench_cls_map(repeat: int) -> list[tuple]:
    from sklearn.metrics import average_precision_score

    g = torch.Generator().manual_seed(1)
    n, c = 5000, 80
    scores = torch.rand((n, c), generator=g)
    scores[: n // 4] = torch.round(scores[: n // 4] * 100) / 100  # some tied scores
    labels = (torch.rand((n, c), generator=g) < 0.1).float()
    preds = [{"scores": s} for s in scores]
    targets = [{"labels": lab} for lab in labels]

    def filled(variant):
        m = segbench.create_metric("cls_map", variant=variant)
        for i in range(0, n, 50):
            m.update(preds[i:i + 50], targets[i:i + 50])
        return m

    rows = []
    t_update, metric = best_time(lambda: filled("raw"), repeat)
    t_compute, ap = best_time(lambda: torch.tensor(metric.per_class()["cls_map"], dtype=torch.float64), repeat)
    y_true, y_score = labels.numpy(), scores.numpy()
    t_ref, ap_ref = best_time(lambda: average_precision_score(y_true, y_score, average=None), repeat)
    same = bool(np.allclose(ap.numpy(), ap_ref, rtol=0, atol=1e-12))
    rows.append(("cls_map 5000x80 raw (compute)", "sklearn", t_compute, t_ref, same))
    rows.append(("cls_map 5000x80 raw (update, 100 batches)", "", t_update, None, None))
    voc12 = filled("voc12")
    t_voc12, _ = best_time(voc12.compute, repeat)
    rows.append(("cls_map 5000x80 voc12 (compute)", "sklearn raw", t_voc12, t_ref, None))
    return rows


def bench_loc_map(repeat: int) -> list[tuple]:
    g = torch.Generator().manual_seed(2)
    n, c, size = 5000, 20, 64
    preds, targets = [], []
    for _ in range(n):
        preds.append({"score_maps": torch.rand((c, size, size), generator=g)})
        k = int(torch.randint(1, 4, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * size * 0.7
        boxes = torch.cat([xy, xy + torch.rand(k, 2, generator=g) * size * 0.3], 1)
        targets.append({"boxes": boxes, "classes": torch.randint(0, c, (k,), generator=g)})

    def update():
        m = segbench.create_metric("loc_map", tolerance=4)
        for i in range(0, n, 32):
            m.update(preds[i:i + 32], targets[i:i + 32])
        return m

    t_update, metric = best_time(update, min(repeat, 2))
    t_compute, _ = best_time(metric.compute, repeat)
    return [
        (f"loc_map {n}x{c}, maps {c}x{size}x{size}, tol 4 (update, batches of 32)", "", t_update, None, None),
        (f"loc_map {n}x{c} (compute)", "", t_compute, None, None),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--miou-threads", default="1,2", help="thread counts the miou rows run at, in turn")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.repeat}")
    miou_threads = tuple(int(n) for n in args.miou_threads.split(","))
    rows = bench_miou(args.repeat, miou_threads) + bench_cls_map(args.repeat) + bench_loc_map(args.repeat)
    print(f"{'case':66} {'segbench':>10} {'reference':>22} {'speed-up':>9}  same values")
    for case, ref_name, ours, ref, same in rows:
        ref_text = f"{ref_name} {ref * 1e3:.1f} ms" if ref is not None else ""
        ratio = f"{ref / ours:.1f}x" if ref is not None else ""
        same_text = "" if same is None else ("yes" if same else "NO")
        print(f"{case:66} {ours * 1e3:8.1f} ms {ref_text:>22} {ratio:>9}  {same_text}")


if __name__ == "__main__":
    main()
