"""``--init RUN_ID|FILE``: start a run from another run's weights (the staged FCN protocol) or a weights file.

Tensors are matched by name, as Caffe's ``--weights`` copies layers by name:
every tensor of the source that the model has is copied, the model's others
keep their initialisation (FCN-16s's ``score_pool4`` when it starts from an
FCN-32s run), and a tensor whose shape differs is an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segbench.errors import ConfigError, DataError


@dataclass
class InitSource:
    """Where ``--init`` weights come from: ``path`` to read, ``identity`` entering ``config_id``."""

    given: str
    path: Path
    identity: str  # "run:<run_id>" or "sha256:<16 hex>" of the file's bytes
    loaded: list[str] = field(default_factory=list)  # filled by apply_init
    kept: list[str] = field(default_factory=list)  # model tensors the source lacks (left as built)
    unused: list[str] = field(default_factory=list)  # source tensors the model lacks

    def summary(self) -> str:
        """One line for the run header."""
        kept = f", {len(self.kept)} of the model's left as built (e.g. {', '.join(self.kept[:3])})" if self.kept \
            else ""
        unused = f", {len(self.unused)} in the source unused" if self.unused else ""
        return f"init: {len(self.loaded)} tensors from {self.given} ({self.path}){kept}{unused}"


def resolve_init(given: str, store: Any) -> InitSource:
    """A weights file (``.safetensors`` or a ``torch.save`` file) or a finished run's id (a unique prefix) in
    ``store``.

    An unknown id, an unfinished run or a run without weights is a one-line
    :class:`ConfigError`.
    """
    from segbench.engine.checkpoint import _sha256

    path = Path(given).expanduser()
    if path.is_file():
        return InitSource(given, path, "sha256:" + _sha256(path)[:16])
    try:
        record = store.get(given)
    except Exception as exc:  # noqa: BLE001 - unknown or ambiguous id: one line
        raise ConfigError(f"--init {given}: no such weights file, and no run with that id in {store.root} "
                          f"({exc})") from None
    if record.status != "finished" or not record.weights:
        raise ConfigError(f"--init {given}: run {record.run_id} is {record.status} and has no final weights; "
                          f"finish it first (run its command again to resume it)")
    weights = store.path_for(record.run_id).parent / record.weights
    if not weights.is_file():
        raise ConfigError(f"--init {given}: run {record.run_id}'s weights {weights} are missing")
    return InitSource(given, weights, f"run:{record.run_id}")


def read_state(path: Path) -> dict:
    """The tensors of a weights file (:func:`segbench.engine.checkpoint.read_weights`); a one-line DataError when it
    holds anything else."""
    import torch

    from segbench.engine.checkpoint import read_weights

    state = read_weights(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: not a state dict of tensors")
    return state


def apply_init(model: Any, source: InitSource) -> InitSource:
    """Copy every same-named tensor of ``source`` into ``model``; a shape mismatch names the first tensor."""
    state = read_state(source.path)
    own = model.state_dict()
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        key, in_file, in_model = bad[0]
        others = f" (and {len(bad) - 1} other mismatched tensors)" if len(bad) > 1 else ""
        raise ConfigError(f"--init {source.given}: tensor '{key}' has shape {list(in_file)} in {source.path} but "
                          f"{list(in_model)} in the model{others}")
    source.loaded = [k for k in state if k in own]
    if not source.loaded:
        raise ConfigError(f"--init {source.given}: none of the {len(state)} tensors in {source.path} is in the "
                          f"model (another architecture?)")
    source.kept = [k for k in own if k not in state]
    source.unused = [k for k in state if k not in own]
    model.load_state_dict({k: state[k] for k in source.loaded}, strict=False)
    return source
