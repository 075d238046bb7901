"""``segbench show RUN``: a PNG grid of images with their class maps overlaid, one panel per present class.

Like the CAM figures of Zhou et al. (2016): each row is an image, the first
panel the image with its label map or classes, then one panel per class
present in the image (ground truth; the top-scoring classes where a dataset
has no labels), the class's score map min-max normalised over the image and
overlaid as a heat map, titled with the class name and its image score.

``--confusion`` draws the record's row-normalised ``miou`` confusion matrix
(:func:`show_confusion`), ``--predictions`` rows of image | ground truth |
prediction (:func:`show_predictions`, torchvision's drawing utilities),
``--curves`` the training loss and validation curves (:func:`show_curves`). See
``docs/analysis.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from segbench.errors import ConfigError


def load_run(run_id: str, runs: str | os.PathLike | None = None, device: str = "cpu") -> dict[str, Any]:
    """Rebuild a finished run's method with its weights: ``record``, ``method``, ``dataset`` specs, ``data``
    (the run's dataset options), ``model`` (in eval mode) and ``device``."""
    from segbench.engine.device import resolve_device
    from segbench.engine.reeval import build_run_model, finished_record
    from segbench.engine.run import runs_dir
    from segbench.plugins import get_registry
    from segbench.results.store import RunStore

    store = RunStore(runs_dir(runs))
    record = finished_record(store, run_id)
    registry = get_registry()
    method_spec = registry.method(record["method"])
    dataset_spec = registry.dataset(record["dataset"])
    classes = len(record["class_names"]) if dataset_spec.classes_from_files else dataset_spec.num_classes
    model = build_run_model(method_spec, classes, store, record)
    torch_device = resolve_device(device)
    return {"record": record, "method": method_spec, "dataset": dataset_spec,
            "data": {**dataset_spec.options, **record["config"]["data"]},
            "model": model.to(torch_device).eval(), "device": torch_device}


def show_run(run_id: str, out: str | os.PathLike, *, images: int = 6, max_classes: int = 3, split: str | None = None,
             root: str | None = None, runs: str | os.PathLike | None = None, device: str = "cpu",
             start: int = 0, overwrite: bool = False) -> Path:
    """Write the class-map grid of ``images`` evaluation images of run ``run_id`` to ``out`` (PNG)."""
    out = check_out(out, overwrite)
    if images < 1 or max_classes < 1:
        raise ConfigError(f"--images and --classes must be at least 1, got {images} and {max_classes}")
    run = load_run(run_id, runs, device)
    if "score_maps" not in run["method"].outputs:
        raise ConfigError(f"method '{run['record']['method']}' has no score maps to show")
    data = eval_data(run, split, root)
    if start < 0 or start >= len(data):
        raise ConfigError(f"--start {start} is outside the split's {len(data)} images")
    rows = predict(run, data, range(start, min(start + images, len(data))))
    plt = pyplot()
    return save_figure(_draw(rows, run["dataset"], max_classes, plt), out, plt, tight=True)


def check_out(out: str | os.PathLike, overwrite: bool) -> Path:
    """``out`` as a Path; a ConfigError when it exists and ``overwrite`` is False."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; use --force to overwrite it")
    return out


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, out: Path, plt, *, dpi: int = 100, tight: bool = False) -> Path:
    """Write ``figure`` to ``out`` as a PNG through a temporary file (a reader never sees half of it), close it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    figure.savefig(tmp, dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(figure)
    os.replace(tmp, out)
    return out


def eval_data(run: dict[str, Any], split: str | None = None, root: str | None = None):
    """The run's evaluation split (or ``split``) built with the run's dataset options."""
    from segbench.api import create_dataset
    from segbench.specs import resolve_classes

    from segbench.engine.reeval import recorded_root

    data = create_dataset(run["dataset"].name, split or run["record"]["split"],
                          root=recorded_root(run["record"], root), **run["data"])
    run["dataset"] = resolve_classes(run["dataset"], data)  # the classes read from the files, if so
    return data


def run_postprocessors(run: dict[str, Any]) -> list[Any]:
    """The post-processors the run's evaluation applied (the class-map rule, ``densecrf``...), with its options."""
    from segbench.engine.config import resolve_config
    from segbench.engine.run import postprocess_chain, postprocess_objects
    from segbench.plugins import get_registry

    method, dataset, saved = run["method"], run["dataset"], run["record"]["config"].get("postprocess")
    asked = None if saved is None else [name for name in saved if name != "cam_mask"]
    chain, _ = postprocess_chain(method, dataset, get_registry(), asked)
    config = resolve_config(method, dataset, {}, run["record"]["recipe"], {}, chain)
    for name, options in (saved or {}).items():
        config.postprocess.setdefault(name, {}).update(options)
    return postprocess_objects(chain, config, method, dataset)


def predict(run: dict[str, Any], data: Any, indices, postprocessors: list[Any] | tuple = ()) -> list[tuple]:
    """``(sample, image, prediction)`` for each index: the run's prediction at the image's size, as its evaluation
    made it (:func:`segbench.engine.evaluate.predict_images`: its eval size and test-time augmentation), through
    ``postprocessors``."""
    import torch

    from segbench.engine.data import Normalizer
    from segbench.engine.evaluate import predict_images

    train = run["record"]["config"]["train"]
    normalize = Normalizer(run["dataset"].mean, run["dataset"].std, run["device"], train.get("channels_last", False))
    samples = [data[index] for index in indices]
    images = [sample["image"].as_subclass(torch.Tensor) for sample in samples]
    with torch.inference_mode():
        predictions = predict_images(run["model"], images, [tuple(image.shape[-2:]) for image in images], normalize,
                                     run["device"], eval_size=train.get("eval_size", 0),
                                     postprocessors=postprocessors, tta=train.get("tta") or "",
                                     slide=train.get("slide") or "")
    return list(zip(samples, images, predictions))


def classes_to_show(labels: Any, scores: Any, background: int | None, max_classes: int) -> list[int]:
    """The image's labelled classes (highest score first), else its top-scoring classes; never the background."""
    import torch

    order = torch.argsort(scores.float(), descending=True).tolist() if scores is not None else []
    present = [c for c in order if labels is not None and labels[c] > 0 and c != background]
    if labels is not None and not present:
        present = [int(c) for c in torch.nonzero(labels > 0).flatten() if int(c) != background]
    if not present:
        present = [c for c in order if c != background]
    return present[:max_classes]


def _draw(rows: list, dataset_spec, max_classes: int, plt):
    columns = 1 + max_classes
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.2 * columns, 2.2 * len(rows)), squeeze=False)
    for r, (sample, image, prediction) in enumerate(rows):
        picture = image.permute(1, 2, 0).numpy()
        labels = sample["target"].get("labels")
        scores = prediction.get("scores")
        maps = prediction["score_maps"]
        shown = classes_to_show(labels, scores, dataset_spec.background, max_classes)
        axes[r, 0].imshow(picture)
        names = ", ".join(dataset_spec.classes[c] for c in shown)
        axes[r, 0].set_title(f"{sample['meta']['id']}\n{names}", fontsize=7)
        for k in range(max_classes):
            ax = axes[r, 1 + k]
            if k < len(shown):
                c = shown[k]
                heat = maps[c].float()
                heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
                ax.imshow(picture)
                ax.imshow(heat.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
                score = f" {float(scores[c]):.2f}" if scores is not None else ""
                ax.set_title(f"{dataset_spec.classes[c]}{score}", fontsize=7)
        for ax in axes[r]:
            ax.axis("off")
    figure.tight_layout()
    return figure


# -- the confusion matrix ----------------------------------------------------------------------------------
def confusion_of(run_id: str, runs: str | os.PathLike | None = None) -> tuple[dict[str, Any], Any]:
    """The record of run ``run_id`` and its ``miou`` confusion matrix (int64 ``[C, C]``); a one-line ConfigError
    saying why when the record has none."""
    import torch

    from segbench.engine.run import runs_dir
    from segbench.results.store import RunStore

    record = RunStore(runs_dir(runs)).get(run_id).to_dict()
    matrix = (record.get("confusion") or {}).get("miou")
    if matrix is None:
        if record["status"] != "finished":
            why = f"it has status '{record['status']}'"
        elif "miou" in record["metrics"]:
            why = "its record was written before segbench kept them (run it again with --force)"
        else:
            why = f"method '{record['method']}' on '{record['dataset']}' has no miou (no label maps to count)"
        raise ConfigError(f"run '{record['run_id']}' has no confusion matrix: {why}")
    return record, torch.tensor(matrix, dtype=torch.int64)


def row_normalised(matrix: Any) -> Any:
    """Each row divided by its sum (the share of a ground-truth class's pixels given to each class); 0 where a
    class has no ground-truth pixel."""
    counts = matrix.double()
    return counts / counts.sum(1, keepdim=True).clamp_min(1)


def most_confused(matrix: Any, top: int) -> list[int]:
    """The ``top`` classes of the largest off-diagonal shares of the row-normalised matrix, in class order:
    the classes of the most confused (ground truth, prediction) pairs, both ends."""
    shares = row_normalised(matrix)
    shares.fill_diagonal_(0)
    chosen: list[int] = []
    for flat in shares.flatten().argsort(descending=True).tolist():
        if len(chosen) >= top or shares.flatten()[flat] <= 0:
            break
        for c in divmod(flat, shares.shape[1]):
            if c not in chosen and len(chosen) < top:
                chosen.append(c)
    return sorted(chosen)


def confusion_layout(classes: int) -> tuple[float, float]:
    """(figure side in inches, font size in points) for a matrix of ``classes`` classes: 21 and 81 stay readable."""
    return min(max(0.3 * classes + 2.5, 5.0), 32.0), max(7.0, min(10.0, 200.0 / classes))


def show_confusion(run_id: str, out: str | os.PathLike, *, top: int | None = None,
                   runs: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write run ``run_id``'s row-normalised ``miou`` confusion matrix, with its class names, to ``out`` (PNG).

    ``top`` keeps the classes of the most confused pairs (:func:`most_confused`); rows stay normalised over
    every class. The figure is square, ``confusion_layout(n)[0]`` inches at 100 dpi.
    """
    out = check_out(out, overwrite)
    if top is not None and top < 2:
        raise ConfigError(f"--top must be at least 2, got {top}")
    record, matrix = confusion_of(run_id, runs)
    names = list(record.get("class_names") or range(len(matrix)))
    if len(names) != len(matrix):
        raise ConfigError(f"run '{record['run_id']}': {len(matrix)} x {len(matrix)} confusion matrix for "
                          f"{len(names)} class names")
    keep = most_confused(matrix, top) if top and top < len(names) else list(range(len(names)))
    if not keep:
        raise ConfigError(f"run '{record['run_id']}' confuses no classes (the matrix is diagonal)")
    shares = row_normalised(matrix)[keep][:, keep].numpy()
    side, font = confusion_layout(len(keep))
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(side, side), layout="constrained")
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    labels = [str(names[c]) for c in keep]
    ax.set_xticks(range(len(keep)), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(len(keep)), labels, fontsize=font)
    ax.set_xlabel("prediction", fontsize=font + 1)
    ax.set_ylabel("ground truth", fontsize=font + 1)
    if len(keep) <= 25:
        for (i, j), value in zip(((i, j) for i in range(len(keep)) for j in range(len(keep))), shares.flatten()):
            if value >= 0.005:
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=font * 0.8,
                        color="white" if value > 0.5 else "black")
    which = f"\nthe {len(keep)} most confused of {len(names)} classes" if len(keep) < len(names) else ""
    ax.set_title(f"{record['method']} ({record['recipe']}) on {record['dataset']}/{record['split']}\n"
                 f"share of each ground-truth class's pixels (rows sum to 1 over all classes){which}",
                 fontsize=font + 1)
    figure.colorbar(image, ax=ax, shrink=0.6)
    return save_figure(figure, out, plt)


# -- predictions beside the ground truth -------------------------------------------------------------------
PANEL = 2.4
"""Inches per panel of the prediction grids (100 dpi: 240 px)."""
LEGEND = 0.6
"""Inches under the panels for the class legend."""
VOID = (255, 255, 255)


def class_colours(count: int) -> list[tuple[int, int, int]]:
    """One RGB colour per class: matplotlib's ``tab20`` up to 20 classes, else ``turbo`` sampled evenly."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if count <= 20 else "turbo"]
    points = range(count) if count <= 20 else [i / max(count - 1, 1) for i in range(count)]
    return [tuple(int(255 * v) for v in cmap(p)[:3]) for p in points]


def as_uint8(image: Any) -> Any:
    """An image tensor ``[3, H, W]`` as uint8 (float images are taken in [0, 1])."""
    import torch

    image = image.as_subclass(torch.Tensor) if isinstance(image, torch.Tensor) else torch.as_tensor(image)
    return image if image.dtype == torch.uint8 else (image.float() * 255).round().clamp(0, 255).to(torch.uint8)


class Palette:
    """Class names and colours, and the classes drawn so far (the figure's legend)."""

    def __init__(self, names: list[str], background: int | None) -> None:
        self.names, self.background = names, background
        self.colours = class_colours(len(names))
        self.used: dict[str, tuple[int, int, int]] = {}

    def colour(self, c: int) -> tuple[int, int, int]:
        self.used.setdefault(self.names[c], self.colours[c])
        return self.colours[c]

    def label_map(self, image: Any, mask: Any, ignore_index: int = 255) -> Any:
        """``image`` with each class of the label map ``mask`` but the background drawn over it (void white)."""
        import torch
        from torchvision.utils import draw_segmentation_masks

        mask = mask.as_subclass(torch.Tensor).long()
        present = [c for c in mask.unique().tolist() if c != self.background and 0 <= c < len(self.names)]
        masks, colours = [mask == c for c in present], [self.colour(c) for c in present]
        if (mask == ignore_index).any():
            masks.append(mask == ignore_index)
            colours.append(self.used.setdefault("void", VOID))
        if not masks:
            return image
        return draw_segmentation_masks(image, torch.stack(masks), alpha=0.6, colors=colours)

    def instances(self, image: Any, masks: Any, boxes: Any, classes: Any, scores: Any = None) -> Any:
        """``image`` with instance masks and boxes, each box labelled with its class (and score)."""
        import torch
        from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

        classes = [int(c) for c in classes]
        if not classes:
            return image
        colours = [self.colour(c) for c in classes]
        masks = masks.as_subclass(torch.Tensor)
        masks = masks if masks.dtype == torch.bool else masks > 0.5
        drawn = draw_segmentation_masks(image, masks, alpha=0.5, colors=colours)
        labels = [self.names[c] + ("" if scores is None else f" {float(s):.2f}")
                  for c, s in zip(classes, scores if scores is not None else classes)]
        from matplotlib import font_manager

        size = max(6, min(image.shape[-2:]) // 24)  # labels readable, not covering a small image
        return draw_bounding_boxes(drawn, boxes.as_subclass(torch.Tensor).float(), labels=labels, colors=colours,
                                   font=font_manager.findfont("DejaVu Sans"), font_size=size, fill_labels=True,
                                   label_colors="white")


def instance_mode(run: dict[str, Any]) -> bool:
    """Whether the run's predictions are drawn as instances (boxes + masks) rather than label maps."""
    return "instances" in run["method"].outputs and {"boxes", "masks"} <= set(run["dataset"].annotations)


def prediction_panel(palette: Palette, image: Any, prediction: dict, instances: bool, threshold: float) -> Any:
    """The drawn prediction: instances scoring at least ``threshold``, or the label map."""
    if instances:
        found = prediction["instances"]
        keep = found["scores"] >= threshold
        return palette.instances(image, found["masks"][keep], found["boxes"][keep], found["classes"][keep],
                                 found["scores"][keep])
    return palette.label_map(image, prediction["mask"])


def truth_panel(palette: Palette, image: Any, target: dict, instances: bool) -> Any:
    """The drawn ground truth: the target's instances, or its label map."""
    if instances:
        return palette.instances(image, target["masks"], target["boxes"], target["classes"])
    return palette.label_map(image, target["mask"])


def panel_figure(panels: list[list[tuple[Any, str]]], palette: Palette, plt):
    """A grid of drawn images (rows of ``(uint8 [3, H, W], title)``), the classes drawn in a legend under it.

    The figure is ``PANEL`` inches per panel wide and per row high, plus ``LEGEND`` inches.
    """
    from matplotlib.patches import Patch

    columns = max(len(row) for row in panels)
    figure, axes = plt.subplots(len(panels), columns, figsize=(PANEL * columns, PANEL * len(panels) + LEGEND),
                                squeeze=False, layout="constrained")
    for r, row in enumerate(panels):
        for k, ax in enumerate(axes[r]):
            if k < len(row):
                ax.imshow(row[k][0].permute(1, 2, 0).numpy())
                ax.set_title(row[k][1], fontsize=7)
            ax.axis("off")
    handles = [Patch(facecolor=tuple(v / 255 for v in rgb), edgecolor="0.4", label=name)
               for name, rgb in palette.used.items()]
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 2 * columns), fontsize=7)
    return figure


def show_predictions(run_id: str, out: str | os.PathLike, *, images: int = 6, start: int = 0,
                     split: str | None = None, root: str | None = None, runs: str | os.PathLike | None = None,
                     device: str = "cpu", threshold: float = 0.5, overwrite: bool = False) -> Path:
    """Write image | ground truth | prediction rows of ``images`` evaluation images of run ``run_id`` (PNG).

    Label maps (after the run's post-processors: the class-map rule of image-supervised methods) are drawn
    with torchvision's ``draw_segmentation_masks``; instances (``mask_rcnn``) as masks and labelled boxes
    (``draw_bounding_boxes``), those scoring at least ``threshold``.
    """
    out = check_out(out, overwrite)
    if images < 1:
        raise ConfigError(f"--images must be at least 1, got {images}")
    run = load_run(run_id, runs, device)
    record, dataset = run["record"], run["dataset"]
    instances = instance_mode(run)
    post = [] if instances else run_postprocessors(run)
    if not instances and "mask" not in dataset.annotations:
        raise ConfigError(f"dataset '{dataset.name}' has no masks or boxes to draw predictions against")
    data = eval_data(run, split, root)
    if start < 0 or start >= len(data):
        raise ConfigError(f"--start {start} is outside the split's {len(data)} images")
    rows = predict(run, data, range(start, min(start + images, len(data))), post)
    if not instances and "mask" not in rows[0][2]:
        raise ConfigError(f"method '{record['method']}' gives no label maps or instances to draw")
    dataset = run["dataset"]  # with the classes read from the files, if so
    palette = Palette(list(record.get("class_names") or dataset.classes), dataset.background)
    panels = []
    for sample, image, prediction in rows:
        image = as_uint8(image)
        panels.append([(image, sample["meta"]["id"]),
                       (truth_panel(palette, image, sample["target"], instances), "ground truth"),
                       (prediction_panel(palette, image, prediction, instances, threshold),
                        f"{record['method']} ({record['recipe']})")])
    plt = pyplot()
    return save_figure(panel_figure(panels, palette, plt), out, plt)


# -- training curves ----------------------------------------------------------------------------------------
def show_curves(run_id: str, out: str | os.PathLike, *, runs: str | os.PathLike | None = None,
                overwrite: bool = False) -> Path:
    """Write run ``run_id``'s curves (PNG): the smoothed training loss against the step, and beside it each
    validation metric (``eval_every``) with the checkpoint the run evaluated marked; a one-line ConfigError for
    a record without curves."""
    from segbench.engine.run import runs_dir
    from segbench.results.store import RunStore

    out = check_out(out, overwrite)
    record = RunStore(runs_dir(runs)).get(run_id).to_dict()
    curves = {k: v for k, v in (record.get("curves") or {}).items() if v}
    if not curves:
        raise ConfigError(f"run '{record['run_id']}' has no curves (written with log_every=0, before segbench "
                          f"kept them, or it did not train)")
    validation = record.get("validation") or {}
    val = [k for k in curves if k.startswith("val/")]
    main = [k for k in val if k[4:] in _primary_keys(record) or k[4:] == validation.get("select")]
    val = main or val  # each metric's headline value (miou, cls_map ...), not its every key
    plt = pyplot()
    figure, axes = plt.subplots(1, 1 + bool(val), figsize=(5.5 * (1 + bool(val)), 3.8), squeeze=False,
                                layout="constrained")
    if "loss" in curves:
        steps, values = zip(*curves["loss"])
        axes[0, 0].plot(steps, values, color="tab:red")
    axes[0, 0].set(xlabel="step", ylabel="smoothed loss", title="training loss")
    for key in val:
        points = [(s, v) for s, v in curves[key] if v is not None]
        if points:
            steps, values = zip(*points)
            axes[0, 1].plot(steps, [100 * v for v in values], marker="o", markersize=3, label=key[4:])
    if val:
        if validation.get("step") is not None:
            axes[0, 1].axvline(validation["step"], color="0.5", linestyle="--",
                               label=f"evaluated: step {validation['step']} ({validation.get('chosen')})")
        axes[0, 1].set(xlabel="step", ylabel="%", title=f"validation on '{validation.get('split', '?')}'")
        axes[0, 1].legend(fontsize=7)
    figure.suptitle(f"{record['method']} ({record['recipe']}) on {record['dataset']}: {record['run_id']}",
                    fontsize=9)
    return save_figure(figure, out, plt)


def _primary_keys(record: dict[str, Any]) -> set[str]:
    """The metric keys leaderboards show (each registered metric's ``primary``) among the record's metrics."""
    from segbench.engine.validation import selectable
    from segbench.plugins import get_registry

    metrics = get_registry().metrics
    return set(selectable({n: metrics[n] for n in record["config"].get("metrics", {}) if n in metrics}).values())
