"""Architecture registry: name -> (model class, config), ``create_model`` and ``list_models``."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
from typing import Any

from torch import nn

from .models import fastvit, mobileone, mobilevit
from .reparam import reparameterize_model

# Each family module exposes MODEL_CFGS (name -> frozen config dataclass) and its model class.
_FAMILIES: tuple[tuple[type[nn.Module], dict[str, Any]], ...] = (
    (mobilevit.MobileViT, mobilevit.MODEL_CFGS),
    (fastvit.FastViT, fastvit.MODEL_CFGS),
    (mobileone.MobileOne, mobileone.MODEL_CFGS),
)
_ARCHS: dict[str, tuple[type[nn.Module], Any]] = {
    name: (model_cls, cfg) for model_cls, cfgs in _FAMILIES for name, cfg in cfgs.items()
}


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted architecture names, optionally filtered by a shell-style ``pattern`` such as ``"mobilevitv2_*"``."""
    names = sorted(_ARCHS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def get_config(name: str) -> Any:
    """The config dataclass of architecture ``name`` (an ``arch.tag`` weights name also works)."""
    arch = name.split(".", 1)[0]
    if arch not in _ARCHS:
        raise ValueError(f"Unknown model {name!r}.{_suggest(arch, list(_ARCHS))} See mobilevit.list_models().")
    return _ARCHS[arch][1]


def build_config(name: str, **overrides: Any) -> Any:
    """``get_config(name)`` with fields replaced; an unknown field raises with the closest valid names."""
    cfg = get_config(name)
    fields = [f.name for f in dataclasses.fields(cfg)]
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        hints = "".join(_suggest(k, fields) for k in unknown)
        raise TypeError(f"Unknown option(s) {unknown} for {name!r}.{hints} Valid options: {', '.join(sorted(fields))}.")
    return dataclasses.replace(cfg, **overrides)


def create_model(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    reparameterized: bool = False,
    **config_overrides: Any,
) -> nn.Module:
    """Build a model by architecture name, optionally loading a checkpoint.

    Args:
        name: architecture name from :func:`list_models`.
        pretrained: ``False``, or the path of a local checkpoint in any supported format (safetensors, ``.pt``,
            ``.pth``, ``.pth.tar``, or a Hugging Face transformers folder with ``config.json``). The format is detected
            and converted.
        num_classes: classifier outputs. ``None`` keeps the checkpoint's (or the config's) head; a different number
            keeps the pretrained backbone and starts a fresh head.
        features_only: return a model whose ``forward`` gives the multi-scale feature maps (see ``feature_info``).
        out_indices: feature levels to return with ``features_only`` (default: all of them, see ``feature_info``).
        reparameterized: return the inference form (:func:`mobilevit.reparameterize_model`: re-parameterizable
            branches and BatchNorms folded). A checkpoint saved from such a model is recognised and loaded into this
            form whatever this flag says; a train-time checkpoint is loaded, then folded.
        **config_overrides: fields of the architecture's config dataclass, e.g. ``drop_path_rate=0.1``,
            ``in_channels=1``.

    Returns:
        The model, in train mode like torchvision and timm models.
    """
    arch = name.split(".", 1)[0]
    model_cls = _ARCHS[arch][0] if arch in _ARCHS else None
    cfg = build_config(name, **config_overrides)
    kwargs: dict[str, Any] = {"features_only": features_only}
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)

    if pretrained is True:
        raise ValueError(
            f"pretrained=True needs a registered weights entry for {name!r}, and none is available yet; "
            "pass the checkpoint file instead: create_model(name, pretrained='path/to/checkpoint')."
        )
    if not pretrained:
        if num_classes is not None:
            cfg = dataclasses.replace(cfg, num_classes=num_classes)
        model = model_cls(cfg, **kwargs)
        return reparameterize_model(model, inplace=True) if reparameterized else model

    from .weights.load import is_folded_checkpoint, load_into, read_converted

    state_dict = read_converted(pretrained, arch, cfg)
    ckpt_classes = state_dict["head.fc.weight"].shape[0] if "head.fc.weight" in state_dict else None
    if num_classes is None:
        num_classes = ckpt_classes if ckpt_classes is not None else cfg.num_classes
    cfg = dataclasses.replace(cfg, num_classes=num_classes)
    model = model_cls(cfg, **kwargs)
    folded = is_folded_checkpoint(model, state_dict)
    if folded:
        reparameterize_model(model, inplace=True)  # a fresh model: folding it only gives it the checkpoint's layout
    load_into(model, state_dict, source=str(pretrained), keep_head=num_classes == ckpt_classes)
    if reparameterized and not folded:
        reparameterize_model(model, inplace=True)
    return model
