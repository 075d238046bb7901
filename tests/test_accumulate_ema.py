"""Gradient accumulation (``accumulate=K``) and the weights' moving average (``ema=DECAY``) in the training loop."""

from __future__ import annotations

import io
import json
import re

import pytest
import torch

from segbench.engine.config import LATE_TRAIN_FIELDS, TrainConfig, identity_dict
from segbench.engine.data import SeededSamples, TrainSampler, make_loader
from segbench.engine.train import build_ema, micro_batches, train
from segbench.errors import ConfigError
from segbench.testing.cli import run_cli

CLASSES = 3


class NoNormNet(torch.nn.Module):
    """A convolution, global average pooling and a linear layer: no batch norm, a loss that is a mean over images."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, CLASSES)

    def loss(self, images, targets):
        scores = self.fc(self.conv(images).relu().mean(dim=(2, 3)))
        labels = torch.stack([t["labels"] for t in targets])
        return {"bce": torch.nn.functional.binary_cross_entropy_with_logits(scores, labels)}


class Samples(torch.utils.data.Dataset):
    def __init__(self, n: int = 12) -> None:
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=generator)
        self.labels = (torch.rand(n, CLASSES, generator=generator) > 0.5).float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "target": {"labels": self.labels[i]}, "meta": {"id": str(i)}}


def _train(batch_size: int, accumulate: int, steps: int = 1, ema: float = 0.0, save=None, resume=None,
           model=None, every: int = 0):
    config = TrainConfig(steps=steps, batch_size=batch_size, accumulate=accumulate, optimizer="sgd", lr=0.5,
                         momentum=0.0, weight_decay=0.0, schedule="constant", hflip=False, ema=ema,
                         checkpoint_every=every)
    config.validate()
    data = SeededSamples(Samples())
    sampler = TrainSampler(len(data), seed=0)
    loader = make_loader(data, batch_size * accumulate, shuffle=False, seed=0, sampler=sampler, drop_last=True)
    model = model or NoNormNet()
    result = train(model, loader, config, torch.device("cpu"), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                   progress=False, save=save, resume=resume)
    return model, result


def test_micro_batches_split_a_batch_with_weights_summing_to_one():
    images = torch.zeros(7, 3, 2, 2)
    chunks = micro_batches(images, list(range(7)), 3)
    assert [c[0].shape[0] for c in chunks] == [3, 3, 1]
    assert [c[1] for c in chunks] == [[0, 1, 2], [3, 4, 5], [6]]
    assert sum(c[2] for c in chunks) == pytest.approx(1.0)
    assert micro_batches(images, list(range(7)), 8)[0][2] == 1.0


def test_accumulated_gradients_equal_one_batch_k_times_larger():
    whole, _ = _train(batch_size=8, accumulate=1)
    accumulated, result = _train(batch_size=2, accumulate=4)
    for (name, a), (_, b) in zip(whole.named_parameters(), accumulated.named_parameters()):
        assert (a - b).abs().max() < 1e-6, name
    assert result.images == 8
    untouched = NoNormNet()  # and the step did move the weights: the comparison is not between two no-ops
    assert (untouched.fc.weight - whole.fc.weight).abs().max() > 1e-3


def test_ema_is_torchs_averaged_model_of_the_steps():
    model, result = _train(batch_size=4, accumulate=1, steps=3, ema=0.5)
    assert result.ema is not None
    # by hand, torch's rule: the first update copies the weights, then avg = 0.5 * avg + 0.5 * w after each step
    weights = []
    for steps in (1, 2, 3):
        trained, _ = _train(batch_size=4, accumulate=1, steps=steps, model=NoNormNet())
        weights.append(trained.fc.weight.detach().clone())
    average = weights[0]
    for w in weights[1:]:
        average = 0.5 * average + 0.5 * w
    assert torch.allclose(result.ema.module.fc.weight, average, atol=1e-6)
    assert not torch.allclose(result.ema.module.fc.weight, model.fc.weight, atol=1e-4)


def test_ema_is_checkpointed_and_resumed_bit_identically():
    saved = {}
    model = NoNormNet()

    def save(step, state):  # what save_checkpoint writes: the weights and the state, copied at that step
        buffer = io.BytesIO()
        state = {**state, "rng": [state["rng"]]}  # one RNG state per process, as the engine's save gathers them
        torch.save(({k: v.clone() for k, v in model.state_dict().items()}, state), buffer)
        saved[step] = buffer.getvalue()

    _, straight = _train(batch_size=4, accumulate=1, steps=3, ema=0.9, model=model, save=save, every=2)
    assert sorted(saved) == [2, 3]
    weights, state = torch.load(io.BytesIO(saved[2]), weights_only=False)
    assert state["step"] == 2 and "n_averaged" in state["ema"]
    resumed = NoNormNet()
    resumed.load_state_dict(weights)
    _, result = _train(batch_size=4, accumulate=1, steps=3, ema=0.9, model=resumed, resume=state, every=2)
    for key, value in straight.ema.state_dict().items():
        assert torch.equal(value, result.ema.state_dict()[key]), key
    assert torch.equal(model.fc.weight, resumed.fc.weight)


def test_build_ema_averages_buffers_too():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2))
    ema = build_ema(net, 0.5)
    ema.update_parameters(net)  # the first update copies (running mean 0)
    net[1].running_mean.fill_(2.0)
    ema.update_parameters(net)
    assert torch.allclose(ema.module[1].running_mean, torch.full((2,), 1.0))


@pytest.mark.parametrize("key, value, message", [
    ("accumulate", 0, "accumulate must be a whole number of passes >= 1 (1 = off), got 0"),
    ("accumulate", 1.5, "accumulate must be a whole number of passes >= 1 (1 = off), got 1.5"),
    ("ema", 1.5, "ema must be a decay in [0, 1) (0 = off, e.g. 0.999), got 1.5"),
    ("ema", -0.1, "ema must be a decay in [0, 1) (0 = off, e.g. 0.999), got -0.1"),
])
def test_bad_values_are_one_line_errors(key, value, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        TrainConfig(**{key: value}).validate()


def test_neutral_values_keep_old_config_ids():
    assert LATE_TRAIN_FIELDS["accumulate"] == 1 and LATE_TRAIN_FIELDS["ema"] == 0.0
    train = {"steps": 5, "accumulate": 1, "ema": 0.0}
    assert identity_dict({"train": train})["train"] == {"steps": 5}
    assert identity_dict({"train": {**train, "accumulate": 2}})["train"] == {"steps": 5, "accumulate": 2}


def test_cli_run_records_the_effective_batch_and_the_ema(capsys, tmp_path):
    args = ["run", "--method", "weldon", "--dataset", "shapes", "--runs-dir", str(tmp_path),
            "--set", "steps=2", "--set", "batch_size=2", "--set", "num_train=8", "--set", "num_val=4",
            "--set", "image_size=32", "--set", "accumulate=3", "--set", "ema=0.9", "--quiet"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["effective_batch_size"] == 6
    assert record["config"]["train"]["accumulate"] == 3 and record["config"]["train"]["ema"] == 0.9
    code, out, err = run_cli(capsys, "run", "--method", "weldon", "--set", "accumulate=0", "--runs-dir",
                             str(tmp_path / "refused"))
    assert code != 0 and "accumulate must be a whole number of passes >= 1" in err and "Traceback" not in err
    assert not (tmp_path / "refused").exists() or not list((tmp_path / "refused").glob("*.json"))
