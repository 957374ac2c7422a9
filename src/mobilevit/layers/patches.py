"""Unfold a feature map into patches and fold it back (MobileViT, arXiv 2110.02178, Sec. 3.1).

The layout ``[B, P, N, C]`` is shared by both attention kinds: P pixels per patch (2x2 -> 4), N patches, C channels
last. Tokens at the same position inside their patches (same P index) attend to each other.
"""

from __future__ import annotations

from torch import Tensor


def unfold_patches(x: Tensor, patch_h: int, patch_w: int) -> Tensor:
    """``[B, C, H, W] -> [B, P, N, C]`` with ``P = patch_h * patch_w``; H and W must be multiples of the patch."""
    B, C, H, W = x.shape
    n_h, n_w = H // patch_h, W // patch_w
    x = x.reshape(B, C, n_h, patch_h, n_w, patch_w)  # [B, C, n_h, p_h, n_w, p_w]
    x = x.permute(0, 3, 5, 2, 4, 1)  # -> [B, p_h, p_w, n_h, n_w, C]
    return x.reshape(B, patch_h * patch_w, n_h * n_w, C)  # -> [B, P, N, C]


def fold_patches(x: Tensor, n_h: int, n_w: int, patch_h: int, patch_w: int) -> Tensor:
    """``[B, P, N, C] -> [B, C, n_h * patch_h, n_w * patch_w]``, the inverse of :func:`unfold_patches`."""
    B, _, _, C = x.shape
    x = x.reshape(B, patch_h, patch_w, n_h, n_w, C)  # [B, p_h, p_w, n_h, n_w, C]
    x = x.permute(0, 5, 3, 1, 4, 2)  # -> [B, C, n_h, p_h, n_w, p_w]
    return x.reshape(B, C, n_h * patch_h, n_w * patch_w)  # -> [B, C, H, W]
