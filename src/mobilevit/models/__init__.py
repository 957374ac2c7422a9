"""Model families, one file each, and the table of every architecture: name -> (model class, config).

The classifiers (:mod:`.classifiers`: MobileViT v1/v2/v3, FastViT, MobileOne), and a DeepLabV3 segmentation model
``deeplabv3_<classifier>`` on each of them (:mod:`.deeplabv3`), an SSDLite detector ``ssdlite_<classifier>``
(:mod:`.ssdlite`) and a Mask R-CNN instance segmentation model ``maskrcnn_<classifier>`` (:mod:`.maskrcnn`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..errors import UsageError, suggest
from . import deeplabv3, maskrcnn, ssdlite
from .classifiers import CLASSIFIERS

ARCHITECTURES: dict[str, tuple[type[nn.Module], Any]] = {
    **CLASSIFIERS,
    **{name: (deeplabv3.DeepLabV3, cfg) for name, cfg in deeplabv3.MODEL_CFGS.items()},
    **{name: (ssdlite.SSDLite, cfg) for name, cfg in ssdlite.MODEL_CFGS.items()},
    **{name: (maskrcnn.MaskRCNN, cfg) for name, cfg in maskrcnn.MODEL_CFGS.items()},
}


def task_of(name: str) -> str:
    """The name of the task architecture ``name`` (or ``arch.tag``) answers (its class's ``task``, a name of the
    registry of :mod:`mobilevit.tasks`)."""
    return architecture(name)[0].task


def architecture(name: str) -> tuple[type[nn.Module], Any]:
    """``(model class, registered config)`` of architecture ``name`` (an ``arch.tag`` weights name also works)."""
    arch = name.split(".", 1)[0]
    if arch not in ARCHITECTURES:
        raise UsageError(f"Unknown model {name!r}.{suggest(arch, list(ARCHITECTURES))} See mobilevit.list_models().")
    return ARCHITECTURES[arch]


def build_config(name: str, **overrides: Any) -> Any:
    """The registered config of ``name`` with fields replaced; an unknown field raises with the closest valid names."""
    cfg = architecture(name)[1]
    fields = [f.name for f in dataclasses.fields(cfg)]
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        hints = "".join(suggest(k, fields) for k in unknown)
        raise TypeError(f"Unknown option(s) {unknown} for {name!r}.{hints} Valid options: {', '.join(sorted(fields))}.")
    return dataclasses.replace(cfg, **overrides)


def build_model(
    arch: str,
    cfg: Any,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """A fresh model of architecture ``arch`` with config ``cfg``, its ``num_classes`` replaced when one is given."""
    if num_classes is not None:
        cfg = dataclasses.replace(cfg, num_classes=num_classes)
    kwargs: dict[str, Any] = {"features_only": features_only}
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    return ARCHITECTURES[arch][0](cfg, **kwargs)


def find_arch(cfg: Any) -> str:
    """The registered architecture whose config is closest to ``cfg`` (fewest differing fields, same family)."""
    candidates = [
        (sum(getattr(cfg, f.name) != getattr(base, f.name) for f in dataclasses.fields(base)), name)
        for name, (_, base) in ARCHITECTURES.items()
        if type(base) is type(cfg)
    ]
    if not candidates:
        raise UsageError(f"{type(cfg).__name__} is not the config of any registered architecture")
    return min(candidates)[1]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel`` wrappers and ``torch.compile`` results."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


__all__ = [
    "ARCHITECTURES",
    "architecture",
    "build_config",
    "build_model",
    "find_arch",
    "task_of",
    "unwrap_model",
]
