"""MobileNetV2 inverted residual block ("MV2"), from Sandler et al., 2018 (arXiv 1801.04381)."""

from __future__ import annotations

from torch import Tensor, nn

from .conv import ConvNormAct, make_divisible


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, with a residual when shapes allow.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: depthwise stride (1 or 2).
        expand_ratio: hidden width as a multiple of ``in_channels`` (rounded to a multiple of 8).
        act: activation class of the expand and depthwise convolutions.
        dilation: dilation of the depthwise convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        expand_ratio: float = 4.0,
        act: type[nn.Module] = nn.SiLU,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        hidden = make_divisible(round(in_channels * expand_ratio), 8)
        self.conv_pw = ConvNormAct(in_channels, hidden, 1, act=act) if expand_ratio != 1 else nn.Identity()
        self.conv_dw = ConvNormAct(hidden, hidden, 3, stride=stride, groups=hidden, act=act, dilation=dilation)
        self.conv_pwl = ConvNormAct(hidden, out_channels, 1, act=None)
        self.has_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_pwl(self.conv_dw(self.conv_pw(x)))
        return x + out if self.has_residual else out
