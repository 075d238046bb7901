"""Tests of the U-Net plugin: registration, geometry, copies, overlap-tile exactness and memory, options, loss."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segbench.engine.config import TrainConfig
from segbench.errors import ConfigError
from segbench_unet import OPTIONS, method_specs
from segbench_unet.model import UNet
from segbench_unet.tiling import (
    TileGeometry,
    mirror_index,
    network_size,
    receptive_radius,
    trimmed_context,
    valid_output_size,
)

C = 4


def tiny(seed: int = 0, dtype=torch.float32, **options) -> UNet:
    """A tiny U-Net in eval mode with non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    model = UNet(C, **{"depth": 3, "base_channels": 4, "tile_size": 0, **options})
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.3, 0.3)
    return model.eval().to(dtype)


def image(h: int, w: int, b: int = 1, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed)).to(dtype)


# -- registration ---------------------------------------------------------------------
def test_registers_through_the_entry_point():
    from segbench.plugins import Registry

    spec = Registry().load().methods["unet"]
    spec.validate()
    assert spec.plugin == "unet" and spec.supervision == "pixel"
    assert spec.outputs == {"mask", "score_maps", "scores"}
    assert set(spec.recipes) == {"quick", "bench", "paper"} and spec.options == OPTIONS
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    for recipe in spec.recipes.values():
        assert set(recipe.train) <= train_keys, set(recipe.train) - train_keys
    paper = spec.recipes["paper"]
    assert paper.model["padding"] == "valid" and paper.model["batch_norm"] is False
    assert paper.train["momentum"] == 0.99 and paper.train["batch_size"] == 1
    # every recipe's network is valid (tile geometry checked at creation)
    for recipe in spec.recipes.values():
        options = {**spec.options, **recipe.model}
        TileGeometry.create(options["depth"], options["padding"], options["tile_size"], options["tile_overlap"])


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, segbench_unet; segbench_unet.method_specs(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_build_through_the_spec():
    model = method_specs()[0].build(C, **{**OPTIONS, "depth": 2, "base_channels": 2})
    assert isinstance(model, UNet) and model.head.out_channels == C and len(model.down) == 2


# -- geometry ---------------------------------------------------------------------------
def test_context_and_valid_sizes_match_the_paper():
    assert trimmed_context(4) == 92  # Fig. 1: 572 -> 388
    assert valid_output_size(572, 4) == 388
    assert valid_output_size(570, 4) is None and valid_output_size(574, 4) is None
    assert network_size(570, 4, "valid") == 572 and network_size(150, 3, "same") == 152
    assert [receptive_radius(d, "same") for d in (1, 2, 3, 4)] == [9, 23, 51, 107]
    assert receptive_radius(4, "valid") == 92


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_receptive_radius_is_exact(depth):
    """Autograd: every output pixel depends on input within the radius, and some pixel reaches it."""
    torch.manual_seed(depth)
    model = UNet(2, depth=depth, base_channels=3, tile_size=0).eval().double()
    radius, factor, reach = receptive_radius(depth, "same"), 2**depth, 0
    for x0 in range(48, 48 + factor):  # every alignment with the pooling grid
        x = image(1, 96, seed=x0, dtype=torch.float64).expand(1, 3, 8, 96).clone().requires_grad_(True)
        model(x)[0, :, 4, x0].sum().backward()
        cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2))).flatten()
        reach = max(reach, x0 - cols.min().item(), cols.max().item() - x0)
    assert reach == radius


# -- copies -----------------------------------------------------------------------------
def _record_concatenations(model):
    """Shapes of the copies (before cropping), of the up-convolved maps and of what each level concatenates."""
    record = {"copies": [], "ups": [], "cats": []}
    for block in model.down:
        block.register_forward_hook(lambda m, i, o: record["copies"].append(tuple(o.shape[1:])))
    for up in model.up:
        up.register_forward_hook(lambda m, i, o: record["ups"].append(tuple(o.shape[1:])))
    for dec in model.dec:
        dec.register_forward_pre_hook(lambda m, i: record["cats"].append(tuple(i[0].shape[1:])))
    return record


def test_valid_padding_copies_are_cropped_as_in_the_paper():
    torch.manual_seed(0)
    model = UNet(2, depth=4, base_channels=2, padding="valid", tile_size=0).eval()
    record = _record_concatenations(model)
    with torch.no_grad():
        out = model(image(572, 572))
    assert out.shape == (1, 2, 388, 388)
    # Fig. 1: copies 568, 280, 136, 64 cropped to the up-convolved 56, 104, 200, 392
    assert record["copies"] == [(2, 568, 568), (4, 280, 280), (8, 136, 136), (16, 64, 64)]
    assert record["ups"] == [(16, 56, 56), (8, 104, 104), (4, 200, 200), (2, 392, 392)]
    assert record["cats"] == [(32, 56, 56), (16, 104, 104), (8, 200, 200), (4, 392, 392)]


def test_same_padding_concatenates_full_copies():
    model = tiny(base_channels=3)
    record = _record_concatenations(model)
    with torch.no_grad():
        assert model(image(48, 64)).shape == (1, C, 48, 64)
    assert record["copies"] == [(3, 48, 64), (6, 24, 32), (12, 12, 16)]
    assert record["ups"] == [(12, 12, 16), (6, 24, 32), (3, 48, 64)]
    assert record["cats"] == [(24, 12, 16), (12, 24, 32), (6, 48, 64)]


def test_copies_are_concatenated_not_added():
    """Zeroing the copy half of the first expanding convolution's weights changes the output."""
    model = tiny()
    x = image(32, 32)
    with torch.no_grad():
        before = model(x)
        model.dec[0][0].weight[:, :4] = 0  # input channels 0..3: the level-0 copy
        assert not torch.allclose(model(x), before)


# -- overlap-tile ------------------------------------------------------------------------
def _reference_one_pass(model, x, margin, trim=0):
    """One pass over the image mirrored by ``margin`` with numpy's reflect padding (an independent framing)."""
    h, w = x.shape[-2:]
    depth, padding = model.geometry.depth, model.geometry.padding
    canvas_h, canvas_w = network_size(h + 2 * margin, depth, padding), network_size(w + 2 * margin, depth, padding)
    pads = ((0, 0), (0, 0), (margin, canvas_h - h - margin), (margin, canvas_w - w - margin))
    framed = torch.from_numpy(np.pad(x.numpy(), pads, mode="reflect"))
    with torch.no_grad():
        logits = model(framed)
    return logits[..., margin - trim:margin - trim + h, margin - trim:margin - trim + w].softmax(dim=1)


@pytest.mark.parametrize("padding, tile_size", [("same", 160), ("valid", 156)])
def test_overlap_tile_equals_one_pass_on_the_mirrored_image(padding, tile_size):
    """150x197 image: tiled == one pass over the numpy-mirrored image, borders and interiors, tiles one at a time."""
    model = tiny(dtype=torch.float64, padding=padding, tile_size=tile_size)
    geometry = model.geometry
    assert geometry.margin == {"same": 56, "valid": 46}[padding]  # radius 51 up to a multiple of 8; 44 + 2
    x = image(150, 197, dtype=torch.float64)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    tiled = model.probabilities(x)
    # memory-bounded: only single tiles reach the network, as many as the kept blocks that cover the image
    rows, cols = -(-150 // geometry.stride), -(-197 // geometry.stride)
    assert seen == [(1, 3, tile_size, tile_size)] * (rows * cols) and rows * cols > 1
    reference = _reference_one_pass(model, x, geometry.margin, geometry.trim)
    assert tiled.shape == reference.shape == (1, C, 150, 197)
    torch.testing.assert_close(tiled, reference, rtol=0, atol=1e-10)
    # the mirrored borders matter: a zero-padded frame differs near the border, not in the interior
    h_pad, w_pad = network_size(150, 3, "same") - 150, network_size(197, 3, "same") - 197
    if padding == "same":
        with torch.no_grad():
            zero = model(F.pad(x, (0, w_pad, 0, h_pad)))[..., :150, :197].softmax(dim=1)
        r = geometry.radius
        interior = (slice(None), slice(None), slice(r, 150 - r - h_pad), slice(r, 197 - r - w_pad))
        torch.testing.assert_close(tiled[interior], zero[interior], rtol=0, atol=1e-10)
        assert (tiled[..., :4, :] - zero[..., :4, :]).abs().max() > 1e-4


def test_overlap_tile_equals_one_pass_in_float32():
    """float32: equal up to the summation order of convolutions on inputs of other sizes (exact in float64)."""
    model = tiny(tile_size=160)
    x = image(150, 197, b=2, seed=3)
    tiled = model.probabilities(x)
    with torch.no_grad():
        one_pass = model.logits(x).softmax(dim=1)
    assert not model.geometry.fits(150, 197)
    torch.testing.assert_close(tiled, one_pass, rtol=0, atol=5e-5)


def test_interior_of_a_large_image_equals_the_same_region_in_one_pass():
    """Interior pixels of a tiled 176x240 image equal the bare network's output on that image (no framing)."""
    model = tiny(tile_size=160, dtype=torch.float64)
    x = image(176, 240, seed=5, dtype=torch.float64)
    tiled = model.probabilities(x)
    with torch.no_grad():
        bare = model(x).softmax(dim=1)
    r = model.geometry.radius
    torch.testing.assert_close(tiled[..., r:-r, r:-r], bare[..., r:-r, r:-r], rtol=0, atol=1e-10)


def test_small_images_take_one_pass_and_tile_size_zero_frames_as_training():
    model = tiny(tile_size=256)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        model.probabilities(image(50, 70, b=3))
    assert seen == [(3, 3, 168, 184)]  # mirrored by the margin 56, then up to a multiple of 8
    off = tiny(tile_size=0)
    seen.clear()
    off.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        off.probabilities(image(50, 70))
    assert seen == [(1, 3, 56, 72)]


def test_mirror_index_matches_numpy_reflect_for_any_length():
    for size in (1, 2, 5):
        values = np.arange(size)
        expected = np.pad(values, (23, 31), mode="reflect") if size > 1 else np.zeros(size + 54, dtype=int)
        got = mirror_index(-23, size + 54, size).numpy()
        np.testing.assert_array_equal(got, expected)


# -- predict and loss -------------------------------------------------------------------------
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("size", [(33, 47), (64, 64)])
def test_predict_keys_shapes_dtypes(padding, size):
    model = tiny(padding=padding, tile_size=0)
    predictions = model.predict(image(*size, b=2))
    assert len(predictions) == 2
    for p in predictions:
        assert set(p) == {"mask", "score_maps", "scores"}
        assert p["score_maps"].shape == (C, *size) and p["score_maps"].dtype == torch.float32
        assert p["mask"].shape == size and p["mask"].dtype == torch.int64
        torch.testing.assert_close(p["score_maps"].sum(0), torch.ones(size))
        assert torch.equal(p["mask"], p["score_maps"].argmax(0))
        torch.testing.assert_close(p["scores"], p["score_maps"].amax(dim=(1, 2)))


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_loss_is_cross_entropy_over_labelled_pixels_and_reaches_every_parameter(padding):
    model = tiny(padding=padding)
    x = image(40, 44, b=2)
    g = torch.Generator().manual_seed(1)
    targets = [{"mask": torch.randint(0, C, (40, 44), generator=g)} for _ in range(2)]
    targets[0]["mask"][:10] = 255
    with torch.no_grad():
        logits = model.logits(x, train=True)
    masks = torch.stack([t["mask"] for t in targets])
    keep = masks != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], masks[keep])
    torch.testing.assert_close(model.loss(x, targets)["loss"], expected)
    loss = model.train().loss(x, targets)["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _dots_mask(h: int, w: int, dots, void=()) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.int64)
    for y, x in dots:
        mask[y, x] = 1
    for y, x in void:
        mask[y, x] = 255
    return mask


def _weights_by_hand(mask: torch.Tensor, dots, w0=10.0, sigma=5.0) -> torch.Tensor:
    """Eq. 2 of the paper, pixel by pixel, for one-pixel cells at ``dots``: w_c = N / (K n_c), 0 on void."""
    m = mask.numpy()
    labelled = m != 255
    n, classes = labelled.sum(), np.unique(m[labelled])
    out = np.zeros(m.shape)
    for y in range(m.shape[0]):
        for x in range(m.shape[1]):
            if not labelled[y, x]:
                continue
            out[y, x] = n / (len(classes) * (m[labelled] == m[y, x]).sum())
            if m[y, x] == 0:
                d1, d2 = sorted(np.hypot(y - cy, x - cx) for cy, cx in dots)[:2]
                out[y, x] += w0 * np.exp(-(d1 + d2) ** 2 / (2 * sigma**2))
    return torch.from_numpy(out).float()


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_weight_map_loss_equals_the_papers_weighted_cross_entropy_by_hand(padding):
    """w(x) at each pixel of the (valid: framed, then trimmed) logits, the same pixel as the mask's."""
    model = tiny(padding=padding, weight_map=True, w0=10.0, sigma=3.0)
    x = image(20, 24, b=2)
    dots = [[(6, 5), (6, 14), (15, 9)], [(10, 4), (10, 18)]]
    targets = [{"mask": _dots_mask(20, 24, dots[0], void=[(0, 0), (19, 23)])}, {"mask": _dots_mask(20, 24, dots[1])}]
    with torch.no_grad():
        logits = model.logits(x, train=True)
    weights = torch.stack([_weights_by_hand(t["mask"], d, sigma=3.0) for t, d in zip(targets, dots)])
    torch.testing.assert_close(model.pixel_weights(targets), weights)
    masks = torch.stack([t["mask"] for t in targets])
    ce = F.cross_entropy(logits, masks, ignore_index=255, reduction="none")
    expected = (weights * ce).sum() / (masks != 255).sum()
    torch.testing.assert_close(model.loss(x, targets)["loss"], expected)
    shifted = (weights.roll(1, dims=-1) * ce).sum() / (masks != 255).sum()
    assert not torch.isclose(shifted, expected)  # the map is aligned, not merely of the right size
    loss = model.train().loss(x, targets)["loss"]
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_weight_map_uses_instance_masks_when_the_target_has_them():
    model = tiny(weight_map=True)
    mask = torch.zeros(16, 16, dtype=torch.int64)
    mask[4:8, 4:12] = 1  # one component; two touching instances
    instances = torch.zeros(2, 16, 16, dtype=torch.bool)
    instances[0, 4:8, 4:8] = instances[1, 4:8, 8:12] = True
    plain, split = model.pixel_weights([{"mask": mask}]), model.pixel_weights([{"mask": mask, "masks": instances}])
    assert torch.equal(plain[0, mask == 1], split[0, mask == 1])
    assert (split[0, 2, 8] > plain[0, 2, 8]).item()  # background above the touching border: two cells near


def test_weight_map_off_is_the_plain_loss():
    """Default ``weight_map=False``: the loss is bit for bit the plain mean cross-entropy (no weights computed)."""
    x = image(24, 20, b=2)
    g = torch.Generator().manual_seed(2)
    targets = [{"mask": torch.randint(0, C, (24, 20), generator=g)} for _ in range(2)]
    targets[1]["mask"][:5] = 255
    model = tiny()
    assert model.weight_map is False and UNet(C, base_channels=2).weight_map is False
    with torch.no_grad():
        logits = model.logits(x, train=True)
    masks = torch.stack([t["mask"] for t in targets])
    plain = F.cross_entropy(logits, masks, ignore_index=255, reduction="sum") / (masks != 255).sum()
    assert torch.equal(model.loss(x, targets)["loss"], plain)
    assert torch.equal(tiny(weight_map=False, w0=3.0, sigma=1.0).loss(x, targets)["loss"], plain)
    # with w(x) = 1 the weighted loss is the same mean
    from segbench.nn.weight_map import weighted_pixel_loss
    torch.testing.assert_close(weighted_pixel_loss(logits, masks, torch.ones(masks.shape)), plain)


def test_new_options_stay_out_of_the_config_ids_of_the_quick_and_bench_recipes():
    from segbench.engine.config import identity_dict

    spec = method_specs()[0]
    assert spec.late_options == {"weight_map": False, "w0": 10.0, "sigma": 5.0}
    assert all(OPTIONS[k] == v for k, v in spec.late_options.items())
    for name in ("quick", "bench"):
        model = {**OPTIONS, **spec.recipes[name].model}
        assert set(identity_dict({"model": model}, late_options=spec.late_options)["model"]) == \
            set(OPTIONS) - {"weight_map", "w0", "sigma"}
    paper = spec.recipes["paper"]
    assert paper.model["weight_map"] is True and paper.model["w0"] == 10.0 and paper.model["sigma"] == 5.0
    assert "weight_map" in identity_dict({"model": {**OPTIONS, **paper.model}}, late_options=spec.late_options)["model"]


def test_paper_recipe_cites_every_value():
    from segbench.testing.checks import paper_recipe_problems

    spec = method_specs()[0]
    assert paper_recipe_problems(spec) == []
    assert "eq. 2" in spec.recipes["paper"].sources["weight_map"]
    assert not any(line.startswith("No weight map") for line in spec.recipes["paper"].deviations)


@pytest.mark.parametrize("weight_map", [False, True])
def test_all_void_target_gives_zero_loss(weight_map):
    model = tiny(weight_map=weight_map).train()
    targets = [{"mask": torch.full((32, 32), 255, dtype=torch.int64)} for _ in range(2)]
    loss = model.loss(image(32, 32, b=2), targets)["loss"]
    assert loss.item() == 0.0


# -- options ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [
        ({"depth": 4, "tile_size": 500}, r"tile_size=500 must be a multiple of 2\*\*depth = 16"),
        ({"depth": 4, "tile_size": 128}, r"tile_size=128 is smaller than the network's receptive context"),
        ({"depth": 4, "tile_overlap": 50}, r"tile_overlap=50 is below the receptive context radius 107"),
        ({"depth": 4, "tile_overlap": 120}, r"tile_overlap=120 must be a multiple of 2\*\*depth = 16"),
        ({"depth": 4, "padding": "valid", "tile_size": 572, "tile_overlap": 93},
         r"tile_size - 2 \* tile_overlap = 386 must be a multiple of 2\*\*depth = 16"),
        ({"depth": 4, "padding": "valid", "tile_size": 500}, r"tile_size=500 is not an input size .* 492, 508"),
        ({"padding": "reflect"}, "padding must be one of same, valid"),
        ({"depth": 0}, "depth must be an integer"),
        ({"base_channels": 0}, "base_channels must be a positive integer"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"weight_map": 1}, "weight_map must be true or false"),
        ({"w0": -1.0}, "w0 must be a number >= 0"),
        ({"sigma": 0.0}, r"sigma must be a number > 0"),
    ],
)
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError, match=message) as info:
        UNet(C, **{"base_channels": 2, **options})
    assert "\n" not in str(info.value) and str(info.value).startswith("unet: ")
