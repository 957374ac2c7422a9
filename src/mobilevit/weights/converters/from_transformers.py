"""Hugging Face transformers ``MobileViT*`` / ``MobileViTV2*`` state dicts -> ours.

transformers splits the attention projection into ``query`` / ``key`` / ``value``; we fuse them back into ``qkv``
(v1). The MobileViT stages are ``encoder.layer.{2,3,4}`` with a ``downsampling_layer`` that is our block 0.
``*ForSemanticSegmentation`` (``apple/deeplabv3-mobilevit-*``, ``apple/mobilevitv2-1.0-voc-deeplabv3``) add a DeepLabV3
``segmentation_head``: :func:`convert_deeplabv3` maps it onto our DeepLabV3 models, and :func:`convert_mobilevit` drops
it when such a folder is loaded into a backbone.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from torch import Tensor

from ._common import rename, squeeze_pointwise

logger = logging.getLogger(__name__)

_RULES = [
    (r"^mobilevit(v2)?\.", ""),
    (r"^conv_stem\.", "stem."),
    (r"^conv_1x1_exp\.", "final_conv."),
    (r"^classifier\.", "head.fc."),
    (r"^encoder\.layer\.(\d)\.layer\.(\d+)\.", r"stages.\1.\2."),
    (r"^encoder\.layer\.(\d)\.downsampling_layer\.", r"stages.\1.0."),
    (r"^encoder\.layer\.(\d)\.", r"stages.\1.1."),
    (r"\.expand_1x1\.", ".conv_pw."),
    (r"\.conv_3x3\.", ".conv_dw."),
    (r"\.reduce_1x1\.", ".conv_pwl."),
    (r"\.conv_kxk\.", ".conv_local."),
    (r"\.conv_1x1\.convolution\.", ".conv_embed."),
    (r"\.conv_projection\.", ".conv_proj."),
    (r"\.fusion\.", ".conv_fusion."),
    (r"\.layernorm$", ".norm"),
    (r"\.layernorm\.", ".norm."),
    (r"\.transformer\.layer\.(\d+)\.", r".transformer.\1."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.attention\.(query|key|value)\.", r".attn.\1."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.attention\.qkv_proj\.convolution\.", ".attn.qkv."),
    (r"\.attention\.out_proj\.convolution\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"\.ffn\.conv1\.convolution\.", ".mlp.fc1."),
    (r"\.ffn\.conv2\.convolution\.", ".mlp.fc2."),
    (r"\.convolution\.", ".conv."),
    (r"\.normalization\.", ".bn."),
]

_SPLIT_QKV = re.compile(r"^(.*\.attn\.)query\.(weight|bias)$")


def convert_mobilevit(state_dict: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """Rename a transformers MobileViT / MobileViTV2 state dict (classification or base model) to our keys."""
    dropped = [k for k in state_dict if k.startswith("segmentation_head.")]
    if dropped:
        logger.info("Dropping %d segmentation-head tensors; only the backbone is loaded", len(dropped))
    out = rename({k: v for k, v in state_dict.items() if k not in dropped}, _RULES)
    for key in [k for k in out if _SPLIT_QKV.match(k)]:
        prefix, kind = _SPLIT_QKV.match(key).groups()
        parts = [out.pop(f"{prefix}{name}.{kind}") for name in ("query", "key", "value")]
        out[f"{prefix}qkv.{kind}"] = torch.cat(parts, dim=0)
    return squeeze_pointwise(out)


_SEG_HEAD_RULES = [
    (r"^segmentation_head\.aspp\.convs\.4\.conv_1x1\.", "head.aspp.pool."),
    (r"^segmentation_head\.aspp\.convs\.(\d)\.", r"head.aspp.branches.\1."),
    (r"^segmentation_head\.aspp\.project\.", "head.aspp.project."),
    (r"^segmentation_head\.classifier\.convolution\.", "head.classifier."),
    (r"\.convolution\.", ".conv."),
    (r"\.normalization\.", ".bn."),
]


def convert_deeplabv3(state_dict: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """Rename a transformers ``MobileViTForSemanticSegmentation`` / ``MobileViTV2ForSemanticSegmentation`` state dict
    to the keys of our :class:`~mobilevit.models.deeplabv3.DeepLabV3` (backbone under ``backbone.``)."""
    head = {k: v for k, v in state_dict.items() if k.startswith("segmentation_head.")}
    if not head:
        raise KeyError("no 'segmentation_head.' tensors: not a transformers semantic-segmentation checkpoint")
    backbone = convert_mobilevit({k: v for k, v in state_dict.items() if k not in head}, cfg)
    out = {f"backbone.{k}": v for k, v in backbone.items()}
    out.update(rename(head, _SEG_HEAD_RULES))
    return out


def deeplabv3_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    """The fields of our DeepLabV3 config that a transformers segmentation ``config.json`` sets."""
    fields = {
        "output_stride": "output_stride",
        "aspp_channels": "aspp_out_channels",
        "aspp_rates": "atrous_rates",
        "dropout": "aspp_dropout_prob",
    }
    out = {ours: hf_config[theirs] for ours, theirs in fields.items() if theirs in hf_config}
    if "aspp_rates" in out:
        out["aspp_rates"] = tuple(int(r) for r in out["aspp_rates"])
    return out
