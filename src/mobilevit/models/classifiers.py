"""The classification families: name -> (model class, config) for every classifier, the backbones that DeepLabV3 and
SSDLite wrap."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..errors import UsageError
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


def backbone_for(model_kind: str, cfg: Any, features_only: bool, **changes: Any) -> tuple[type[nn.Module], Any]:
    """The class and config of the classifier ``cfg.backbone`` that a task model (a segmentation model, a detector)
    builds its backbone from: its config with the task model's ``in_channels`` and ``changes``.

    Raises:
        UsageError: ``features_only``: a task model has no feature-only form; the message names the call that gives
            its backbone's feature maps.
    """
    if features_only:
        call = ", ".join([repr(cfg.backbone), "features_only=True", *(f"{k}={v!r}" for k, v in changes.items())])
        raise UsageError(
            f"{model_kind} has no features_only form; for its backbone's feature maps build create_model({call})"
        )
    backbone_cls, backbone_cfg = CLASSIFIERS[cfg.backbone]
    return backbone_cls, dataclasses.replace(backbone_cfg, in_channels=cfg.in_channels, **changes)


__all__ = ["CLASSIFIERS", "FAMILIES", "backbone_for"]
