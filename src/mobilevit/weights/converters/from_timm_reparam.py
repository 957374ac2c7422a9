"""timm ``fastvit_*`` and ``mobileone_*`` state dicts -> ours.

Our FastViT and MobileOne use timm's module names, so only two names differ: timm wraps FastViT's patch embedding in a
``proj`` Sequential, and calls MobileOne's squeeze-excitation ``attn``. Both converters are idempotent on our own keys.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ._common import rename


def convert_fastvit(state_dict: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """Rename a timm FastViT state dict (train-time form) to our keys (``cfg`` unused)."""
    return rename(state_dict, [(r"\.downsample\.proj\.", ".downsample.")])


def convert_mobileone(state_dict: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """Rename a timm MobileOne (ByobNet) state dict to our keys (``cfg`` unused)."""
    return rename(state_dict, [(r"\.attn\.fc([12])\.", r".se.fc\1.")])
