"""Feature pyramid over a backbone's multi-scale maps: one width at every level, a top-down path, optional extra
coarser levels.

Paper: Lin et al., "Feature Pyramid Networks for Object Detection" (arXiv 1612.03144). Two wirings of the top-down
path are in use, and the checkpoints of each need theirs:

- ``"lateral"``: torchvision's ``FeaturePyramidNetwork``, mmdetection's and mmsegmentation's ``FPN`` (the Semantic FPN
  neck): the running sum of the 1x1 laterals goes down (each coarser sum upsampled to the next level's size and added
  to its lateral); every level's sum, the top one included, is then smoothed by its 3x3 conv.
- ``"smoothed"``: apple/ml-cvnets' Mask R-CNN (``cvnets/models/detection/mask_rcnn.py``, ``MaskRCNNEncoder``): what goes
  down is the coarser level's already smoothed output (``out[i] = smooth[i](lateral[i] + up(out[i + 1]))``), and the
  top level is returned unsmoothed (its 3x3 conv feeds only the top-down path).

torchvision's ``FeaturePyramidNetwork`` hard-codes the first wiring, and its ``ExtraFPNBlock`` hook only sees the
finished outputs, so it cannot express the second; this layer holds both, with the same module for each role.
Upsampling is nearest-neighbour to the finer level's exact size in both (odd sizes work).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from .conv import ConvNormAct

Wiring = Literal["lateral", "smoothed"]
WIRINGS = ("lateral", "smoothed")


class FeaturePyramid(nn.Module):
    """``[B, in_channels[i], H_i, W_i]`` maps, finest first -> as many ``[B, out_channels, H_i, W_i]`` maps, then
    ``extra_levels`` coarser ones (each a 3x3 stride-2 conv on the last map: ``ceil(H / 2)``).

    Args:
        in_channels: the width of each input level, finest first.
        out_channels: the width of every output level.
        wiring: ``"lateral"`` (torchvision / mmdetection / mmsegmentation) or ``"smoothed"`` (ml-cvnets' Mask R-CNN);
            see the module docstring.
        norm: a BatchNorm after every conv (whose conv then has no bias), as ml-cvnets; ``False``: plain convs with
            bias, as torchvision's and mmsegmentation's defaults.

    Attributes:
        lateral: per input level, the 1x1 projection to ``out_channels`` (no activation).
        smooth: per input level, the 3x3 conv on the top-down sum (no activation).
        extra: the stride-2 3x3 convs that make the extra levels (no activation).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        wiring: Wiring = "lateral",
        norm: bool = False,
        extra_levels: int = 0,
    ) -> None:
        super().__init__()
        if wiring not in WIRINGS:
            raise ValueError(f"wiring must be one of {WIRINGS}, got {wiring!r}")
        self.wiring = wiring
        self.out_channels = out_channels
        self.lateral = nn.ModuleList(ConvNormAct(c, out_channels, 1, norm=norm, act=None) for c in in_channels)
        self.smooth = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, norm=norm, act=None) for _ in in_channels
        )
        self.extra = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, stride=2, norm=norm, act=None) for _ in range(extra_levels)
        )

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """The pyramid of ``features`` (finest first): one map per input level, then the extra levels."""
        if len(features) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} feature maps, got {len(features)}")
        laterals = [proj(x) for proj, x in zip(self.lateral, features, strict=True)]
        outs = list(laterals)
        if self.wiring == "lateral":
            down = laterals[-1]
            outs[-1] = self.smooth[-1](down)
            for i in range(len(laterals) - 2, -1, -1):
                down = laterals[i] + F.interpolate(down, size=laterals[i].shape[-2:], mode="nearest")
                outs[i] = self.smooth[i](down)
        else:
            down = self.smooth[-1](laterals[-1])  # the top level itself stays unsmoothed
            for i in range(len(laterals) - 2, -1, -1):
                down = self.smooth[i](laterals[i] + F.interpolate(down, size=laterals[i].shape[-2:], mode="nearest"))
                outs[i] = down
        for extra in self.extra:
            outs.append(extra(outs[-1]))
        return outs


__all__ = ["WIRINGS", "FeaturePyramid", "Wiring"]
