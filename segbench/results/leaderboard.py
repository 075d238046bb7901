"""Run records -> leaderboard tables in the papers' shape (pandas), as Markdown, CSV or LaTeX.

Only ``finished`` records count. A re-run of the same config and seed
replaces the earlier one (latest finished wins), so no seed is counted twice.
Seeds pool only within one ``config_id`` (resolved config + dataset
fingerprint + code versions); a method with several configs on one dataset
gets one row per config, labelled ``method (recipe)`` or
``method (recipe, <config_id[:6]>)``. Metrics are stored as fractions and
shown in percent with one decimal by default. See ``docs/leaderboard.md``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segbench.engine.tta import tta_label
from segbench.errors import ConfigError, SegbenchError
from segbench.results.published import (
    DATASET_NAMES, METHOD_NAMES, METRIC_NAMES, display_dataset, display_method, display_metric, load_published,
)
from segbench.results.record import RunRecord
from segbench.results.store import RunStore

AUTO_METRICS = tuple(METRIC_NAMES)
"""``metric="auto"`` takes the first of these that the runs have."""
BY = ("datasets", "metrics")
FORMATS = ("md", "csv", "latex")
UNVERIFIED = "\u2020"  # dagger
PM = "\u00b1"
MISSING = "-"


class LeaderboardError(SegbenchError):
    """Nothing to tabulate, or an output file that would be overwritten."""


# -- frames ----------------------------------------------------------------------------------------
RUN_COLUMNS = ("run_id", "config_id", "method", "dataset", "split", "recipe", "seed", "fingerprint", "finished_at")


def _as_record(item: RunRecord | Mapping[str, Any]) -> RunRecord:
    return item if isinstance(item, RunRecord) else RunRecord.from_dict(dict(item))


def runs_frame(records: Iterable[RunRecord | Mapping[str, Any]]):
    """Long DataFrame, one row per (finished run, metric): ``RUN_COLUMNS`` + ``metric``, ``value`` (fraction).

    Failed, interrupted and running records are left out. Records sharing a
    ``run_id``, or a ``config_id`` and seed (a forced re-run), count once: the
    latest finished wins.
    """
    import pandas as pd

    kept: list[RunRecord] = [r for r in map(_as_record, records) if r.status == "finished"]
    meta = pd.DataFrame(
        [
            {
                "index": i, "run_id": r.run_id, "config_id": r.config_id, "seed": r.seed,
                "time": r.finished_at or r.created_at, "suffix": _suffix(r.run_id),
            }
            for i, r in enumerate(kept)
        ],
        columns=["index", "run_id", "config_id", "seed", "time", "suffix"],
    )
    if len(meta):
        meta["fingerprint"] = [kept[i].fingerprint for i in meta["index"]]
        meta["split"] = [kept[i].split for i in meta["index"]]
        meta["time"] = pd.to_datetime(meta["time"], utc=True, format="ISO8601")
        meta = meta.sort_values(["time", "suffix", "index"], kind="stable")
        meta = meta.drop_duplicates("run_id", keep="last").drop_duplicates(
            ["config_id", "fingerprint", "split", "seed"], keep="last")
    rows = []
    for i in sorted(meta["index"]):
        r = kept[i]
        base = {
            "run_id": r.run_id, "config_id": r.config_id, "method": method_label(r), "dataset": r.dataset,
            "split": r.split, "recipe": r.recipe, "seed": r.seed, "fingerprint": r.fingerprint,
            "finished_at": r.finished_at,
        }
        for key, value in r.metrics.items():
            if value is not None and math.isfinite(value):
                rows.append({**base, "metric": key, "value": float(value)})
    return pd.DataFrame(rows, columns=[*RUN_COLUMNS, "metric", "value"])


def method_label(record: Any) -> str:
    """The method's name plus the post-processors a user asked for: ``deeplab_v1+densecrf``, and the test-time
    augmentation when set: ``deeplab_v3 [ms 0.5-1.75, flip]`` (:func:`segbench.engine.tta.tta_label`).

    The automatic class-map rule (``cam_mask``) is not named: every
    image-supervised run has it.
    """
    config = record.config if hasattr(record, "config") else record.get("config", {})
    extra = [name for name in (config or {}).get("postprocess") or {} if name != "cam_mask"]
    method = record.method if hasattr(record, "method") else record["method"]
    train = (config or {}).get("train") or {}
    tag = tta_label(train.get("tta", ""), train.get("slide", "")) if train.get("tta") or train.get("slide") else ""
    return "+".join([method, *extra]) + (f" [{tag}]" if tag else "")


def summary_frame(records: Iterable[RunRecord | Mapping[str, Any]] | Any):
    """Mean, std (ddof 1) and n over seeds per (method, dataset, split, config_id, fingerprint, metric).

    ``records`` may also be a frame from :func:`runs_frame`. Columns: those
    keys, ``recipe``, ``mean``, ``std`` (NaN when n is 1), ``n``, ``seeds``.
    """
    import pandas as pd

    runs = records if isinstance(records, pd.DataFrame) else runs_frame(records)
    keys = ["method", "dataset", "split", "config_id", "fingerprint", "metric"]
    columns = [*keys, "recipe", "mean", "std", "n", "seeds"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    grouped = runs.groupby(keys, sort=False, dropna=False)
    out = grouped.agg(
        recipe=("recipe", "first"), mean=("value", "mean"), std=("value", "std"), n=("value", "count"),
        seeds=("seed", lambda s: sorted(int(x) for x in s)),
    ).reset_index()
    return out[columns]


# -- the table -----------------------------------------------------------------------------------------
@dataclass
class Leaderboard:
    """A rendered-ready table: row heads (Method[, Dataset]), value columns, cells, caption, footnotes."""

    heads: list[str]
    columns: list[str]
    rows: list[dict[str, str]]
    """One dict per row: the head columns' text (and ``Source`` when published rows are shown)."""
    cells: dict[tuple[int, str], dict[str, Any]]
    """(row index, column) -> {mean, std, n, published, verified, decimals} in display units."""
    caption: str
    footnotes: list[str] = field(default_factory=list)
    show_source: bool = False
    percent: bool = True

    # text of one cell
    def cell_text(self, row: int, column: str, latex: bool = False) -> str:
        cell = self.cells.get((row, column))
        if cell is None:
            return MISSING
        d = cell["decimals"]
        text = f"{cell['mean']:.{d}f}"
        if cell["n"] and cell["n"] > 1:
            pm = r"$\pm$" if latex else PM
            text += f" {pm} {cell['std']:.{d}f} ({cell['n']})"
        if cell["published"] and not cell["verified"]:
            text += r"$^\dagger$" if latex else UNVERIFIED
        return text

    def display_frame(self, latex: bool = False):
        """The table as a DataFrame of strings, as printed."""
        import pandas as pd

        esc = _latex_escape if latex else (lambda s: s)
        records = []
        for i, row in enumerate(self.rows):
            item = {esc(h): esc(row[h]) for h in self.heads}
            item.update({esc(c): self.cell_text(i, c, latex) for c in self.columns})
            if self.show_source:
                item["Source"] = esc(row["Source"])
            records.append(item)
        names = [esc(h) for h in self.heads] + [esc(c) for c in self.columns] + (["Source"] if self.show_source else [])
        return pd.DataFrame(records, columns=names)

    def numeric_frame(self):
        """The table with numbers: per column ``C``, ``C std``, ``C n`` (and ``C verified`` with references)."""
        import pandas as pd

        records = []
        for i, row in enumerate(self.rows):
            item: dict[str, Any] = {h: row[h] for h in self.heads}
            for c in self.columns:
                cell = self.cells.get((i, c))
                item[c] = round(cell["mean"], 6) if cell else None
                item[f"{c} std"] = round(cell["std"], 6) if cell and cell["n"] and cell["n"] > 1 else None
                item[f"{c} n"] = cell["n"] if cell and cell["n"] else None
                if self.show_source:
                    item[f"{c} verified"] = (cell["verified"] if cell["published"] else None) if cell else None
            if self.show_source:
                item["Source"] = row["Source"]
            records.append(item)
        frame = pd.DataFrame(records)
        for c in self.columns:
            frame[f"{c} n"] = frame[f"{c} n"].astype("Int64")
        return frame

    def to_markdown(self) -> str:
        frame = self.display_frame()
        align = ["left"] * len(self.heads) + ["right"] * len(self.columns) + (["left"] if self.show_source else [])
        table = frame.to_markdown(index=False, disable_numparse=True, colalign=align)
        notes = "".join(f"\n{note}\n" for note in self.footnotes)
        return f"Table: {self.caption}\n\n{table}\n{notes}"

    def to_csv(self) -> str:
        return self.numeric_frame().to_csv(index=False, lineterminator="\n")

    def to_latex(self) -> str:
        frame = self.display_frame(latex=True)
        fmt = "l" * len(self.heads) + "r" * len(self.columns) + ("l" if self.show_source else "")
        text = frame.to_latex(index=False, escape=False, column_format=fmt, caption=_latex_escape(self.caption),
                              label="tab:leaderboard", position="t")
        if self.footnotes:
            notes = "\n".join(
                r"\par\footnotesize " + _latex_escape(n) for n in self.footnotes
            )
            text = text.replace("\\end{table}", notes + "\n\\end{table}")
        return text

    def render(self, fmt: str = "md") -> str:
        """The table as ``md``, ``csv`` or ``latex`` text."""
        if fmt not in FORMATS:
            raise ConfigError(f"unknown leaderboard format {fmt!r}; formats: {', '.join(FORMATS)}")
        return {"md": self.to_markdown, "csv": self.to_csv, "latex": self.to_latex}[fmt]()


def build_leaderboard(
    records: Iterable[RunRecord | Mapping[str, Any]],
    metric: str | list[str] = "auto",
    by: str = "datasets",
    *,
    dataset: str | list[str] | None = None,
    split: str | None = None,
    published: bool = False,
    percent: bool = True,
    decimals: int | None = None,
    published_path: str | os.PathLike | None = None,
    source: str = "the runs",
    columns: str | list[str] | None = None,
) -> Leaderboard:
    """The leaderboard of ``records``: methods x datasets for one ``metric`` or methods x metrics (``by``).

    ``metric`` is a key of the records' metrics or ``"auto"`` (the first of
    miou, loc_map, cls_map, coco_ap... that is present); with ``by="metrics"``
    it may list several keys separated by commas (``"auto"``: all of them).
    ``dataset`` and ``split`` keep only those runs. ``published`` adds the
    references of ``leaderboards/published.csv`` as ``<name> (paper)`` rows.
    ``columns`` adds the runs' cost after the metric columns: any of
    ``params``, ``gflops``, ``train_tflops``, ``batch`` (:data:`COST_COLUMNS`).
    """
    import pandas as pd

    if by not in BY:
        raise ConfigError(f"--by must be one of {', '.join(BY)}, got {by!r}")
    decimals = (1 if percent else 3) if decimals is None else int(decimals)
    scale = 100.0 if percent else 1.0
    datasets = _split_list(dataset)
    records = [_as_record(r) for r in records]
    deviations_of = {r.config_id: tuple(r.extra.get("deviations") or ()) for r in records if r.status == "finished"}
    extra_columns = cost_columns(columns)
    cost_of = {r.config_id: r for r in records if r.status == "finished"}
    summary = summary_frame(records)
    if datasets:
        summary = summary[summary["dataset"].isin(datasets)]
    if split:
        summary = summary[summary["split"] == split]
    refs = load_published(published_path) if published else None
    if refs is not None:
        refs = refs[refs["value"].notna()]
        if datasets:
            refs = refs[refs["dataset"].isin(datasets)]
        if not summary.empty and not datasets:  # named datasets keep their references even without runs
            refs = refs[refs["dataset"].isin(set(summary["dataset"]))]
    if summary.empty and (refs is None or refs.empty):
        where = f" for dataset {', '.join(datasets)}" if datasets else ""
        raise LeaderboardError(f"no finished runs in {source}{where}" + ("" if published else "; try --published"))

    present = list(dict.fromkeys(summary["metric"])) if not summary.empty else list(dict.fromkeys(refs["metric"]))
    if by == "datasets":
        chosen = [_pick_metric(metric, present, refs)]
    else:
        chosen = _pick_metrics(metric, present, refs)
    summary = summary[summary["metric"].isin(chosen)]
    if refs is not None:
        refs = refs[refs["metric"].isin(chosen)]
        if refs.empty and summary.empty:
            raise LeaderboardError(f"no finished runs or published numbers for metric {', '.join(chosen)}")

    rows: list[dict[str, str]] = []
    cells: dict[tuple[int, str], dict[str, Any]] = {}
    order: list[tuple] = []
    row_deviations: dict[int, list[str]] = {}  # row -> its recipe's deviations from the paper

    # columns
    if by == "datasets":
        slots = sorted({(d, s) for d, s in zip(summary["dataset"], summary["split"])}, key=_dataset_order)
        if refs is not None:  # datasets with references but no runs (only when named, or when no runs at all)
            have = {d for d, _ in slots}
            slots = sorted(slots + [(d, None) for d in dict.fromkeys(refs["dataset"]) if d not in have],
                           key=_dataset_order)
        multi = {d for d, _ in slots if sum(1 for x, _ in slots if x == d) > 1}
        col_of = {(d, s): display_dataset(d) + (f" ({s})" if d in multi else "") for d, s in slots}
        columns = [col_of[s] for s in slots]
    else:
        columns = sorted(chosen, key=_metric_order) if metric in (None, "", "auto") else list(chosen)  # as asked
        slots = sorted({(d, s) for d, s in zip(summary["dataset"], summary["split"])}, key=_dataset_order)
        multi = {d for d, _ in slots if sum(1 for x, _ in slots if x == d) > 1}
    heads = ["Method"]
    if by == "metrics":
        ds_names = {d for d, _ in slots} | (set(refs["dataset"]) if refs is not None else set())
        if len(ds_names) > 1 or multi:
            heads.append("Dataset")

    def add_row(key: tuple, head: dict[str, str]) -> int:
        if key not in row_index:
            row_index[key] = len(rows)
            rows.append(head)
            order.append(key)
        return row_index[key]

    row_index: dict[tuple, int] = {}

    # reproduced rows
    summary = summary.assign(variant=summary["config_id"] + "|" + summary["fingerprint"])
    for method, sub in summary.groupby("method", sort=False):
        by_recipe, by_config = _label_needs(sub)
        shorts = _short_variants(sub)
        for rec in sub.itertuples(index=False):
            parts: list[str] = []
            if by_recipe:
                parts.append(rec.recipe)
            if rec.recipe in by_config:
                parts.append(shorts[rec.variant])
            label = display_method(method) + (f" ({', '.join(parts)})" if parts else "")
            variant_key = (rec.recipe if by_recipe else "", rec.variant if rec.recipe in by_config else "")
            if by == "datasets":
                key = (_method_order(method), 0, label, variant_key)
                column = col_of[(rec.dataset, rec.split)]
                head = {"Method": label}
            else:
                ds_label = display_dataset(rec.dataset) + (f" ({rec.split})" if rec.dataset in multi else "")
                key = (_dataset_order((rec.dataset, "")), _method_order(method), 0, rec.split, label, variant_key)
                column = rec.metric
                head = {"Method": label, "Dataset": ds_label}
            head["Source"] = "reproduced"
            i = add_row(key, head)
            for line in deviations_of.get(rec.config_id, ()):
                row_deviations.setdefault(i, [])
                if line not in row_deviations[i]:
                    row_deviations[i].append(line)
            cells[(i, column)] = {
                "mean": rec.mean * scale, "std": (rec.std * scale) if rec.n > 1 else float("nan"), "n": int(rec.n),
                "published": False, "verified": None, "decimals": decimals,
            }
            for name in extra_columns:
                title, value_of, places = COST_COLUMNS[name]
                value = value_of(cost_of[rec.config_id]) if rec.config_id in cost_of else None
                if value is not None:
                    cells[(i, title)] = {"mean": value, "std": float("nan"), "n": None, "published": False,
                                         "verified": None, "decimals": places}

    # published rows
    if refs is not None and not refs.empty:
        for (method, name), sub in refs.groupby(["method", "display_name"], sort=False):
            place = [_ref_column(r, by, slots, col_of if by == "datasets" else None) for r in sub.itertuples()]
            targets = [(p, r) for p, r in zip(place, sub.itertuples()) if p is not None]
            keyed = [(p if by == "datasets" else (r.dataset, p)) for p, r in targets]
            with_split = len(keyed) != len(set(keyed))
            for column, r in targets:
                label = f"{name} (paper" + (f", {r.split or 'split not stated'}" if with_split else "") + ")"
                if by == "datasets":
                    key = (_method_order(method), 1, label, ())
                    head = {"Method": label}
                else:
                    key = (_dataset_order((r.dataset, "")), _method_order(method), 1, "", label, ())
                    head = {"Method": label, "Dataset": display_dataset(r.dataset)}
                i = add_row(key, {**head, "Source": ""})
                sources = [s for s in rows[i]["Source"].split("; ") if s]
                if r.source not in sources:
                    sources.append(r.source)
                rows[i]["Source"] = "; ".join(sources)
                nd = _decimals_of(r.value)
                value, d = (r.value, max(decimals, nd)) if percent else (r.value / 100.0, max(decimals, nd + 2))
                cells[(i, column)] = {"mean": value, "std": float("nan"), "n": None, "published": True,
                                      "verified": bool(r.verified), "decimals": d}

    # order rows
    permutation = sorted(range(len(rows)), key=lambda i: order[i])
    rows = [rows[i] for i in permutation]
    new_index = {old: new for new, old in enumerate(permutation)}
    cells = {(new_index[i], c): v for (i, c), v in cells.items()}
    deviation_notes = _number_deviations(rows, {new_index[i]: v for i, v in row_deviations.items()})

    unit = "(%)" if percent else "(fractions)"
    seeds = f"mean {PM} std (n) over seeds where n > 1"
    if by == "datasets":
        caption = f"{display_metric(chosen[0])} ({chosen[0]}) {unit}: {seeds}."
    else:
        shown = [d for d, _ in slots] + (list(refs["dataset"]) if refs is not None else [])
        shown.sort(key=lambda d: _dataset_order((d, "")))
        where = ", ".join(dict.fromkeys(display_dataset(d) for d in shown))
        caption = f"Metrics on {where} {unit}: {seeds}."
    footnotes = []
    if any(m.startswith("loc_map") for m in chosen) and not summary.empty:
        used = {str(((cost_of[c].config.get("metrics") or {}).get("loc_map") or {}).get("confidence", "map_max"))
                for c in summary["config_id"] if c in cost_of}
        footnotes.append("loc_map ranks each class's images by " + " or ".join(
            CONFIDENCE_TEXT.get(u, u) for u in [*(c for c in CONFIDENCE_TEXT if c in used),
                                                 *sorted(used - set(CONFIDENCE_TEXT))]) + " (loc_map's confidence option).")
    if published:
        footnotes.append("Rows marked (paper) are published numbers (their split may differ; see leaderboards/"
                         "published.csv).")
        if any(c["published"] and not c["verified"] for c in cells.values()):
            footnotes.append(f"{UNVERIFIED} not yet verified against its source.")
    footnotes.extend(deviation_notes)
    if extra_columns:
        columns = [*columns, *(COST_COLUMNS[name][0] for name in extra_columns)]
        footnotes.append("Cost columns are the runs' own (records' cost): parameters, forward GFLOPs of one image "
                         "at the training crop, training TFLOPs (3 x forward x steps x effective batch), effective "
                         "batch (batch x accumulation x processes).")
    return Leaderboard(heads=heads, columns=columns, rows=rows, cells=cells, caption=caption, footnotes=footnotes,
                       show_source=bool(published), percent=percent)


CONFIDENCE_TEXT = {"map_max": "the class map's maximum (Oquab et al.)", "image_score": "the method's image score"}
"""How the leaderboard names ``loc_map``'s ``confidence`` in its footnote."""


def _cost(record: RunRecord, key: str, scale: float = 1.0) -> float | None:
    value = (record.cost or {}).get(key)
    return None if value is None else value * scale


COST_COLUMNS: dict[str, tuple[str, Callable[[RunRecord], float | None], int]] = {
    "params": ("Params (M)", lambda r: _cost(r, "parameters", 1e-6), 2),
    "gflops": ("GFLOPs", lambda r: _cost(r, "forward_gflops"), 2),
    "train_tflops": ("Train TFLOPs", lambda r: _cost(r, "train_gflops", 1e-3), 1),
    "batch": ("Batch", lambda r: r.effective_batch_size, 0),
}
"""``--columns`` names: (column title, value from a record, decimals)."""


def cost_columns(columns: str | list[str] | None) -> list[str]:
    """The ``--columns`` names, checked against :data:`COST_COLUMNS`."""
    names = _split_list(columns)
    unknown = [n for n in names if n not in COST_COLUMNS]
    if unknown:
        raise ConfigError(f"unknown --columns {', '.join(unknown)}; columns: {', '.join(COST_COLUMNS)}")
    return list(dict.fromkeys(names))


def _number_deviations(rows: list[dict[str, str]], deviations: Mapping[int, list[str]]) -> list[str]:
    """Mark each row whose recipe declares deviations from its paper with footnote numbers ``[1,2]``, in row
    order (a line shared by rows keeps one number); returns the footnotes."""
    numbers: dict[str, int] = {}
    for i in sorted(deviations):
        marks = []
        for line in deviations[i]:
            numbers.setdefault(line, len(numbers) + 1)
            marks.append(str(numbers[line]))
        if marks:
            rows[i]["Method"] = f"{rows[i]['Method']} [{','.join(marks)}]"
    return [f"[{n}] deviation from the paper: {line}" for line, n in numbers.items()]


# -- per-class tables -------------------------------------------------------------------------------------
PER_CLASS_VALUES = {"miou": "IoU", "mean_acc": "accuracy", "class_accuracy": "accuracy", "cls_map": "AP",
                    "loc_map": "AP"}
"""What a per-class value of a metric is, for the caption (``AP`` for any other ``*_ap*`` key)."""


def build_per_class(
    records: Iterable[RunRecord | Mapping[str, Any]],
    metric: str = "auto",
    *,
    dataset: str | list[str] | None = None,
    split: str | None = None,
    percent: bool = True,
    decimals: int | None = None,
    source: str = "the runs",
) -> Leaderboard:
    """Methods x classes: the records' ``per_class[metric]`` (IoU for miou, AP for cls_map / loc_map), mean over seeds.

    The table is :func:`build_leaderboard` ``by="metrics"`` over records whose metrics are their per-class
    values, so rows are pooled and labelled as in the main table; the last column is ``metric`` itself.
    ``metric="auto"`` takes the first of miou, loc_map, cls_map... that has per-class values. Runs whose
    datasets have other class lists cannot share a table (``dataset=`` to choose one).
    """
    import dataclasses

    datasets = _split_list(dataset)
    kept = [r for r in map(_as_record, records) if r.status == "finished" and (not datasets or r.dataset in datasets)
            and (not split or r.split == split)]
    if not kept:
        where = f" for dataset {', '.join(datasets)}" if datasets else ""
        raise LeaderboardError(f"no finished runs in {source}{where}")
    keys = list(dict.fromkeys(k for r in kept for k in r.per_class))
    if metric in (None, "", "auto"):
        key = next((m for m in AUTO_METRICS if m in keys), sorted(keys)[0] if keys else None)
    else:
        key = metric
    if key not in keys:
        raise ConfigError(f"no finished run has per-class values for '{metric}'; per-class keys: "
                          f"{', '.join(sorted(keys)) or 'none'}")
    kept = [r for r in kept if key in r.per_class]
    lists = {tuple(r.class_names or r.per_class[key]) for r in kept}
    if len(lists) > 1:
        names = sorted({r.dataset for r in kept})
        raise LeaderboardError(f"per-class tables need one class list; the runs on {', '.join(names)} have "
                               f"{len(lists)} different ones: choose a dataset with --dataset")
    classes = [c for c in next(iter(lists)) if any(_finite(r.per_class[key].get(c)) for r in kept)]
    mean = [key] if any(_finite(r.metrics.get(key)) for r in kept) else []
    tables = [dataclasses.replace(r, metrics={**{c: r.per_class[key].get(c) for c in classes},
                                              **({key: r.metrics.get(key)} if mean else {})}) for r in kept]
    board = build_leaderboard(tables, metric=[*classes, *mean], by="metrics", percent=percent, decimals=decimals,
                              source=source)
    unit = "(%)" if percent else "(fractions)"
    what = PER_CLASS_VALUES.get(key, "AP" if "_ap" in key else "value")
    where = ", ".join(dict.fromkeys(display_dataset(r.dataset) for r in kept))
    last = f"; {key}: the mean over classes" if mean else ""
    board.caption = f"Per-class {what} ({key}) on {where} {unit}: mean {PM} std (n) over seeds where n > 1{last}."
    return board


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


# -- entry points -----------------------------------------------------------------------------------------
def leaderboard(
    runs_dir: str | os.PathLike | None = None,
    metric: str = "auto",
    by: str = "datasets",
    fmt: str = "md",
    published: bool = False,
    *,
    dataset: str | list[str] | None = None,
    split: str | None = None,
    percent: bool = True,
    decimals: int | None = None,
    published_path: str | os.PathLike | None = None,
    on_error: Callable[[Path, str], None] | None = None,
    per_class: bool = False,
    columns: str | list[str] | None = None,
) -> str:
    """The leaderboard of the finished runs in ``runs_dir`` as ``md``, ``csv`` or ``latex`` text.

    ``per_class`` gives methods x classes for ``metric`` instead (:func:`build_per_class`).
    Unreadable record files are skipped with a warning (or ``on_error(path, message)``).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown leaderboard format {fmt!r}; formats: {', '.join(FORMATS)}")
    if per_class and (published or by != "datasets" or columns):
        raise ConfigError("--per-class tables are methods x classes of the runs alone: drop "
                          + ("--published" if published else "--by" if by != "datasets" else "--columns"))
    store = RunStore(runs_dir)
    if not store.root.is_dir() and not published:  # --published alone still shows the papers' numbers
        raise LeaderboardError(f"runs directory {store.root} does not exist (--runs-dir or SEGBENCH_RUNS_DIR); "
                               f"try --published for the papers' numbers alone")
    if per_class:
        board = build_per_class(store.iter_records(on_error=on_error), metric, dataset=dataset, split=split,
                                percent=percent, decimals=decimals, source=str(store.root))
        return board.render(fmt)
    board = build_leaderboard(
        store.iter_records(on_error=on_error), metric=metric, by=by, dataset=dataset, split=split,
        published=published, percent=percent, decimals=decimals, published_path=published_path,
        source=str(store.root), columns=columns,
    )
    return board.render(fmt)


SUFFIX_FORMATS = {".md": "md", ".markdown": "md", ".txt": "md", ".csv": "csv", ".tex": "latex", ".latex": "latex"}


def format_for(path: str | os.PathLike) -> str:
    """``md``, ``csv`` or ``latex`` from a file name (``.md``, ``.csv``, ``.tex``); a ConfigError for any other
    suffix (say ``--format``)."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise ConfigError(f"{path}: cannot tell the table format from the suffix {suffix or '(none)'!r}; use "
                          f"{', '.join(sorted(SUFFIX_FORMATS))} or --format {'|'.join(FORMATS)}")
    return SUFFIX_FORMATS[suffix]


def write_leaderboard(
    runs_dir: str | os.PathLike | None,
    out_path: str | os.PathLike,
    *,
    fmt: str | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Write :func:`leaderboard` to ``out_path`` (format from its suffix unless ``fmt``); returns the path.

    An existing file is kept unless ``overwrite`` (the CLI's ``--force``).
    """
    out = Path(out_path)
    fmt = fmt or format_for(out)  # an unknown suffix is refused before anything is read or written
    if out.exists() and not overwrite:
        raise LeaderboardError(f"{out} already exists; use --force to overwrite it")
    text = leaderboard(runs_dir, fmt=fmt, **options)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, out)
        else:
            with open(out, "x", encoding="utf-8") as handle:
                handle.write(text)
    except FileExistsError:
        raise LeaderboardError(f"{out} already exists; use --force to overwrite it") from None
    except OSError as exc:
        raise LeaderboardError(f"cannot write leaderboard {out}: {exc.strerror or exc}") from None
    return out


# -- helpers ----------------------------------------------------------------------------------------------
def _split_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [v.strip() for v in items if v and v.strip()]


def _suffix(run_id: str) -> int:
    _, _, tail = run_id.partition("-")
    return int(tail) if tail.isdigit() else 1


def _pick_metric(metric: str, present: list[str], refs) -> str:
    available = list(present) + ([m for m in dict.fromkeys(refs["metric"]) if m not in present] if refs is not None
                                 else [])
    if metric in (None, "", "auto"):
        for name in AUTO_METRICS:
            if name in present:
                return name
        if present:
            return sorted(present)[0]
        for name in AUTO_METRICS:
            if name in available:
                return name
        return sorted(available)[0]
    if metric not in available:
        raise ConfigError(f"no finished run has metric '{metric}'; metrics: {', '.join(sorted(available)) or 'none'}")
    return metric


def _pick_metrics(metric: str, present: list[str], refs) -> list[str]:
    if metric in (None, "", "auto"):
        names = present or list(dict.fromkeys(refs["metric"]))
        return sorted(names, key=_metric_order)
    return [_pick_metric(m, present, refs) for m in _split_list(metric)]


def _metric_order(name: str) -> tuple:
    return (AUTO_METRICS.index(name), "") if name in AUTO_METRICS else (len(AUTO_METRICS), name)


def _dataset_order(slot: tuple[str, Any]) -> tuple:
    name, split = slot
    known = list(DATASET_NAMES)
    return (known.index(name) if name in known else len(known), name, split or "")


def _method_order(name: str) -> tuple:
    known = list(METHOD_NAMES)
    base = name.split(" [")[0].split("+")[0]
    return (known.index(base) if base in known else len(known), name)


def _label_needs(sub) -> tuple[bool, set[str]]:
    """Whether one method's rows need the recipe in their label, and which recipes need the config id.

    One row per method when it has one config per (dataset, split) and one
    recipe; else one per recipe; a recipe with several configs on one
    (dataset, split) gets one row per config.
    """
    slots = ["dataset", "split"]
    per_slot = sub.groupby(slots)["variant"].nunique().max()
    by_recipe = bool(per_slot > 1 or sub["recipe"].nunique() > 1)
    counts = sub.groupby([*slots, "recipe"])["variant"].nunique()
    by_config = {recipe for (_, _, recipe), n in counts.items() if n > 1}
    return by_recipe, by_config


def _short_variants(sub) -> dict[str, str]:
    """Variant (config_id|fingerprint) -> the shortest unambiguous label (config_id[:6], + fingerprint)."""
    variants = list(dict.fromkeys(sub["variant"]))
    shorts = {v: v.split("|")[0][:6] for v in variants}
    counts: dict[str, int] = {}
    for s in shorts.values():
        counts[s] = counts.get(s, 0) + 1
    return {v: (s if counts[s] == 1 else f"{s}/{v.split('|')[1][:6]}") for v, s in shorts.items()}


def _ref_column(ref, by: str, slots: list, col_of: dict | None) -> str | None:
    """The column a published number goes to: its dataset's column (the one of its split when there are several)."""
    if by == "metrics":
        return ref.metric
    matching = [s for s in slots if s[0] == ref.dataset]
    if not matching:
        return None
    exact = [s for s in matching if s[1] == ref.split]
    return col_of[(exact or matching)[0]]


def _decimals_of(value: float) -> int:
    text = repr(float(value))
    return len(text.split(".")[1].rstrip("0")) if "." in text and "e" not in text else 0


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}",
}


def _latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return out.replace(PM, r"$\pm$").replace(UNVERIFIED, r"$^\dagger$")


__all__ = [
    "AUTO_METRICS", "BY", "FORMATS", "Leaderboard", "LeaderboardError", "build_leaderboard", "build_per_class",
    "format_for",
    "leaderboard", "runs_frame", "summary_frame", "write_leaderboard",
]
