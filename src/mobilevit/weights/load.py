"""Read a checkpoint file of any supported format, convert it to our key names, and load it strictly.

Pickled files are read with ``torch.load(weights_only=True)``: an untrusted checkpoint can never run code.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .converters import CONVERTERS

logger = logging.getLogger(__name__)

_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is of an unknown format, or does not fit the model."""


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a state dict from a file or a transformers folder.

    Returns:
        The tensors, and extra information: ``{"hf_config": ...}`` for a transformers folder, the safetensors
        metadata for a safetensors file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    info: dict[str, Any] = {}
    if path.is_dir():
        config = path / "config.json"
        weights = next((path / f for f in _HF_WEIGHT_FILES if (path / f).exists()), None)
        if not config.exists() or weights is None:
            raise CheckpointError(
                f"{path} is a folder but not a transformers checkpoint: it needs config.json and one of "
                f"{', '.join(_HF_WEIGHT_FILES)}"
            )
        info["hf_config"] = json.loads(config.read_text())
        path = weights
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                info.update(f.metadata() or {})
            return load_file(str(path)), info
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"Cannot read safetensors file {path}: {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types here: UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(
            f"Cannot read {path} as a PyTorch checkpoint (loaded with weights_only=True, so pickles that would run "
            f"code are refused): {type(e).__name__}: {e}"
        ) from e
    return _unwrap(obj, path), info


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    """Find the state dict inside a training checkpoint (``{'state_dict': ...}`` and similar), strip ``module.``."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            break
        key = next((k for k in _WRAPPER_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
        if key is None:
            kind = f"dict with keys {sorted(obj)[:8]}" if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{path} holds no state dict of tensors (found a {kind})")
        obj = obj[key]
    if not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def detect_format(state_dict: dict[str, Tensor]) -> str:
    """Name the layout of a state dict: ``native``, ``timm``, ``transformers``, ``cvnets`` or ``ml-fastvit``."""
    keys = list(state_dict)
    if any(k.startswith(("mobilevit.", "mobilevitv2.")) or ".encoder.layer." in k for k in keys):
        return "transformers"
    if "conv_1.block.conv.weight" in state_dict or any(k.startswith("layer_1.0.block.") for k in keys):
        return "cvnets"
    if any(".conv1_1x1." in k or ".conv_kxk." in k for k in keys):
        return "timm"
    if any(".conv_pwl." in k for k in keys):
        return "native"
    raise CheckpointError(f"Unrecognised checkpoint layout ({len(keys)} tensors; first keys: {keys[:5]})")


def read_converted(path: str | os.PathLike, arch: str, cfg: Any) -> dict[str, Tensor]:
    """Read ``path``, detect its format and convert it to our key names for architecture ``arch``."""
    state_dict, info = read_checkpoint(path)
    fmt = detect_format(state_dict)
    stored_arch = info.get("arch")
    if fmt == "native" and stored_arch and stored_arch != arch:
        raise CheckpointError(f"{path} holds weights for {stored_arch!r}, not {arch!r}")
    family = cfg.__class__.__name__
    if fmt == "native":
        return state_dict
    converter = CONVERTERS.get((fmt, family))
    if converter is None:
        raise CheckpointError(f"{path} is a {fmt} checkpoint, which cannot hold a {arch} model")
    logger.info("Converting %s checkpoint %s for %s", fmt, path, arch)
    return converter(state_dict, cfg)


def load_into(model: nn.Module, state_dict: dict[str, Tensor], source: str, keep_head: bool = True) -> None:
    """Load converted weights into ``model`` all-or-nothing, naming every missing, unexpected or misshaped key.

    Args:
        model: the target model.
        state_dict: weights in our key names.
        source: where the weights came from, for error messages.
        keep_head: load the classifier too; ``False`` leaves the model's fresh classifier in place.
    """
    expected = model.state_dict()
    head_keys = [k for k in state_dict if k.startswith("head.fc.")]
    if not keep_head or getattr(model, "features_only", False):
        state_dict = {k: v for k, v in state_dict.items() if k not in head_keys}
        if getattr(model, "features_only", False):
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(("head.", "final_conv."))}
    missing = [k for k in expected if k not in state_dict]
    if not keep_head:
        missing = [k for k in missing if not k.startswith("head.fc.")]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or misshaped:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
            if items:
                shown = "; ".join(items[:6]) + (f"; ... ({len(items)} in all)" if len(items) > 6 else "")
                parts.append(f"{title}: {shown}")
        raise CheckpointError(
            f"Checkpoint {source} does not fit {type(model).__name__} ({len(state_dict)} tensors vs "
            f"{len(expected)} expected). " + " | ".join(parts)
        )
    model.load_state_dict(state_dict, strict=keep_head and not getattr(model, "features_only", False))
