"""Weight initialisation shared by the families' original code (ml-cvnets, ml-fastvit)."""

from __future__ import annotations

from torch import nn


def trunc_normal_init_(layer: nn.Linear | nn.Conv2d, std: float = 0.02) -> None:
    """Truncated-normal weights (``std``, cut at two units from 0) and a zero bias, in place."""
    nn.init.trunc_normal_(layer.weight, std=std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
