"""From dataset samples to model batches: transforms v2, loaders, normalisation."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from segbench.engine.seeding import worker_seed
from segbench.errors import ConfigError


class TrainView:
    """A dataset view for training: keeps the target keys the method learns from, then applies ``transform``.

    Dropping unused annotations first keeps per-sample transform cost low.
    """

    def __init__(self, dataset, keys: frozenset[str], transform=None) -> None:
        self.dataset = dataset
        self.keys = training_keys(keys)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        sample = self.dataset[index]
        target = {k: v for k, v in sample["target"].items() if k in self.keys}
        image = sample["image"]
        if self.transform is not None:
            if "masks" in target:
                target["masks"] = _instance_masks(target["masks"])
            image, target = self.transform(image, target)
        return {"image": image, "target": target, "meta": sample["meta"]}


def training_keys(keys) -> set[str]:
    """The target keys a method learning from ``keys`` needs (instances travel as a group)."""
    keys = set(keys) | {"labels", "labels_ignore"}
    if "boxes" in keys or "masks" in keys:
        keys |= {"boxes", "classes", "masks", "iscrowd"}
    return keys


def train_transform(train_config, keys: frozenset[str] | set[str] = frozenset()) -> Any:
    """Optional warp to a square, random horizontal flip, optional elastic deformation, then optional random scale
    and crop (image, mask and boxes move together).

    ``keys`` are the target keys the samples keep; boxes cut away by a crop
    are dropped only when samples carry boxes.
    """
    from torchvision.transforms import v2

    steps = []
    if getattr(train_config, "warp_size", 0):  # the whole image to a square, aspect not kept (WILDCAT's 448x448)
        steps.append(v2.Resize((train_config.warp_size,) * 2, antialias=True))
    if train_config.hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if getattr(train_config, "elastic_alpha", 0.0):  # U-Net's elastic deformation (masks move nearest-neighbour)
        steps.append(v2.ElasticTransform(alpha=float(train_config.elastic_alpha),
                                         sigma=float(train_config.elastic_sigma),
                                         fill={"others": 0, _mask_type(): 255}))
    if train_config.scale_min != 1.0 or train_config.scale_max != 1.0:
        steps.append(v2.ScaleJitter(target_size=(train_config.crop_size or 512,) * 2,
                                    scale_range=(train_config.scale_min, train_config.scale_max)))
    if train_config.crop_size:
        size = train_config.crop_size
        steps.append(v2.RandomCrop(size, pad_if_needed=True, fill={"others": 0, _mask_type(): 255}))
        if "boxes" in keys:
            steps.append(v2.SanitizeBoundingBoxes(labels_getter=_classes_getter, min_size=1))
    return v2.Compose(steps) if steps else None


def _mask_type():
    from torchvision import tv_tensors

    return tv_tensors.Mask


def _instance_masks(masks):
    """``masks`` typed so that crop padding fills them with 0 (see ``instance_masks``)."""
    from segbench.engine.instance_masks import InstanceMasks

    return masks.as_subclass(InstanceMasks)


def _classes_getter(inputs):
    target = inputs[1] if isinstance(inputs, tuple) and len(inputs) > 1 else {}
    keys = [k for k in ("classes", "masks", "iscrowd") if k in target]
    return tuple(target[k] for k in keys) if keys else None


def collate(samples: Sequence[dict]) -> dict:
    """Keep samples as lists; images are stacked later by size.

    The batch is a :class:`~segbench.engine.transfer.Batch`: from a worker,
    all its tensors reach the main process in one shared-memory buffer.
    """
    from segbench.engine.transfer import Batch

    return Batch(
        images=[s["image"] for s in samples],
        targets=[s["target"] for s in samples],
        metas=[s["meta"] for s in samples],
    )


def make_loader(dataset, batch_size: int, *, shuffle: bool, seed: int, workers: int = 0,
                drop_last: bool = False, sampler=None):
    """A DataLoader with a seeded generator so the data order is part of the run's identity."""
    import torch

    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=worker_seed,
        persistent_workers=workers > 0,
    )


def make_eval_loader(dataset, batch_size: int, seed: int, workers: int, dist) -> Any:
    """The evaluation loader of one process: its contiguous shard (:class:`ShardedEvalSampler`), in order."""
    return make_loader(dataset, batch_size, shuffle=False, seed=seed, workers=workers,
                       sampler=ShardedEvalSampler(len(dataset), batch_size, dist.rank, dist.world_size))


def eval_keys(metric_specs) -> set[str]:
    """The target keys evaluation decodes: what the metrics read, and the image labels (class-prior baseline)."""
    return set().union(*(m.requires_annotations for m in metric_specs.values())) | {"labels", "labels_ignore"}


def infinite(loader) -> Iterator[dict]:
    """Cycle through a loader forever, one epoch after another (each epoch reshuffled)."""
    epoch = 0
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


class TrainSampler:
    """The training order: a permutation per epoch, sharded over processes, resumable mid-epoch.

    Epoch ``e`` visits ``torch.randperm(size)`` drawn from a generator seeded
    with ``mix(seed, e)``; with ``world_size`` processes the permutation is
    padded by wrapping around to a multiple of ``world_size`` and process
    ``rank`` takes positions ``rank, rank + world_size, ...`` (as
    ``DistributedSampler``: training may see a few images twice per epoch).
    Each item is ``(index, sample_seed)`` with ``sample_seed = mix(seed, e,
    position)``, which :class:`SeededSamples` uses for the augmentations.
    ``set_epoch(e, start)`` skips the first ``start`` items of this process
    (a resumed run), without loading them.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if size < 1:
            raise ConfigError("the training set is empty")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.per_rank = -(-size // world_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` from this process's item ``start`` on."""
        self.epoch, self.start = epoch, start

    def batches_per_epoch(self, batch_size: int, drop_last: bool) -> int:
        """Optimizer steps in one full epoch of this process."""
        return self.per_rank // batch_size if drop_last else -(-self.per_rank // batch_size)

    def order(self, epoch: int) -> list[int]:
        """Dataset indices of epoch ``epoch`` in visiting order, padded to ``per_rank * world_size``."""
        import torch

        from segbench.engine.seeding import mix

        generator = torch.Generator()
        generator.manual_seed(mix(self.seed, epoch))
        perm = torch.randperm(self.size, generator=generator).tolist()
        total = self.per_rank * self.world_size
        while len(perm) < total:
            perm += perm[: total - len(perm)]
        return perm

    def __iter__(self):
        from segbench.engine.seeding import mix

        perm = self.order(self.epoch)
        positions = range(self.rank, self.per_rank * self.world_size, self.world_size)
        for position in positions[self.start:]:
            yield perm[position], mix(self.seed, self.epoch, position)

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0)


class SeededSamples:
    """Wraps a dataset: item ``(index, seed)`` is ``dataset[index]`` drawn under torch's CPU generator seeded with
    ``seed``, so each sample's augmentation depends only on its seed, not on workers, processes or resumes.

    The global generator is restored afterwards (``torch.random.fork_rng``), so
    loading data never moves the model's random stream.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        import torch

        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


class ShardedEvalSampler:
    """Evaluation indices of one process: contiguous, batch-aligned shards, no padding.

    The ``ceil(size / batch_size)`` batches of a one-process evaluation are
    split into ``world_size`` contiguous runs (rank ``r`` gets batches
    ``[r * nb // W, (r + 1) * nb // W)``), so every image is seen exactly once,
    each batch holds the same images as with one process, and concatenating
    the shards in rank order gives the dataset order. Shards may differ in
    size by a batch (or be empty when there are fewer batches than processes).
    """

    def __init__(self, size: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        batches = -(-size // batch_size)
        first = rank * batches // world_size
        last = (rank + 1) * batches // world_size
        self.indices = list(range(min(first * batch_size, size), min(last * batch_size, size)))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Normalizer:
    """uint8 ``[3,H,W]`` images -> a normalised float batch ``[B,3,H,W]`` on ``device``.

    Images of different sizes are padded bottom and right to the largest
    height and width with 0 after normalisation (the mean colour), as
    mmsegmentation's data preprocessor does; :func:`pad_targets` pads their
    targets to match.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device, channels_last: bool = False) -> None:
        import torch

        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
        self.device = device
        self.channels_last = channels_last

    def __call__(self, images: Sequence[Any]):
        import torch

        sizes = {tuple(img.shape[-2:]) for img in images}
        if len(sizes) > 1:
            height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
            batch = torch.zeros((len(images), 3, height, width), device=self.device)
            for i, img in enumerate(images):
                h, w = img.shape[-2:]
                one = img.as_subclass(torch.Tensor).to(self.device, non_blocking=True).float()
                batch[i, :, :h, :w] = (one - self.mean[0]) / self.std[0]
        else:
            batch = torch.stack([img.as_subclass(torch.Tensor) for img in images]).to(self.device, non_blocking=True)
            batch = (batch.float() - self.mean) / self.std
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch


def targets_to(targets: list[dict], device) -> list[dict]:
    """Move target tensors to ``device`` as plain tensors; uint8 class masks become int64 there.

    Datasets hand out ``mask`` as uint8 (8x less to decode, copy and send
    between loader processes); losses and metrics get int64 class indices.
    """
    import torch

    moved = []
    for target in targets:
        item = {}
        for k, v in target.items():
            if isinstance(v, torch.Tensor):
                v = v.as_subclass(torch.Tensor).to(device, non_blocking=True)
                if k == "mask" and v.dtype == torch.uint8:
                    v = v.long()
            item[k] = v
        moved.append(item)
    return moved


def pad_targets(targets: list[dict], images: Sequence[Any], size: Sequence[int]) -> list[dict]:
    """Targets of a batch padded as :class:`Normalizer` pads its ``images`` to ``size`` (H, W).

    Each target gets ``valid_size``, the (H, W) of its own image (a detector
    crops the padding away again); a class ``mask`` is padded with void (255,
    outside the loss), instance ``masks`` with 0; boxes keep their
    coordinates (the padding is bottom and right). Nothing changes when no
    image was padded.
    """
    import torch.nn.functional as F

    height, width = int(size[0]), int(size[1])
    padded = []
    for target, image in zip(targets, images):
        h, w = (int(x) for x in image.shape[-2:])
        target = {**target, "valid_size": (h, w)}
        if (h, w) != (height, width):
            pad = (0, width - w, 0, height - h)
            if target.get("mask") is not None:
                target["mask"] = F.pad(target["mask"], pad, value=255)
            if target.get("masks") is not None:
                target["masks"] = F.pad(target["masks"], pad, value=0)
        padded.append(target)
    return padded


def group_by_size(images: Sequence[Any]) -> list[list[int]]:
    """Indices of consecutive images that share a size, so each group stacks into one batch."""
    groups: list[list[int]] = []
    last = None
    for i, img in enumerate(images):
        size = tuple(img.shape[-2:])
        if size != last:
            groups.append([])
            last = size
        groups[-1].append(i)
    return groups
