"""Semantic FPN semantic segmentation on any classification backbone of the package.

Paper: Kirillov et al., "Panoptic Feature Pyramid Networks" (arXiv 1901.02446), its semantic segmentation branch, as
the FastViT paper (arXiv 2303.14189) and PoolFormer (arXiv 2111.11418) evaluate their backbones on ADE20K at 512x512.
Upstream code followed: open-mmlab/mmsegmentation's ``FPN`` neck and ``FPNHead`` (``mmseg/models/necks/fpn.py``,
``mmseg/models/decode_heads/fpn_head.py``) with the settings of sail-sg/poolformer's
``segmentation/configs/sem_fpn`` (``_base_/models/fpn_r50.py``), which the FastViT paper follows; their checkpoints
(``backbone.*``, ``neck.*``, ``decode_head.*``) load with ``create_model`` (the ``mmseg`` converter).

Layout: the backbone's maps at strides 4, 8, 16 and 32 (for FastViT each through a BatchNorm of its own, as
ml-fastvit's ``fork_feat`` backbone gives them to mmsegmentation); a feature pyramid
(:class:`~mobilevit.layers.FeaturePyramid`, the ``"lateral"`` wiring, plain convs with bias) to ``fpn_channels``
each; per level a scale head of 3x3 conv (no bias) + BatchNorm + ReLU layers, each followed by a 2x bilinear
upsampling (``align_corners=False``) until the map is at stride 4 (one conv and no upsampling at stride 4; one conv
and one upsampling at stride 8; two of each at stride 16; three at stride 32); the four maps summed (each resized
bilinearly to the stride-4 map's size first, a no-op when the input is a multiple of 32), channel dropout and a
biased 1x1 classifier. ``forward`` returns logits at 1/4 of the input; :meth:`SemanticFPN.upsample_logits` gives
them the input's (or the image's) size, as mmsegmentation resizes them before its ``argmax``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError, suggest
from ..layers import ConvNormAct, FeaturePyramid, upsample_logits
from .classifiers import CLASSIFIERS, backbone_for
from .fastvit import FastViTConfig

ADE20K_CLASSES = 150  # ADE20K (SceneParsing): 150 classes; its label 0 ("other") is ignored, mmseg's reduce_zero_label
FPN_STRIDES = (4, 8, 16, 32)  # the backbone levels the pyramid reads (mmseg: in_index [0, 1, 2, 3])


@dataclass(frozen=True)
class SemanticFPNConfig:
    """A Semantic FPN model: which backbone and how wide the pyramid and the head are. A typo in an override raises.
    The defaults are the PoolFormer / FastViT ADE20K configuration (mmsegmentation's ``fpn_r50.py`` base)."""

    backbone: str  # a classification architecture of the package, e.g. "fastvit_sa12"; its ImageNet weights fit it
    num_classes: int = ADE20K_CLASSES
    fpn_channels: int = 256  # width of every pyramid level (mmseg FPN out_channels)
    head_channels: int = 128  # width of the scale heads (mmseg FPNHead channels)
    dropout: float = 0.1  # channel dropout before the classifier (mmseg dropout_ratio)
    # a BatchNorm on each backbone level before the pyramid: ml-fastvit's fork_feat backbone (its norm0/2/4/6), which
    # the FastViT paper's Semantic FPN and Mask R-CNN use; the other families give their maps as they are
    feature_norm: bool = False
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.backbone not in CLASSIFIERS:
            raise UsageError(f"Unknown backbone {self.backbone!r}.{suggest(self.backbone, list(CLASSIFIERS))}")
        if self.num_classes < 1:
            raise UsageError(f"num_classes must be at least 1, got {self.num_classes!r}")
        if self.fpn_channels < 1 or self.head_channels < 1:
            raise UsageError(
                f"fpn_channels and head_channels must be positive, got {self.fpn_channels, self.head_channels}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout!r}")


MODEL_CFGS: dict[str, SemanticFPNConfig] = {
    f"semfpn_{name}": SemanticFPNConfig(backbone=name, feature_norm=isinstance(cfg, FastViTConfig))
    for name, (_, cfg) in CLASSIFIERS.items()
}


class Upsample2x(nn.Module):
    """``[B, C, h, w] -> [B, C, 2h, 2w]``: bilinear, ``align_corners=False`` (mmseg's ``Upsample(scale_factor=2)``)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def scale_head(in_channels: int, channels: int, stride: int, finest: int) -> nn.Sequential:
    """One level's path to stride ``finest``: ``max(1, log2(stride / finest))`` conv-BN-ReLU layers, each followed by
    a 2x upsampling unless the level is already at ``finest``. Conv ``j`` sits at index ``2j`` when upsampling (the
    upsamplings hold no tensors), as in mmsegmentation's ``scale_heads``."""
    steps = int(math.log2(stride // finest))
    layers: list[nn.Module] = []
    for k in range(max(1, steps)):
        layers.append(ConvNormAct(in_channels if k == 0 else channels, channels, 3, act=nn.ReLU))
        if steps > 0:
            layers.append(Upsample2x())
    return nn.Sequential(*layers)


class SemanticFPNHead(nn.Module):
    """Pyramid maps (finest first, at ``strides``) -> ``[B, num_classes, H_0, W_0]`` logits at the finest level's size.

    Attributes:
        scale_heads: per level, :func:`scale_head`.
        dropout: channel dropout on the sum.
        classifier: the biased 1x1 conv to the class scores (mmseg's ``conv_seg``).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, strides: Sequence[int], dropout: float):
        super().__init__()
        self.scale_heads = nn.ModuleList(scale_head(in_channels, channels, s, strides[0]) for s in strides)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        out = self.scale_heads[0](features[0])  # [B, channels, H_0, W_0]
        for head, x in zip(self.scale_heads[1:], features[1:], strict=True):
            # 2^k x upsampled, then to the finest size: equal to it when the input is a multiple of the coarsest stride
            out = out + upsample_logits(head(x), out.shape[-2:])
        return self.classifier(self.dropout(out))


class SemanticFPN(nn.Module):
    """Semantic FPN segmentation model: ``[B, 3, H, W]`` images -> ``[B, num_classes, ceil(H / 4), ceil(W / 4)]``
    logits (each stride-2 layer of the backbone rounds up). For masks at the input's (or the original image's) size,
    resize the logits with :meth:`upsample_logits` and take ``argmax(1)``.

    ``model.backbone`` is a ``features_only`` model of ``cfg.backbone`` (its levels at strides 4, 8, 16, 32): the
    classification checkpoints of ``cfg.backbone`` fit it under the ``backbone.`` prefix.

    Args:
        cfg: the architecture.
        features_only: not available: a segmentation model has no feature-only form; its ``backbone`` is one.
        out_indices: not used (the signature every architecture shares).

    Attributes:
        backbone: the feature extractor.
        feature_norms: a BatchNorm per level with ``cfg.feature_norm`` (FastViT), else identities.
        neck: the feature pyramid.
        head: the scale heads and the classifier.
    """

    task = "segmentation"
    label_set = "ade20k"
    output_axes = ("batch", "classes", "height", "width")
    classifier_name = "head.classifier"  # the parameters that a new ``num_classes`` replaces
    output_stride = FPN_STRIDES[0]

    def __init__(
        self, cfg: SemanticFPNConfig, features_only: bool = False, out_indices: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        backbone_cls, backbone_cfg = backbone_for("a segmentation model", cfg, features_only)
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.features_only = False
        # the last four levels: strides 4-32 (MobileViT and MobileOne also have a stride-2 level first)
        self.backbone = backbone_cls(backbone_cfg, features_only=True, out_indices=(-4, -3, -2, -1))
        strides = tuple(info["stride"] for info in self.backbone.feature_info)
        if strides != FPN_STRIDES:
            raise UsageError(
                f"Semantic FPN needs backbone levels at strides {FPN_STRIDES}; {cfg.backbone} has {strides}"
            )
        widths = [info["num_channels"] for info in self.backbone.feature_info]
        norm = nn.BatchNorm2d if cfg.feature_norm else (lambda _: nn.Identity())
        self.feature_norms = nn.ModuleList(norm(c) for c in widths)
        self.neck = FeaturePyramid(widths, cfg.fpn_channels, wiring="lateral", norm=False)
        self.head = SemanticFPNHead(cfg.fpn_channels, cfg.head_channels, cfg.num_classes, strides, cfg.dropout)
        self.neck.apply(_xavier_init_)
        self.head.scale_heads.apply(_kaiming_init_)
        _classifier_init_(self.head.classifier)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_channels, H, W] -> [B, num_classes, ceil(H / 4), ceil(W / 4)]`` logits."""
        features = [norm(f) for norm, f in zip(self.feature_norms, self.backbone(x), strict=True)]
        return self.head(self.neck(features))

    @staticmethod
    def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
        """``forward``'s logits resized to ``size`` (H, W): bilinear, ``align_corners=False``
        (:func:`mobilevit.layers.upsample_logits`, mmsegmentation's resize before its ``argmax``)."""
        return upsample_logits(logits, size)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the 1x1 classifier with a freshly initialised one for ``num_classes`` (the rest is kept)."""
        if num_classes < 1:
            raise UsageError(f"a segmentation model needs at least one class, got num_classes={num_classes}")
        self.num_classes = num_classes
        old = self.head.classifier
        self.head.classifier = nn.Conv2d(old.in_channels, num_classes, 1, device=old.weight.device)
        _classifier_init_(self.head.classifier)

    def get_classifier(self) -> nn.Module:
        return self.head.classifier

    @staticmethod
    def config_from_checkpoint(state_dict: dict[str, Tensor], cfg: SemanticFPNConfig) -> dict[str, Any]:
        """What a converted checkpoint's tensors show, as config overrides: the pyramid's and the scale heads' widths
        and whether the backbone levels have norms. Empty for a checkpoint without a Semantic FPN head."""
        lateral = state_dict.get("neck.lateral.0.conv.weight")
        scale = state_dict.get("head.scale_heads.0.0.conv.weight")
        if lateral is None or scale is None:
            return {}
        return {
            "fpn_channels": lateral.shape[0],
            "head_channels": scale.shape[0],
            "feature_norm": "feature_norms.0.running_mean" in state_dict,
        }

    def no_weight_decay(self) -> set[str]:
        """The backbone's exemptions (e.g. FastViT's layer scales), under the ``backbone.`` prefix."""
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}


# mmsegmentation's initialisation: Xavier-uniform pyramid convs (its FPN's init_cfg), Kaiming-normal fan-out scale-head
# convs (ConvModule's default), N(0, 0.01) for the classifier (BaseDecodeHead's init_cfg); biases 0
def _xavier_init_(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


def _kaiming_init_(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def _classifier_init_(conv: nn.Conv2d) -> None:
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)


__all__ = ["ADE20K_CLASSES", "FPN_STRIDES", "MODEL_CFGS", "SemanticFPN", "SemanticFPNConfig", "SemanticFPNHead"]
