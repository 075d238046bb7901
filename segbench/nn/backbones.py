"""timm backbones for plugins: features_only, output stride, and pretrained weights that fail fast offline."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Mapping, Sequence

from segbench.errors import ConfigError, OfflineError

HUB_HOST = ("huggingface.co", 443)


def create_backbone(
    name: str,
    *,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    output_stride: int | None = None,
    out_indices: Sequence[int] | None = None,
    **kwargs,
):
    """A timm model with ``features_only=True``: ``forward(x)`` returns a list of feature maps.

    ``weights`` loads a local ``.pth``/``.safetensors`` file through timm's
    ``pretrained_cfg_overlay`` (implies pretrained). ``pretrained=True``
    without ``weights`` uses timm's own download, and fails at once with
    :class:`OfflineError` when the hub cannot be reached.
    """
    import timm

    options = dict(kwargs)
    if output_stride is not None:
        options["output_stride"] = output_stride
    if out_indices is not None:
        options["out_indices"] = tuple(out_indices)
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: weights file not found")
        options["pretrained_cfg_overlay"] = dict(file=str(path))
        pretrained = True
    elif pretrained:
        cached = cached_or_online(name)
        if cached:
            options["pretrained_cfg_overlay"] = dict(file=cached)
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ConfigError(f"unknown timm backbone '{name}'{hint}")
    try:
        return timm.create_model(name, pretrained=pretrained, features_only=True, **options)
    except Exception as exc:
        if weights:  # read only when timm failed: a file that is not weights at all is one line naming it
            from segbench.engine.checkpoint import read_weights

            read_weights(Path(weights).expanduser())
            if isinstance(exc, RuntimeError) and "state_dict" in str(exc):  # load_state_dict's mismatch list
                raise ConfigError(weights_mismatch(str(exc), Path(weights), name)) from None
        if isinstance(exc, (AssertionError, TypeError, IndexError)):  # timm's checks of out_indices, strides, kwargs
            raise ConfigError(f"timm backbone '{name}' rejects options {options}: {exc or 'assertion failed'}") \
                from exc
        raise


def weights_mismatch(message: str, path: Path, name: str) -> str:
    """torch's ``load_state_dict`` error (hundreds of lines for another architecture) as one line: the first
    mismatched tensor with its shapes in the file and in the model, and how many others differ."""
    import re

    sizes = re.findall(r"size mismatch for ([^:]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from "
                       r"checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)", message)
    missing = re.search(r"Missing key\(s\) in state_dict: (.*?)(?:\.\s*$|\.\s*\n|\n)", message, re.S)
    unexpected = re.search(r"Unexpected key\(s\) in state_dict: (.*?)(?:\.\s*$|\.\s*\n|\n)", message, re.S)
    count = {k: len(re.findall(r'"[^"]+"', m.group(1))) if m else 0 for k, m in (("missing", missing),
                                                                                 ("unexpected", unexpected))}
    others = ", ".join(f"{n} {k} keys" for k, n in count.items() if n)
    if sizes:
        key, in_file, in_model = sizes[0]
        rest = len(sizes) - 1
        tail = "; ".join(x for x in (f"{rest} other tensors differ in shape" if rest else "", others) if x)
        return (f"{path}: does not fit backbone '{name}': tensor '{key}' is [{in_file}] in the file and [{in_model}] "
                f"in the model" + (f" ({tail})" if tail else "") + "; --weights must be a file of the same timm model")
    return f"{path}: does not fit backbone '{name}' ({others or 'state dict mismatch'}); --weights must be a file " \
           f"of the same timm model"


def cached_or_online(name: str, host: tuple[str, int] = HUB_HOST, timeout: float = 2.0) -> str | None:
    """Where pretrained weights for ``name`` come from: a cached file, or ``None`` for a download.

    Raises :class:`OfflineError` at once when the hub cannot be reached and
    the weights are not in the local Hugging Face cache: timm itself would
    retry for about 47 s before failing.
    """
    cached = _cached_weights(name)
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    if not offline:
        try:
            socket.create_connection(host, timeout=timeout).close()
            return None
        except OSError:
            pass
    if cached:
        return cached
    raise OfflineError(offline_message(name))


def _cached_weights(name: str) -> str | None:
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(name)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not repo:
            return None
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                return found
    except Exception:  # noqa: BLE001 - no cache is the same as no file
        return None
    return None


def offline_message(name: str) -> str:
    return (
        f"pretrained weights for '{name}' cannot be downloaded (offline) and are not cached; "
        f"pass a local file with --weights PATH (.pth or .safetensors) or --set pretrained=false"
    )


def feature_backbone(
    method: str,
    backbone: str,
    out_index: int,
    output_stride: int | None,
    pretrained: bool,
    weights: str | os.PathLike | None,
    backbone_args: Mapping[str, Any] | None,
) -> tuple[Any, int]:
    """A timm features_only backbone cut at ``out_index`` and its channel count; errors name ``method``."""
    if backbone_args is not None and not isinstance(backbone_args, Mapping):
        raise ConfigError(f"{method}: backbone_args must be a dict of timm model arguments, got {backbone_args!r}")
    try:
        model = create_backbone(backbone, pretrained=pretrained, weights=weights, output_stride=output_stride,
                                out_indices=(out_index,), **dict(backbone_args or {}))
    except ConfigError as exc:
        raise ConfigError(f"{method}: {exc} (out_index={out_index}, backbone_args={backbone_args})") from exc
    return model, model.feature_info.channels()[-1]
