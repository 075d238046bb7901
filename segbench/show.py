"""``segbench show RUN``: a PNG grid of images with their class maps overlaid, one panel per present class.

Like the CAM figures of Zhou et al. (2016): each row is an image, the first
panel the image with its label map or classes, then one panel per class
present in the image (ground truth; the top-scoring classes where a dataset
has no labels), the class's score map min-max normalised over the image and
overlaid as a heat map, titled with the class name and its image score.
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from segbench.api import create_dataset
    from segbench.engine.data import Normalizer
    from segbench.specs import resolve_classes
    from segbench.engine.evaluate import resize_prediction

    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; use --force to overwrite it")
    if images < 1 or max_classes < 1:
        raise ConfigError(f"--images and --classes must be at least 1, got {images} and {max_classes}")
    run = load_run(run_id, runs, device)
    record, dataset_spec, model = run["record"], run["dataset"], run["model"]
    if "score_maps" not in run["method"].outputs:
        raise ConfigError(f"method '{record['method']}' has no score maps to show")
    data = create_dataset(dataset_spec.name, split or record["split"], root=root, **run["data"])
    dataset_spec = resolve_classes(dataset_spec, data)  # the classes read from the files, if so
    if start < 0 or start >= len(data):
        raise ConfigError(f"--start {start} is outside the split's {len(data)} images")
    indices = list(range(start, min(start + images, len(data))))
    normalize = Normalizer(dataset_spec.mean, dataset_spec.std, run["device"])
    eval_size = record["config"]["train"].get("eval_size", 0)
    rows = []
    with torch.inference_mode():
        for index in indices:
            sample = data[index]
            image = sample["image"].as_subclass(torch.Tensor)
            net_in = image
            if eval_size:
                from torchvision.transforms.v2 import functional as TF

                net_in = TF.resize(image, [eval_size, eval_size], antialias=True)
            prediction = model.predict(normalize([net_in]))[0]
            prediction = resize_prediction(prediction, tuple(image.shape[-2:]), tuple(net_in.shape[-2:]))
            rows.append((sample, image, prediction))
    figure = _draw(rows, dataset_spec, max_classes, plt)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    figure.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(figure)
    os.replace(tmp, out)
    return out


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
