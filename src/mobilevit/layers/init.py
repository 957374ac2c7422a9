"""Weight initialisation shared by the families' original code (ml-cvnets, ml-fastvit)."""

from __future__ import annotations

from torch import nn

from .norm import PatchLayerNorm

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, PatchLayerNorm)


def trunc_normal_init_(layer: nn.Linear | nn.Conv2d, std: float = 0.02) -> None:
    """Truncated-normal weights (``std``, cut at two units from 0) and a zero bias, in place."""
    nn.init.trunc_normal_(layer.weight, std=std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def kaiming_init_(module: nn.Module) -> None:
    """ml-cvnets' convolution and norm initialisation, in place, for ``module.apply``: Kaiming-normal (fan-out)
    convolution weights with zero bias; norms with weight 1 and bias 0. Other modules are left alone."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, _NORMS) and module.weight is not None:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
