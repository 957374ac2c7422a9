"""Squeeze-and-Excitation ("Squeeze-and-Excitation Networks", arXiv 1709.01507), as MobileOne and FastViT use it."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SqueezeExcite(nn.Module):
    """Gate every channel by ``sigmoid(fc2(relu(fc1(global mean))))``.

    Args:
        channels: input and output channels.
        rd_ratio: width of the bottleneck as a fraction of ``channels`` (Apple's MobileOne / FastViT use 1/16,
            truncated to an integer).
    """

    def __init__(self, channels: int, rd_ratio: float = 0.0625) -> None:
        super().__init__()
        hidden = int(channels * rd_ratio)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        # the 1x1 convolutions act on a 1x1 map: run them as matrix products, which skip the convolution overhead
        pooled = x.mean((2, 3))  # [B, C, H, W] -> [B, C]
        hidden = self.act(F.linear(pooled, self.fc1.weight.flatten(1), self.fc1.bias))
        gate = F.linear(hidden, self.fc2.weight.flatten(1), self.fc2.bias)  # [B, C]
        return x * gate.sigmoid()[:, :, None, None]
