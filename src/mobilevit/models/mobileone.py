"""MobileOne.

Paper: "MobileOne: An Improved One millisecond Mobile Backbone" (arXiv 2206.04040). Upstream code followed:
apple/ml-mobileone, whose checkpoints (train-time or inference-mode ``.pth.tar``) load through
``mobilevit.weights.converters.from_apple``; module and key names follow timm's port (``mobileone_*`` in
``timm/models/byobnet.py``).

Layout: a stride-2 3x3 MobileOne block, then four stages; each stage is ``depth`` pairs of a 3x3 depthwise and a 1x1
pointwise MobileOne block (the first pair strided), all with ReLU. Train-time blocks sum several conv-BN branches (S0
uses four kxk branches, S1-S4 one); :func:`mobilevit.reparameterize_model` folds every block into one convolution.
S4 adds squeeze-excitation to the last half of stage 3 and all of stage 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..layers import ClassifierHead, ClassifierModel, MobileOneBlock, check_output_stride, stage_strides


@dataclass(frozen=True)
class MobileOneConfig:
    """A MobileOne architecture; the per-stage tuples are indexed by stage."""

    stem_channels: int
    channels: tuple[int, ...]  # output channels of each stage
    depths: tuple[int, ...] = (2, 8, 10, 1)  # depthwise + pointwise block pairs per stage
    se_blocks: tuple[int, ...] = (0, 0, 0, 0)  # how many of each stage's last pairs use squeeze-excitation
    num_conv_branches: int = 1  # parallel kxk conv-BN branches per block at training time
    in_channels: int = 3
    num_classes: int = 1000
    drop_rate: float = 0.0  # dropout before the classifier (Apple's models have none)
    # 32: the classifier. 16 / 8: the last one / two stages keep their resolution and dilate instead (segmentation)
    output_stride: int = 32

    def __post_init__(self) -> None:
        check_output_stride(self.output_stride)
        if not len(self.channels) == len(self.depths) == len(self.se_blocks):
            raise UsageError("channels, depths and se_blocks must have one entry per stage")
        if any(se > d for se, d in zip(self.se_blocks, self.depths, strict=True)):
            raise UsageError(f"se_blocks {self.se_blocks} exceed the stage depths {self.depths}")
        if self.num_conv_branches < 1:
            raise UsageError(f"num_conv_branches must be >= 1, got {self.num_conv_branches}")


def _mobileone(
    widths: tuple[float, float, float, float], num_conv_branches: int = 1, use_se: bool = False
) -> MobileOneConfig:
    """The MobileOne width family: stage widths are 64, 128, 256, 512 times ``widths``, the stem at most 64."""
    depths = (2, 8, 10, 1)
    return MobileOneConfig(
        stem_channels=min(64, int(64 * widths[0])),
        channels=tuple(int(base * w) for base, w in zip((64, 128, 256, 512), widths, strict=True)),
        depths=depths,
        se_blocks=(0, 0, depths[2] // 2, depths[3]) if use_se else (0, 0, 0, 0),
        num_conv_branches=num_conv_branches,
    )


MODEL_CFGS: dict[str, MobileOneConfig] = {
    "mobileone_s0": _mobileone((0.75, 1.0, 1.0, 2.0), num_conv_branches=4),
    "mobileone_s1": _mobileone((1.5, 1.5, 2.0, 2.5)),
    "mobileone_s2": _mobileone((1.5, 2.0, 2.5, 4.0)),
    "mobileone_s3": _mobileone((2.0, 2.5, 3.0, 4.0)),
    "mobileone_s4": _mobileone((3.0, 3.5, 3.5, 4.0), use_se=True),
}


class MobileOne(ClassifierModel):
    """MobileOne classifier or multi-scale feature extractor.

    Args:
        cfg: the architecture. With ``cfg.output_stride`` 16 or 8, a stage beyond it keeps its resolution: its first
            depthwise block loses its stride (and, like the strided block it replaces, has no identity branch, so
            ImageNet weights load) and its other depthwise blocks are dilated, as the DeepLab recipe does for ResNets.
            Nothing was published this way for MobileOne: the choice is ours.
        features_only: build no head; ``forward`` returns the stem and stage outputs (strides 2, 4, 8, 16, 32).
        out_indices: which of those five levels ``forward`` returns with ``features_only``.
    """

    stem_is_level = True  # feature level 0 is the stem output (stride 2)

    def __init__(
        self, cfg: MobileOneConfig, features_only: bool = False, out_indices: tuple[int, ...] = (0, 1, 2, 3, 4)
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.features_only = features_only
        relu = partial(nn.ReLU, inplace=True)  # acts on each block's fresh output
        self.stem = MobileOneBlock(cfg.in_channels, cfg.stem_channels, 3, stride=2, act=relu)
        self.feature_info: list[dict] = [{"stride": 2, "num_channels": cfg.stem_channels, "module": "stem"}]

        stages = []
        in_channels, stride = cfg.stem_channels, 2
        layout = stage_strides([2] * len(cfg.channels), cfg.output_stride, stem_stride=stride)
        stage_cfgs = zip(cfg.channels, cfg.depths, cfg.se_blocks, layout, strict=True)
        for i, (out_channels, depth, se_blocks, run) in enumerate(stage_cfgs):
            blocks: list[nn.Module] = []
            for j in range(depth):
                common = dict(num_conv_branches=cfg.num_conv_branches, use_se=j >= depth - se_blocks, act=relu)
                first = j == 0
                depthwise = dict(
                    stride=run.stride if first else 1,
                    groups=in_channels,
                    use_identity=not first,  # the first block was strided: no identity branch, dilated or not
                    dilation=run.first_dilation if first else run.dilation,
                )
                blocks.append(MobileOneBlock(in_channels, in_channels, 3, **depthwise, **common))
                blocks.append(MobileOneBlock(in_channels, out_channels, 1, **common))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
            stride *= run.stride
            self.feature_info.append({"stride": stride, "num_channels": out_channels, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.final_conv = nn.Identity()  # no expansion before the head
        self.select_out_indices(out_indices)
        if features_only:
            return
        self.num_features = in_channels
        self.head = ClassifierHead(self.num_features, cfg.num_classes, cfg.drop_rate)

    def forward_stem(self, x: Tensor) -> Tensor:
        # The stem reads the image in NCHW memory: on channels-last memory, oneDNN (torch 2.14, CPU) crashes in the
        # backward pass of its stride-2 1x1 conv over 3 channels. Everything after it runs channels-last.
        x = self.stem(x.contiguous())
        return x.contiguous(memory_format=torch.channels_last)  # [B, C, H, W] stored as [B, H, W, C]
