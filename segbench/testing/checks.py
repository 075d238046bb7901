"""The individual conformance checks. Each takes a :class:`CheckContext` and raises ``AssertionError``."""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

CHECK_IMAGE_SIZE = 64
CHECK_SIZES = ((64, 64), (56, 72))  # square, and a size that is not a multiple of 32


class CheckContext:
    """A method under test: its spec, tiny shapes data, and a model factory with the quick recipe's options."""

    def __init__(self, method: str, options: dict[str, Any]) -> None:
        from segbench.plugins import get_registry

        self.spec = get_registry().method(method)
        quick = self.spec.recipes.get("quick")
        self.options = {**self.spec.options, **(dict(quick.model) if quick else {}), **options}
        if "pretrained" in self.options:
            self.options["pretrained"] = False
        self.num_classes = 7

    def build(self, seed: int = 0):
        import torch

        torch.manual_seed(seed)
        return self.spec.build(self.num_classes, **self.options)

    @cached_property
    def samples(self) -> list[dict]:
        from segbench.api import create_dataset

        data = create_dataset("shapes", "train", image_size=CHECK_IMAGE_SIZE, num_train=8)
        return [data[i] for i in range(4)]

    def batch(self, size: tuple[int, int] | None = None):
        """A normalised image batch and its targets (resized to ``size`` when given)."""
        import torch
        from torchvision.transforms import v2

        samples = self.samples
        if size is not None and tuple(size) != (CHECK_IMAGE_SIZE, CHECK_IMAGE_SIZE):
            resize = v2.Resize(list(size), antialias=True)
            samples = [dict(s, **dict(zip(("image", "target"), resize(s["image"], s["target"])))) for s in samples]
        images = torch.stack([s["image"].as_subclass(torch.Tensor) for s in samples]).float() / 255.0
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        targets = [{k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v
                    for k, v in s["target"].items()} for s in samples]
        return (images - mean) / std, targets


def check_spec(ctx: CheckContext) -> None:
    """The spec has the three standard recipes and validates; its ``paper`` recipe cites each value."""
    ctx.spec.validate()
    missing = {"quick", "bench", "paper"} - set(ctx.spec.recipes)
    assert not missing, f"missing recipes {sorted(missing)}"
    problems = paper_recipe_problems(ctx.spec)
    assert not problems, "; ".join(problems)


def paper_recipe_problems(spec: Any) -> list[str]:
    """What the ``paper`` recipe of ``spec`` fails to declare: a source for every ``train`` and ``model`` value
    (the paper's section or table, or the reference file and line), and for each value that is segbench's own
    choice (a source ``"deviation: ..."``) a deviation line naming the key in backticks (`` `lr` ``); deviation
    lines are single lines under 160 characters."""
    recipe = spec.recipes.get("paper")
    if recipe is None:
        return []
    problems = []
    keys = set(recipe.train) | set(recipe.model)
    unsourced = sorted(k for k in keys if not str(recipe.sources.get(k, "")).strip())
    if unsourced:
        problems.append(f"paper recipe values without a source: {unsourced}")
    for key in sorted(keys - set(unsourced)):
        if str(recipe.sources[key]).lower().startswith("deviation") and \
                not any(f"`{key}`" in line for line in recipe.deviations):
            problems.append(f"'{key}' is segbench's choice (source: deviation) but no deviation line names `{key}`")
    bad = [line for line in recipe.deviations if not line.strip() or "\n" in line or len(line) >= 160]
    if bad:
        problems.append(f"deviation lines must be one line under 160 characters: {bad[:1]}")
    return problems


def check_outputs(ctx: CheckContext) -> None:
    """``predict`` returns one dict per image with exactly the declared keys, shapes and dtypes."""
    import torch

    from segbench.engine.evaluate import resize_prediction

    model = ctx.build().eval()
    for size in CHECK_SIZES:
        images, _ = ctx.batch(size)
        with torch.inference_mode():
            predictions = model.predict(images)
        assert len(predictions) == images.shape[0], f"{len(predictions)} predictions for {images.shape[0]} images"
        for prediction in predictions:
            keys = set(prediction)
            assert keys == set(ctx.spec.outputs), f"keys {sorted(keys)} != declared {sorted(ctx.spec.outputs)}"
            _check_prediction(prediction, ctx.num_classes)
            resized = resize_prediction(prediction, size)
            if "score_maps" in resized:
                assert tuple(resized["score_maps"].shape) == (ctx.num_classes, *size)
            if "mask" in resized:
                assert tuple(resized["mask"].shape) == tuple(size)


def _check_prediction(prediction: dict, num_classes: int) -> None:
    import torch

    if "scores" in prediction:
        scores = prediction["scores"]
        assert scores.shape == (num_classes,), f"scores shape {tuple(scores.shape)}, expected ({num_classes},)"
        assert scores.is_floating_point() and torch.isfinite(scores).all(), "scores must be finite floats"
    if "score_maps" in prediction:
        maps = prediction["score_maps"]
        assert maps.dim() == 3 and maps.shape[0] == num_classes, f"score_maps shape {tuple(maps.shape)}"
        assert maps.is_floating_point() and torch.isfinite(maps).all(), "score_maps must be finite floats"
    if "mask" in prediction:
        mask = prediction["mask"]
        assert mask.dim() == 2 and mask.dtype == torch.int64, f"mask {tuple(mask.shape)} {mask.dtype}"
        assert mask.min() >= 0 and mask.max() < num_classes, "mask values outside the classes"
    if "instances" in prediction:
        inst = prediction["instances"]
        n = inst["scores"].shape[0]
        assert inst["boxes"].shape == (n, 4) and inst["classes"].shape == (n,), "instances shapes"
        if "masks" in inst:
            assert inst["masks"].shape[0] == n, "instances masks"


def check_loss(ctx: CheckContext) -> None:
    """``loss`` returns a dict of finite scalar tensors, and gradients reach every trainable parameter."""
    import torch

    model = ctx.build().train()
    images, targets = ctx.batch()
    losses = model.loss(images, targets)
    assert isinstance(losses, dict) and losses, "loss must return a non-empty dict"
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), f"loss '{name}' is not a finite scalar: {value}"
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, "the model has no trainable parameters"
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"no gradient reaches {len(missing)} parameter(s), e.g. {missing[:3]}"
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:3]}"
    assert any(p.grad.abs().sum() > 0 for _, p in trainable), "all gradients are zero"


def check_learns(ctx: CheckContext) -> None:
    """A few AdamW steps on a fixed shapes batch lower the loss."""
    import torch

    model = ctx.build().train()
    images, targets = ctx.batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(12):
        loss = sum(model.loss(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert all(math.isfinite(v) for v in history), f"non-finite loss: {history}"
    first, last = sum(history[:2]) / 2, sum(history[-2:]) / 2
    assert last < first, f"loss did not decrease over 12 steps: {first:.4f} -> {last:.4f}"


def check_deterministic(ctx: CheckContext) -> None:
    """The same seed builds the same model and gives the same predictions."""
    import torch

    images, _ = ctx.batch()
    outputs = []
    for _ in range(2):
        model = ctx.build(seed=123).eval()
        with torch.inference_mode():
            outputs.append(model.predict(images))
    for a, b in zip(*outputs):
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), f"'{key}' differs between two builds with the same seed"


ALL_CHECKS = (check_spec, check_outputs, check_loss, check_learns, check_deterministic)
