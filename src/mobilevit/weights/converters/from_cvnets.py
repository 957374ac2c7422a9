"""apple/ml-cvnets (MobileViT v1, v2) and micronDLA/MobileViTv3 state dicts -> ours.

cvnets wraps every convolution as ``<name>.block.conv`` / ``<name>.block.norm``; stages are ``layer_1`` ... ``layer_5``;
the transformer's final LayerNorm sits after the layers in the same ``global_rep`` Sequential.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ._common import rename, squeeze_pointwise

_RULES = [
    (r"^conv_1\.", "stem."),
    (r"^layer_(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}."),
    (r"^conv_1x1_exp\.", "final_conv."),
    (r"^classifier\.(fc|1)\.", "head.fc."),
    # MobileNetV2 blocks
    (r"\.block\.exp_1x1\.", ".conv_pw."),
    (r"\.block\.conv_3x3\.", ".conv_dw."),
    (r"\.block\.red_1x1\.", ".conv_pwl."),
    # MobileViT blocks: local representation (v1 names its convs, v2 numbers them)
    (r"\.local_rep\.(conv_3x3|0)\.", ".conv_local."),
    (r"\.local_rep\.(conv_1x1|1)\.block\.conv\.", ".conv_embed."),
    # transformer layers (v2 wraps its projections as 1x1 ConvLayers)
    (r"\.global_rep\.(\d+)\.pre_norm_(mha|attn)\.0\.", r".transformer.\1.norm1."),
    (r"\.global_rep\.(\d+)\.pre_norm_(mha|attn)\.1\.qkv_proj\.(block\.conv\.)?", r".transformer.\1.attn.qkv."),
    (r"\.global_rep\.(\d+)\.pre_norm_(mha|attn)\.1\.out_proj\.(block\.conv\.)?", r".transformer.\1.attn.proj."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.0\.", r".transformer.\1.norm2."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.1\.(block\.conv\.)?", r".transformer.\1.mlp.fc1."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.(3|4)\.(block\.conv\.)?", r".transformer.\1.mlp.fc2."),
    (r"\.fusion\.", ".conv_fusion."),
    # every remaining ConvLayer
    (r"\.block\.conv\.", ".conv."),
    (r"\.block\.norm\.", ".bn."),
]


def convert_mobilevit(state_dict: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """Rename a cvnets / MobileViTv3 classification state dict to our keys.

    Args:
        state_dict: the checkpoint, as ``torch.save(model.state_dict())`` wrote it in cvnets.
        cfg: our :class:`~mobilevit.models.mobilevit.MobileViTConfig`; it says where each block's final norm sits.
    """
    # global_rep.<depth> is the norm after the last transformer layer: name it before the generic rules run.
    final_norms = {
        f"layer_{i + 1}.1.global_rep.{stage.transformer_depth}.": f"stages.{i}.1.norm."
        for i, stage in enumerate(cfg.stages)
        if stage.transformer_depth
    }
    renamed = {}
    for key, value in state_dict.items():
        for old, new in final_norms.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    return squeeze_pointwise(rename(renamed, _RULES))
