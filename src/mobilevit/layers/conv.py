"""Convolution + BatchNorm + activation, the unit every CNN part of these models is made of."""

from __future__ import annotations

import torch
from torch import nn

from .fold import conv_from_kernel, fold_bn_into_conv


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below ``min_value`` nor 10% below ``value``.

    The rounding rule of MobileNetV2: ``max(min_value, int(value + divisor / 2) // divisor * divisor)``, plus one
    ``divisor`` if that lost more than 10%. It rounds the channels of every MobileViT width family (divisor 8 or 16)
    and cvnets' multi-scale crop sizes (divisor 32).

    Args:
        value: the number to round.
        divisor: the multiple.
        min_value: the smallest result; ``None`` for ``divisor``.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvNormAct(nn.Sequential):
    """``conv -> bn -> act``; children are named ``conv``, ``bn`` and ``act`` (the last two optional).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size; padding keeps the spatial size at stride 1.
        stride: convolution stride.
        dilation: spacing of the kernel taps (atrous convolution); the padding grows with it.
        groups: convolution groups (``in_channels`` for depthwise).
        norm: add a BatchNorm after the convolution (the convolution then has no bias).
        act: activation module class, or ``None`` for a linear output; it runs in place (its input is the norm's
            fresh output, which nothing else reads).
        bias: force a convolution bias even with a norm.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        norm: bool = True,
        act: type[nn.Module] | None = nn.SiLU,
        bias: bool | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        bias = (not norm) if bias is None else bias
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        if norm:
            self.bn = nn.BatchNorm2d(out_channels)
        if act is not None:
            self.act = act(inplace=True)

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold ``bn`` into ``conv`` for inference: ``conv`` gains a bias and ``bn`` is removed (keys
        ``conv.weight``, ``conv.bias``). Does nothing if there is no norm, or if it was already folded."""
        if "bn" not in self._modules:
            return
        conv = self.conv
        dilation = conv.dilation[0]
        if conv.dilation[1] != dilation or conv.padding != tuple(dilation * (k // 2) for k in conv.kernel_size):
            raise NotImplementedError("only 'same'-padded convolutions with one dilation are folded")
        weight, bias = fold_bn_into_conv(conv.weight, conv.bias, self.bn)
        self.conv = conv_from_kernel(weight, bias, stride=conv.stride, groups=conv.groups, dilation=dilation)
        del self.bn
