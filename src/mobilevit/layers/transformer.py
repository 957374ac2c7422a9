"""Pre-norm transformer layer: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``, with channels last."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from ..errors import UsageError
from .attention import MultiHeadAttention, SeparableSelfAttention
from .drop import DropPath
from .norm import PatchLayerNorm


class Mlp(nn.Module):
    """``fc1 -> act -> dropout -> fc2 -> dropout`` on the last dimension."""

    def __init__(
        self, dim: int, hidden_dim: int, act: type[nn.Module] = nn.SiLU, hidden_drop: float = 0.0, drop: float = 0.0
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act(inplace=True)  # acts on fc1's fresh output
        self.hidden_drop = nn.Dropout(hidden_drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.hidden_drop(self.act(self.fc1(x)))))


class TransformerLayer(nn.Module):
    """One pre-norm transformer layer.

    Args:
        dim: token channels.
        mlp_dim: hidden width of the feed-forward network.
        attention: ``"mha"`` (multi-head attention over ``[B*P, N, C]`` with LayerNorm over C) or ``"separable"``
            (separable self-attention over ``[B, P, N, C]`` with :class:`PatchLayerNorm`).
        num_heads: heads of the multi-head attention.
        attn_drop: dropout on attention weights / context scores.
        proj_drop: dropout after the attention projection and after the MLP.
        mlp_drop: dropout between the MLP layers.
        drop_path: stochastic depth rate of both residual branches.
    """

    def __init__(
        self,
        dim: int,
        mlp_dim: int,
        attention: Literal["mha", "separable"] = "mha",
        num_heads: int = 4,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        mlp_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if attention == "mha":
            self.norm1: nn.Module = nn.LayerNorm(dim)
            self.attn: nn.Module = MultiHeadAttention(dim, num_heads, attn_drop, proj_drop)
            self.norm2: nn.Module = nn.LayerNorm(dim)
        elif attention == "separable":
            self.norm1 = PatchLayerNorm(dim)
            self.attn = SeparableSelfAttention(dim, attn_drop, proj_drop)
            self.norm2 = PatchLayerNorm(dim)
        else:
            raise UsageError(f"attention must be 'mha' or 'separable', got {attention!r}")
        self.drop_path1 = DropPath(drop_path)
        self.mlp = Mlp(dim, mlp_dim, hidden_drop=mlp_drop, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))
