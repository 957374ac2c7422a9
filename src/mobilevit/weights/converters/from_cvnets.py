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


_MASKRCNN_RULES = [
    (r"^rpn\.head\.(cls_logits|bbox_pred)\.block\.conv\.", r"rpn.head.\1."),
    (r"^roi_heads\.mask_predictor\.0\.block\.conv\.", "roi_heads.mask_predictor.conv5_mask."),
    (r"^roi_heads\.mask_predictor\.1\.", "roi_heads.mask_predictor.bn5_mask."),
    (r"^roi_heads\.mask_predictor\.3\.block\.conv\.", "roi_heads.mask_predictor.mask_fcn_logits."),
    (r"\.block\.conv\.", ".conv."),
    (r"\.block\.norm\.", ".bn."),
]
# Sequentials of (conv, BN, ReLU) triplets in ml-cvnets; torchvision's have one Conv2dNormActivation per triplet
_MASKRCNN_TRIPLETS = re.compile(r"^(rpn\.head\.conv|roi_heads\.box_head|roi_heads\.mask_head)\.(\d+)\.(.+)$")
# ml-cvnets names the pyramid's modules by output stride; ours count from the finest level
_MASKRCNN_PYRAMID = {"backbone_proj_layers": "lateral", "fpn_proj_layers": "smooth", "extra_layers": "extra"}
_NEURAL_AUGMENTOR = "backbone.encoder.neural_augmentor."  # RangeAugment's learnt ranges: training only


def _maskrcnn_triplet_key(key: str, n_box_convs: int) -> str | None:
    """Our name of a tensor of ml-cvnets' RPN, box or mask head convs: layer ``i``'s conv and BN (Sequential
    indices ``3i`` and ``3i + 1``) -> ``<i>.0`` and ``<i>.1``; the box head's Linear (index ``3n + 1``, after the
    Flatten) -> ``n + 1``. ``None`` for another tensor."""
    found = _MASKRCNN_TRIPLETS.match(key)
    if found is None:
        return None
    prefix, index, tail = found[1], int(found[2]), found[3]
    if prefix == "roi_heads.box_head" and index >= 3 * n_box_convs:
        return f"{prefix}.{index - 2 * n_box_convs}.{tail}"
    if tail.startswith("block.conv."):
        return f"{prefix}.{index // 3}.0.{tail.removeprefix('block.conv.')}"
    return f"{prefix}.{index // 3}.1.{tail}"


def convert_maskrcnn(state_dict: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """Rename a cvnets Mask R-CNN state dict (everything under ``model.``: torchvision's ``MaskRCNN`` with the
    backbone under ``model.backbone.encoder.`` and its pyramid under ``model.backbone.{backbone_proj,fpn_proj,
    extra}_layers.<stride>.``) to our keys.

    RangeAugment's six scalars (``neural_augmentor``, applied only while training) are dropped.

    Args:
        state_dict: the checkpoint, as cvnets saves a detection model.
        cfg: our :class:`~mobilevit.models.maskrcnn.MaskRCNNConfig`.
    """
    unknown = sorted({k.split(".")[0] for k in state_dict} - {"model"})
    if unknown:
        raise KeyError(f"a cvnets Mask R-CNN checkpoint holds only 'model.' tensors, not {unknown}")
    flat = {k.removeprefix("model."): v for k, v in state_dict.items()}
    augmentor = [k for k in flat if k.startswith(_NEURAL_AUGMENTOR)]
    if augmentor:
        logger.info("Dropping the %d RangeAugment tensors (neural_augmentor, training only)", len(augmentor))
    encoder = {
        k.removeprefix("backbone.encoder."): v
        for k, v in flat.items()
        if k.startswith("backbone.encoder.") and k not in augmentor
    }
    out = {f"backbone.body.{k}": v for k, v in convert_mobilevit(encoder, CLASSIFIERS[cfg.backbone][1]).items()}
    rest = {k: v for k, v in flat.items() if not k.startswith("backbone.encoder.")}
    n_box_convs = sum(bool(re.match(r"roi_heads\.box_head\.\d+\.block\.conv\.weight$", k)) for k in rest)
    strides = {
        part: sorted({int(k.split(".")[2]) for k in rest if k.startswith(f"backbone.{part}.")})
        for part in _MASKRCNN_PYRAMID
    }
    renamed: dict[str, Tensor] = {}
    for key, value in rest.items():
        parts = key.split(".")
        if parts[0] == "backbone" and parts[1] in _MASKRCNN_PYRAMID:
            level = strides[parts[1]].index(int(parts[2]))
            key = ".".join(["backbone.fpn", _MASKRCNN_PYRAMID[parts[1]], str(level), *parts[3:]])
        elif (ours := _maskrcnn_triplet_key(key, n_box_convs)) is not None:
            out[ours] = value
            continue
        renamed[key] = value
    out.update(rename(renamed, _MASKRCNN_RULES))
    assert len(out) == len(state_dict) - len(augmentor), (len(out), len(state_dict), len(augmentor))
    return out
