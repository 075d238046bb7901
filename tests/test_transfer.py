"""Batches cross from loader workers in one shared-memory buffer, and arrive exactly as they left."""

import copy
import pickle
from collections import namedtuple

import pytest
import torch
from torchvision import tv_tensors

from segbench.engine.data import collate
from segbench.engine.instance_masks import InstanceMasks
from segbench.engine.transfer import COPY_BELOW, Batch

Size = namedtuple("Size", "height width")


def _sample(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, 80, 100), dtype=torch.uint8, generator=g)
    n = seed % 3
    target = {
        "labels": torch.rand(21, generator=g),
        "labels_ignore": torch.rand(21, generator=g) > 0.5,
        "boxes": tv_tensors.BoundingBoxes(torch.rand(n, 4, generator=g) * 30, format="XYXY", canvas_size=(100, 80)),
        "classes": torch.arange(n, dtype=torch.int64),
        "mask": tv_tensors.Mask(torch.randint(0, 21, (100, 80), dtype=torch.uint8, generator=g)),
        # Fortran-ordered, as pycocotools decodes them: [N, H, W] with strides (H*W, 1, H)
        "masks": torch.rand(n, 80, 100, generator=g).gt(0.5).permute(0, 2, 1).as_subclass(InstanceMasks),
        "score": torch.tensor(0.25, dtype=torch.float64),
        "image_id": seed,
    }
    meta = {"id": f"img{seed}", "orig_size": (100, 80), "size": Size(100, 80), "difficult": [True, False]}
    return {"image": tv_tensors.Image(image.transpose(1, 2)), "target": target, "meta": meta}


def _assert_same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) and a.__dict__ == b.__dict__
        assert [s for s, n in zip(a.stride(), a.shape) if n > 1] == [s for s, n in zip(b.stride(), b.shape) if n > 1]
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def test_a_pickled_batch_arrives_identical_with_types_metadata_and_empty_tensors():
    batch = collate([_sample(seed) for seed in range(4)])
    assert isinstance(batch, Batch)
    out = pickle.loads(pickle.dumps(batch))
    _assert_same(batch, out)
    assert out["targets"][0]["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert out["targets"][0]["boxes"].shape == (0, 4) and out["targets"][0]["masks"].shape == (0, 100, 80)
    assert out["targets"][2]["masks"].stride() == (8000, 1, 100)  # memory order kept: copied by memcpy
    assert out["images"][0].stride() == (8000, 1, 100)


def test_large_tensors_share_one_buffer_and_small_ones_are_copied_out():
    batch = collate([_sample(seed) for seed in range(4)])
    out = pickle.loads(pickle.dumps(batch))
    assert out["images"][0].nbytes >= COPY_BELOW > out["targets"][0]["mask"].nbytes
    images = {img.untyped_storage().data_ptr() for img in out["images"]}
    assert len(images) == 1  # one buffer for every tensor of COPY_BELOW bytes or more
    small = {t[k].untyped_storage().data_ptr() for t in out["targets"] for k in ("labels", "mask")}
    assert len(small) == 8 and not small & images  # a kept label vector does not keep the images alive


def test_broadcast_views_arrive_with_their_values_and_odd_tensors_pickle_as_torch_does():
    row = torch.arange(100, dtype=torch.float32)
    batch = Batch(images=[row.expand(50, 100)], weights=torch.ones(3, requires_grad=True))
    out = pickle.loads(pickle.dumps(batch))
    assert torch.equal(out["images"][0], row.expand(50, 100)) and out["images"][0].stride() == (100, 1)
    assert out["weights"].requires_grad and torch.equal(out["weights"].detach(), torch.ones(3))


def test_a_shallow_copy_does_not_pack():
    batch = collate([_sample(0), _sample(1)])
    clone = copy.copy(batch)
    assert isinstance(clone, Batch) and clone["images"] is batch["images"]


class _Samples(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> dict:
        return _sample(index)


@pytest.mark.parametrize("workers", [2])
def test_batches_from_workers_equal_batches_from_the_main_process(workers):
    def batches(num_workers: int) -> list:
        loader = torch.utils.data.DataLoader(_Samples(), batch_size=4, num_workers=num_workers, collate_fn=collate)
        return list(loader)

    for ours, reference in zip(batches(workers), batches(0), strict=True):
        _assert_same(reference, ours)
