"""DeepLabV3 semantic segmentation on any classification backbone of the package.

Paper: "Rethinking Atrous Convolution for Semantic Image Segmentation" (arXiv 1706.05587), as the MobileViT papers
use it (arXiv 2110.02178, 2206.02680: PASCAL VOC 2012 at 512x512). Upstream code followed: apple/ml-cvnets
(``cvnets/models/segmentation``: ``SegEncoderDecoder`` + ``DeeplabV3`` head), whose checkpoints and transformers'
``MobileViTForSemanticSegmentation`` / ``MobileViTV2ForSemanticSegmentation`` folders load with ``create_model``.

Layout: the backbone without its classifier or final 1x1 expansion, its last stages dilated so that it stops at
``output_stride`` (16 in every published checkpoint); on its last feature map an ASPP (:class:`~mobilevit.layers.ASPP`)
and a 1x1 classifier. ``forward`` returns logits at 1/``output_stride`` of the input, as transformers does;
:meth:`DeepLabV3.upsample_logits` turns them into full-resolution scores (``argmax(1)`` of those is the mask).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import UsageError, suggest
from ..layers import ASPP, kaiming_init_, upsample_logits
from .classifiers import CLASSIFIERS, backbone_for

SEGMENTATION_OUTPUT_STRIDES = (8, 16)
VOC_CLASSES = 21  # PASCAL VOC 2012: background and 20 object classes (255 marks pixels to ignore)


@dataclass(frozen=True)
class DeepLabV3Config:
    """A DeepLabV3 model: which backbone, how deep it runs and how wide the head is. A typo in an override raises."""

    backbone: str  # a classification architecture of the package, e.g. "mobilevit_s"; its ImageNet weights fit it
    output_stride: int = 16  # the backbone's total stride: 16 (all published checkpoints) or 8 (finer, slower)
    aspp_channels: int = 256  # width of every ASPP branch: 256 for MobileViT v1 / v3-v1, 512 for v2 / v3-v2 (cvnets)
    aspp_rates: tuple[int, ...] = (6, 12, 18)  # dilations of the 3x3 ASPP branches (ml-cvnets keeps them at stride 8)
    dropout: float = 0.1  # channel dropout after the ASPP projection (ml-cvnets' aspp_dropout)
    num_classes: int = VOC_CLASSES
    in_channels: int = 3
    # MobileViT v2 / v3-v2 backbones: dilate the blocks' depthwise local convs in the dilated stages, as ml-cvnets
    # trained the published weights; False runs them as transformers' MobileViTV2ForSemanticSegmentation does
    dilate_local_conv: bool = True

    def __post_init__(self) -> None:
        if self.backbone not in CLASSIFIERS:
            raise UsageError(f"Unknown backbone {self.backbone!r}.{suggest(self.backbone, list(CLASSIFIERS))}")
        backbone_fields = {f.name for f in dataclasses.fields(CLASSIFIERS[self.backbone][1])}
        if not self.dilate_local_conv and "dilate_local_conv" not in backbone_fields:
            raise UsageError(f"dilate_local_conv applies to MobileViT backbones, not {self.backbone!r}")
        if self.output_stride not in SEGMENTATION_OUTPUT_STRIDES:
            raise UsageError(f"output_stride must be one of {SEGMENTATION_OUTPUT_STRIDES}, got {self.output_stride!r}")
        if not self.aspp_rates or any(r < 1 for r in self.aspp_rates):
            raise UsageError(f"aspp_rates must be positive dilations, got {self.aspp_rates!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.num_classes < 1:
            raise UsageError(f"num_classes must be at least 1, got {self.num_classes!r}")


def _aspp_channels(backbone_cfg: object) -> int:
    """512 behind the separable-attention backbones (MobileViT v2, v3-v2), as ml-cvnets and MobileViTv3 publish; 256
    elsewhere (MobileViT v1, v3-v1, and for FastViT / MobileOne the DeepLabV3 paper's width)."""
    return 512 if getattr(backbone_cfg, "attention", None) == "separable" else 256


MODEL_CFGS: dict[str, DeepLabV3Config] = {
    f"deeplabv3_{name}": DeepLabV3Config(backbone=name, aspp_channels=_aspp_channels(cfg))
    for name, (_, cfg) in CLASSIFIERS.items()
}


class DeepLabV3Head(nn.Module):
    """``[B, in_channels, h, w] -> [B, num_classes, h, w]``: ASPP, then a biased 1x1 classifier."""

    def __init__(self, in_channels: int, cfg: DeepLabV3Config) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, cfg.aspp_channels, cfg.aspp_rates, cfg.dropout)
        self.classifier = nn.Conv2d(cfg.aspp_channels, cfg.num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.aspp(x))


class DeepLabV3(nn.Module):
    """DeepLabV3 segmentation model: ``[B, 3, H, W]`` images -> ``[B, num_classes, h, w]`` logits.

    ``h, w`` are ``H, W`` divided by ``output_stride`` (rounded up: every stride-2 layer pads), i.e. 1/16 of the input
    for the published checkpoints. For masks at the input's (or the original image's) size, resize the logits with
    :meth:`upsample_logits` and take ``argmax(1)``.

    The backbone is ``backbone`` (a ``features_only`` model of ``cfg.backbone``, dilated to ``cfg.output_stride``):
    ``model.backbone`` is a feature extractor like any other, and classification checkpoints of ``cfg.backbone``
    fit it under the ``backbone.`` prefix.

    Args:
        cfg: the architecture.
        features_only: not available: a segmentation model has no feature-only form; its ``backbone`` is one.
        out_indices: not used (the signature every architecture shares).
    """

    task = "segmentation"
    label_set = "pascal-voc"
    output_axes = ("batch", "classes", "height", "width")
    classifier_name = "head.classifier"  # the parameters that a new ``num_classes`` replaces

    def __init__(
        self, cfg: DeepLabV3Config, features_only: bool = False, out_indices: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        dilation = {} if cfg.dilate_local_conv else {"dilate_local_conv": False}
        backbone_cls, backbone_cfg = backbone_for(
            "a segmentation model", cfg, features_only, output_stride=cfg.output_stride, **dilation
        )
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.features_only = False
        self.backbone = backbone_cls(backbone_cfg, features_only=True, out_indices=(-1,))
        last = self.backbone.feature_info[-1]
        self.output_stride: int = last["stride"]
        self.head = DeepLabV3Head(last["num_channels"], cfg)
        self.head.apply(kaiming_init_)  # ml-cvnets initialises its segmentation head like its backbones

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_channels, H, W] -> [B, num_classes, ceil(H / output_stride), ceil(W / output_stride)]`` logits."""
        features = self.backbone(x)[-1]  # [B, C, H / os, W / os]
        return self.head(features)

    @staticmethod
    def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
        """``forward``'s logits resized to ``size`` (H, W): bilinear, ``align_corners=False``
        (:func:`mobilevit.layers.upsample_logits`, the resize of transformers' post-processing)."""
        return upsample_logits(logits, size)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the 1x1 classifier with a freshly initialised one for ``num_classes`` (the ASPP is kept)."""
        if num_classes < 1:
            raise UsageError(f"a segmentation model needs at least one class, got num_classes={num_classes}")
        self.num_classes = num_classes
        old = self.head.classifier
        self.head.classifier = nn.Conv2d(old.in_channels, num_classes, 1, device=old.weight.device)
        self.head.classifier.apply(kaiming_init_)

    def get_classifier(self) -> nn.Module:
        return self.head.classifier

    def no_weight_decay(self) -> set[str]:
        """The backbone's exemptions (e.g. FastViT's layer scales), under the ``backbone.`` prefix."""
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}


__all__ = ["MODEL_CFGS", "SEGMENTATION_OUTPUT_STRIDES", "VOC_CLASSES", "DeepLabV3", "DeepLabV3Config"]
