"""Seeds, deterministic algorithms and RNG snapshots: the same config and seed give the same numbers.

Training randomness comes from three places, each reproducible on its own:

- the data order: a permutation per epoch seeded by ``mix(seed, epoch)``
  (:class:`segbench.engine.data.TrainSampler`);
- the augmentations: each sample is transformed under its own seed
  ``mix(seed, epoch, position)`` (:class:`segbench.engine.data.SeededSamples`),
  whatever the number of loader workers or processes;
- the model's own random ops (dropout, sampling in losses): the global torch
  (and CUDA) generator, seeded once and saved in every checkpoint with the
  Python and NumPy states (:func:`rng_state` / :func:`set_rng_state`).
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any

CUBLAS_WORKSPACE = ":4096:8"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def mix(*values: int) -> int:
    """A 62-bit seed derived from integers (``mix(seed, epoch)``); distinct tuples give unrelated seeds."""
    digest = hashlib.sha256(",".join(str(int(v)) for v in values).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def set_deterministic(enabled: bool) -> None:
    """Deterministic algorithms (and cuDNN/cuBLAS settings) on or off.

    On: ``torch.use_deterministic_algorithms(True, warn_only=True)``, cuDNN
    deterministic without benchmarking, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``
    (unless already set) for deterministic cuBLAS matrix products. Ops without
    a deterministic implementation warn instead of failing, so a run never
    stops for it; the engine records the ops that warned
    (``nondeterministic_ops`` in the record).
    """
    import torch

    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def worker_seed(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive NumPy/random seeds from torch's per-worker seed."""
    import numpy as np
    import torch

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def rng_state(device=None) -> dict[str, Any]:
    """Python, NumPy, torch CPU and (on a CUDA ``device``) that device's generator states.

    Only tensors, numbers, strings and tuples: ``torch.load(weights_only=True)`` reads it back.
    """
    import numpy as np
    import torch

    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device=None) -> None:
    """Restore what :func:`rng_state` saved."""
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device is not None and getattr(device, "type", str(device)) == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
