"""Hugging Face transformers ``MobileViT*`` / ``MobileViTV2*`` state dicts -> ours.

transformers splits the attention projection into ``query`` / ``key`` / ``value``; we fuse them back into ``qkv``
(v1). The MobileViT stages are ``encoder.layer.{2,3,4}`` with a ``downsampling_layer`` that is our block 0.
Segmentation heads (``apple/deeplabv3-mobilevit-*``) are dropped: the backbone loads, the head is not ours.
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
