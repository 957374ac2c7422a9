"""Mask R-CNN instance segmentation (and object detection) on any classification backbone of the package.

Papers: He et al., "Mask R-CNN" (arXiv 1703.06870) over a feature pyramid (Lin et al., arXiv 1612.03144), as the
MobileViT and FastViT papers evaluate their backbones on MS-COCO. Upstream code followed: apple/ml-cvnets
(``cvnets/models/detection/mask_rcnn.py``, ``cvnets/models/detection/utils/rcnn_utils.py``), whose Mask R-CNN
checkpoints load with ``create_model``; like it, the detector is torchvision's ``MaskRCNN`` (its RPN, RoIAlign
poolers, box and mask heads, box coders, NMS and mask pasting), given our backbone and ml-cvnets' heads.

Layout (ml-cvnets'): the backbone's maps at strides 4, 8, 16 and 32 go through a feature pyramid
(:class:`~mobilevit.layers.FeaturePyramid`, ml-cvnets' ``"smoothed"`` wiring, BatchNorm after every conv) to
``fpn_channels`` each; a 3x3 stride-2 conv on the stride-32 output adds stride 64. All five levels feed the RPN and
both RoIAlign poolers (box 7x7, mask 14x14, sampling ratio 2; torchvision's level mapper then spans levels 2..6).
The RPN head, the box head and the mask head are stacks of 3x3 conv (no bias) + BatchNorm + ReLU; the box head ends
in one fully connected layer of ``representation_size`` + ReLU; the mask predictor is a 2x2 stride-2 transposed conv
(no bias) + BatchNorm + ReLU, then a 1x1 conv to one mask logit map per class. ml-cvnets sets the eps of every
LayerNorm of the detector (MobileViT v1's transformer norms) to 1e-6 (``layer_norm_eps``).

Input and output are torchvision's: ``model(images)`` takes a ``[B, 3, H, W]`` tensor (or a list of ``[3, H, W]``
images) with pixels in [0, 1] and, in eval mode, returns one ``dict`` per image: ``boxes`` ``[D, 4]`` (``x1, y1, x2,
y2`` in the input's pixels, clipped to it), ``labels`` ``[D]`` (int64, 1-based: 0 is the background), ``scores``
``[D]`` (softmax probability) and ``masks`` ``[D, 1, H, W]`` (the mask probabilities of each detection's class, pasted
into the image), best first; in train mode, given ``targets``, torchvision's dict of losses. The preprocessing is
ml-cvnets' configuration of torchvision's ``GeneralizedRCNNTransform``: no normalisation (mean 0, std 1) and no
resize, the image used at its own size (ml-cvnets pins the transform's ``fixed_size`` to each input's size, an exact
identity; here the resize step is simply skipped), then zero-padded at the bottom and right to a multiple of 32 to
batch it. Resizing an image to the model's input (1024x1024 in ml-cvnets' evaluation) is the caller's.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN as TorchvisionMaskRCNN
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import Conv2dNormActivation

from ..errors import UsageError, suggest
from ..layers import FeaturePyramid
from .classifiers import CLASSIFIERS, backbone_for

logger = logging.getLogger(__name__)

COCO_CLASSES = 81  # MS-COCO's 80 object classes and background (index 0), as ml-cvnets trains them
MASKRCNN_INPUT_SIZE = 1024  # ml-cvnets' Mask R-CNN evaluation resizes every image to 1024x1024
BACKBONE_STRIDES = (4, 8, 16, 32)  # the strides a backbone gives; coarser levels are extra convs
# the config fields that are torchvision MaskRCNN's arguments of the same name
TORCHVISION_SETTINGS = (
    "rpn_pre_nms_top_n_train",
    "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_train",
    "rpn_post_nms_top_n_test",
    "rpn_nms_thresh",
    "rpn_fg_iou_thresh",
    "rpn_bg_iou_thresh",
    "rpn_batch_size_per_image",
    "rpn_positive_fraction",
    "rpn_score_thresh",
    "box_score_thresh",
    "box_nms_thresh",
    "box_detections_per_img",
    "box_fg_iou_thresh",
    "box_bg_iou_thresh",
    "box_batch_size_per_image",
    "box_positive_fraction",
)


@dataclass(frozen=True)
class MaskRCNNConfig:
    """A Mask R-CNN model: the backbone, the pyramid, the heads' widths and torchvision's RPN and detection settings.
    The defaults are ml-cvnets' (its argparse defaults and ``examples/range_augment/detection/maskrcnn_*.yaml``). A
    typo in an override raises; loading a checkpoint reads the widths from its tensors."""

    backbone: str  # a classification architecture of the package, e.g. "mobilevit_s"; its ImageNet weights fit it
    num_classes: int = COCO_CLASSES  # box classes, background (index 0) included
    levels: tuple[int, ...] = (4, 8, 16, 32, 64)  # pyramid strides; each beyond 32 is a stride-2 conv on the last
    fpn_channels: int = 256  # width of every pyramid level ("backbone_projection_channels" in ml-cvnets)
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one anchor size (pixels) per level
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # anchor height / width, the same on every level
    rpn_convs: int = 2  # 3x3 conv + BN + ReLU layers of the RPN head
    box_convs: tuple[int, ...] = (256, 256, 256, 256)  # widths of the box head's 3x3 conv + BN + ReLU layers
    representation_size: int = 1024  # width of the box head's fully connected layer
    mask_convs: tuple[int, ...] = (256, 256, 256, 256)  # widths of the mask head's 3x3 conv + BN + ReLU layers
    mask_predictor_channels: int = 256  # the transposed conv's width (hard-coded in ml-cvnets)
    mask_dilation: int = 1  # dilation of the mask head's convs
    box_pool_size: int = 7  # RoIAlign output of the box head
    mask_pool_size: int = 14  # RoIAlign output of the mask head (the masks are twice as wide)
    layer_norm_eps: float | None = 1e-6  # eps of every nn.LayerNorm in the backbone (ml-cvnets); None: unchanged
    # torchvision's RPN: proposals kept before / after NMS (train, test), NMS IoU, anchor matching for its loss
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.7  # ml-cvnets' argparse default (torchvision's is 0.3); training only
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0
    # torchvision's detections: class probability above box_score_thresh (strict), per-class NMS, the best kept
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.backbone not in CLASSIFIERS:
            raise UsageError(f"Unknown backbone {self.backbone!r}.{suggest(self.backbone, list(CLASSIFIERS))}")
        levels = self.levels
        if not levels or any(b != 2 * a for a, b in pairwise(levels)) or levels[0] not in (4, 8):
            raise UsageError(f"levels must double from 4 or 8, e.g. (4, 8, 16, 32, 64); got {levels!r}")
        if len(self.anchor_sizes) != len(levels):
            raise UsageError(f"anchor_sizes needs one size per level ({len(levels)} levels), got {self.anchor_sizes!r}")
        if self.num_classes < 2:
            raise UsageError(f"num_classes counts the background too: at least 2, got {self.num_classes!r}")
        if not self.box_convs or not self.mask_convs or self.rpn_convs < 0:
            raise UsageError("box_convs and mask_convs need at least one layer; rpn_convs cannot be negative")

    @property
    def backbone_levels(self) -> tuple[int, ...]:
        """The pyramid strides taken from the backbone (the others are extra convs)."""
        return tuple(s for s in self.levels if s in BACKBONE_STRIDES)


MODEL_CFGS: dict[str, MaskRCNNConfig] = {f"maskrcnn_{name}": MaskRCNNConfig(backbone=name) for name in CLASSIFIERS}


class PyramidBackbone(nn.Module):
    """What torchvision's detector calls its backbone: ``[B, 3, H, W]`` -> ``OrderedDict`` of the pyramid's maps,
    named by their stride (``"4"``, ``"8"``, ... as ml-cvnets names them), each ``[B, out_channels, H/s, W/s]``
    (rounded up).

    Attributes:
        body: the classifier ``cfg.backbone`` as a ``features_only`` model of the strides the pyramid takes.
        fpn: the feature pyramid on them.
    """

    def __init__(self, body: nn.Module, cfg: MaskRCNNConfig) -> None:
        super().__init__()
        self.body = body
        widths = [f["num_channels"] for f in body.feature_info]
        extra = len(cfg.levels) - len(cfg.backbone_levels)
        self.fpn = FeaturePyramid(widths, cfg.fpn_channels, wiring="smoothed", norm=True, extra_levels=extra)
        self.names = [str(s) for s in cfg.levels]
        self.out_channels = cfg.fpn_channels  # torchvision reads it

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        maps = self.fpn(list(self.body(x)))
        return OrderedDict(zip(self.names, maps, strict=True))


class InputSizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without its resize: images keep their size (ml-cvnets pins ``fixed_size``
    to each input's size, which makes the resize an exact identity), then are normalised and padded as torchvision
    does."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, Any]:
        return image, target


class RowBoxCoder(BoxCoder):
    """torchvision's ``BoxCoder`` whose ``decode`` shapes its result from the regression's own ``[N, 4 * k]`` shape:
    torchvision's reshapes to ``(N, -1, 4)``, which a traced graph (ONNX, TorchScript) cannot do when ``N`` is 0 (an
    image without proposals). Same values."""

    def decode(self, rel_codes: Tensor, boxes: list[Tensor]) -> Tensor:
        boxes = torch.cat(boxes, dim=0)
        return self.decode_single(rel_codes, boxes).reshape(rel_codes.shape[0], rel_codes.shape[1] // 4, 4)


class MaskPredictor(nn.Sequential):
    """``[N, in, 14, 14]`` -> ``[N, num_classes, 28, 28]`` mask logits: a 2x2 stride-2 transposed conv (no bias) +
    BatchNorm + ReLU, then a 1x1 conv per class (ml-cvnets' ``MaskRCNNPredictor``; torchvision's names, with the
    BatchNorm that torchvision's lacks)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__(
            OrderedDict(
                conv5_mask=nn.ConvTranspose2d(in_channels, channels, 2, stride=2, bias=False),
                bn5_mask=nn.BatchNorm2d(channels),
                relu5_mask=nn.ReLU(),
                mask_fcn_logits=nn.Conv2d(channels, num_classes, 1),
            )
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def _rpn_head(channels: int, num_anchors: int, depth: int) -> RPNHead:
    """torchvision's RPN head with ml-cvnets' convs: ``depth`` x (3x3 conv without bias + BN + ReLU), then the 1x1
    objectness and box convs (normal init, std 0.01, as both)."""
    head = RPNHead(channels, num_anchors, conv_depth=depth)
    head.conv = nn.Sequential(
        *(Conv2dNormActivation(channels, channels, 3, norm_layer=nn.BatchNorm2d) for _ in range(depth))
    )
    for m in head.conv.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
    return head


class MaskRCNN(TorchvisionMaskRCNN):
    """Mask R-CNN: torchvision's ``MaskRCNN`` over :class:`PyramidBackbone`, with ml-cvnets' heads (see the module
    docstring for inputs and outputs).

    Args:
        cfg: the architecture.
        features_only: not available: a detector has no feature-only form; ``backbone.body`` is one.
        out_indices: not used (the signature every architecture shares).
    """

    task = "instance-segmentation"
    label_set = "coco"  # its labels: the background, then COCO's 80 classes in ascending category id
    output_axes = ("detections", "coordinates")  # what each axis of ``boxes`` is
    output_names = ("boxes", "labels", "scores", "masks")
    default_input_size = (MASKRCNN_INPUT_SIZE, MASKRCNN_INPUT_SIZE)
    # without weights of its own, the model reads images as ml-cvnets' Mask R-CNN evaluation does whatever its
    # backbone's classification weights read (some MobileViT v3 ones: BGR, OpenCV): decoded by PIL as RGB and resized
    # whole with bilinear interpolation (its config's image_augmentation.resize); the mean and std stay the backbone's
    default_pixels: ClassVar[dict[str, str]] = {
        "channel_order": "RGB",
        "interpolation": "bilinear",
        "resize_backend": "pil",
    }
    classifier_name = "roi_heads.box_predictor"  # the box classifier and box regression, per class
    class_layers = (classifier_name, "roi_heads.mask_predictor.mask_fcn_logits")  # what a new num_classes replaces
    backbone_module = "backbone.body"  # where a classification checkpoint of ``cfg.backbone`` loads

    def __init__(
        self, cfg: MaskRCNNConfig, features_only: bool = False, out_indices: tuple[int, ...] | None = None
    ) -> None:
        backbone_cls, backbone_cfg = backbone_for("a Mask R-CNN model", cfg, features_only)
        with torch.device("meta"):  # only its feature levels are read: no memory, no init
            levels = backbone_cls(backbone_cfg, features_only=True).feature_info
        strides = [f["stride"] for f in levels]
        missing = [s for s in cfg.backbone_levels if s not in strides]
        if missing:
            raise UsageError(f"{cfg.backbone} has no feature maps at stride {missing} (it has {sorted(set(strides))})")
        taps = tuple(max(i for i, s in enumerate(strides) if s == stride) for stride in cfg.backbone_levels)
        body = backbone_cls(backbone_cfg, features_only=True, out_indices=taps)
        if cfg.layer_norm_eps is not None:
            for m in body.modules():
                if isinstance(m, nn.LayerNorm):
                    m.eps = cfg.layer_norm_eps
        names = [str(s) for s in cfg.levels]
        width = cfg.fpn_channels
        anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), (cfg.aspect_ratios,) * len(cfg.levels))
        super().__init__(
            PyramidBackbone(body, cfg),
            rpn_anchor_generator=anchors,
            rpn_head=_rpn_head(width, anchors.num_anchors_per_location()[0], cfg.rpn_convs),
            box_roi_pool=MultiScaleRoIAlign(names, cfg.box_pool_size, sampling_ratio=2),
            box_head=FastRCNNConvFCHead(
                (width, cfg.box_pool_size, cfg.box_pool_size),
                list(cfg.box_convs),
                [cfg.representation_size],
                norm_layer=nn.BatchNorm2d,
            ),
            box_predictor=FastRCNNPredictor(cfg.representation_size, cfg.num_classes),
            mask_roi_pool=MultiScaleRoIAlign(names, cfg.mask_pool_size, sampling_ratio=2),
            mask_head=MaskRCNNHeads(width, list(cfg.mask_convs), cfg.mask_dilation, norm_layer=nn.BatchNorm2d),
            mask_predictor=MaskPredictor(cfg.mask_convs[-1], cfg.mask_predictor_channels, cfg.num_classes),
            **{name: getattr(cfg, name) for name in TORCHVISION_SETTINGS},
        )
        for coder_owner in (self.rpn, self.roi_heads):
            coder_owner.box_coder = RowBoxCoder(coder_owner.box_coder.weights, coder_owner.box_coder.bbox_xform_clip)
        self.transform = InputSizeTransform(
            min_size=MASKRCNN_INPUT_SIZE, max_size=MASKRCNN_INPUT_SIZE, image_mean=[0.0] * 3, image_std=[1.0] * 3
        )
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.features_only = False

    def forward(self, images: Tensor | list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        """torchvision's ``MaskRCNN.forward``: per-image detections in eval mode, losses in train mode (module
        docstring). On the meta device (shapes only, as MAC counting runs models), see :meth:`forward_shapes`."""
        first = images if isinstance(images, Tensor) else images[0]
        if first.device.type == "meta":
            return self.forward_shapes(images if isinstance(images, Tensor) else torch.stack(list(images)))
        return super().forward(images, targets)

    def forward_shapes(self, x: Tensor) -> list[dict[str, Tensor]]:
        """Every layer at its largest workload, on tensors without data: the steps that depend on values (proposal
        selection, RoIAlign's level assignment, NMS) cannot run on the meta device, so the backbone, pyramid and RPN
        head run on ``x``, the box head on ``rpn_post_nms_top_n_test`` pooled proposals and the mask head on
        ``box_detections_per_img`` pooled boxes per image. MACs counted this way are the model's upper bound.

        Returns:
            One empty detection dict per image (torchvision's keys).
        """
        B, _, H, W = x.shape
        cfg, heads = self.cfg, self.roi_heads
        features = self.backbone(x)
        self.rpn.head(list(features.values()))
        width = self.backbone.out_channels
        pooled = x.new_zeros(B * cfg.rpn_post_nms_top_n_test, width, cfg.box_pool_size, cfg.box_pool_size)
        heads.box_predictor(heads.box_head(pooled))
        pooled = x.new_zeros(B * cfg.box_detections_per_img, width, cfg.mask_pool_size, cfg.mask_pool_size)
        heads.mask_predictor(heads.mask_head(pooled))
        empty = {"boxes": x.new_zeros(0, 4), "labels": x.new_zeros(0, dtype=torch.int64), "scores": x.new_zeros(0)}
        return [{**empty, "masks": x.new_zeros(0, 1, H, W)} for _ in range(B)]

    @staticmethod
    def checkpoint_classes(state_dict: dict[str, Tensor], cfg: MaskRCNNConfig) -> int | None:
        """The ``num_classes`` of a converted checkpoint (its box classifier's outputs); ``None`` without one."""
        bias = state_dict.get("roi_heads.box_predictor.cls_score.bias")
        return None if bias is None else bias.shape[0]

    @staticmethod
    def config_from_checkpoint(state_dict: dict[str, Tensor], cfg: MaskRCNNConfig) -> dict[str, Any]:
        """The widths and depths a converted checkpoint's tensors show, as config overrides: the pyramid's width and
        extra levels, the RPN head's depth, the box and mask heads' conv widths, the representation size and the mask
        predictor's width. Empty for a checkpoint without a Mask R-CNN head."""
        lateral = state_dict.get("backbone.fpn.lateral.0.conv.weight")
        if lateral is None or "roi_heads.box_predictor.cls_score.weight" not in state_dict:
            return {}

        def conv_widths(prefix: str) -> tuple[int, ...]:
            widths, i = [], 0
            while (w := state_dict.get(f"{prefix}.{i}.0.weight")) is not None and w.ndim == 4:
                widths.append(w.shape[0])
                i += 1
            return tuple(widths)

        def count(prefix: str) -> int:
            return sum(k.startswith(prefix) and k.endswith(".conv.weight") for k in state_dict)

        box_convs = conv_widths("roi_heads.box_head")
        taken = BACKBONE_STRIDES[-count("backbone.fpn.lateral.") :]  # the finest levels are the ones left out
        levels = taken + tuple(taken[-1] * 2 ** (i + 1) for i in range(count("backbone.fpn.extra.")))
        found = {
            "fpn_channels": lateral.shape[0],
            "levels": levels,
            "rpn_convs": len(conv_widths("rpn.head.conv")),
            "box_convs": box_convs,
            "representation_size": state_dict[f"roi_heads.box_head.{len(box_convs) + 1}.weight"].shape[0],
            "mask_convs": conv_widths("roi_heads.mask_head"),
            "mask_predictor_channels": state_dict["roi_heads.mask_predictor.conv5_mask.weight"].shape[1],
        }
        if len(found["levels"]) != len(cfg.anchor_sizes):
            found["anchor_sizes"] = tuple(32 * 2**i for i in range(len(found["levels"])))
        return found

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the box classifier and the mask predictor's class conv with fresh ones for ``num_classes``
        (background included)."""
        if num_classes < 2:
            raise UsageError(f"a detector needs the background and at least one class, got num_classes={num_classes}")
        self.num_classes = num_classes
        heads = self.roi_heads
        heads.box_predictor = FastRCNNPredictor(heads.box_predictor.cls_score.in_features, num_classes)
        logits = heads.mask_predictor.mask_fcn_logits
        heads.mask_predictor.mask_fcn_logits = nn.Conv2d(logits.in_channels, num_classes, 1)

    def get_classifier(self) -> nn.Module:
        return self.roi_heads.box_predictor

    def no_weight_decay(self) -> set[str]:
        """The backbone's exemptions (e.g. FastViT's layer scales), under the ``backbone.body.`` prefix."""
        return {f"backbone.body.{name}" for name in self.backbone.body.no_weight_decay()}


__all__ = [
    "COCO_CLASSES",
    "MASKRCNN_INPUT_SIZE",
    "MODEL_CFGS",
    "InputSizeTransform",
    "MaskPredictor",
    "MaskRCNN",
    "MaskRCNNConfig",
    "PyramidBackbone",
]
