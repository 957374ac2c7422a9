"""apple/ml-cvnets (MobileViT v1, v2, and their DeepLabV3 segmentation and SSDLite detection models) and
micronDLA/MobileViTv3 state dicts -> ours.

cvnets wraps every convolution as ``<name>.block.conv`` / ``<name>.block.norm``; stages are ``layer_1`` ... ``layer_5``;
the transformer's final LayerNorm sits after the layers in the same ``global_rep`` Sequential. A segmentation checkpoint
(``SegEncoderDecoder``) holds the backbone under ``encoder.`` and the DeepLabV3 head under ``seg_head.``; a detection
checkpoint (``SingleShotMaskDetector``) the backbone under ``encoder.``, the extra levels under ``extra_layers.`` and
the heads under ``ssd_heads.``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from torch import Tensor

from ...models.classifiers import CLASSIFIERS
from ._common import rename, squeeze_pointwise

logger = logging.getLogger(__name__)

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


_SEG_HEAD_RULES = [
    (r"^seg_head\.aspp\.aspp_layer\.convs\.4\.aspp_pool\.conv_1x1\.", "head.aspp.pool."),
    (r"^seg_head\.aspp\.aspp_layer\.convs\.(\d)\.", r"head.aspp.branches.\1."),
    (r"^seg_head\.aspp\.aspp_layer\.project\.", "head.aspp.project."),
    (r"^seg_head\.classifier\.(classifier\.)?block\.conv\.", "head.classifier."),  # v0.1 nests one more level
    (r"\.block\.conv\.", ".conv."),
    (r"\.block\.norm\.", ".bn."),
]


def convert_deeplabv3(state_dict: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """Rename a cvnets DeepLabV3 segmentation state dict (``encoder.*`` + ``seg_head.*``) to our keys.

    The auxiliary head (``seg_head.aux_head.*``, a training-only branch on the stride-16 features) is dropped; cvnets
    never evaluates it.

    Args:
        state_dict: the checkpoint, as cvnets saves a segmentation model.
        cfg: our :class:`~mobilevit.models.deeplabv3.DeepLabV3Config`.
    """
    unknown = sorted({k.split(".")[0] for k in state_dict} - {"encoder", "seg_head"})
    if unknown:
        raise KeyError(f"a cvnets segmentation checkpoint holds 'encoder.' and 'seg_head.' tensors, not {unknown}")
    aux = [k for k in state_dict if k.startswith("seg_head.aux_head.")]
    if aux:
        logger.info("Dropping the %d tensors of the auxiliary segmentation head (training only)", len(aux))
    encoder = {k.removeprefix("encoder."): v for k, v in state_dict.items() if k.startswith("encoder.")}
    backbone = convert_mobilevit(encoder, CLASSIFIERS[cfg.backbone][1])
    head = {k: v for k, v in state_dict.items() if k.startswith("seg_head.") and k not in aux}
    out = {f"backbone.{k}": v for k, v in backbone.items()}
    out.update(rename(head, _SEG_HEAD_RULES))
    assert len(out) == len(state_dict) - len(aux)
    return out


_SSD_RULES = [
    (r"^extra_layers\.os_64\.", "extras.0."),
    (r"^extra_layers\.os_128\.", "extras.1."),
    (r"^extra_layers\.os_256\.", "extras.2."),
    (r"^extra_layers\.os_-1\.1\.", "extras.3.conv."),
    (r"^ssd_heads\.(\d)\.proj_layer\.", r"heads.\1.proj."),
    (r"^ssd_heads\.(\d)\.loc_cls_layer\.dw_conv\.", r"heads.\1.dw."),
    (r"\.dw_conv\.", ".dw."),
    (r"\.pw_conv\.", ".pw."),
    (r"\.block\.conv\.", ".conv."),
    (r"\.block\.norm\.", ".bn."),
]
# the last conv of each level's head, predicting (4 box offsets + the class logits) per anchor, interleaved
_SSD_PREDICTOR = re.compile(r"^ssd_heads\.(\d)\.loc_cls_layer\.(?:pw_conv\.)?block\.conv\.(weight|bias)$")


def _split_predictor(value: Tensor, num_anchors: int) -> tuple[Tensor, Tensor]:
    """ml-cvnets' ``loc_cls_layer`` output channel ``a * (4 + K) + k`` (box offset k < 4, class k - 4 else) -> our
    box conv's ``a * 4 + k`` and class conv's ``a * K + (k - 4)``."""
    per_anchor = value.reshape(num_anchors, -1, *value.shape[1:])  # [A * (4 + K), ...] -> [A, 4 + K, ...]
    return per_anchor[:, :4].flatten(0, 1), per_anchor[:, 4:].flatten(0, 1)


def convert_ssdlite(state_dict: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """Rename a cvnets SSD state dict (``encoder.*``, ``extra_layers.*``, ``ssd_heads.*``) to our keys.

    Each level's single predictor conv is split into our box conv (``heads.<i>.box``) and class conv
    (``classifier.<i>``).

    Args:
        state_dict: the checkpoint, as cvnets saves a detection model.
        cfg: our :class:`~mobilevit.models.ssdlite.SSDLiteConfig`.
    """
    unknown = sorted({k.split(".")[0] for k in state_dict} - {"encoder", "extra_layers", "ssd_heads"})
    if unknown:
        raise KeyError(
            f"a cvnets SSD checkpoint holds 'encoder.', 'extra_layers.' and 'ssd_heads.' tensors, not {unknown}"
        )
    encoder = {k.removeprefix("encoder."): v for k, v in state_dict.items() if k.startswith("encoder.")}
    out = {f"backbone.{k}": v for k, v in convert_mobilevit(encoder, CLASSIFIERS[cfg.backbone][1]).items()}
    anchors = [len(shapes) for shapes in cfg.anchor_shapes()]
    head: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("encoder."):
            continue
        found = _SSD_PREDICTOR.match(key)
        if found is None:
            head[key] = value
            continue
        level, kind = int(found.group(1)), found.group(2)
        if value.shape[0] != anchors[level] * (4 + cfg.num_classes):
            raise ValueError(
                f"{key} has {value.shape[0]} outputs, not {anchors[level]} anchors x (4 + {cfg.num_classes} classes)"
            )
        out[f"heads.{level}.box.{kind}"], out[f"classifier.{level}.{kind}"] = _split_predictor(value, anchors[level])
    out.update(rename(head, _SSD_RULES))
    assert len(out) == len(state_dict) + len(anchors) * 2, (len(out), len(state_dict))
    return out
