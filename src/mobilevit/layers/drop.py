"""Stochastic depth (drop path), from "Deep Networks with Stochastic Depth" (Huang et al., 2016)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import UsageError


class DropPath(nn.Module):
    """Zero a residual branch for a random subset of samples during training, rescaling the rest."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise UsageError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
