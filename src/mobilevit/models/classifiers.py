"""The classification families: name -> (model class, config) for every classifier, the backbones DeepLabV3 wraps."""

from __future__ import annotations

from typing import Any

from torch import nn

from . import fastvit, mobileone, mobilevit

# Each family module exposes MODEL_CFGS (name -> frozen config dataclass) and its model class.
FAMILIES: tuple[tuple[type[nn.Module], dict[str, Any]], ...] = (
    (mobilevit.MobileViT, mobilevit.MODEL_CFGS),
    (fastvit.FastViT, fastvit.MODEL_CFGS),
    (mobileone.MobileOne, mobileone.MODEL_CFGS),
)
CLASSIFIERS: dict[str, tuple[type[nn.Module], Any]] = {
    name: (model_cls, cfg) for model_cls, cfgs in FAMILIES for name, cfg in cfgs.items()
}

__all__ = ["CLASSIFIERS", "FAMILIES"]
