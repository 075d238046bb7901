"""cls_map against a line-by-line port of the VOC devkit, scikit-learn and hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import average_precision_score

import segbench
from segbench.errors import ConfigError, DataError
from segbench.metrics.average_precision import VOC07_THRESHOLDS, average_precision, descending_order

# MATLAB's 0:0.1:1 (first half k*0.1, second half 1-(10-k)*0.1), written out.
MATLAB_0_01_1 = [0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def devkit_ap(out: list[float], gt: list[int], variant: str, npos: int | None = None) -> float:
    """VOCevalcls.m + VOCap.m with loops. gt: 1 positive, -1 negative, 0 difficult."""
    order = sorted(range(len(out)), key=lambda i: -out[i])  # stable, as MATLAB's sort(-out)
    npos = sum(g > 0 for g in gt) if npos is None else npos
    tp = fp = 0
    rec, prec = [], []
    for i in order:
        tp += gt[i] > 0
        fp += gt[i] < 0
        rec.append(tp / npos)
        prec.append(tp / (fp + tp) if fp + tp else math.nan)  # MATLAB: 0/0 = NaN
    if variant == "voc07":
        ap = 0.0
        for t in MATLAB_0_01_1:
            candidates = [p for r, p in zip(rec, prec) if r >= t and not math.isnan(p)]  # max() skips NaN
            ap = ap + (max(candidates) if candidates else 0.0) / 11
        return ap
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = mpre[i + 1] if math.isnan(mpre[i]) else max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def make_batch(scores: torch.Tensor, labels: torch.Tensor, ignore: torch.Tensor | None = None):
    preds = [{"scores": s} for s in scores]
    targets = [{"labels": lab} for lab in labels.float()]
    if ignore is not None:
        for t, ig in zip(targets, ignore):
            t["labels_ignore"] = ig
    return preds, targets


def run_metric(scores, labels, ignore=None, batch=7, **options):
    metric = segbench.create_metric("cls_map", **options)
    preds, targets = make_batch(scores, labels, ignore)
    for i in range(0, len(preds), batch):
        metric.update(preds[i:i + batch], targets[i:i + batch])
    return metric


def random_case(seed: int, n: int = 60, c: int = 6, tie_levels: int = 8, difficult: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, tie_levels, (n, c), generator=g).float() / tie_levels  # many ties
    labels = torch.rand((n, c), generator=g) < 0.3
    labels[0] = True  # every class has a positive
    ignore = (torch.rand((n, c), generator=g) < difficult) & ~labels
    return scores, labels, ignore


def test_spec_options_and_primary():
    spec = segbench.plugins.get_registry().metric("cls_map")
    assert spec.options == {"num_classes": None, "background": None, "variant": "voc12"}
    assert spec.primary == "cls_map"
    assert spec.requires_outputs == {"scores"} and spec.requires_annotations == {"labels"}


@pytest.mark.parametrize("variant", ["voc12", "voc07"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_devkit_port_with_ties_and_difficult(variant, seed):
    scores, labels, ignore = random_case(seed)
    metric = run_metric(scores, labels, ignore, variant=variant)
    got = metric.per_class()["cls_map"]
    for c in range(scores.shape[1]):
        gt = [0 if ig else (1 if lab else -1) for lab, ig in zip(labels[:, c].tolist(), ignore[:, c].tolist())]
        assert got[c] == pytest.approx(devkit_ap(scores[:, c].tolist(), gt, variant), abs=1e-12)
    assert metric.compute()["cls_map"] == pytest.approx(sum(got) / len(got), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_raw_equals_sklearn_including_ties(seed):
    scores, labels, _ = random_case(seed, n=80, c=5, tie_levels=5)
    got = run_metric(scores, labels, variant="raw").per_class()["cls_map"]
    for c in range(scores.shape[1]):
        want = average_precision_score(labels[:, c].numpy(), scores[:, c].numpy())
        assert got[c] == pytest.approx(want, abs=1e-12)


def test_raw_with_difficult_equals_sklearn_without_those_images():
    scores, labels, ignore = random_case(3, difficult=0.3)
    got = run_metric(scores, labels, ignore, variant="raw").per_class()["cls_map"]
    for c in range(scores.shape[1]):
        keep = ~ignore[:, c]
        want = average_precision_score(labels[keep, c].numpy(), scores[keep, c].numpy())
        assert got[c] == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("variant", ["voc12", "voc07"])
def test_difficult_equals_leaving_the_image_out(variant):
    scores, labels, ignore = random_case(4, difficult=0.3)
    got = run_metric(scores, labels, ignore, variant=variant).per_class()["cls_map"]
    for c in range(scores.shape[1]):
        keep = ~ignore[:, c]
        alone = run_metric(scores[keep][:, c:c + 1], labels[keep][:, c:c + 1], variant=variant)
        assert got[c] == pytest.approx(alone.per_class()["cls_map"][0], abs=1e-12)


def test_hand_computed_voc12_and_voc07():
    # ranking by score: P N P N P -> precision at the positives 1, 2/3, 3/5
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.6], [0.5]])
    labels = torch.tensor([[1], [0], [1], [0], [1]])
    voc12 = (1 + 2 / 3 + 3 / 5) / 3
    # 11-point: recall 1/3, 2/3, 1; t=0..0.3 -> 1 (4 points), 0.4..0.6 -> 2/3 (3), 0.7..1 -> 3/5 (4)
    voc07 = (4 * 1 + 3 * (2 / 3) + 4 * (3 / 5)) / 11
    assert run_metric(scores, labels).compute()["cls_map"] == pytest.approx(voc12, abs=1e-12)
    assert run_metric(scores, labels, variant="voc07").compute()["cls_map"] == pytest.approx(voc07, abs=1e-12)
    assert run_metric(scores, labels, variant="raw").compute()["cls_map"] == pytest.approx(voc12, abs=1e-12)


def test_envelope_lifts_earlier_precision():
    # N P P: precisions at the positives 1/2, 2/3; the envelope gives 2/3 to both (voc12), raw keeps 1/2
    scores = torch.tensor([[3.0], [2.0], [1.0]])
    labels = torch.tensor([[0], [1], [1]])
    assert run_metric(scores, labels).compute()["cls_map"] == pytest.approx(2 / 3, abs=1e-12)
    assert run_metric(scores, labels, variant="raw").compute()["cls_map"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_tie_rule_voc_is_dataset_order_raw_is_order_free():
    # one positive and one negative tied at the top, then a positive
    pos_first = run_metric(torch.tensor([[1.0], [1.0], [0.5]]), torch.tensor([[1], [0], [1]]))
    neg_first = run_metric(torch.tensor([[1.0], [1.0], [0.5]]), torch.tensor([[0], [1], [1]]))
    assert pos_first.compute()["cls_map"] == pytest.approx((1 + 2 / 3) / 2)  # P N P
    assert neg_first.compute()["cls_map"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # N P P, envelope
    for labels in ([[1], [0], [1]], [[0], [1], [1]]):
        raw = run_metric(torch.tensor([[1.0], [1.0], [0.5]]), torch.tensor(labels), variant="raw")
        assert raw.compute()["cls_map"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # tie = one threshold


def test_voc07_uses_matlab_thresholds_at_recall_three_tenths():
    # 10 positives; the first 3 ranked alone at the top, then 7 negatives, then 7 positives.
    # Recall is exactly 3/10 after the third image, below MATLAB's 4th threshold 0.30000000000000004,
    # so t=0.3 takes the precision of the later points (10/17), not 1.
    assert VOC07_THRESHOLDS == tuple(MATLAB_0_01_1)
    labels = torch.tensor([1] * 3 + [0] * 7 + [1] * 7).reshape(-1, 1)
    scores = torch.arange(17, 0, -1, dtype=torch.float32).reshape(-1, 1)
    want = (3 * 1 + 8 * (10 / 17)) / 11
    got = run_metric(scores, labels, variant="voc07").compute()["cls_map"]
    assert got == pytest.approx(want, abs=1e-12)
    assert got == pytest.approx(devkit_ap(scores[:, 0].tolist(), [1 if v else -1 for v in labels[:, 0]], "voc07"))


def test_background_and_classes_without_positive_are_left_out():
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.5], [0.3, 0.1, 0.8, 0.4], [0.2, 0.5, 0.7, 0.3]])
    labels = torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]])
    metric = run_metric(scores, labels, background=0)
    ap = metric.per_class()["cls_map"]
    assert math.isnan(ap[0]) and math.isnan(ap[3])  # background; class without a positive
    assert ap[1] == pytest.approx(1.0) and ap[2] == pytest.approx(1.0)
    assert metric.compute()["cls_map"] == pytest.approx(1.0)


def test_streaming_reset_and_ddp_state_merge():
    scores, labels, ignore = random_case(5)
    whole = run_metric(scores, labels, ignore)
    first = run_metric(scores[:25], labels[:25], ignore[:25])
    second = run_metric(scores[25:], labels[25:], ignore[25:])
    assert first.state_reductions == {"scores": "cat", "gt": "cat"}
    merged = {k: torch.cat([first.state_tensors()[k], second.state_tensors()[k]]) for k in first.state_reductions}
    fresh = segbench.create_metric("cls_map")
    fresh.load_state_tensors(merged)
    assert fresh.compute() == pytest.approx(whole.compute())
    assert whole.state_tensors()["scores"].shape == (60, 6)  # one small row per image
    whole.reset()
    assert math.isnan(whole.compute()["cls_map"])


def test_core_handles_all_classes_at_once_and_matches_per_column():
    scores, labels, _ = random_case(6, n=40, c=4)
    together = average_precision(scores, labels, ~labels)
    for c in range(4):
        alone = average_precision(scores[:, c:c + 1], labels[:, c:c + 1], ~labels[:, c:c + 1])
        assert together[c].item() == pytest.approx(alone.item(), abs=1e-15)


def test_bad_input_errors():
    with pytest.raises(ConfigError, match="variant"):
        segbench.create_metric("cls_map", variant="voc10")
    with pytest.raises(ConfigError, match="no option"):
        segbench.create_metric("cls_map", tolerance=3)
    metric = segbench.create_metric("cls_map", num_classes=3)
    with pytest.raises(DataError, match="expected 3 classes"):
        metric.update([{"scores": torch.zeros(4)}], [{"labels": torch.zeros(4)}])
    with pytest.raises(DataError, match="NaN"):
        metric.update([{"scores": torch.tensor([0.1, float("nan"), 0.2])}], [{"labels": torch.zeros(3)}])
    with pytest.raises(DataError, match="'scores'"):
        metric.update([{"mask": torch.zeros(2, 2)}], [{"labels": torch.zeros(3)}])
    with pytest.raises(DataError, match="different lengths"):
        metric.update([{"scores": torch.zeros(3)}, {"scores": torch.zeros(2)}], [{"labels": torch.zeros(3)}] * 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ranking_is_a_stable_sort_of_minus_score(dtype):
    g = torch.Generator().manual_seed(7)
    scores = (torch.randint(-3, 4, (5, 300), generator=g) / 3).to(dtype).double()  # ties; float64 path: 1/3
    scores[0, :4] = torch.tensor([0.0, -0.0, float("inf"), -float("inf")], dtype=torch.float64)
    want = torch.sort(-scores, dim=1, stable=True).indices
    assert torch.equal(torch.from_numpy(descending_order(scores.contiguous().numpy())), want)
