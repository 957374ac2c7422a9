"""Re-parameterizable convolutions: the MobileOne block and the large-kernel conv of FastViT's patch embedding.

MobileOne: "MobileOne: An Improved One millisecond Mobile Backbone" (arXiv 2206.04040), code apple/ml-mobileone.
Large-kernel conv: "Scaling Up Your Kernels to 31x31" (RepLKNet, arXiv 2203.06717), as used in FastViT
(arXiv 2303.14189, apple/ml-fastvit).

At training time each block sums several linear branches (conv + BatchNorm each). Convolution is linear, so in eval
mode the sum is one convolution: ``reparameterize()`` computes its kernel and bias, keeps it as ``reparam_conv`` and
drops the branches. The block's ``forward`` then runs that single convolution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from .conv import ConvNormAct
from .fold import batchnorm_scale_shift, conv_from_kernel, fold_bn_into_conv, identity_kernel
from .squeeze_excite import SqueezeExcite


class MobileOneBlock(nn.Module):
    """``act(se(sum of branches))`` with branches: ``num_conv_branches`` kxk conv-BN (``conv_kxk``), a 1x1 conv-BN
    (``conv_scale``, when k > 1) and a BatchNorm on the input (``identity``, when input and output shapes agree).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel of the main branches (padding keeps the size at stride 1).
        stride: stride of every branch.
        groups: convolution groups (``in_channels`` for depthwise).
        num_conv_branches: number of parallel kxk conv-BN branches (MobileOne-S0 uses 4, everything else 1).
        use_scale_branch: add the 1x1 conv-BN branch (only when ``kernel_size > 1``).
        use_identity: add the BatchNorm skip branch (only when ``in_channels == out_channels`` and ``stride == 1``).
        use_se: squeeze-and-excitation after the sum (MobileOne-S4's last blocks, FastViT's final conv).
        act: activation factory (e.g. ``nn.GELU``), or ``None`` for a linear block.
        dilation: dilation of the kxk branches (the 1x1 and identity branches are the centre tap either way, so the
            branches still fold into one dilated kxk kernel).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        num_conv_branches: int = 1,
        use_scale_branch: bool = True,
        use_identity: bool = True,
        use_se: bool = False,
        act: Callable[[], nn.Module] | None = nn.GELU,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.groups = groups
        self.dilation = dilation
        self.reparam_conv: nn.Conv2d | None = None
        has_identity = use_identity and in_channels == out_channels and stride == 1
        self.identity = nn.BatchNorm2d(in_channels) if has_identity else None
        self.conv_kxk = nn.ModuleList(
            ConvNormAct(in_channels, out_channels, kernel_size, stride, groups, act=None, dilation=dilation)
            for _ in range(num_conv_branches)
        )
        has_scale = use_scale_branch and kernel_size > 1
        self.conv_scale = ConvNormAct(in_channels, out_channels, 1, stride, groups, act=None) if has_scale else None
        self.se = SqueezeExcite(out_channels) if use_se else nn.Identity()
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam_conv is not None:
            return self.act(self.se(self.reparam_conv(x)))
        out = self.identity(x) if self.identity is not None else 0
        if self.conv_scale is not None:
            out = out + self.conv_scale(x)
        for branch in self.conv_kxk:
            out = out + branch(x)
        return self.act(self.se(out))

    @torch.no_grad()
    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """Kernel ``[out, in // groups, k, k]`` and bias ``[out]`` of the one convolution equal to the branch sum."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        ref = next(self.parameters())
        k = self.kernel_size
        weight = torch.zeros(
            self.out_channels, self.in_channels // self.groups, k, k, dtype=ref.dtype, device=ref.device
        )
        bias = torch.zeros(self.out_channels, dtype=ref.dtype, device=ref.device)
        for branch in self.conv_kxk:
            w, b = fold_bn_into_conv(branch.conv.weight, None, branch.bn)
            weight += w
            bias += b
        if self.conv_scale is not None:
            w, b = fold_bn_into_conv(self.conv_scale.conv.weight, None, self.conv_scale.bn)
            weight += F.pad(w, [k // 2] * 4)  # the 1x1 kernel sits at the centre of the kxk one
            bias += b
        if self.identity is not None:
            scale, shift = batchnorm_scale_shift(self.identity)
            weight += identity_kernel(self.in_channels, self.groups, k, ref) * scale.reshape(-1, 1, 1, 1)
            bias += shift
        return weight, bias

    def reparameterize(self) -> None:
        """Replace the branches by one biased convolution ``reparam_conv`` (no-op if already done)."""
        if self.reparam_conv is not None:
            return
        weight, bias = self.fused_kernel_bias()
        self.reparam_conv = conv_from_kernel(weight, bias, self.stride, self.groups, self.dilation)
        self.identity = self.conv_kxk = self.conv_scale = None


class LargeKernelConv(nn.Module):
    """A large kxk conv-BN plus a parallel small conv-BN (RepLKNet), folded into one kxk conv by ``reparameterize()``.

    There is no activation: ml-fastvit computes one after the sum but discards its result, and its weights were trained
    that way (timm's ``lkc_use_act=False``).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: the large kernel (7 in FastViT).
        stride: stride of both branches.
        groups: convolution groups.
        small_kernel: kernel of the parallel branch (3 in FastViT), or ``None`` for no parallel branch.
        dilation: dilation of both branches (the small kernel still sits at the centre of the large one).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        small_kernel: int | None = 3,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        if small_kernel is not None and small_kernel > kernel_size:
            raise UsageError(f"small_kernel {small_kernel} is larger than kernel_size {kernel_size}")
        self.kernel_size = kernel_size
        self.stride = stride
        self.groups = groups
        self.dilation = dilation
        self.reparam_conv: nn.Conv2d | None = None
        common = dict(stride=stride, groups=groups, act=None, dilation=dilation)
        self.large_conv = ConvNormAct(in_channels, out_channels, kernel_size, **common)
        self.small_conv = ConvNormAct(in_channels, out_channels, small_kernel, **common) if small_kernel else None

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        out = self.large_conv(x)
        return out + self.small_conv(x) if self.small_conv is not None else out

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace both branches by one biased convolution ``reparam_conv`` (no-op if already done)."""
        if self.reparam_conv is not None:
            return
        weight, bias = fold_bn_into_conv(self.large_conv.conv.weight, None, self.large_conv.bn)
        if self.small_conv is not None:
            w, b = fold_bn_into_conv(self.small_conv.conv.weight, None, self.small_conv.bn)
            weight = weight + F.pad(w, [(self.kernel_size - w.shape[-1]) // 2] * 4)
            bias = bias + b
        self.reparam_conv = conv_from_kernel(weight, bias, self.stride, self.groups, self.dilation)
        self.large_conv = self.small_conv = None
