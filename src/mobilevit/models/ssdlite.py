"""SSDLite object detection on any classification backbone of the package.

Papers: "SSD: Single Shot MultiBox Detector" (arXiv 1512.02325) with the separable "SSDLite" heads of MobileNetV2
(arXiv 1801.04381), as the MobileViT papers use it (arXiv 2110.02178, 2206.02680, 2209.15159: MS-COCO at 320x320).
Upstream code followed: apple/ml-cvnets (``cvnets/models/detection/ssd.py``, ``cvnets/modules/ssd_heads.py``,
``cvnets/anchor_generator/ssd_anchor_generator.py``), whose SSD checkpoints load with ``create_model``.

Layout: the backbone without its classifier or final 1x1 expansion gives the maps at output strides 16 and 32; three
stride-2 separable blocks (depthwise 3x3 + BN, pointwise 1x1 + BN + ReLU) add strides 64, 128 and 256, and a global
average pool + 1x1 conv + ReLU a last 1x1 level. On each of the six levels a head (a 1x1 projection when the level's
width differs from the head's, a depthwise 3x3 + BN, then 1x1 convs) predicts, per anchor, 4 box offsets and
``num_classes`` class logits (class 0 is background). The anchors come from the feature-map sizes, so any input size
works.

``forward`` returns the raw tensors (:class:`SSDOutput`: ``logits``, ``boxes``, ``anchors``), as ml-cvnets'
``ssd_forward`` does; decoding, thresholds and NMS belong to the detection task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..errors import UsageError, suggest
from ..layers import ConvNormAct
from .classifiers import CLASSIFIERS, backbone_for

COCO_CLASSES = 81  # MS-COCO's 80 object classes and background (index 0), as ml-cvnets trains them
DETECTION_INPUT_SIZE = 320  # the input size of every published SSDLite-MobileViT checkpoint
LEVEL_STRIDES = (16, 32, 64, 128, 256, -1)  # -1: the global-pool level (a 1x1 map)
OUTPUT_NAMES = ("logits", "boxes", "anchors")


@dataclass(frozen=True)
class SSDLiteConfig:
    """An SSDLite model: which backbone, how wide each level's head is and which anchors it predicts. A typo in an
    override raises."""

    backbone: str  # a classification architecture of the package, e.g. "mobilevit_s"; its ImageNet weights fit it
    num_classes: int = COCO_CLASSES  # class logits per anchor, background (index 0) included
    # per level (strides 16, 32, 64, 128, 256, global): the width of its head, and of the extra block making it
    proj_channels: tuple[int, ...] = (512, 256, 256, 128, 128, 64)
    # per level: aspect ratios r of the anchors beyond the two squares (each r gives a w/h = r and a w/h = 1/r box)
    aspect_ratios: tuple[tuple[int, ...], ...] = ((2, 3), (2, 3), (2, 3), (2, 3), (2, 3), (2,))
    min_scale: float = 0.1  # anchor scales: linspace(min_scale, max_scale, levels + 1), as a fraction of the image
    max_scale: float = 1.05
    clip_anchors: bool = True  # clamp the anchors' (cx, cy, w, h) to [0, 1], as ml-cvnets does
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.backbone not in CLASSIFIERS:
            raise UsageError(f"Unknown backbone {self.backbone!r}.{suggest(self.backbone, list(CLASSIFIERS))}")
        levels = len(LEVEL_STRIDES)
        if len(self.proj_channels) != levels or len(self.aspect_ratios) != levels:
            raise UsageError(f"proj_channels and aspect_ratios need one entry per level ({levels} levels)")
        if self.num_classes < 2:
            raise UsageError(f"num_classes counts the background too: at least 2, got {self.num_classes!r}")
        if not 0.0 < self.min_scale < self.max_scale:
            raise UsageError(f"need 0 < min_scale < max_scale, got {self.min_scale!r}, {self.max_scale!r}")

    def anchor_shapes(self) -> list[list[tuple[float, float]]]:
        """Per level, the ``(w, h)`` of the anchors at each location, in order: ``(s, s)``, ``(s', s')`` with
        ``s' = sqrt(s * s_next)``, then ``(s * sqrt(r), s / sqrt(r))`` and ``(s / sqrt(r), s * sqrt(r))`` per ratio."""
        n = len(LEVEL_STRIDES)
        scales = [self.min_scale + (self.max_scale - self.min_scale) * i / n for i in range(n + 1)]  # numpy.linspace
        shapes = []
        for i, ratios in enumerate(self.aspect_ratios):
            s, s_big = scales[i], math.sqrt(scales[i] * scales[i + 1])
            level = [(s, s), (s_big, s_big)]
            for r in dict.fromkeys(ratios):  # a repeated ratio counts once (ml-cvnets takes the set)
                level += [(s * math.sqrt(r), s / math.sqrt(r)), (s / math.sqrt(r), s * math.sqrt(r))]
            shapes.append(level)
        return shapes


MODEL_CFGS: dict[str, SSDLiteConfig] = {f"ssdlite_{name}": SSDLiteConfig(backbone=name) for name in CLASSIFIERS}


class SSDOutput(NamedTuple):
    """The raw outputs of :class:`SSDLite` (a tuple, so exporters see three tensors ``logits, boxes, anchors``).

    Attributes:
        logits: ``[B, A, num_classes]`` class logits per anchor (pre-softmax; column 0 is background).
        boxes: ``[B, A, 4]`` box regression per anchor, ``(t_cx, t_cy, t_w, t_h)`` relative to its anchor (decode with
            centre variance 0.1 and size variance 0.2).
        anchors: ``[B, A, 4]`` the anchors, normalised ``(cx, cy, w, h)`` in [0, 1] (the same for every image: one
            ``[1, A, 4]`` tensor expanded, so that every output has the batch first, as the runner reads them).
    """

    logits: Tensor
    boxes: Tensor
    anchors: Tensor


class SeparableConv(nn.Sequential):
    """``[B, in, H, W] -> [B, out, H / stride, W / stride]``: depthwise 3x3 + BN, then pointwise 1x1 + BN + ReLU
    (an extra level of the detector)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.dw = ConvNormAct(in_channels, in_channels, 3, stride, groups=in_channels, act=None)
        self.pw = ConvNormAct(in_channels, out_channels, 1, act=nn.ReLU)


class GlobalPoolConv(nn.Module):
    """``[B, in, H, W] -> [B, out, 1, 1]``: global average pool, then a 1x1 conv (no bias, no norm) and ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, 1, norm=False, act=nn.ReLU, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.mean(dim=(2, 3), keepdim=True))  # [B, C, H, W] -> [B, C, 1, 1]


class SSDHead(nn.Module):
    """The shared part of one level's head and its box predictor: ``proj`` (1x1 conv + BN + ReLU, when the level's
    width is not the head's), ``dw`` (depthwise 3x3 + BN; none on the 1x1 global level) and ``box`` (1x1 conv, 4
    offsets per anchor). The class predictor of the level is :attr:`SSDLite.classifier`."""

    def __init__(self, in_channels: int, channels: int, num_anchors: int, depthwise: bool) -> None:
        super().__init__()
        project = depthwise and in_channels != channels
        self.proj = ConvNormAct(in_channels, channels, 1, act=nn.ReLU) if project else nn.Identity()
        width = channels if project else in_channels
        self.dw = ConvNormAct(width, width, 3, groups=width, act=None) if depthwise else nn.Identity()
        self.box = nn.Conv2d(width, num_anchors * 4, 1)
        self.out_channels = width

    def forward(self, x: Tensor) -> Tensor:
        """The features both predictors read: ``[B, in, H, W] -> [B, out_channels, H, W]``."""
        return self.dw(self.proj(x))


def _flatten_anchors(x: Tensor, per_anchor: int) -> Tensor:
    """``[B, A_loc * per_anchor, H, W] -> [B, H * W * A_loc, per_anchor]`` (y-major, then x, then the anchor)."""
    B = x.shape[0]
    return x.permute(0, 2, 3, 1).reshape(B, -1, per_anchor)


def _xavier_init_(module: nn.Module) -> None:
    """ml-cvnets' detector init: Xavier-uniform convolutions with zero bias, unit norms."""
    if isinstance(module, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class SSDLite(nn.Module):
    """SSDLite detector: ``[B, 3, H, W]`` images -> :class:`SSDOutput` (``logits``, ``boxes``, ``anchors``).

    ``A`` (anchors) depends on the input size through the feature-map sizes: 3232 at 320x320. The backbone is
    ``backbone`` (a ``features_only`` model of ``cfg.backbone``, its stride-16 and stride-32 maps): classification
    checkpoints of ``cfg.backbone`` fit it under the ``backbone.`` prefix.

    Args:
        cfg: the architecture.
        features_only: not available: a detector has no feature-only form; its ``backbone`` is one.
        out_indices: not used (the signature every architecture shares).
    """

    task = "detection"
    label_set = "coco"  # its outputs: the background, then COCO's 80 classes in ascending category id
    output_axes = ("batch", "anchors", "classes")  # what each axis of ``logits`` (the first output) is
    default_input_size = (DETECTION_INPUT_SIZE, DETECTION_INPUT_SIZE)  # the published checkpoints' input
    classifier_name = "classifier"  # the parameters that a new ``num_classes`` replaces
    output_names = OUTPUT_NAMES
    # the smallest height and width at which a torch.export trace keeps every level's size symbolic: at 256 or less
    # the stride-256 level is 1x1, a size torch.export fixes (mobilevit.export.onnx)
    min_dynamic_size = LEVEL_STRIDES[-2] + 1

    def __init__(
        self, cfg: SSDLiteConfig, features_only: bool = False, out_indices: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        backbone_cls, backbone_cfg = backbone_for("a detection model", cfg, features_only)
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.features_only = False
        with torch.device("meta"):  # only its feature levels are read: no memory, no init
            levels = backbone_cls(backbone_cfg, features_only=True).feature_info
        taps = tuple(max(i for i, f in enumerate(levels) if f["stride"] == s) for s in (16, 32))  # last of each stride
        self.backbone = backbone_cls(backbone_cfg, features_only=True, out_indices=taps)
        widths = [f["num_channels"] for f in self.backbone.feature_info]
        last = widths[-1]
        extras: list[nn.Module] = []
        for out_channels in cfg.proj_channels[2:-1]:
            extras.append(SeparableConv(last, out_channels))
            widths.append(last := out_channels)
        extras.append(GlobalPoolConv(last, cfg.proj_channels[-1]))
        widths.append(cfg.proj_channels[-1])
        self.extras = nn.ModuleList(extras)
        self.anchor_shapes = cfg.anchor_shapes()
        for i, shapes in enumerate(self.anchor_shapes):  # [n, 2] (w, h) per level: constants, not weights
            self.register_buffer(f"anchor_wh_{i}", torch.tensor(shapes, dtype=torch.float32), persistent=False)
        anchors = [len(shapes) for shapes in self.anchor_shapes]
        self.heads = nn.ModuleList(
            SSDHead(w, c, a, depthwise=stride != -1)
            for w, c, a, stride in zip(widths, cfg.proj_channels, anchors, LEVEL_STRIDES, strict=True)
        )
        self.classifier = self._classifier(cfg.num_classes)
        self.extras.apply(_xavier_init_)
        self.heads.apply(_xavier_init_)

    def _classifier(self, num_classes: int) -> nn.ModuleList:
        """One 1x1 conv per level: ``num_classes`` logits for each of the level's anchors."""
        device = self.heads[0].box.weight.device
        convs = nn.ModuleList(
            nn.Conv2d(head.out_channels, len(shapes) * num_classes, 1, device=device)
            for head, shapes in zip(self.heads, self.anchor_shapes, strict=True)
        )
        convs.apply(_xavier_init_)
        return convs

    @staticmethod
    def checkpoint_classes(state_dict: dict[str, Tensor], cfg: SSDLiteConfig) -> int | None:
        """The ``num_classes`` of a converted checkpoint (from its last level's class conv); ``None`` without one."""
        bias = state_dict.get(f"classifier.{len(LEVEL_STRIDES) - 1}.bias")
        return None if bias is None else bias.shape[0] // len(cfg.anchor_shapes()[-1])

    def level_features(self, x: Tensor) -> list[Tensor]:
        """The six maps the heads read: the backbone's at strides 16 and 32, then the extra levels'."""
        maps = list(self.backbone(x))
        for extra in self.extras:
            maps.append(extra(maps[-1]))
        return maps

    def anchors(self, sizes: list[tuple[int, int]], device: torch.device | None = None) -> Tensor:
        """``[1, A, 4]`` normalised ``(cx, cy, w, h)`` anchors for levels of feature-map ``sizes`` ``(h, w)``.

        Per location (y-major): ``cx = (x + 0.5) / w``, ``cy = (y + 0.5) / h``, then the level's anchor shapes; all
        four columns clamped to [0, 1] with ``cfg.clip_anchors``, as ml-cvnets' ``SSDAnchorGenerator`` does.
        """
        levels = []
        for i, (h, w) in enumerate(sizes):
            cy = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
            cx = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
            centres = torch.stack(torch.meshgrid(cx, cy, indexing="xy"), dim=-1)  # [h, w, 2] as (cx, cy)
            wh = getattr(self, f"anchor_wh_{i}").to(device=device, dtype=torch.float32)  # [n, 2]
            n = wh.shape[0]
            level = torch.cat((centres[:, :, None, :].expand(h, w, n, 2), wh.expand(h, w, n, 2)), dim=-1)  # [h,w,n,4]
            levels.append(level.reshape(-1, 4))
        anchors = torch.cat(levels, dim=0)
        return (anchors.clamp(0.0, 1.0) if self.cfg.clip_anchors else anchors)[None]  # [1, A, 4]

    def forward(self, x: Tensor) -> SSDOutput:
        """``[B, in_channels, H, W]`` -> ``SSDOutput(logits [B, A, num_classes], boxes [B, A, 4], anchors [B, A, 4])``,
        the levels concatenated in stride order."""
        maps = self.level_features(x)
        logits, boxes = [], []
        for fmap, head, classifier in zip(maps, self.heads, self.classifier, strict=True):
            features = head(fmap)
            boxes.append(_flatten_anchors(head.box(features), 4))  # [B, n*4, h, w] -> [B, h*w*n, 4]
            logits.append(_flatten_anchors(classifier(features), self.num_classes))  # -> [B, h*w*n, K]
        anchors = self.anchors([tuple(m.shape[-2:]) for m in maps], device=x.device)  # [1, A, 4]
        logits_, boxes_ = torch.cat(logits, dim=1), torch.cat(boxes, dim=1)
        return SSDOutput(logits_, boxes_, anchors.expand(x.shape[0], -1, -1))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the class predictors with freshly initialised ones for ``num_classes`` (background included)."""
        if num_classes < 2:
            raise UsageError(f"a detector needs the background and at least one class, got num_classes={num_classes}")
        self.num_classes = num_classes
        self.classifier = self._classifier(num_classes)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def no_weight_decay(self) -> set[str]:
        """The backbone's exemptions (e.g. FastViT's layer scales), under the ``backbone.`` prefix."""
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}


__all__ = [
    "COCO_CLASSES",
    "DETECTION_INPUT_SIZE",
    "LEVEL_STRIDES",
    "MODEL_CFGS",
    "OUTPUT_NAMES",
    "SSDHead",
    "SSDLite",
    "SSDLiteConfig",
    "SSDOutput",
]
