"""Output stride: run the last stages of a backbone at a finer resolution by dilating them instead of striding.

The DeepLab recipe ("Rethinking Atrous Convolution for Semantic Image Segmentation", arXiv 1706.05587), as ml-cvnets
builds its segmentation backbones: once the network has reached ``output_stride``, a stage that would downsample keeps
the resolution instead; its first (formerly strided) convolution takes the dilation reached so far, and the dilation
doubles for everything after it. Output stride 16 dilates the last stage of a stride-32 network, 8 the last two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UsageError

OUTPUT_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class StageStride:
    """How one stage runs at the requested output stride.

    Attributes:
        stride: the stage's stride (1 where its downsampling became dilation).
        first_dilation: dilation of the stage's first, downsampling convolution (the dilation before this stage).
        dilation: dilation of the stage's other spatial convolutions.
    """

    stride: int
    first_dilation: int
    dilation: int


def check_output_stride(output_stride: int) -> None:
    """Raise a :class:`~mobilevit.errors.UsageError` unless ``output_stride`` is one the backbones support."""
    if output_stride not in OUTPUT_STRIDES:
        raise UsageError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")


def stage_strides(strides: Sequence[int], output_stride: int, stem_stride: int) -> list[StageStride]:
    """Per stage, its stride and dilations so that the network's stride never exceeds ``output_stride``.

    Args:
        strides: each stage's own stride (1 or 2), in order.
        output_stride: the largest total stride allowed (32: no change).
        stem_stride: the total stride before the first stage.

    Returns:
        One :class:`StageStride` per stage. With ``output_stride=32`` every stage keeps its stride and dilation 1.
    """
    check_output_stride(output_stride)
    total, dilation, out = stem_stride, 1, []
    for stride in strides:
        first = dilation
        if total * stride > output_stride:
            dilation *= stride
            stride = 1
        total *= stride
        out.append(StageStride(stride, first, dilation))
    return out


__all__ = ["OUTPUT_STRIDES", "StageStride", "check_output_stride", "stage_strides"]
