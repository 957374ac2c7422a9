"""Transforms of an image and its segmentation mask together, for training and validating segmentation models.

Training (:class:`SegmentationTrainTransform`, per crop size through :class:`SegmentationTrainFactory` for the
samplers of :mod:`mobilevit.data.samplers`) follows the DeepLabV3 recipes (arXiv 1706.05587; torchvision's
``references/segmentation``; ml-cvnets' ``RandomShortSizeResize`` + ``RandomCrop(mask_fill=255)`` + flip)::

    PIL image, [H, W] mask -> resize both so the shorter side is s * crop, s ~ U(scale_range)
        (image: bilinear / bicubic, antialiased; mask: nearest)
    -> pad to the crop where smaller (image 0, mask ignore_index) -> random crop -> horizontal flip
    -> image float32 [3, h, w] in [0, 1] RGB, mask int64 [h, w]

The image stays in [0, 1] RGB: the training loop normalizes each batch the model's way (channel order, mean, std),
as it does for classification. Every draw comes from torch's global generator, which
:class:`~mobilevit.data.samplers.MultiScaleDataset` seeds per sample, so a resumed run sees the same crops.

Validation (:class:`SegmentationEvalTransform`): the image through the model's eval transform (the whole image
resized to the model's input, no crop), the mask untouched, to score the prediction at the mask's own size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import UsageError
from ..weights.entries import Preprocess
from .normalize import to_unit
from .segmentation import IGNORE_INDEX
from .transforms import eval_transform

__all__ = ["SegmentationEvalTransform", "SegmentationTrainFactory", "SegmentationTrainTransform"]


def _mask_tensor(mask: np.ndarray) -> tv_tensors.Mask:
    """A mask the geometric ops can resample: uint8 when every index fits (VOC), else float32 (exact below 2**24;
    torch resamples no 32-bit integer images)."""
    dtype = np.uint8 if mask.size == 0 or int(mask.max()) <= 255 else np.float32
    return tv_tensors.Mask(torch.from_numpy(np.array(mask, dtype=dtype)))  # a writable copy


class SegmentationTrainTransform:
    """``(PIL image, [H, W] mask) -> ([3, h, w] float32 in [0, 1] RGB, [h, w] int64)`` at one crop size; picklable.

    ``(None, None)`` (an unreadable pair) passes through.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip: float = 0.5,
        interpolation: Literal["bilinear", "bicubic"] = "bilinear",
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        """Args:
        size: the crop, ``(height, width)`` or one int for a square.
        scale_range: ``(low, high)``: the shorter side is resized to ``s * min(size)``, ``s`` uniform in it.
        hflip: probability of a horizontal flip.
        interpolation: the image's resampling (the mask's is nearest).
        ignore_index: the mask value of padded pixels (not scored by the loss).
        """
        height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        low, high = (float(v) for v in scale_range)
        if height < 1 or width < 1:
            raise UsageError(f"the crop size must be positive, got {height}x{width}")
        if not 0 < low <= high:
            raise UsageError(f"segmentation.scale_range must be 0 < low <= high, got ({low}, {high})")
        if not 0.0 <= hflip <= 1.0:
            raise UsageError(f"augment.hflip must be a probability, got {hflip}")
        if interpolation not in ("bilinear", "bicubic"):
            raise UsageError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
        base = min(height, width)
        shortest, longest = max(1, round(low * base)), max(1, round(high * base))
        steps: list[Any] = [
            v2.RandomResize(shortest, longest + 1, interpolation=v2.InterpolationMode(interpolation)),
            v2.RandomCrop(
                (height, width), pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}
            ),
        ]
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        self.pipeline = v2.Compose(steps)
        self.size = (height, width)

    def __call__(self, image: Any, mask: np.ndarray | None) -> tuple[Tensor | None, Tensor | None]:
        if image is None or mask is None:
            return None, None
        pixels = v2.functional.pil_to_tensor(image) if not isinstance(image, Tensor) else image  # uint8 [3, H, W]
        out_image, out_mask = self.pipeline(tv_tensors.Image(pixels), _mask_tensor(mask))
        return to_unit(out_image.as_subclass(Tensor)), out_mask.as_subclass(Tensor).long()


class SegmentationTrainFactory:
    """``factory(height, width)`` -> :class:`SegmentationTrainTransform` at that crop: the ``transform`` of a joint
    :class:`~mobilevit.data.samplers.MultiScaleDataset`. Pipelines are built once per size; picklable."""

    def __init__(
        self,
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip: float = 0.5,
        interpolation: Literal["bilinear", "bicubic"] = "bilinear",
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        """Args: as :class:`SegmentationTrainTransform`, without the size."""
        self.options = (tuple(scale_range), hflip, interpolation, ignore_index)
        SegmentationTrainTransform(1, *self.options)  # checks the options now rather than in a worker
        self._cache: dict[tuple[int, int], SegmentationTrainTransform] = {}

    def __call__(self, height: int, width: int) -> SegmentationTrainTransform:
        key = (int(height), int(width))
        if key not in self._cache:
            self._cache[key] = SegmentationTrainTransform(key, *self.options)
        return self._cache[key]


class SegmentationEvalTransform:
    """``(PIL image, [H, W] mask) -> (the model's input [3, h, w], the mask as int64 [H, W])``; picklable.

    The image goes through :func:`~mobilevit.data.transforms.eval_transform` of ``pre`` (a segmentation model's
    preprocessing resizes the whole image to its input, no crop); the mask keeps the image's own size.
    """

    def __init__(self, pre: Preprocess) -> None:
        """Args:
        pre: the model's preprocessing (e.g. :func:`mobilevit.weights.model_io` ``.preprocess``).
        """
        self.image = eval_transform(pre)

    def __call__(self, image: Any, mask: np.ndarray | None) -> tuple[Tensor | None, Tensor | None]:
        if image is None or mask is None:
            return None, None
        return self.image(image), torch.from_numpy(mask.astype(np.int64))
