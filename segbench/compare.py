"""``segbench compare RUN_A RUN_B``: what changed from run A to run B on the same evaluation data.

Per metric and per class, B - A from the two records; and, on request, the evaluation images where the
two runs differ most (per-image IoU of each run's label map, both models run again on the shared split),
drawn as image | ground truth | A | B rows. See ``docs/analysis.md``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segbench.errors import ConfigError

DIFF = "B - A"


@dataclass
class Comparison:
    """Two finished runs' records and their differences: ``metrics`` (metric, A, B, B - A) and ``per_class``
    (metric, class, A, B, B - A), fractions; NaN where a run lacks the value."""

    a: dict[str, Any]
    b: dict[str, Any]
    metrics: Any
    per_class: Any

    def per_class_differences(self):
        """Classes x per-class metric keys: B - A (the terminal's per-class table)."""
        if self.per_class.empty:
            return self.per_class
        order = list(dict.fromkeys(self.per_class["class"]))
        table = self.per_class.pivot(index="class", columns="metric", values=DIFF)
        return table.reindex(index=order, columns=list(dict.fromkeys(self.per_class["metric"])))

    def to_markdown(self) -> str:
        """Both tables in percent with two decimals, headed by which run is A and which is B."""
        metrics = (self.metrics.set_index("metric") * 100).to_markdown(floatfmt=".2f", missingval="-")
        lines = [f"A: {describe(self.a)}", f"B: {describe(self.b)}", "", "Metrics (%):", "", metrics]
        if not self.per_class.empty:
            table = (self.per_class_differences() * 100).to_markdown(floatfmt=".2f", missingval="-")
            lines += ["", f"Per-class {DIFF} (%):", "", table]
        return "\n".join(lines) + "\n"


def describe(record: dict[str, Any]) -> str:
    """One line naming a run: id, method (recipe), dataset/split, seed."""
    return (f"{record['run_id']} {record['method']} ({record['recipe']}) on {record['dataset']}/{record['split']}, "
            f"seed {record['seed']}")


def same_data(a: dict[str, Any], b: dict[str, Any]) -> None:
    """A one-line ConfigError unless both runs were evaluated on the same dataset, split and data (fingerprint)."""
    where = [f"{r['dataset']}/{r['split']}" for r in (a, b)]
    if where[0] != where[1]:
        raise ConfigError(f"runs '{a['run_id']}' and '{b['run_id']}' were evaluated on {where[0]} and {where[1]}: "
                          "compare runs on the same dataset and split")
    prints = [r["dataset_identity"].get("fingerprint") for r in (a, b)]
    if prints[0] != prints[1]:
        raise ConfigError(f"runs '{a['run_id']}' and '{b['run_id']}' were evaluated on different data of "
                          f"{where[0]} (fingerprints {prints[0]} and {prints[1]}: other files or dataset options)")


def compare_records(a: dict[str, Any], b: dict[str, Any]) -> Comparison:
    """The metric and per-class differences B - A of two records (every key either has, in record order)."""
    import pandas as pd

    def value(x: Any) -> float:
        return float("nan") if x is None else float(x)

    keys = list(dict.fromkeys([*a["metrics"], *b["metrics"]]))
    metrics = pd.DataFrame([{"metric": k, "A": value(a["metrics"].get(k)), "B": value(b["metrics"].get(k))}
                            for k in keys], columns=["metric", "A", "B"])
    metrics[DIFF] = metrics["B"] - metrics["A"]
    rows = []
    for key in dict.fromkeys([*a.get("per_class", {}), *b.get("per_class", {})]):
        of_a, of_b = a.get("per_class", {}).get(key, {}), b.get("per_class", {}).get(key, {})
        for name in dict.fromkeys([*of_a, *of_b]):
            rows.append({"metric": key, "class": name, "A": value(of_a.get(name)), "B": value(of_b.get(name))})
    per_class = pd.DataFrame(rows, columns=["metric", "class", "A", "B"])
    per_class[DIFF] = per_class["B"] - per_class["A"]
    return Comparison(a, b, metrics, per_class)


def compare_runs(run_a: str, run_b: str, runs: str | os.PathLike | None = None) -> Comparison:
    """:func:`compare_records` of two finished runs of ``runs`` (id prefixes allowed), checked by :func:`same_data`."""
    from segbench.engine.run import runs_dir
    from segbench.results.store import RunStore

    store = RunStore(runs_dir(runs))
    a, b = (store.get(r).to_dict() for r in (run_a, run_b))
    for record in (a, b):
        if record["status"] != "finished":
            raise ConfigError(f"run '{record['run_id']}' has status '{record['status']}': nothing to compare")
    same_data(a, b)
    return compare_records(a, b)


def image_iou(prediction: Any, target: Any, num_classes: int, ignore_index: int | None = 255) -> float:
    """The mean IoU of one image's label map (:class:`segbench.metrics.confusion.MeanIoU` on that image alone)."""
    from segbench.metrics.confusion import MeanIoU

    metric = MeanIoU(num_classes, ignore_index)
    metric.update([{"mask": prediction}], [{"mask": target}])
    return metric.compute()["miou"]


def image_differences(a: Any, b: Any, data: Any, posts: tuple[list, list], batch: int = 16) -> list[tuple]:
    """``(index, IoU of A, IoU of B)`` of every image of ``data``, the most different first (|B - A|).

    ``a`` and ``b`` are loaded runs (:func:`segbench.show.load_run`); ``posts`` their post-processors.
    Images where either IoU is undefined go last. A run without label maps is a one-line ConfigError.
    """
    from segbench.show import predict

    record = a["record"]
    ignore = record["config"].get("metrics", {}).get("miou", {}).get("ignore_index", 255)
    classes = a["dataset"].num_classes
    found = []
    for start in range(0, len(data), batch):
        indices = range(start, min(start + batch, len(data)))
        rows = predict(a, data, indices, posts[0]), predict(b, data, indices, posts[1])
        for run, first in zip((a, b), rows):
            if "mask" not in first[0][2]:
                raise ConfigError(f"run '{run['record']['run_id']}' ({run['record']['method']}) gives no label "
                                  "maps to compare image by image")
        for index, row_a, row_b in zip(indices, *rows):
            target = row_a[0]["target"]["mask"]
            found.append((index, image_iou(row_a[2]["mask"], target, classes, ignore),
                          image_iou(row_b[2]["mask"], target, classes, ignore)))

    def gap(item: tuple) -> float:
        difference = abs(item[2] - item[1])
        return -difference if not math.isnan(difference) else math.inf

    return sorted(found, key=gap)


def draw_differences(run_a: str, run_b: str, out: str | os.PathLike, *, images: int = 6,
                     runs: str | os.PathLike | None = None, root: str | None = None, device: str = "cpu",
                     overwrite: bool = False) -> tuple[Path, list[tuple]]:
    """Write the ``images`` evaluation images where runs A and B differ most as image | GT | A | B rows (PNG).

    Both runs must have been evaluated on the same data (:func:`same_data`) and give label maps. Returns the
    path and the rows' ``(index, IoU of A, IoU of B)``.
    """
    from segbench.show import (Palette, as_uint8, check_out, eval_data, load_run, panel_figure, predict,
                               pyplot, run_postprocessors, save_figure)

    out = check_out(out, overwrite)
    if images < 1:
        raise ConfigError(f"--images must be at least 1, got {images}")
    a, b = load_run(run_a, runs, device), load_run(run_b, runs, device)
    same_data(a["record"], b["record"])
    if "mask" not in a["dataset"].annotations:
        raise ConfigError(f"dataset '{a['dataset'].name}' has no masks: no per-image IoU to rank images by")
    posts = (run_postprocessors(a), run_postprocessors(b))
    data = eval_data(a, root=root)
    chosen = image_differences(a, b, data, posts)[:images]
    indices = [index for index, _, _ in chosen]
    rows_a, rows_b = predict(a, data, indices, posts[0]), predict(b, data, indices, posts[1])
    record = a["record"]
    name = lambda run: f"{run['record']['run_id'][:6]} {run['record']['method']}"  # noqa: E731
    palette = Palette(list(record.get("class_names") or a["dataset"].classes), a["dataset"].background)
    panels = []
    for (index, iou_a, iou_b), (sample, image, pred_a), (_, _, pred_b) in zip(chosen, rows_a, rows_b):
        image = as_uint8(image)
        panels.append([(image, sample["meta"]["id"]),
                       (palette.label_map(image, sample["target"]["mask"]), "ground truth"),
                       (palette.label_map(image, pred_a["mask"]), f"A {name(a)}: IoU {iou_a:.2f}"),
                       (palette.label_map(image, pred_b["mask"]), f"B {name(b)}: IoU {iou_b:.2f}")])
    plt = pyplot()
    return save_figure(panel_figure(panels, palette, plt), out, plt), chosen


def write_comparison(comparison: Comparison, out_dir: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """``compare.md`` (the terminal's tables), ``metrics.csv`` and ``per_class.csv`` (fractions) in ``out_dir``."""
    out_dir = Path(out_dir)
    texts = {"compare.md": comparison.to_markdown(),
             "metrics.csv": comparison.metrics.round(6).to_csv(index=False, lineterminator="\n"),
             "per_class.csv": comparison.per_class.round(6).to_csv(index=False, lineterminator="\n")}
    paths = [out_dir / name for name in texts]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} already exists; use --force to overwrite it")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path, text in zip(paths, texts.values()):
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the comparison into {out_dir}: {exc.strerror or exc}") from None
    return paths


__all__ = ["Comparison", "compare_records", "compare_runs", "draw_differences", "image_differences", "image_iou",
           "same_data", "write_comparison"]
