"""Token mixers: multi-head self-attention (MobileViT v1/v3) and separable self-attention (MobileViT v2).

Separable self-attention follows "Separable Self-attention for Mobile Vision Transformers" (arXiv 2206.02680), Sec. 3.2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over ``[B, N, C]`` tokens with a fused qkv projection.

    Args:
        dim: token channels.
        num_heads: number of heads; ``dim`` must be divisible by it.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
        qkv_bias: give the qkv projection a bias (FastViT's attention has none).
    """

    def __init__(
        self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise UsageError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)  # [B, N, 3, heads, C/heads]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, heads, N, C/heads]
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)  # [B, heads, N, C/heads] -> [B, N, C]
        return self.proj_drop(self.proj(x))


class SeparableSelfAttention(nn.Module):
    """Self-attention linear in the number of tokens, over ``[B, P, N, C]`` patches.

    Each token gets one context score (a linear map to a scalar, softmax over the N patches); the context vector is the
    score-weighted sum of the keys and it gates ``relu(values)`` before the output projection. No token-by-token matrix
    is ever formed.

    Args:
        dim: token channels.
        attn_drop: dropout on the context scores.
        proj_drop: dropout after the output projection.
    """

    def __init__(self, dim: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.qkv = nn.Linear(dim, 1 + 2 * dim)  # one query score, then keys, then values
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        query, key, value = self.qkv(x).split([1, self.dim, self.dim], dim=-1)  # [B, P, N, 1], 2 x [B, P, N, C]
        scores = self.attn_drop(query.softmax(dim=2))  # softmax over the N patches
        context = torch.matmul(scores.transpose(-1, -2), key)  # [B, P, 1, N] @ [B, P, N, C] -> [B, P, 1, C]
        x = F.relu(value) * context  # broadcast the context over N
        return self.proj_drop(self.proj(x))
