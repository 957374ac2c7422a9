"""open-mmlab/mmsegmentation's Semantic FPN checkpoints (``EncoderDecoder`` with an ``FPN`` neck and an ``FPNHead``)
to our :class:`~mobilevit.models.semfpn.SemanticFPN` key names.

mmsegmentation's layout (``mmseg/models/necks/fpn.py``, ``mmseg/models/decode_heads/fpn_head.py``; every conv a
``ConvModule`` with children ``conv``, ``bn``, ``activate``):

- ``backbone.*``: the backbone as the config's backbone class names it; for FastViT, ml-fastvit's ``fork_feat`` model
  (``patch_embed.*``, ``network.*``, and ``norm0`` / ``norm2`` / ``norm4`` / ``norm6``, the BatchNorms of the four
  levels it returns);
- ``neck.lateral_convs.{i}.conv.*`` (1x1) and ``neck.fpn_convs.{i}.conv.*`` (3x3), both with bias;
- ``decode_head.scale_heads.{i}.{j}.conv.weight`` / ``.bn.*``: the scale heads, their upsamplings at the odd indices;
- ``decode_head.conv_seg.*``: the classifier; an ``auxiliary_head.*`` (training only) is dropped.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from torch import Tensor

from ...models.classifiers import CLASSIFIERS
from ._common import rename
from .from_apple import convert_fastvit, convert_mobileone

logger = logging.getLogger(__name__)

_NECK_HEAD_RULES = [
    (r"^neck\.lateral_convs\.", "neck.lateral."),
    (r"^neck\.fpn_convs\.", "neck.smooth."),
    (r"^decode_head\.scale_heads\.", "head.scale_heads."),
    (r"^decode_head\.conv_seg\.", "head.classifier."),
]
_FORK_NORM = re.compile(r"^norm(\d)\.")  # ml-fastvit's fork_feat norms: norm0, norm2, norm4, norm6 for levels 0-3


def convert_semfpn(state_dict: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """Rename an mmsegmentation Semantic FPN state dict (``backbone.*``, ``neck.*``, ``decode_head.*``) to our keys.

    The backbone's own tensors are converted from ml-fastvit's (``network.*``) or ml-mobileone's (``stage0.*``)
    layout when they have it, and kept as they are otherwise (our own layout).

    Args:
        state_dict: the ``state_dict`` of an mmsegmentation checkpoint.
        cfg: our :class:`~mobilevit.models.semfpn.SemanticFPNConfig`.
    """
    tops = {k.split(".")[0] for k in state_dict}
    unknown = sorted(tops - {"backbone", "neck", "decode_head", "auxiliary_head"})
    if unknown:
        raise KeyError(f"an mmsegmentation checkpoint holds backbone., neck. and decode_head. tensors, not {unknown}")
    aux = [k for k in state_dict if k.startswith("auxiliary_head.")]
    if aux:
        logger.info("Dropping the %d tensors of the auxiliary head (training only)", len(aux))
    backbone, norms = {}, {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            name = key.removeprefix("backbone.")
            fork = _FORK_NORM.match(name)
            if fork:
                norms[f"feature_norms.{int(fork.group(1)) // 2}.{name[fork.end() :]}"] = value
            else:
                backbone[name] = value
    out = {f"backbone.{k}": v for k, v in _convert_backbone(backbone, cfg.backbone).items()}
    out.update(norms)
    neck_head = {k: v for k, v in state_dict.items() if k.startswith(("neck.", "decode_head."))}
    out.update(rename(neck_head, _NECK_HEAD_RULES))
    assert len(out) == len(state_dict) - len(aux), (len(out), len(state_dict), len(aux))
    return out


def _convert_backbone(state_dict: dict[str, Tensor], arch: str) -> dict[str, Tensor]:
    """The backbone's tensors in our names: from ml-fastvit's or ml-mobileone's layout, or ours as they are."""
    backbone_cfg = CLASSIFIERS[arch][1]
    if any(k.startswith(("network.", "patch_embed.")) for k in state_dict):
        return convert_fastvit(state_dict, backbone_cfg)
    if any(k.startswith("stage0.") for k in state_dict):
        return convert_mobileone(state_dict, backbone_cfg)
    return state_dict


__all__ = ["convert_semfpn"]
