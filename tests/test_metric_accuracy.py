"""``accuracy``: against scikit-learn's accuracy_score and balanced_accuracy_score, and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from segbench.api import create_metric
from segbench.errors import ConfigError, DataError
from segbench.metrics.accuracy import Accuracy
from segbench.plugins import get_registry


def batch(scores, truth, num_classes):
    predictions = [{"scores": torch.as_tensor(s, dtype=torch.float32)} for s in scores]
    targets = []
    for t in truth:
        labels = torch.zeros(num_classes)
        labels[t] = 1
        targets.append({"labels": labels})
    return predictions, targets


def test_registered_with_its_requirements():
    spec = get_registry().metric("accuracy")
    assert spec.requires_outputs == {"scores"} and spec.requires_annotations == {"labels"}
    assert spec.primary == "mean_class_accuracy"
    assert set(spec.options) == {"num_classes", "background", "single_label"}
    assert isinstance(create_metric("accuracy", num_classes=3), Accuracy)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_on_random_data_fed_in_batches(seed):
    rng = np.random.default_rng(seed)
    n, c = 97, 7
    truth = rng.integers(0, c - 1, n)  # class 6 never occurs: left out of the mean, as sklearn does
    scores = rng.normal(size=(n, c)).round(1)  # ties happen: the first maximum wins, as np.argmax
    metric = Accuracy(num_classes=c)
    for start in range(0, n, 10):
        metric.update(*batch(scores[start:start + 10], truth[start:start + 10], c))
    predicted = scores.argmax(1)
    values = metric.compute()
    assert values["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
    with pytest.warns(UserWarning) if 6 in predicted else _nothing():
        expected = balanced_accuracy_score(truth, predicted)
    assert values["mean_class_accuracy"] == pytest.approx(expected, abs=1e-12)
    per_class = metric.per_class()["class_accuracy"]
    assert math.isnan(per_class[6]) and len(per_class) == c


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_by_hand_with_ties_and_a_background():
    # truths 1, 1, 2, 2 ; scores argmax (first max) 1, 2, 2, 0 -> with background 0 excluded: 1, 2, 2, 1
    scores = [[0.0, 0.9, 0.1], [0.0, 0.5, 0.5 + 1e-3], [0.3, 0.3, 0.3], [0.9, 0.4, 0.5]]
    plain = Accuracy(num_classes=3)
    plain.update(*batch(scores, [1, 1, 2, 2], 3))
    # argmax: 1, 2, 0 (tie: first), 0 -> correct: 1 of 4; class 1: 1/2, class 2: 0/2
    assert plain.compute() == {"accuracy": 0.25, "mean_class_accuracy": 0.25}
    with_bg = Accuracy(num_classes=3, background=0)
    with_bg.update(*batch(scores, [1, 1, 2, 2], 3))
    # background never predicted: 1, 2, 1 (tie between 1 and 2 after 0 is out: first), 2 -> 2 of 4
    assert with_bg.compute() == {"accuracy": 0.5, "mean_class_accuracy": 0.5}
    per_class = with_bg.per_class()["class_accuracy"]
    assert per_class[1:] == [0.5, 0.5] and math.isnan(per_class[0])


def test_multi_label_data_reports_nothing_or_fails_when_single_label_is_required():
    predictions = [{"scores": torch.tensor([0.1, 0.9, 0.0])}, {"scores": torch.tensor([0.1, 0.2, 0.7])}]
    targets = [{"labels": torch.tensor([0.0, 1.0, 1.0])}, {"labels": torch.tensor([0.0, 0.0, 1.0])}]
    decide = Accuracy(num_classes=3)
    decide.update(predictions, targets)
    assert decide.compute() == {} and decide.per_class() == {}
    off = Accuracy(num_classes=3, single_label=False)
    off.update(*batch([[0, 1, 0]], [1], 3))
    assert off.compute() == {}
    strict = Accuracy(num_classes=3, single_label=True)
    with pytest.raises(DataError, match="target 0 of the batch has 2 positive labels; accuracy needs exactly one"):
        strict.update(predictions, targets)


def test_state_sums_across_ranks():
    rng = np.random.default_rng(5)
    scores, truth = rng.normal(size=(40, 4)), rng.integers(0, 4, 40)
    whole, first, second = Accuracy(num_classes=4), Accuracy(num_classes=4), Accuracy(num_classes=4)
    whole.update(*batch(scores, truth, 4))
    first.update(*batch(scores[:25], truth[:25], 4))
    second.update(*batch(scores[25:], truth[25:], 4))
    a, b = first.state_tensors(), second.state_tensors()
    merged = Accuracy(num_classes=4)
    merged.load_state_tensors({k: a[k] + b[k] for k in a})
    assert merged.compute() == whole.compute()
    assert set(Accuracy.state_reductions.values()) == {"sum"}


def test_bad_input():
    metric = Accuracy(num_classes=3)
    with pytest.raises(DataError, match="scores have 2 classes but labels have 3"):
        metric.update([{"scores": torch.zeros(2)}], [{"labels": torch.tensor([0.0, 1.0, 0.0])}])
    with pytest.raises(DataError, match="needs 'scores' in every prediction"):
        metric.update([{"mask": torch.zeros(2, 2)}], [{"labels": torch.tensor([0.0, 1.0, 0.0])}])
    with pytest.raises(ConfigError, match="single_label must be true, false or none"):
        Accuracy(single_label="yes")
    empty = Accuracy(num_classes=2).compute()
    assert math.isnan(empty["accuracy"]) and math.isnan(empty["mean_class_accuracy"])
