"""timm ``mobilevit_*`` / ``mobilevitv2_*`` (ByobNet) state dicts -> ours.

timm's layout is close to ours: the same stem, stage and transformer names; only the block-internal names differ and
v2's 1x1 convolutions become linear layers.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ._common import rename, squeeze_pointwise

_MOBILEVIT_RULES = [
    (r"\.conv1_1x1\.", ".conv_pw."),
    (r"\.conv2_kxk\.", ".conv_dw."),
    (r"\.conv3_1x1\.", ".conv_pwl."),
    (r"\.conv_kxk\.", ".conv_local."),
    (r"\.conv_1x1\.", ".conv_embed."),
    (r"\.attn\.qkv_proj\.", ".attn.qkv."),
    (r"\.attn\.out_proj\.", ".attn.proj."),
]


def convert_mobilevit(state_dict: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """Rename a timm MobileViT v1/v2 state dict to our keys (``cfg`` unused: timm's layout is positional-free)."""
    return squeeze_pointwise(rename(state_dict, _MOBILEVIT_RULES))
