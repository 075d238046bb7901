"""loc_map (Oquab et al. pointing mAP): geometry, ties, hand-computed AP and a brute-force reference."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import average_precision_score

import segbench
from segbench.errors import ConfigError, DataError
from segbench.metrics.average_precision import average_precision
from segbench.metrics.pointing import first_maximum


def peak_maps(c: int, h: int, w: int, peaks: dict[int, tuple[int, int, float]]) -> torch.Tensor:
    """Zero maps with ``maps[k, i, j] = value`` for each ``k: (i, j, value)``."""
    maps = torch.zeros(c, h, w)
    for k, (i, j, value) in peaks.items():
        maps[k, i, j] = value
    return maps


def target(boxes=(), classes=()):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "classes": torch.tensor(classes, dtype=torch.int64)}


def loc_map(**options):
    return segbench.create_metric("loc_map", **options)


def test_spec_options_and_primary():
    spec = segbench.plugins.get_registry().metric("loc_map")
    assert spec.options == {"num_classes": None, "background": None, "variant": "voc12",
                            "tolerance": 18, "point": "max", "confidence": "map_max"}
    assert spec.late_options == {"confidence": "map_max"}
    assert spec.primary == "loc_map"
    assert spec.requires_outputs == {"score_maps"} and spec.requires_annotations == {"boxes"}


def test_tied_maxima_take_the_first_in_row_major_order():
    maps = peak_maps(1, 4, 4, {0: (3, 0, 5.0)})
    maps[0, 1, 2] = 5.0  # same value earlier in row-major order: the point is (x=2.5, y=1.5)
    m = loc_map(tolerance=0)
    m.update([{"score_maps": maps}] * 2, [target([[0, 3, 1, 4]], [0]), target([[2, 1, 3, 2]], [0])])
    assert m.state_tensors()["hit"][:, 0].tolist() == [False, True]
    assert m.state_tensors()["scores"][:, 0].tolist() == [5.0, 5.0]


def test_tolerance_boundary_is_inclusive_one_pixel_beyond_misses():
    # peak at row 10, column 30: point (x=30.5, y=10.5); tolerance 18
    maps = peak_maps(1, 64, 64, {0: (10, 30, 1.0)})
    boxes = [
        [0, 0, 12.5, 20],    # x2 + 18 = 30.5: on the boundary -> hit
        [0, 0, 11.5, 20],    # x2 + 18 = 29.5: one pixel short -> miss
        [48.5, 0, 60, 20],   # x1 - 18 = 30.5 -> hit
        [49.5, 0, 60, 20],   # x1 - 18 = 31.5 -> miss
        [0, 28.5, 40, 50],   # y1 - 18 = 10.5 -> hit
        [0, 29.5, 40, 50],   # miss
        [0, -20, 40, -7.5],  # y2 + 18 = 10.5 -> hit
        [0, -20, 40, -8.5],  # miss
        [30, 10, 31, 11],    # the pixel itself: columns 30..30, rows 10..10 inclusive -> hit
    ]
    m = loc_map()
    m.update([{"score_maps": maps}] * len(boxes), [target([b], [0]) for b in boxes])
    assert m.state_tensors()["hit"][:, 0].tolist() == [True, False, True, False, True, False, True, False, True]
    m0 = loc_map(tolerance=0)
    m0.update([{"score_maps": maps}] * 3, [target([[30, 10, 31, 11]], [0]), target([[31, 10, 32, 11]], [0]),
                                           target([[29, 10, 30, 11]], [0])])
    assert m0.state_tensors()["hit"][:, 0].tolist() == [True, False, False]


def test_box_of_another_class_does_not_count():
    maps = peak_maps(2, 8, 8, {0: (2, 2, 1.0), 1: (2, 2, 1.0)})
    m = loc_map(tolerance=0)
    m.update([{"score_maps": maps}], [target([[0, 0, 4, 4]], [1])])
    assert m.state_tensors()["hit"].tolist() == [[False, True]]
    assert m.state_tensors()["present"].tolist() == [[False, True]]


def test_images_without_boxes_are_false_positives_at_their_confidence():
    hit = {"score_maps": peak_maps(1, 8, 8, {0: (1, 1, 0.5)})}
    box = target([[0, 0, 3, 3]], [0])
    high = loc_map(tolerance=0)
    high.update([hit, {"score_maps": torch.full((1, 8, 8), 0.9)}], [box, target()])
    assert high.compute()["loc_map"] == pytest.approx(0.5)  # FP ranked first: precision 1/2 at recall 1
    low = loc_map(tolerance=0)
    low.update([hit, {"score_maps": torch.full((1, 8, 8), 0.1)}], [box, target()])
    assert low.compute()["loc_map"] == pytest.approx(1.0)


@pytest.mark.parametrize(("variant", "want"), [("voc12", 0.5), ("voc07", 6 / 11), ("raw", 0.5)])
def test_positive_image_whose_point_misses_is_never_recalled(variant, want):
    box = [[0, 0, 2, 2]]
    preds = [
        {"score_maps": peak_maps(1, 8, 8, {0: (0, 0, 0.9)})},  # class present, point inside: TP
        {"score_maps": peak_maps(1, 8, 8, {0: (7, 7, 0.8)})},  # class present, point outside: FP
        {"score_maps": peak_maps(1, 8, 8, {0: (0, 0, 0.7)})},  # class absent: FP
    ]
    m = loc_map(tolerance=0, variant=variant)
    m.update(preds, [target(box, [0]), target(box, [0]), target()])
    # recall over the 2 images containing the class tops out at 1/2 with precision 1
    assert m.compute()["loc_map"] == pytest.approx(want, abs=1e-12)


def test_hand_computed_map_with_background_and_a_class_in_no_image():
    # classes: 0 background, 1 and 2 objects, 3 in no image
    def pred(p1, p2):
        return {"score_maps": peak_maps(4, 10, 10, {0: (5, 5, 9.0), 1: p1, 2: p2, 3: (0, 0, 1.0)})}

    preds = [pred((1, 1, 0.9), (8, 8, 0.3)), pred((1, 1, 0.4), (1, 1, 0.8)), pred((8, 8, 0.6), (8, 8, 0.7))]
    targets = [target([[0, 0, 3, 3]], [1]),                       # class 1 hit (0.9)
               target([[0, 0, 3, 3], [0, 0, 3, 3]], [1, 2]),      # class 1 hit (0.4), class 2 hit (0.8)
               target([[0, 0, 3, 3]], [2])]                       # class 2 miss (0.7); class 1 absent (0.6)
    m = loc_map(num_classes=4, background=0, tolerance=0)
    m.update(preds, targets)
    # class 1 ranking: 0.9 TP, 0.6 FP, 0.4 TP (npos 2): envelope precisions 1 and 2/3
    # class 2 ranking: 0.8 TP, 0.7 FP, 0.3 FP (npos 2): recall 1/2 at precision 1
    ap = m.per_class()["loc_map"]
    assert math.isnan(ap[0]) and math.isnan(ap[3])
    assert ap[1] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3) and ap[2] == pytest.approx(0.5)
    assert m.compute()["loc_map"] == pytest.approx((5 / 6 + 0.5) / 2)


def test_centre_point_baseline():
    maps = peak_maps(1, 10, 20, {0: (0, 0, 3.0)})  # argmax in the corner
    centre_box = target([[9, 4, 11, 6]], [0])  # contains the image centre (x=10, y=5)
    m = loc_map(point="centre", tolerance=0)
    m.update([{"score_maps": maps}], [centre_box])
    assert m.state_tensors()["hit"].tolist() == [[True]]
    assert m.state_tensors()["scores"].tolist() == [[3.0]]  # confidence is still the maximum
    argmax = loc_map(tolerance=0)
    argmax.update([{"score_maps": maps}], [centre_box])
    assert argmax.state_tensors()["hit"].tolist() == [[False]]


def brute_force(maps_list, targets, tol):
    """Per class: (confidence, tp) per image and npos, by loops over pixels and boxes."""
    rows = []
    for maps, t in zip(maps_list, targets):
        row = []
        for k, plane in enumerate(maps.tolist()):
            best, point = -math.inf, None
            for i, line in enumerate(plane):
                for j, value in enumerate(line):
                    if value > best:  # strict: the first maximum wins
                        best, point = value, (j + 0.5, i + 0.5)
            x, y = point
            tp = any(cl == k and b[0] - tol <= x <= b[2] + tol and b[1] - tol <= y <= b[3] + tol
                     for b, cl in zip(t["boxes"].tolist(), t["classes"].tolist()))
            row.append((best, tp, k in t["classes"].tolist()))
        rows.append(row)
    return rows


def voc12_reference(conf, tp, npos):
    order = sorted(range(len(conf)), key=lambda i: -conf[i])
    ntp = nfp = 0
    rec, prec = [], []
    for i in order:
        ntp, nfp = ntp + tp[i], nfp + (not tp[i])
        rec.append(ntp / npos)
        prec.append(ntp / (ntp + nfp))
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_reference(seed):
    g = torch.Generator().manual_seed(seed)
    c, n, tol = 3, 40, 1.5
    maps_list, targets = [], []
    for _ in range(n):
        h, w = (int(v) for v in torch.randint(4, 9, (2,), generator=g))
        maps_list.append(torch.randint(0, 4, (c, h, w), generator=g).float())  # many tied maxima
        k = int(torch.randint(0, 3, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w, h])
        wh = torch.rand(k, 2, generator=g) * 3
        boxes = torch.cat([xy, xy + wh], 1).tolist()
        targets.append(target(boxes, torch.randint(0, c, (k,), generator=g).tolist()))
    m = loc_map(tolerance=tol)
    for i in range(0, n, 8):
        m.update([{"score_maps": x} for x in maps_list[i:i + 8]], targets[i:i + 8])
    rows = brute_force(maps_list, targets, tol)
    got = m.per_class()["loc_map"]
    for k in range(c):
        conf = [r[k][0] for r in rows]
        tp = [r[k][1] for r in rows]
        npos = sum(r[k][2] for r in rows)
        assert got[k] == pytest.approx(voc12_reference(conf, tp, npos), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_core_raw_equals_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (70, 4), generator=g).double()  # ties
    labels = torch.rand((70, 4), generator=g) < 0.4
    got = average_precision(scores, labels, ~labels, variant="raw")
    for k in range(4):
        assert got[k].item() == pytest.approx(average_precision_score(labels[:, k], scores[:, k]), abs=1e-12)


def test_streaming_and_ddp_state_merge_and_mixed_sizes():
    preds = [{"score_maps": peak_maps(2, 6 + i, 5, {0: (i, 1, 0.1 * i), 1: (0, 0, 1.0 - 0.1 * i)})} for i in range(5)]
    targets = [target([[0, 0, 3, 3]], [i % 2]) for i in range(5)]
    whole = loc_map(tolerance=0)
    whole.update(preds, targets)  # maps of different sizes in one batch
    a, b = loc_map(tolerance=0), loc_map(tolerance=0)
    a.update(preds[:2], targets[:2])
    b.update(preds[2:], targets[2:])
    assert a.state_reductions == {"scores": "cat", "hit": "cat", "present": "cat"}
    merged = loc_map(tolerance=0)
    merged.load_state_tensors({k: torch.cat([a.state_tensors()[k], b.state_tensors()[k]]) for k in a.state_reductions})
    assert merged.per_class() == whole.per_class()
    whole.reset()
    assert math.isnan(whole.compute()["loc_map"])


def test_bad_input_errors():
    for bad in ({"point": "center"}, {"tolerance": -1}, {"variant": "coco"}):
        with pytest.raises(ConfigError):
            loc_map(**bad)
    m = loc_map(num_classes=2)
    maps = {"score_maps": torch.zeros(2, 4, 4)}
    with pytest.raises(DataError, match="class 2 is outside"):
        m.update([maps], [target([[0, 0, 1, 1]], [2])])
    with pytest.raises(DataError, match=r"expected \[N, 4\]"):
        m.update([maps], [{"boxes": torch.zeros(2, 4), "classes": torch.zeros(1, dtype=torch.long)}])
    with pytest.raises(DataError, match="expected 2 score maps"):
        m.update([{"score_maps": torch.zeros(3, 4, 4)}], [target()])
    with pytest.raises(DataError, match=r"\[C, H, W\]"):
        m.update([{"score_maps": torch.zeros(4, 4)}], [target()])
    with pytest.raises(DataError, match="NaN"):
        m.update([{"score_maps": torch.full((2, 4, 4), float("nan"))}], [target()])
    with pytest.raises(DataError, match="'classes'"):
        m.update([maps], [{"boxes": torch.zeros(1, 4)}])
    assert m.state_tensors()["scores"].shape == (0, 2)


def test_first_maximum_matches_flat_argmax_batched_and_single():
    g = torch.Generator().manual_seed(9)
    maps = torch.randint(0, 3, (4, 5, 6, 7), generator=g).float()  # many tied maxima
    flat = maps.reshape(4, 5, -1).max(dim=-1)  # torch documents: the first maximal index
    conf, index = first_maximum(maps)
    assert torch.equal(conf, flat.values) and torch.equal(index, flat.indices)
    conf, index = first_maximum(maps[1])
    assert torch.equal(conf, flat.values[1]) and torch.equal(index, flat.indices[1])


def test_score_maps_of_another_size_than_the_image_are_refused_outside_the_engine():
    """The issue-19 reproduction: a 47x63 map for a 375x500 image scored 0.0 silently; now it is an error."""
    from torchvision import tv_tensors

    from segbench.errors import DataError
    from segbench.plugins import get_registry

    metric = get_registry().metric("loc_map").build(num_classes=2, background=0)
    maps = torch.zeros(2, 47, 63)
    maps[1, 40, 60] = 1
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[400.0, 300.0, 500.0, 375.0]]), format="XYXY",
                                     canvas_size=(375, 500))
    with pytest.raises(DataError, match=r"score_maps of image 0 are \(47, 63\) but the image is \(375, 500\)"):
        metric.update([{"score_maps": maps}], [{"boxes": boxes, "classes": torch.tensor([1])}])
    mask = torch.zeros(375, 500, dtype=torch.long)
    with pytest.raises(DataError, match="but the image is"):
        metric.update([{"score_maps": maps}], [{"boxes": boxes.as_subclass(torch.Tensor),
                                                "classes": torch.tensor([1]), "mask": mask}])
    full = torch.nn.functional.interpolate(maps[None], size=(375, 500), mode="bilinear")[0]
    metric.update([{"score_maps": full}], [{"boxes": boxes, "classes": torch.tensor([1])}])
    assert metric.compute()["loc_map"] == 1.0


def test_confidence_image_score_ranks_by_the_image_score_and_keeps_the_point():
    # class 0 in both images; image A's point hits, image B's misses. By map maximum B ranks first (a false
    # positive above the true one); by image score A ranks first. Two positives, one ever recalled: raw AP is
    # 1/2 x precision at A's rank, 0.5 x 1/2 = 0.25 by map, 1 x 1/2 = 0.5 by score. The points are the same.
    maps_a, maps_b = peak_maps(1, 8, 8, {0: (1, 1, 2.0)}), peak_maps(1, 8, 8, {0: (6, 6, 9.0)})
    predictions = [{"score_maps": maps_a, "scores": torch.tensor([0.9])},
                   {"score_maps": maps_b, "scores": torch.tensor([0.1])}]
    targets = [target([[0, 0, 3, 3]], [0]), target([[0, 0, 3, 3]], [0])]
    by_map, by_score = loc_map(tolerance=0, variant="raw"), loc_map(tolerance=0, variant="raw",
                                                                     confidence="image_score")
    for m in (by_map, by_score):
        m.update(predictions, targets)
    assert by_map.state_tensors()["hit"].tolist() == by_score.state_tensors()["hit"].tolist() == [[True], [False]]
    assert by_map.compute()["loc_map"] == pytest.approx(0.25)
    assert by_score.compute()["loc_map"] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="confidence must be one of map_max, image_score, got 'max'"):
        loc_map(confidence="max")
    with pytest.raises(DataError, match="confidence=image_score needs 1 image scores per prediction, got \\[2\\]"):
        loc_map(confidence="image_score").update([{"score_maps": maps_a, "scores": torch.ones(2)}], targets[:1])


def test_late_metric_options_and_late_metrics_keep_old_config_ids():
    from segbench.engine.config import identity_dict

    old = {"train": {}, "metrics": {"loc_map": {"tolerance": 4, "variant": "voc12"}}}
    same = {"train": {}, "metrics": {"loc_map": {"tolerance": 4, "variant": "voc12", "confidence": "map_max"}}}
    assert identity_dict(same) == identity_dict(old)
    changed = {"train": {}, "metrics": {"loc_map": {"tolerance": 4, "variant": "voc12", "confidence": "image_score"}}}
    assert identity_dict(changed)["metrics"]["loc_map"]["confidence"] == "image_score"
