"""Unfold a feature map into patches and fold it back (MobileViT, arXiv 2110.02178, Sec. 3.1).

The layout ``[B, P, N, C]`` is shared by both attention kinds: P pixels per patch (2x2 -> 4), N patches, C channels
last. Tokens at the same position inside their patches (same P index) attend to each other.

Both functions make exactly one copy. With channels-last feature maps (what the models run on CPU, where the
convolutions are fastest in that layout) the channel axis is already innermost, so the copy moves whole C-vectors.
"""

from __future__ import annotations

import torch
from torch import Tensor


def unfold_patches(x: Tensor, patch_h: int, patch_w: int) -> Tensor:
    """``[B, C, H, W] -> [B, P, N, C]`` with ``P = patch_h * patch_w``; H and W must be multiples of the patch."""
    B, C, H, W = x.shape
    n_h, n_w = H // patch_h, W // patch_w
    if x.is_contiguous(memory_format=torch.channels_last):
        x = x.permute(0, 2, 3, 1)  # [B, C, H, W] -> [B, H, W, C], a view of channels-last memory
        x = x.reshape(B, n_h, patch_h, n_w, patch_w, C)  # [B, n_h, p_h, n_w, p_w, C]
        x = x.permute(0, 2, 4, 1, 3, 5)  # -> [B, p_h, p_w, n_h, n_w, C]
    else:
        x = x.reshape(B, C, n_h, patch_h, n_w, patch_w)  # [B, C, n_h, p_h, n_w, p_w]
        x = x.permute(0, 3, 5, 2, 4, 1)  # -> [B, p_h, p_w, n_h, n_w, C]
    return x.reshape(B, patch_h * patch_w, n_h * n_w, C)  # -> [B, P, N, C]


def fold_patches(x: Tensor, n_h: int, n_w: int, patch_h: int, patch_w: int) -> Tensor:
    """``[B, P, N, C] -> [B, C, n_h * patch_h, n_w * patch_w]`` in channels-last memory; inverts ``unfold_patches``."""
    B, _, _, C = x.shape
    x = x.reshape(B, patch_h, patch_w, n_h, n_w, C)  # [B, p_h, p_w, n_h, n_w, C]
    x = x.permute(0, 3, 1, 4, 2, 5)  # -> [B, n_h, p_h, n_w, p_w, C]
    x = x.reshape(B, n_h * patch_h, n_w * patch_w, C)  # -> [B, H, W, C]
    return x.permute(0, 3, 1, 2)  # -> [B, C, H, W], a view: channels-last memory
