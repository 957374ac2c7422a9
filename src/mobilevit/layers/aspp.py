"""Atrous spatial pyramid pooling (ASPP) and the resize of low-resolution logits to masks.

DeepLabV3: "Rethinking Atrous Convolution for Semantic Image Segmentation" (arXiv 1706.05587), with the layout of
ml-cvnets' ``cvnets/modules/aspp_block.py`` (also transformers' ``MobileViTASPP``): five parallel branches over the
same feature map (a 1x1 conv, three 3x3 convs dilated by the atrous rates, and image pooling: global average, 1x1 conv,
broadcast back), concatenated, projected by a 1x1 conv, then dropout. Every conv is conv-BN-ReLU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import ConvNormAct


class ASPP(nn.Module):
    """``[B, in_channels, H, W] -> [B, out_channels, H, W]``: the five-branch pyramid, projection and dropout.

    Args:
        in_channels: channels of the backbone's feature map.
        out_channels: width of every branch and of the output (256 for MobileViT v1, 512 for v2 in ml-cvnets).
        rates: dilations of the three 3x3 branches (6, 12, 18 at output stride 16).
        dropout: channel dropout (``Dropout2d``, as ml-cvnets) after the projection.
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int], dropout: float = 0.1) -> None:
        super().__init__()
        relu = nn.ReLU
        self.branches = nn.ModuleList(
            [
                ConvNormAct(in_channels, out_channels, 1, act=relu),
                *(ConvNormAct(in_channels, out_channels, 3, act=relu, dilation=rate) for rate in rates),
            ]
        )
        self.pool = ConvNormAct(in_channels, out_channels, 1, act=relu)  # on the globally pooled features
        self.project = ConvNormAct((len(rates) + 2) * out_channels, out_channels, 1, act=relu)
        self.drop = nn.Dropout2d(dropout)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x.mean(dim=(2, 3), keepdim=True))  # [B, C, H, W] -> [B, C', 1, 1]
        # a resize of a 1x1 map (ml-cvnets and transformers write a bilinear one) is a broadcast; written as a resize,
        # not expand(): LiteRT's converter turns expand() after a conv into a BROADCAST_TO that keeps the NCHW shape
        # for its NHWC tensor, and the interpreter refuses it
        broadcast = F.interpolate(pooled, size=x.shape[-2:], mode="nearest")  # [B, C', 1, 1] -> [B, C', H, W]
        pyramid = [branch(x) for branch in self.branches] + [broadcast]
        return self.drop(self.project(torch.cat(pyramid, dim=1)))  # 5 x [B, C', H, W] -> [B, C', H, W]


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``[B, K, h, w]`` segmentation logits to ``size`` (H, W): bilinear, ``align_corners=False``.

    The resize transformers' ``post_process_semantic_segmentation`` (and its image-segmentation pipeline) and ml-cvnets
    v0.1, which evaluated the published MobileViT DeepLabV3 weights, apply; take ``argmax(1)`` of the result for a mask.
    """
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


__all__ = ["ASPP", "upsample_logits"]
