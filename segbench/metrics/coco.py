"""``coco_ap``: COCO box and mask AP through pycocotools' ``COCOeval`` (or faster-coco-eval).

Every number comes from the COCO API itself: :func:`evaluate` hands a ground
truth dict and a list of COCO results to ``COCOeval`` (``backend="pycocotools"``)
or to faster-coco-eval's ``COCOeval_faster`` (``backend="faster"``, the same
numbers to 1e-15, several times faster) and reads back ``stats`` (the twelve
numbers ``summarize()`` prints) and the precision array (per-category AP).

Two ways in, one code path:

* the metric :class:`CocoAP` (``update`` with ``instances`` predictions):
  each batch is encoded at once into compact COCO results (XYWH boxes,
  compressed RLE masks, original category ids); no dense mask is kept. The
  ground truth is the dataset's COCO file (option ``annotation_file``) or is
  built the same way from the targets (``boxes``, ``classes``, ``masks``,
  ``iscrowd``; image ids 1, 2, ... in update order, areas from the masks,
  category ids 1..K for the classes other than the background, as
  :func:`segbench.data.export.export_coco` writes them);
* :func:`evaluate_files` (``segbench coco-eval --gt ANN.json --results RES.json``)
  checks a results file against its ground truth and scores it.

For ``segm`` the results' ``bbox`` is dropped before ``loadRes``, so that a
detection's area (which puts it in the small/medium/large range) is its
mask's area, as detectron2 and mmdetection do; for ``bbox`` only the boxes
count. Values are fractions; COCO's -1 (no ground truth in an area range)
becomes NaN in :meth:`CocoAP.compute`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from segbench.errors import ConfigError, DataError

IOU_TYPES = ("bbox", "segm")
BACKENDS = ("pycocotools", "faster")
DEFAULT_BACKEND = "faster"  # same numbers as pycocotools to 1e-6 (tested); 3-11x faster
"""``faster`` gives the same numbers (tests check 1e-6) but is not in requirements.txt yet."""

STAT_NAMES = ("ap", "ap50", "ap75", "aps", "apm", "apl", "ar1", "ar10", "ar100", "ars", "arm", "arl")
"""The twelve numbers of ``COCOeval.summarize()`` (``stats[0..11]``), in its order."""

# (AP or AR, IoU, area, maxDets) of each line that COCOeval.summarize() prints
_SUMMARY = (
    (True, "0.50:0.95", "all", 100), (True, "0.50", "all", 100), (True, "0.75", "all", 100),
    (True, "0.50:0.95", "small", 100), (True, "0.50:0.95", "medium", 100), (True, "0.50:0.95", "large", 100),
    (False, "0.50:0.95", "all", 1), (False, "0.50:0.95", "all", 10), (False, "0.50:0.95", "all", 100),
    (False, "0.50:0.95", "small", 100), (False, "0.50:0.95", "medium", 100), (False, "0.50:0.95", "large", 100),
)
_ISTR = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"  # pycocotools' own format


def metric_key(stat: str, iou_type: str) -> str:
    """The ``compute()`` key of one number: ``coco_ap50_segm``, ``coco_ar100_bbox``, ..."""
    return f"coco_{stat}_{iou_type}"


# -- options -----------------------------------------------------------------------------------
def check_backend(backend: str | None) -> str:
    """``backend`` (None: the default) or a :class:`ConfigError`; ``faster`` must be installed."""
    backend = backend or DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise ConfigError(f"metric 'coco_ap': backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "faster":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError as exc:
            raise ConfigError("coco_ap backend 'faster' needs faster-coco-eval: pip install faster-coco-eval") from exc
    return backend


def parse_iou_types(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"bbox"``, ``"segm"``, ``"both"``, ``"bbox,segm"`` or a list -> a tuple in :data:`IOU_TYPES`
    order; None (or ``"auto"``) stays None."""
    if value is None or value == "auto":
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(v).strip() for v in items]
    chosen = set(IOU_TYPES) if items == ["both"] else set(items)
    if not chosen or not chosen <= set(IOU_TYPES):
        raise ConfigError(f"metric 'coco_ap': iou_types must be bbox, segm, both or a list of them, got {value!r}")
    return tuple(t for t in IOU_TYPES if t in chosen)


def _coco_api(backend: str):
    """(COCO, COCOeval) classes of the backend."""
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    return None


# -- reading and checking files ----------------------------------------------------------------
def load_json(path: str | os.PathLike, what: str) -> Any:
    """Parse JSON ``path``; a :class:`DataError` naming the file when it cannot be read or parsed."""
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except OSError as exc:
        raise DataError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} {path} is not JSON: {str(exc).splitlines()[0]}") from exc


def load_ground_truth(path: str | os.PathLike) -> dict:
    """A COCO ground-truth file, checked with :func:`check_ground_truth`."""
    doc = load_json(path, "COCO ground truth")
    check_ground_truth(doc, str(path))
    return doc


def check_ground_truth(doc: Any, source: str = "ground truth", iou_types: Iterable[str] = IOU_TYPES) -> None:
    """Raise a one-line :class:`DataError` naming ``source`` and the entry unless ``doc`` is COCO
    instance ground truth (``images``, ``annotations``, ``categories``; ids and fields COCOeval reads)."""
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations",
                                                                                   "categories")):
        got = sorted(doc)[:6] if isinstance(doc, dict) else type(doc).__name__
        raise DataError(f"{source} is not COCO ground truth: expected an object with lists 'images', "
                        f"'annotations' and 'categories', got {got}")
    sizes = {}
    for i, img in enumerate(doc["images"]):
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            raise DataError(f"{source}: image {i} has no integer 'id'")
        if not (_is_int(img.get("height")) and _is_int(img.get("width"))):
            raise DataError(f"{source}: image {i} (id {img['id']}) lacks an integer height and width")
        if img["id"] in sizes:
            raise DataError(f"{source}: image {i} repeats id {img['id']}")
        sizes[img["id"]] = (img["height"], img["width"])
    categories = set()
    for i, cat in enumerate(doc["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise DataError(f"{source}: category {i} has no integer 'id'")
        categories.add(cat["id"])
    needs = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")
    if "segm" in iou_types:
        needs += ("segmentation",)
    annotations = doc["annotations"]
    try:  # the fast path: one pass in C; the scans below only find the offender
        columns = [list(map(itemgetter(key), annotations)) for key in needs]
    except (KeyError, TypeError):
        for i, ann in enumerate(annotations):
            missing = [k for k in needs if not isinstance(ann, dict) or k not in ann]
            if missing:
                ident = f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else ""
                raise DataError(f"{source}: annotation {i}{ident} lacks {', '.join(missing)}") from None
        raise
    for column, known, what in ((1, sizes.keys(), "image_id"), (2, categories, "category_id")):
        if not set(columns[column]) <= known:
            i = next(i for i, v in enumerate(columns[column]) if v not in known)
            raise DataError(f"{source}: annotation {i} (id {annotations[i]['id']}) has {what} "
                            f"{annotations[i][what]}, which is not in '{'images' if column == 1 else 'categories'}'")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def load_results(path: str | os.PathLike, gt: dict, iou_types: Sequence[str] | None = None,
                 gt_source: str = "the ground truth") -> tuple[list[dict], tuple[str, ...]]:
    """A COCO results file checked against ``gt``: ``(results, iou_types)``.

    ``iou_types`` None means every type the results carry (``segm`` when they
    have ``segmentation``, ``bbox`` when they have ``bbox``).
    """
    results = load_json(path, "COCO results")
    if not isinstance(results, list):
        raise DataError(f"{path} is not a COCO results file: expected a JSON list of detections, "
                        f"got {type(results).__name__}")
    if iou_types is None:
        first = results[0] if results and isinstance(results[0], dict) else {}
        iou_types = tuple(t for t in IOU_TYPES if ("segmentation" if t == "segm" else "bbox") in first)
        if not iou_types:
            iou_types = ("bbox",) if not results else ()
        if not iou_types:
            raise DataError(f"{path}: result 0 has neither 'bbox' nor 'segmentation'")
    check_results(results, gt, iou_types, str(path), gt_source)
    return results, tuple(iou_types)


def check_results(results: list, gt: dict, iou_types: Sequence[str], source: str = "results",
                  gt_source: str = "the ground truth") -> None:
    """Raise a one-line :class:`DataError` naming ``source``, the result's index and its ids unless
    every result has a known ``image_id`` and ``category_id``, a finite ``score`` and, as
    ``iou_types`` need, a box ``[x, y, w, h]`` with ``w, h >= 0`` and an RLE mask of its image's size."""
    if not results:
        return
    images = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    categories = {cat["id"] for cat in gt["categories"]}
    keys = ["image_id", "category_id", "score"] + [("segmentation" if t == "segm" else "bbox") for t in iou_types]

    def bad(i: int, what: str) -> DataError:
        r = results[i]
        ids = ", ".join(f"{k} {r[k]}" for k in ("image_id", "category_id") if isinstance(r, dict) and k in r)
        return DataError(f"{source}: result {i}{f' ({ids})' if ids else ''} {what}")

    n = len(results)
    try:  # the fast path: a few passes in C; the scans below only find the offender
        columns = {key: list(map(itemgetter(key), results)) for key in keys}
    except (KeyError, TypeError):
        for i, r in enumerate(results):
            missing = [k for k in keys if not isinstance(r, dict) or k not in r]
            if missing:
                raise bad(i, f"lacks {', '.join(missing)}") from None
        raise
    image_ids = columns["image_id"]
    if not set(image_ids) <= images.keys():
        i = next(i for i, v in enumerate(image_ids) if v not in images)
        raise bad(i, f"has an image_id that is not in {gt_source}")
    if not set(columns["category_id"]) <= categories:
        i = next(i for i, v in enumerate(columns["category_id"]) if v not in categories)
        raise bad(i, f"has a category_id that is not in {gt_source}")
    scores = _flat_numbers(columns["score"], None)
    if scores is None or not np.isfinite(scores).all():
        i = _first_bad(results, lambda r: isinstance(r["score"], (int, float)) and math.isfinite(r["score"]))
        raise bad(i, f"has score {results[i]['score']!r}, not a finite number")
    if "bbox" in iou_types:
        boxes = _flat_numbers(columns["bbox"], 4)
        if boxes is None or not np.isfinite(boxes).all():
            i = _first_bad(results, lambda r: _numbers(r["bbox"], (4,)) is not None
                           and np.isfinite(_numbers(r["bbox"], (4,))).all())
            raise bad(i, f"has bbox {results[i]['bbox']!r}; expected [x, y, width, height] of finite numbers")
        negative = np.flatnonzero((boxes[:, 2] < 0) | (boxes[:, 3] < 0))
        if negative.size:
            i = int(negative[0])
            raise bad(i, f"has a box with negative size: bbox {results[i]['bbox']!r} (width and height must be >= 0)")
    if "segm" in iou_types:
        try:
            segmentations = columns["segmentation"]
            sizes = _flat_numbers(list(map(itemgetter("size"), segmentations)), 2)
            if set(map(type, map(itemgetter("counts"), segmentations))) != {str}:
                sizes = None
        except (KeyError, TypeError):
            sizes = None
        if sizes is None:
            i = _first_bad(results, _is_rle)
            raise bad(i, "has a segmentation that is not a compressed RLE {'size': [height, width], 'counts': str}")
        unique, inverse = np.unique(np.fromiter(image_ids, np.int64, n), return_inverse=True)
        expected = np.array([images[v] for v in unique.tolist()], dtype=np.float64).reshape(-1, 2)[inverse]
        wrong = np.flatnonzero((sizes != expected).any(1))
        if wrong.size:
            i = int(wrong[0])
            h, w = results[i]["segmentation"]["size"]
            eh, ew = images[results[i]["image_id"]]
            raise bad(i, f"has a mask of size {h}x{w} but its image is {eh}x{ew} (height x width)")


def _flat_numbers(rows: Sequence[Any], width: int | None) -> np.ndarray | None:
    """Numbers (``width`` None) or rows of ``width`` numbers as a float64 array, or None when they are not."""
    try:
        if width is None:
            return np.fromiter(rows, np.float64, len(rows))
        if set(map(len, rows)) != {width}:
            return None
        return np.fromiter(chain.from_iterable(rows), np.float64, width * len(rows)).reshape(-1, width)
    except (TypeError, ValueError):
        return None


def _numbers(values: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """``values`` as a float64 array of ``shape``, or None when it is not one."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.shape == shape else None


def _first_bad(results: list, ok) -> int:
    for i, r in enumerate(results):
        try:
            if not ok(r):
                return i
        except (KeyError, TypeError, ValueError):
            return i
    return 0


def _is_rle(r: dict) -> bool:
    seg = r["segmentation"]
    return (isinstance(seg, dict) and isinstance(seg.get("counts"), str)
            and _numbers(seg.get("size"), (2,)) is not None)


# -- evaluation --------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """One iou type's result: ``stats`` (the twelve numbers, COCO's -1 where undefined) and
    per-category ``ap`` and ``ap50`` (``{category_id: value}``, NaN without ground truth)."""

    iou_type: str
    stats: np.ndarray
    ap: dict[int, float]
    ap50: dict[int, float]

    def lines(self) -> list[str]:
        """The twelve lines in the layout of ``COCOeval.summarize()``."""
        return summary_lines(self.stats)

    def as_dict(self) -> dict[str, float]:
        """``{coco_ap_bbox: ..., ...}`` as fractions, NaN where COCO says -1."""
        return {metric_key(name, self.iou_type): (float(v) if v >= 0 else float("nan"))
                for name, v in zip(STAT_NAMES, self.stats)}


def summary_lines(stats: Sequence[float]) -> list[str]:
    """The twelve lines ``COCOeval.summarize()`` prints for ``stats``, character for character."""
    lines = []
    for (is_ap, iou, area, max_dets), value in zip(_SUMMARY, stats):
        title, kind = ("Average Precision", "(AP)") if is_ap else ("Average Recall", "(AR)")
        lines.append(_ISTR.format(title, kind, iou, area, max_dets, float(value)))
    return lines


def coco_ground_truth(gt: dict, backend: str = DEFAULT_BACKEND):
    """The backend's ``COCO`` object for a ground-truth dict (indexed, nothing printed)."""
    coco_cls, _ = _coco_api(check_backend(backend))
    if backend == "faster":
        return coco_cls(gt, print_function=_quiet)
    coco = coco_cls()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate(gt: dict | Any, results: list[dict], iou_types: Sequence[str] = IOU_TYPES,
             backend: str | None = None, image_ids: Iterable[int] | None = None,
             consume: bool = False) -> dict[str, Evaluation]:
    """COCOeval of ``results`` against ``gt`` for each of ``iou_types``.

    ``gt`` is a ground-truth dict or the backend's ``COCO`` object; ``results``
    COCO result dicts (``loadRes`` adds fields to them: they are copied first
    unless ``consume`` and there is one type). ``image_ids`` restricts the
    evaluation (default: every ground-truth image, as COCOeval does).
    """
    backend = check_backend(backend)
    _, eval_cls = _coco_api(backend)
    coco_gt = coco_ground_truth(gt, backend) if isinstance(gt, dict) else gt
    out = {}
    for iou_type in iou_types:
        dts = _results_for(results, iou_type, copy=not (consume and len(iou_types) == 1))
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = _load_results(coco_gt, dts)
            if backend == "faster":
                ev = eval_cls(coco_gt, coco_dt, iou_type, print_function=_quiet)
            else:
                ev = eval_cls(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                ev.params.imgIds = sorted(set(int(i) for i in image_ids))
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[iou_type] = _evaluation(iou_type, ev)
    return out


def _results_for(results: list[dict], iou_type: str, copy: bool) -> list[dict]:
    """The results as ``loadRes`` should see them for ``iou_type``: segm without ``bbox``."""
    if iou_type == "segm":
        if copy:
            return [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        for r in results:
            r.pop("bbox", None)
        return results
    return [dict(r) for r in results] if copy else results


def _load_results(coco_gt, dts: list[dict]):
    """``coco_gt.loadRes(dts)``; an empty list too (pycocotools' loadRes fails on it)."""
    if dts:
        return coco_gt.loadRes(dts)
    res = type(coco_gt)()
    res.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                   "annotations": []}
    res.createIndex()
    return res


def _evaluation(iou_type: str, ev) -> Evaluation:
    stats = np.asarray(ev.stats, dtype=np.float64)[: len(STAT_NAMES)]
    precision = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
    ap, ap50 = {}, {}
    for k, cat in enumerate(ev.params.catIds):
        ap[int(cat)] = _mean_defined(precision[:, :, k, 0, -1])
        ap50[int(cat)] = _mean_defined(precision[0, :, k, 0, -1])
    return Evaluation(iou_type, stats, ap, ap50)


def _mean_defined(values: np.ndarray) -> float:
    kept = values[values > -1]
    return float(kept.mean()) if kept.size else float("nan")


def evaluate_files(gt_path: str | os.PathLike, results_path: str | os.PathLike,
                   iou_types: str | Sequence[str] | None = None, backend: str | None = None,
                   warn: Callable[[str], None] | None = None) -> dict[str, Evaluation]:
    """Check and score a COCO results file against a COCO ground-truth file (``segbench coco-eval``).

    ``iou_types``: ``bbox``, ``segm``, ``both`` or None (every type the results carry). ``warn`` hears of a
    results file without any detection.
    """
    backend = check_backend(backend)
    types = parse_iou_types(iou_types)
    gt = load_json(gt_path, "COCO ground truth")
    check_ground_truth(gt, str(gt_path), types or ())
    results, types = load_results(results_path, gt, types, gt_source=str(gt_path))
    if not results and warn is not None:
        warn(f"warning: {results_path} holds no detections: every AP is 0 (or -1 where COCOeval has none)")
    if "segm" in types:
        missing = next((i for i, ann in enumerate(gt["annotations"]) if "segmentation" not in ann), None)
        if missing is not None:
            raise DataError(f"{gt_path}: annotation {missing} (id {gt['annotations'][missing]['id']}) "
                            "lacks segmentation")
    return evaluate(gt, results, types, backend, consume=True)


def save_results(results: list[dict], path: str | os.PathLike) -> Path:
    """Write COCO results as JSON (what ``segbench coco-eval --results`` reads); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(results), encoding="utf-8")
    os.replace(tmp, path)
    return path


# -- the metric --------------------------------------------------------------------------------
class CocoAP:
    """COCO AP of ``instances`` predictions (see the module docstring).

    ``compute()`` gives ``coco_{ap,ap50,ap75,aps,apm,apl,ar1,ar10,ar100,ars,arm,arl}_{segm,bbox}``;
    ``per_class()`` ``coco_ap_*`` and ``coco_ap50_*`` per class index; ``results()`` the COCO
    results list; ``save_predictions(path)`` writes it.
    """

    name = "coco_ap"
    state_reductions = {"images": "cat"}

    def __init__(
        self,
        num_classes: int | None = None,
        background: int | None = None,
        iou_types: str | Sequence[str] | None = None,
        backend: str | None = DEFAULT_BACKEND,
        annotation_file: str | os.PathLike | None = None,
        category_ids: Sequence[int | None] | Mapping[int, int] | None = None,
        mask_threshold: float = 0.5,
    ) -> None:
        if num_classes is not None and (not _is_int(num_classes) or num_classes < 1):
            raise ConfigError(f"metric 'coco_ap': num_classes must be a positive integer, got {num_classes!r}")
        if background is not None and not _is_int(background):
            raise ConfigError(f"metric 'coco_ap': background must be an integer or None, got {background!r}")
        if isinstance(mask_threshold, bool) or not isinstance(mask_threshold, (int, float)) \
                or not 0 <= mask_threshold < 1:
            raise ConfigError(f"metric 'coco_ap': mask_threshold must be in [0, 1), got {mask_threshold!r}")
        self.num_classes = num_classes
        self.background = background
        self.iou_types = parse_iou_types(iou_types)
        self.backend = check_backend(backend)
        self.annotation_file = str(annotation_file) if annotation_file else None
        self.mask_threshold = float(mask_threshold)
        self._gt_file: dict | None = None
        self._category_map: dict[int, int] | None = None
        if category_ids is not None:
            self._category_map = self._parse_category_ids(category_ids)
        self.reset()

    # state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every image seen so far."""
        self._images: list[dict] = []
        self._evaluations: dict[str, Evaluation] | None = None

    def state_tensors(self) -> dict:
        """``{"images": uint8 [bytes]}``: one JSON line per image (gather with ``cat``)."""
        import torch

        blob = "".join(json.dumps(record, separators=(",", ":")) + "\n" for record in self._images).encode()
        return {"images": torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob
                else torch.zeros(0, dtype=torch.uint8)}

    def load_state_tensors(self, state: Mapping[str, Any]) -> None:
        """Replace the state by ``state`` (e.g. the byte rows gathered from every rank)."""
        if "images" not in state:
            raise DataError(f"metric 'coco_ap': state lacks ['images'], got {sorted(state)}")
        blob = bytes(state["images"].cpu().numpy().tobytes()).decode()
        self.reset()
        self._images = [json.loads(line) for line in blob.splitlines() if line]

    # update --------------------------------------------------------------------------------
    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        """Add a batch: ``instances`` in each prediction; the targets' instance annotations."""
        if len(predictions) != len(targets):
            raise DataError(f"metric 'coco_ap': {len(predictions)} predictions for {len(targets)} targets")
        self._evaluations = None
        for prediction, target in zip(predictions, targets):
            index = len(self._images)
            if "instances" not in prediction:
                raise DataError(f"metric 'coco_ap' needs 'instances' in every prediction; got keys "
                                f"{sorted(prediction)}")
            image_id = target.get("image_id")
            if image_id is not None:
                image_id = int(image_id.item() if hasattr(image_id, "item") else image_id)
            record: dict[str, Any] = {"image_id": image_id}
            size = _target_size(target)
            dets = self._encode_predictions(prediction["instances"], size, index)
            record["height"], record["width"] = size or dets.get("size") or (None, None)
            dets.pop("size", None)
            record["dets"] = dets
            if self.annotation_file is None:
                record["gt"] = self._encode_targets(target, (record["height"], record["width"]), index)
            self._images.append(record)

    def _encode_predictions(self, instances: Mapping[str, Any], size: tuple[int, int] | None, index: int) -> dict:
        where = f"metric 'coco_ap': image {index}: predicted instances"
        for key in ("boxes", "classes", "scores"):
            if key not in instances:
                raise DataError(f"{where} lack '{key}'; got keys {sorted(instances)}")
        boxes = _array(instances["boxes"], np.float64).reshape(-1, 4)
        classes = _array(instances["classes"], np.int64).reshape(-1)
        scores = _array(instances["scores"], np.float64).reshape(-1)
        n = len(classes)
        if len(boxes) != n or len(scores) != n:
            raise DataError(f"{where}: {len(boxes)} boxes, {n} classes and {len(scores)} scores")
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise DataError(f"{where} have non-finite boxes or scores")
        if (boxes[:, 2:] < boxes[:, :2]).any():
            k = int(np.flatnonzero((boxes[:, 2:] < boxes[:, :2]).any(1))[0])
            raise DataError(f"{where}: box {k} {boxes[k].tolist()} is not XYXY with x2 >= x1, y2 >= y1")
        self._check_classes(classes, where)
        out: dict[str, Any] = {
            "classes": classes.tolist(),
            "scores": scores.tolist(),
            "boxes": _xywh(boxes).tolist(),
        }
        masks = instances.get("masks")
        if masks is not None:
            masks = self._binary(masks)
            if masks.ndim != 3 or len(masks) != n:
                raise DataError(f"{where}: masks of shape {tuple(masks.shape)} for {n} instances; "
                                "expected [N, H, W]")
            if size is not None and tuple(masks.shape[1:]) != tuple(size):
                raise DataError(f"{where}: masks of size {masks.shape[1]}x{masks.shape[2]} but the image is "
                                f"{size[0]}x{size[1]} (resize them to the original image size)")
            out["counts"] = encode_masks(masks)
            out["size"] = tuple(int(v) for v in masks.shape[1:])
        elif size is None and self.annotation_file is None:
            raise DataError(f"{where}: no image size (the target has no masks and the prediction none)")
        return out

    def _binary(self, masks: Any) -> np.ndarray:
        """Bool masks ``[N, H, W]``: float probabilities above ``mask_threshold``, integers non-zero."""
        if hasattr(masks, "detach"):
            masks = masks.detach()
            if masks.is_floating_point():
                masks = masks > self.mask_threshold
            masks = masks.cpu().numpy()
        masks = np.asarray(masks)
        if masks.dtype.kind == "f":
            return masks > self.mask_threshold
        return masks.astype(bool, copy=False)

    def _encode_targets(self, target: Mapping[str, Any], size: tuple[int, int], index: int) -> dict:
        where = f"metric 'coco_ap': target {index}"
        for key in ("boxes", "classes", "masks"):
            if key not in target:
                raise DataError(f"{where} lacks '{key}' (needed to build the COCO ground truth; or set "
                                f"the option annotation_file); got keys {sorted(target)}")
        classes = _array(target["classes"], np.int64).reshape(-1)
        n = len(classes)
        boxes = _array(target["boxes"], np.float64).reshape(-1, 4)
        masks = _array(target["masks"], bool)
        if n == 0:
            masks = masks.reshape(0, *size)
        crowd = (_array(target["iscrowd"], bool).reshape(-1) if target.get("iscrowd") is not None
                 else np.zeros(n, dtype=bool))
        if len(boxes) != n or masks.shape != (n, *size) or len(crowd) != n:
            raise DataError(f"{where}: {len(boxes)} boxes, {n} classes, masks of shape {tuple(masks.shape)} and "
                            f"{len(crowd)} iscrowd flags; expected N boxes, classes, flags and masks [N, H, W]")
        self._check_classes(classes, where)
        return {
            "classes": classes.tolist(),
            "boxes": _xywh(boxes).tolist(),
            "areas": masks.sum(axis=(1, 2), dtype=np.float64).tolist(),
            "iscrowd": crowd.astype(int).tolist(),
            "counts": encode_masks(masks),
        }

    def _check_classes(self, classes: np.ndarray, where: str) -> None:
        if not classes.size:
            return
        bad = (classes < 0) | (classes == (self.background if self.background is not None else -1))
        if self.num_classes is not None:
            bad |= classes >= self.num_classes
        if bad.any():
            c = int(classes[bad][0])
            what = "the background" if c == self.background else f"outside 0..{(self.num_classes or 0) - 1}"
            raise DataError(f"{where} have class {c}, which is {what}")

    # ground truth --------------------------------------------------------------------------
    def _parse_category_ids(self, value: Any) -> dict[int, int]:
        if isinstance(value, Mapping):
            items = list(value.items())
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        else:
            raise ConfigError(f"metric 'coco_ap': category_ids must be a list (class index -> category id) "
                              f"or a dict, got {value!r}")
        mapping = {}
        for c, cat in items:
            if cat is None or (self.background is not None and int(c) == self.background):
                continue
            if not _is_int(c) or not _is_int(cat):
                raise ConfigError(f"metric 'coco_ap': category_ids entry {c!r}: {cat!r} is not an integer pair")
            mapping[int(c)] = int(cat)
        if len(set(mapping.values())) != len(mapping):
            raise ConfigError("metric 'coco_ap': category_ids maps two classes to one category id")
        return mapping

    def _file_ground_truth(self) -> dict:
        if self._gt_file is None:
            doc = load_json(self.annotation_file, "COCO ground truth")
            check_ground_truth(doc, self.annotation_file, self.iou_types or IOU_TYPES)
            self._gt_file = doc
            file_ids = sorted(cat["id"] for cat in doc["categories"])
            if self._category_map is None:  # the k-th class other than the background <-> the k-th id
                classes = [c for c in range(self.num_classes or len(file_ids) + (self.background is not None))
                           if c != self.background]
                if len(classes) != len(file_ids):
                    raise ConfigError(
                        f"metric 'coco_ap': {self.annotation_file} has {len(file_ids)} categories but the dataset "
                        f"{len(classes)} classes besides the background; set the option category_ids")
                self._category_map = dict(zip(classes, file_ids))
            unknown = sorted(set(self._category_map.values()) - set(file_ids))
            if unknown:
                raise ConfigError(f"metric 'coco_ap': category_ids name {unknown[0]}, which is not a category of "
                                  f"{self.annotation_file}")
        return self._gt_file

    def _seen_classes(self) -> set[int]:
        return {c for record in self._images for key in ("gt", "dets") if key in record
                for c in record[key]["classes"]}

    def _category(self, c: int) -> int:
        if self._category_map is not None:
            if c not in self._category_map:
                raise DataError(f"metric 'coco_ap': class {c} has no category in category_ids")
            return self._category_map[c]
        return c + 1 - int(self.background is not None and c > self.background)  # export_coco's numbering

    def _image_ids(self) -> list[int]:
        """The COCO image id of each image seen: the target's ``image_id``, else (file order of
        ``annotation_file``, or 1, 2, ...) by position."""
        if self.annotation_file is not None:
            order = [img["id"] for img in self._file_ground_truth()["images"]]
        ids = []
        for i, record in enumerate(self._images):
            if record["image_id"] is not None:
                ids.append(record["image_id"])
            elif self.annotation_file is not None:
                if i >= len(order):
                    raise DataError(f"metric 'coco_ap': image {i} has no image_id and {self.annotation_file} "
                                    f"has only {len(order)} images")
                ids.append(order[i])
            else:
                ids.append(i + 1)
        if len(set(ids)) != len(ids):
            dup = next(v for v in ids if ids.count(v) > 1)
            raise DataError(f"metric 'coco_ap': image id {dup} was seen twice (targets' image_id repeat, or mix "
                            "with images that have none)")
        return ids

    def ground_truth(self) -> dict:
        """The COCO ground-truth dict the results are scored against (the file's, or built from the targets)."""
        if self.annotation_file is not None:
            return self._file_ground_truth()
        ids = self._image_ids()
        classes = range(self.num_classes) if self.num_classes is not None else sorted(self._seen_classes())
        doc: dict[str, Any] = {
            "info": {"description": "segbench coco_ap ground truth from the dataset's targets"},
            "images": [], "annotations": [],
            "categories": [{"id": self._category(c), "name": str(c), "supercategory": "object"}
                           for c in classes if c != self.background],
        }
        for image_id, record in zip(ids, self._images):
            h, w = record["height"], record["width"]
            doc["images"].append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.jpg"})
            gt = record["gt"]
            for c, box, area, crowd, counts in zip(gt["classes"], gt["boxes"], gt["areas"], gt["iscrowd"],
                                                   gt["counts"]):
                doc["annotations"].append({
                    "id": len(doc["annotations"]) + 1, "image_id": image_id, "category_id": self._category(c),
                    "bbox": box, "area": area, "iscrowd": crowd,
                    "segmentation": {"size": [h, w], "counts": counts},
                })
        return doc

    # results -------------------------------------------------------------------------------
    def results(self) -> list[dict]:
        """The predictions as COCO result dicts (XYWH ``bbox``, RLE ``segmentation`` when predicted,
        original category ids), in update order."""
        out = []
        ids = self._image_ids()
        if self.annotation_file is not None:
            sizes = {img["id"]: (img["height"], img["width"]) for img in self._file_ground_truth()["images"]}
        for image_id, record in zip(ids, self._images):
            h, w = record["height"], record["width"]
            if self.annotation_file is not None:
                if image_id not in sizes:
                    raise DataError(f"metric 'coco_ap': image id {image_id} is not in {self.annotation_file}")
                if "counts" in record["dets"] and sizes[image_id] != (h, w):
                    raise DataError(f"metric 'coco_ap': image {image_id} is {sizes[image_id][0]}x"
                                    f"{sizes[image_id][1]} in {self.annotation_file} but its predicted masks are "
                                    f"{h}x{w}")
            dets = record["dets"]
            counts = dets.get("counts")
            for k, (c, score, box) in enumerate(zip(dets["classes"], dets["scores"], dets["boxes"])):
                r = {"image_id": image_id, "category_id": self._category(c), "bbox": box, "score": score}
                if counts is not None:
                    r["segmentation"] = {"size": [h, w], "counts": counts[k]}
                out.append(r)
        return out

    def save_predictions(self, path: str | os.PathLike) -> Path:
        """Write :meth:`results` as a COCO results JSON; returns the path."""
        return save_results(self.results(), path)

    def _types(self) -> tuple[str, ...]:
        if self.iou_types is not None:
            return self.iou_types
        with_masks = all("counts" in record["dets"] for record in self._images)
        return IOU_TYPES if with_masks else ("bbox",)

    def evaluations(self) -> dict[str, Evaluation]:
        """COCOeval over every image seen, per iou type."""
        types = self._types()
        if "segm" in types and not all("counts" in record["dets"] for record in self._images):
            raise DataError("metric 'coco_ap': iou_types includes segm but some predictions have no masks")
        results = self.results()
        gt = self.ground_truth()
        image_ids = self._image_ids() if self.annotation_file is not None else None
        return evaluate(gt, results, types, self.backend, image_ids=image_ids, consume=True)

    def compute(self) -> dict[str, float]:
        """The twelve COCO numbers per iou type, keyed ``coco_<stat>_<type>`` (NaN before any image)."""
        if not self._images:
            return {metric_key(s, t): float("nan") for t in (self.iou_types or IOU_TYPES) for s in STAT_NAMES}
        self._evaluations = self.evaluations()
        out = {}
        for evaluation in self._evaluations.values():
            out.update(evaluation.as_dict())
        return out

    def per_class(self) -> dict[str, list[float]]:
        """``coco_ap_<type>`` and ``coco_ap50_<type>`` per class index (NaN for the background and
        classes without ground truth); reuses the evaluation of :meth:`compute` when nothing was added since."""
        if not self._images:
            return {}
        if self._evaluations is None:
            self._evaluations = self.evaluations()
        c = self.num_classes or 1 + max(self._seen_classes() | set(self._category_map or ()), default=0)
        out = {}
        for t, evaluation in self._evaluations.items():
            for name, values in (("ap", evaluation.ap), ("ap50", evaluation.ap50)):
                row = [float("nan")] * c
                for k in range(c):
                    if k == self.background:
                        continue
                    try:
                        cat = self._category(k)
                    except DataError:
                        continue
                    row[k] = values.get(cat, float("nan"))
                out[metric_key(name, t)] = row
        return out


def encode_masks(masks: np.ndarray) -> list[str]:
    """Compressed COCO RLE ``counts`` (str) of bool masks ``[N, H, W]`` (pycocotools' encoder)."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8)  # [H, W, N], column-major
    return [rle["counts"].decode("ascii") for rle in mask_utils.encode(fortran)]


def _xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.astype(np.float64, copy=True)
    out[:, 2:] -= out[:, :2]
    return out


def _array(value: Any, dtype: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value).astype(dtype, copy=False)


def _target_size(target: Mapping[str, Any]) -> tuple[int, int] | None:
    """(H, W) of the image from the target's ``masks`` ``[N, H, W]`` or ``mask`` ``[H, W]``."""
    for key, dims in (("masks", 3), ("mask", 2)):
        value = target.get(key)
        shape = tuple(getattr(value, "shape", ())) if value is not None else ()
        if len(shape) == dims:
            return int(shape[-2]), int(shape[-1])
    return None
