"""Evaluation: predict, resize every prediction back to the original image size, update metrics, forget the batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from segbench.engine.data import Normalizer, group_by_size, targets_to
from segbench.engine.device import autocast
from segbench.engine.distributed import SINGLE, DistInfo, broadcast, gather, gather_metrics


@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_class: dict[str, list[float]] = field(default_factory=dict)
    images: int = 0
    seconds: float = 0.0
    labels: Any = None  # [N, C] image-level labels seen, for the class-prior baseline


def resize_prediction(prediction: Mapping[str, Any], size: tuple[int, int],
                      input_size: tuple[int, int] | None = None, *, score_maps: bool = True) -> dict:
    """``score_maps`` bilinearly and ``mask`` (nearest) to ``size`` = (H, W), on the CPU.

    ``instances`` follow too: their masks are resized to ``size`` and their
    boxes scaled from ``input_size`` (the size the network saw) to ``size``.
    ``score_maps=False`` leaves the score maps as they are (at the network's
    size, on its device), for post-processors that resize what they need.
    """
    import torch
    import torch.nn.functional as F

    out: dict[str, Any] = {}
    for key, value in prediction.items():
        if key == "score_maps":
            if score_maps:
                value = resize_score_maps(value, size)
            out[key] = value
            continue
        if key == "mask":
            if tuple(value.shape[-2:]) != tuple(size):
                value = F.interpolate(value[None, None].float(), size=size, mode="nearest")[0, 0]
            value = value.long()
        elif key == "instances":
            value = resize_instances(value, size, input_size)
        if isinstance(value, torch.Tensor):
            value = value.detach().float().cpu() if key != "mask" else value.detach().cpu()
        out[key] = value
    return out


def resize_score_maps(maps: Any, size: tuple[int, int], channels: Any = None) -> Any:
    """``maps`` ``[C, h, w]`` bilinearly to ``size`` = (H, W), float32 on the CPU; only ``channels`` (int64) if given.

    Bilinear resizing is per channel, but torch's CPU kernel depends on the
    number of channels for small outputs, 1 x 1 or channels-last maps and 3
    channels on one thread. Only the ``channels`` are resized where the
    generic kernel runs for them as for all ``C`` (padded to 4 channels, see
    :func:`_resizes_channels_alike`); elsewhere all are resized, then picked.
    Either way the values equal those of resizing every channel.
    """
    import torch
    import torch.nn.functional as F

    value = maps.float()
    if channels is not None:
        channels = torch.as_tensor(channels, dtype=torch.int64).flatten().cpu()
    if tuple(value.shape[-2:]) == tuple(size):
        picked = value if channels is None else value[channels.to(value.device)]
        return picked.detach().float().cpu()
    if channels is not None and _resizes_channels_alike(value, size):
        others = torch.ones(value.shape[0], dtype=torch.bool)
        others[channels] = False
        extra = others.nonzero().flatten()[: max(0, 4 - channels.numel())]
        subset = value[torch.cat([channels, extra]).to(value.device)].contiguous()
        out = F.interpolate(subset[None], size=size, mode="bilinear", align_corners=False)[0, : channels.numel()]
    else:
        out = F.interpolate(value[None], size=size, mode="bilinear", align_corners=False)[0]
        if channels is not None:
            out = out[channels.to(out.device)]
    return out.detach().float().cpu()


def _resizes_channels_alike(value: Any, size: tuple[int, int]) -> bool:
    """True where torch's CPU bilinear kernel gives each channel the same values for any subset of >= 4 channels.

    ``upsample_bilinear2d`` runs its channels-last kernel (vectorised across
    channels: values depend on C) when H + W <= 128, or the input is
    channels-last contiguous with C > 3 (1 x 1 maps are), or C == 3 on one
    thread; otherwise the generic kernel, which computes each output pixel
    from its four source pixels alone. ``tests/test_postprocess.py`` checks
    the equality on many shapes.
    """
    c, h, w = value.shape
    return (value.device.type == "cpu" and value.is_contiguous() and c > 4 and h * w > 1
            and size[0] + size[1] > 128)


def resize_instances(instances: Mapping[str, Any], size: tuple[int, int],
                     input_size: tuple[int, int] | None = None) -> dict:
    """Instance masks to ``size`` (bilinear for probabilities, nearest for bool) and boxes scaled to match."""
    import torch
    import torch.nn.functional as F

    out = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in instances.items()}
    masks = out.get("masks")
    frame = tuple(masks.shape[-2:]) if masks is not None and masks.dim() == 3 else input_size
    if masks is not None and masks.numel() and tuple(masks.shape[-2:]) != tuple(size):
        if masks.dtype == torch.bool:
            out["masks"] = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
        else:
            out["masks"] = F.interpolate(masks[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    if frame is not None and tuple(frame) != tuple(size) and "boxes" in out:
        scale = torch.tensor([size[1] / frame[1], size[0] / frame[0]] * 2)
        out["boxes"] = out["boxes"].float() * scale
    return out


def _resize_images(images, eval_size: int):
    from torchvision.transforms.v2 import functional as TF

    if not eval_size:
        return images
    return [TF.resize(img, [eval_size, eval_size], antialias=True) for img in images]


def predict_images(model, images: Sequence[Any], sizes: Sequence[tuple[int, int]], normalize: Normalizer, device, *,
                   amp: str = "off", eval_size: int = 0, postprocessors: Sequence[Callable] = (),
                   full_maps: bool = True, tta: str = "", slide: str = "") -> list[dict]:
    """Predictions of uint8 ``images`` ``[3, H, W]`` (any sizes), each at its original size in ``sizes``.

    The evaluation path, shared with ``segbench predict``: images resized to
    ``eval_size`` squares when set, grouped by size, normalised, predicted
    (through :mod:`segbench.engine.tta` when ``tta`` or ``slide`` is set),
    then :func:`finish_prediction`.
    """
    from segbench.engine.tta import TestTime

    test_time = TestTime.parse(tta, slide)
    inputs_all = _resize_images(images, eval_size)
    predictions: list[dict] = [None] * len(images)  # type: ignore[list-item]
    for group in group_by_size(inputs_all):
        inputs = normalize([inputs_all[i] for i in group])
        with autocast(device, amp):
            outputs = test_time.predict(model.predict, inputs)
        for i, output in zip(group, outputs):
            predictions[i] = finish_prediction(output, images[i], tuple(sizes[i]), tuple(inputs.shape[-2:]),
                                               postprocessors, full_maps)
    return predictions


def evaluate(model, loader, metrics: Mapping[str, Any], device, mean, std, *, amp: str = "off",
             eval_size: int = 0, channels_last: bool = False, progress: bool = True,
             postprocessors: Sequence[Callable] = (), dist: DistInfo = SINGLE, tta: str = "",
             slide: str = "") -> EvalResult:
    """Run ``model.predict`` over ``loader`` and return every metric's ``compute()`` (keys prefixed when needed).

    Each prediction is resized to its image's original size, then passed
    through ``postprocessors`` in order (``post(image, prediction)``, the
    uint8 image at its original size), then to the metrics
    (:func:`finish_prediction`). All ``C`` score maps are resized only when
    a metric or a post-processor needs them (:func:`needs_full_score_maps`).
    ``tta`` and ``slide`` (:mod:`segbench.engine.tta`) augment each batch's
    prediction; at ``""`` the plain ``model.predict`` runs.

    With several processes (``dist``), each evaluates its shard (a
    :class:`segbench.engine.data.ShardedEvalSampler`); the metric states, the
    image-level labels and the image counts are gathered on rank 0, which
    computes the metrics; every process returns rank 0's result.
    """
    import torch
    from tqdm.auto import tqdm

    model.eval()
    for metric in metrics.values():
        metric.reset()
    normalize = Normalizer(mean, std, device, channels_last)
    full_maps = needs_full_score_maps(metrics.values(), postprocessors)
    count, start, labels = 0, time.perf_counter(), []
    with torch.inference_mode():
        for batch in tqdm(loader, desc="eval", unit="batch", disable=not progress or not dist.is_main,
                          dynamic_ncols=True):
            images = batch["images"]
            sizes = [tuple(meta["orig_size"]) for meta in batch["metas"]]
            predictions = predict_images(model, images, sizes, normalize, device, amp=amp, eval_size=eval_size,
                                         postprocessors=postprocessors, full_maps=full_maps, tta=tta, slide=slide)
            targets = targets_to(batch["targets"], torch.device("cpu"))
            for metric in metrics.values():
                metric.update(predictions, targets)
            labels.extend(t["labels"] for t in targets)
            count += len(images)
    if not dist.enabled:
        result = collect(metrics, count, time.perf_counter() - start)
        result.labels = torch.stack(labels) if labels else None
        return result
    gather_metrics(metrics, dist)
    shards = gather((count, torch.stack(labels) if labels else None), dist)
    result = None
    if dist.is_main:
        seen = [shard_labels for _, shard_labels in shards if shard_labels is not None]
        result = collect(metrics, sum(n for n, _ in shards), time.perf_counter() - start)
        result.labels = torch.cat(seen) if seen else None
    return broadcast(result, dist)


def finish_prediction(output: Mapping[str, Any], image: Any, size: tuple[int, int], input_size: tuple[int, int],
                      postprocessors: Sequence[Callable] = (), full_maps: bool = True) -> dict:
    """One image's prediction at its original ``size``, through the ``postprocessors``, ready for the metrics.

    With ``full_maps`` every class's score map is resized to ``size`` first.
    Without, ``score_maps`` stay at the network's size (float32, on the CPU)
    and each post-processor, all of which then have ``lazy_score_maps``
    (such as ``cam_mask``), resizes the classes it needs. A lazy one is called
    ``post(image, prediction, size=size, mask_scores=...)``, ``mask_scores``
    False for the last of the chain (no metric reads them).
    """
    prediction = resize_prediction(output, size, input_size, score_maps=full_maps)
    last = len(postprocessors) - 1
    for k, post in enumerate(postprocessors):
        if getattr(post, "lazy_score_maps", False):
            prediction = post(image, prediction, size=size, mask_scores=k < last)
        else:
            prediction = post(image, prediction)
    if not full_maps and "score_maps" in prediction:
        prediction = {**prediction, "score_maps": prediction["score_maps"].detach().float().cpu()}
    return prediction


def needs_full_score_maps(metrics: Iterable[Any], postprocessors: Sequence[Callable] = ()) -> bool:
    """True unless every post-processor has ``lazy_score_maps`` and no metric reads ``score_maps``.

    A metric's needs are its registered spec's ``requires_outputs``, found by
    the metric's ``name``; a metric without a registered name needs them.
    """
    if any(not getattr(post, "lazy_score_maps", False) for post in postprocessors):
        return True
    from segbench.plugins import get_registry

    specs = get_registry().metrics
    for metric in metrics:
        spec = specs.get(getattr(metric, "name", None))
        if spec is None or "score_maps" in spec.requires_outputs:
            return True
    return False


def collect(metrics: Mapping[str, Any], images: int, seconds: float) -> EvalResult:
    """Compute every metric: ``{name: value}`` plus per-class lists, keyed ``metric`` or ``metric/key``."""
    values: dict[str, float] = {}
    per_class: dict[str, list[float]] = {}
    for name, metric in metrics.items():
        for key, value in metric.compute().items():
            values[_key(name, key)] = float(value)
        if hasattr(metric, "per_class"):
            for key, row in metric.per_class().items():
                per_class[_key(name, key)] = [float(v) for v in row]
    return EvalResult(values, per_class, images, seconds)


def _key(metric_name: str, key: str) -> str:
    base = metric_name.split("@")[0]
    if key == base:
        return metric_name
    suffix = metric_name[len(base):]
    return f"{key}{suffix}"
