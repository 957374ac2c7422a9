"""Tensor algebra of structural re-parameterization: fold BatchNorm and per-channel scales into convolutions.

Used by the re-parameterizable blocks (``reparameterize()``) and by the converters that read checkpoints which were
re-parameterized elsewhere (ml-fastvit, ml-mobileone), so both produce exactly the same folded weights. The identities
are those of RepVGG ("RepVGG: Making VGG-style ConvNets Great Again", arXiv 2101.03697): a BatchNorm in eval mode is
``x * scale + shift`` per channel, and convolutions are linear, so parallel branches add up kernel by kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def bn_scale_shift(
    weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor, eps: float = 1e-5
) -> tuple[Tensor, Tensor]:
    """An eval-mode BatchNorm as ``x * scale + shift`` (both ``[C]``)."""
    scale = weight / torch.sqrt(running_var + eps)
    return scale, bias - running_mean * scale


def batchnorm_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """:func:`bn_scale_shift` of a BatchNorm module (its running statistics, whatever its train/eval mode)."""
    return bn_scale_shift(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)


def scale_output(
    weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Fold ``y * scale + shift`` applied after a conv / linear into its weight and bias (``scale`` per output)."""
    w = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))  # scale every output channel's filter
    b = (bias if bias is not None else torch.zeros_like(scale)) * scale
    return w, b if shift is None else b + shift


def fold_bn_into_conv(
    weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[Tensor, Tensor]:
    """Weight and bias of the single convolution equal to ``bn(conv(x))``."""
    return scale_output(weight, bias, *batchnorm_scale_shift(bn))


def fold_input_affine_into_linear(
    weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor
) -> tuple[Tensor, Tensor]:
    """Weight and bias of the linear layer equal to ``linear(x * scale + shift)`` (a BatchNorm before it)."""
    b = weight @ shift  # [out, in] @ [in] -> [out]
    return weight * scale, b if bias is None else b + bias


def identity_kernel(channels: int, groups: int, kernel_size: int, like: Tensor) -> Tensor:
    """The ``[channels, channels // groups, k, k]`` kernel of a convolution that returns its input unchanged."""
    in_per_group = channels // groups
    kernel = torch.zeros(channels, in_per_group, kernel_size, kernel_size, dtype=like.dtype, device=like.device)
    centre = kernel_size // 2
    kernel[torch.arange(channels), torch.arange(channels) % in_per_group, centre, centre] = 1.0
    return kernel


def conv_from_kernel(
    weight: Tensor, bias: Tensor, stride: int | tuple[int, int] = 1, groups: int = 1, dilation: int = 1
) -> nn.Conv2d:
    """A biased ``nn.Conv2d`` holding ``weight`` (``[out, in // groups, k, k]``), padded to keep size at stride 1
    (``dilation * (k // 2)``)."""
    out_channels, in_per_group, kh, kw = weight.shape
    conv = nn.Conv2d(
        in_per_group * groups,
        out_channels,
        (kh, kw),
        stride=stride,
        padding=(dilation * (kh // 2), dilation * (kw // 2)),
        dilation=dilation,
        groups=groups,
        bias=True,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


def linear_from(weight: Tensor, bias: Tensor) -> nn.Linear:
    """A biased ``nn.Linear`` holding ``weight`` (``[out, in]``) and ``bias``."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=True, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return linear
