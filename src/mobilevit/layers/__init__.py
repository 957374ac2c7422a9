"""Building blocks shared by two or more model families, each defined exactly once."""

from .aspp import ASPP, upsample_logits
from .attention import MultiHeadAttention, SeparableSelfAttention
from .conv import ConvNormAct, make_divisible
from .drop import DropPath
from .fold import (
    batchnorm_scale_shift,
    bn_scale_shift,
    conv_from_kernel,
    fold_bn_into_conv,
    fold_input_affine_into_linear,
    identity_kernel,
    linear_from,
    scale_output,
)
from .fpn import FeaturePyramid
from .head import ClassifierHead, ClassifierModel
from .init import kaiming_init_, trunc_normal_init_
from .inverted_residual import InvertedResidual
from .mobileone import LargeKernelConv, MobileOneBlock
from .norm import PatchLayerNorm
from .output_stride import OUTPUT_STRIDES, StageStride, check_output_stride, stage_strides
from .patches import fold_patches, unfold_patches
from .squeeze_excite import SqueezeExcite
from .transformer import Mlp, TransformerLayer

__all__ = [
    "ASPP",
    "OUTPUT_STRIDES",
    "ClassifierHead",
    "ClassifierModel",
    "ConvNormAct",
    "DropPath",
    "FeaturePyramid",
    "InvertedResidual",
    "LargeKernelConv",
    "Mlp",
    "MobileOneBlock",
    "MultiHeadAttention",
    "PatchLayerNorm",
    "SeparableSelfAttention",
    "SqueezeExcite",
    "StageStride",
    "TransformerLayer",
    "batchnorm_scale_shift",
    "bn_scale_shift",
    "check_output_stride",
    "conv_from_kernel",
    "fold_bn_into_conv",
    "fold_input_affine_into_linear",
    "fold_patches",
    "identity_kernel",
    "kaiming_init_",
    "linear_from",
    "make_divisible",
    "scale_output",
    "stage_strides",
    "trunc_normal_init_",
    "unfold_patches",
    "upsample_logits",
]
