"""``trimap``: mIoU in bands around ground-truth boundaries, against hand-computed values, a brute-force
band with scikit-learn's IoU, and plain ``miou`` for a band wider than the image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score

from segbench import create_metric
from segbench.errors import ConfigError, DataError
from segbench.metrics.trimap import boundary_distance, width_key


def row(values) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.int64)


def scored(preds, gts, **options) -> dict[str, float]:
    metric = create_metric("trimap", num_classes=options.pop("num_classes", 3), **options)
    metric.update([{"mask": p} for p in preds], [{"mask": g} for g in gts])
    return metric.compute()


def test_hand_computed_case():
    gt, pred = row([0, 0, 0, 1, 1, 1]), row([0, 0, 1, 1, 1, 1])
    out = scored([pred], [gt], num_classes=2, widths=[1, 2, 100])
    # w=1: pixels 2, 3 (gt 0 1, pred 1 1): IoU 0 = 0/1, IoU 1 = 1/2
    assert out["trimap_miou@w1"] == pytest.approx(0.25)
    # w=2: pixels 1..4 (gt 0 0 1 1, pred 0 1 1 1): 1/2 and 2/3
    assert out["trimap_miou@w2"] == pytest.approx(7 / 12)
    # w=100: every pixel: 2/3 and 3/4
    assert out["trimap_miou@w100"] == pytest.approx(17 / 24)
    assert out["trimap_miou"] == pytest.approx((0.25 + 7 / 12 + 17 / 24) / 3)


def test_void_is_a_boundary_and_never_counted():
    gt, pred = row([0, 0, 255, 1, 1]), row([0, 1, 0, 1, 0])
    # void counts as another label: w=1 takes pixels 1 and 3 (gt 0 1, pred 1 1)
    assert scored([pred], [gt], num_classes=2, widths=[1])["trimap_miou@w1"] == pytest.approx(0.25)
    # measured to the other non-void label only: pixel 1 is 2 px from class 1, pixel 0 is 3 px away
    out = scored([pred], [gt], num_classes=2, widths=[1, 2], void_is_boundary=False)
    assert math.isnan(out["trimap_miou@w1"]) and math.isnan(out["trimap_miou"])
    assert out["trimap_miou@w2"] == pytest.approx(0.25)
    assert boundary_distance(gt.numpy())[0].tolist() == [2, 1, math.inf, 1, 2]


def test_an_image_with_one_label_has_no_band():
    out = scored([row([1, 1, 1])], [row([1, 1, 1])], widths=[1000])
    assert math.isnan(out["trimap_miou@w1000"])


def random_scenes(n: int, h: int, w: int, num_classes: int, seed: int):
    """Blocky ground truths (>= 2 labels each, some void) and noisy predictions."""
    g = torch.Generator().manual_seed(seed)
    gts, preds = [], []
    for _ in range(n):
        coarse = torch.randint(0, num_classes, (3, 4), generator=g)
        coarse[0, 0], coarse[-1, -1] = 0, 1
        gt = torch.nn.functional.interpolate(coarse[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
        gt[torch.rand(h, w, generator=g) < 0.08] = 255
        flip = torch.rand(h, w, generator=g) < 0.3
        preds.append(torch.where(flip, torch.randint(0, num_classes, (h, w), generator=g), gt.clamp(max=num_classes - 1)))
        gts.append(gt)
    return preds, gts


def brute_force_band(gt: np.ndarray, width: float, distance: str) -> np.ndarray:
    """Pixels (not void) with another label within ``width``, by checking every pair of pixels."""
    ys, xs = np.indices(gt.shape)
    dy = np.abs(ys.reshape(-1, 1) - ys.reshape(1, -1))
    dx = np.abs(xs.reshape(-1, 1) - xs.reshape(1, -1))
    dist = {"euclidean": np.sqrt(dy ** 2 + dx ** 2), "chessboard": np.maximum(dy, dx), "taxicab": dy + dx}[distance]
    labels = gt.reshape(-1)
    differs = labels.reshape(-1, 1) != labels.reshape(1, -1)
    near = (differs & (dist <= width)).any(1) & (labels != 255)
    return near.reshape(gt.shape)


@pytest.mark.parametrize("distance", ["euclidean", "chessboard", "taxicab"])
def test_against_a_brute_force_band_and_sklearn_iou(distance):
    c, widths = 4, [1, 1.5, 2, 3, 5]
    preds, gts = random_scenes(3, 9, 11, c, seed=1)
    out = scored(preds, gts, num_classes=c, widths=widths, distance=distance)
    for width in widths:
        bands = [brute_force_band(g.numpy(), width, distance) for g in gts]
        y_true = np.concatenate([g.numpy()[b] for g, b in zip(gts, bands)])
        y_pred = np.concatenate([p.numpy()[b] for p, b in zip(preds, bands)])
        present = sorted(set(y_true) | set(y_pred))  # classes absent from the band are left out, as in miou
        expected = jaccard_score(y_true, y_pred, labels=present, average="macro")
        assert out[width_key(width)] == pytest.approx(expected, abs=1e-12), width
    assert out["trimap_miou"] == pytest.approx(np.mean([out[width_key(w)] for w in widths]))


def test_a_band_wider_than_the_image_is_plain_miou_exactly():
    c = 5
    preds, gts = random_scenes(4, 20, 30, c, seed=2)
    miou = create_metric("miou", num_classes=c)
    trimap = create_metric("trimap", num_classes=c, widths=[3, 10_000])
    for metric in (miou, trimap):
        metric.update([{"mask": p} for p in preds], [{"mask": g} for g in gts])
    assert trimap.compute()["trimap_miou@w10000"] == miou.compute()["miou"]
    assert torch.equal(trimap.state_tensors()["confmat"][1], miou.confmat)
    assert trimap.per_class()["trimap_miou@w10000"] == pytest.approx(miou.per_class()["miou"], nan_ok=True)
    assert trimap.compute()["trimap_miou@w3"] != miou.compute()["miou"]


def test_state_sums_across_shards():
    preds, gts = random_scenes(4, 12, 12, 3, seed=3)
    whole = create_metric("trimap", num_classes=3)
    whole.update([{"mask": p} for p in preds], [{"mask": g} for g in gts])
    halves = [create_metric("trimap", num_classes=3) for _ in range(2)]
    for i, half in enumerate(halves):
        half.update([{"mask": p} for p in preds[i::2]], [{"mask": g} for g in gts[i::2]])
    halves[0].load_state_tensors({"confmat": halves[0].state_tensors()["confmat"] + halves[1].state_tensors()["confmat"]})
    assert halves[0].compute() == whole.compute()
    whole.reset()
    assert all(math.isnan(v) for v in whole.compute().values())


def test_registered_with_miou_applicability_and_keys():
    from segbench.engine.evaluate import _key
    from segbench.engine.run import applicable_metrics, postprocess_chain
    from segbench.plugins import get_registry

    registry = get_registry()
    spec = registry.metric("trimap")
    assert spec.requires_outputs == {"mask"} and spec.requires_annotations == {"mask"}
    assert spec.primary == "trimap_miou" and spec.options["widths"] == [1, 3, 5, 10, 20, 40]
    assert set(scored([row([0, 1])], [row([0, 1])])) == {"trimap_miou"} | {f"trimap_miou@w{w}" for w in (1, 3, 5, 10, 20, 40)}
    assert _key("trimap", "trimap_miou@w5") == "trimap_miou@w5"
    weldon, shapes = registry.method("weldon"), registry.dataset("shapes")
    _, outputs = postprocess_chain(weldon, shapes, registry)  # the class-map rule gives weldon a mask
    assert "trimap" in applicable_metrics(weldon, shapes, registry, outputs=outputs)


@pytest.mark.parametrize("options, message", [
    ({"widths": []}, "widths must be a non-empty list of positive numbers, got \\[\\]"),
    ({"widths": [0, 1]}, "widths must be a non-empty list of positive numbers"),
    ({"widths": "5"}, "widths must be a non-empty list of positive numbers, got '5'"),
    ({"widths": [5, 5.0]}, "widths has duplicates"),
    ({"distance": "manhattan"}, "distance must be one of euclidean, chessboard, taxicab"),
    ({"num_classes": None}, "metric 'trimap' needs num_classes"),
])
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        create_metric("trimap", **{"num_classes": 3, **options})


def test_bad_masks_are_data_errors_naming_the_metric():
    metric = create_metric("trimap", num_classes=2)
    with pytest.raises(DataError, match="metric 'trimap': predicted mask 0 has shape \\(1, 3\\)"):
        metric.update([{"mask": row([0, 1, 1])}], [{"mask": row([0, 1])}])
    with pytest.raises(DataError, match="metric 'trimap': predicted class 7 is outside 0..1"):
        metric.update([{"mask": row([0, 7])}], [{"mask": row([0, 1])}])
