"""Building blocks shared by two or more model families, each defined exactly once."""

from .attention import MultiHeadAttention, SeparableSelfAttention
from .conv import ConvNormAct, make_divisible
from .drop import DropPath
from .head import ClassifierHead
from .inverted_residual import InvertedResidual
from .norm import PatchLayerNorm
from .patches import fold_patches, unfold_patches
from .transformer import Mlp, TransformerLayer

__all__ = [
    "ClassifierHead",
    "ConvNormAct",
    "DropPath",
    "InvertedResidual",
    "Mlp",
    "MultiHeadAttention",
    "PatchLayerNorm",
    "SeparableSelfAttention",
    "TransformerLayer",
    "fold_patches",
    "make_divisible",
    "unfold_patches",
]
