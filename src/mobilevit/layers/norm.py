"""Normalization over all patches and channels of a sample (MobileViT v2's ``layer_norm_2d``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchLayerNorm(nn.Module):
    """Normalize ``[B, P, N, C]`` patches over ``(P, N, C)`` with a per-channel affine.

    This is GroupNorm with a single group, as cvnets applies it to ``[B, C, P, N]``; here the channels are last so the
    surrounding projections are plain matrix multiplications.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x, x.shape[1:], eps=self.eps)
        return torch.addcmul(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"
