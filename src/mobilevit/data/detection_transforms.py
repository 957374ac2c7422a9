"""Transforms of an image and its boxes together, for training and validating SSD detectors.

Training (:class:`DetectionTrainTransform`, per size through :class:`DetectionTrainFactory` for the samplers of
:mod:`mobilevit.data.samplers`) follows ml-cvnets' SSD recipe (apple/ml-cvnets ``data/datasets/detection/coco_ssd.py``:
``SSDCroping``, ``PhotometricDistort``, ``RandomHorizontalFlip``, ``Resize``; SSD, arXiv 1512.02325, Sec. 2.2 "Data
augmentation"), written with torchvision's v2 transforms, which move ``tv_tensors.BoundingBoxes`` with the pixels::

    PIL image, boxes (xyxy pixels), labels
    -> RandomIoUCrop (a crop whose IoU with some box is at least one of 0.1 ... 0.9, or no crop; the boxes whose
       centre falls outside are dropped) -> RandomPhotometricDistort (brightness, contrast, saturation, hue, channel
       order, each with probability ``photometric``) -> RandomHorizontalFlip -> Resize to the batch's size
    -> SanitizeBoundingBoxes (boxes under a pixel or outside the image dropped with their labels)
    -> image float32 [3, h, w] in [0, 1] RGB, targets float32 [N, 5]: normalised xyxy in [0, 1] and the label

The image stays in [0, 1] RGB: the training loop normalizes each batch the model's way. Every draw comes from torch's
global generator, which :class:`~mobilevit.data.samplers.MultiScaleDataset` seeds per sample (exact resume).

With ``masks`` (Mask R-CNN), the instance masks (``tv_tensors.Mask``) move, are resized (nearest) and are dropped
with their boxes in the same steps, and the target stays torchvision's detection contract: ``{"boxes": [N, 4] float32
xyxy in the output's pixels, "labels": [N] int64, "masks": [N, h, w] uint8}`` (:func:`collate_targets` batches it).

Validation (:class:`DetectionEvalTransform`): the image through the model's eval transform (the whole image resized
to the model's input), and the image's id and size, to score the detections in its own pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import UsageError
from ..weights.entries import Preprocess
from .normalize import to_unit
from .transforms import eval_transform

__all__ = [
    "DetectionEvalTransform",
    "DetectionTrainFactory",
    "DetectionTrainTransform",
    "collate_boxes",
    "collate_targets",
]


class DetectionTrainTransform:
    """``(PIL image, {"boxes": [N, 4] xyxy pixels, "labels": [N]}) -> ([3, h, w] float32 in [0, 1] RGB, [N', 5])``
    at one size; picklable. The targets are the kept boxes, normalised ``xyxy``, then the label (1-based); with
    ``masks``, torchvision's target dict of the kept boxes, labels and masks in the output's pixels (module docstring).

    ``(None, None)`` (an unreadable image) passes through.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        iou_crop: bool = True,
        photometric: float = 0.5,
        hflip: float = 0.5,
        interpolation: Literal["bilinear", "bicubic"] = "bilinear",
        masks: bool = False,
    ) -> None:
        """Args:
        size: the output, ``(height, width)`` or one int for a square.
        iou_crop: SSD's random IoU-constrained crop.
        photometric: probability of each of the photometric distortions (0: none).
        hflip: probability of a horizontal flip.
        interpolation: the image's resampling.
        masks: the targets carry ``masks`` ``[N, H, W]`` (one per box), transformed with them.
        """
        height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if height < 1 or width < 1:
            raise UsageError(f"the training size must be positive, got {height}x{width}")
        for name, p in (("detection.photometric", photometric), ("augment.hflip", hflip)):
            if not 0.0 <= p <= 1.0:
                raise UsageError(f"{name} must be a probability, got {p}")
        if interpolation not in ("bilinear", "bicubic"):
            raise UsageError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
        steps: list[Any] = [v2.RandomIoUCrop()] if iou_crop else []
        if photometric > 0:
            steps.append(v2.RandomPhotometricDistort(p=photometric))
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        steps += [
            v2.Resize((height, width), interpolation=v2.InterpolationMode(interpolation), antialias=True),
            v2.SanitizeBoundingBoxes(min_size=1.0),
        ]
        self.pipeline = v2.Compose(steps)
        self.size = (height, width)
        self.masks = masks

    def __call__(self, image: Any, target: dict[str, Any] | None) -> tuple[Tensor | None, Any]:
        if image is None or target is None:
            return None, None
        pixels = v2.functional.pil_to_tensor(image) if not isinstance(image, Tensor) else image  # uint8 [3, H, W]
        boxes = tv_tensors.BoundingBoxes(
            target["boxes"], format="XYXY", canvas_size=(pixels.shape[-2], pixels.shape[-1])
        )
        sample = {"boxes": boxes, "labels": target["labels"]}
        if self.masks:
            sample["masks"] = tv_tensors.Mask(target["masks"])  # resized nearest, dropped with its box
        out_image, out = self.pipeline(tv_tensors.Image(pixels), sample)
        if self.masks:
            plain = {key: value.as_subclass(Tensor) for key, value in out.items()}
            return to_unit(out_image.as_subclass(Tensor)), {**plain, "boxes": plain["boxes"].float()}
        height, width = out_image.shape[-2:]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        normalised = out["boxes"].as_subclass(Tensor).float() / scale  # [N, 4] in [0, 1]
        rows = torch.cat([normalised, out["labels"].float()[:, None]], dim=1)  # [N, 5]
        return to_unit(out_image.as_subclass(Tensor)), rows


class DetectionTrainFactory:
    """``factory(height, width)`` -> :class:`DetectionTrainTransform` at that size: the ``transform`` of a joint
    :class:`~mobilevit.data.samplers.MultiScaleDataset`. Pipelines are built once per size; picklable."""

    def __init__(
        self,
        iou_crop: bool = True,
        photometric: float = 0.5,
        hflip: float = 0.5,
        interpolation: Literal["bilinear", "bicubic"] = "bilinear",
        masks: bool = False,
    ) -> None:
        """Args: as :class:`DetectionTrainTransform`, without the size."""
        self.options = (iou_crop, photometric, hflip, interpolation, masks)
        DetectionTrainTransform(1, *self.options)  # checks the options now rather than in a worker
        self._cache: dict[tuple[int, int], DetectionTrainTransform] = {}

    def __call__(self, height: int, width: int) -> DetectionTrainTransform:
        key = (int(height), int(width))
        if key not in self._cache:
            self._cache[key] = DetectionTrainTransform(key, *self.options)
        return self._cache[key]


class DetectionEvalTransform:
    """``(PIL image, target) -> (the model's input [3, h, w], [image id, width, height] int64)``; picklable.

    The image goes through :func:`~mobilevit.data.transforms.eval_transform` of ``pre`` (a detector's preprocessing
    resizes the whole image to its input); the detections are scored in the pixels of the image's own size.
    """

    def __init__(self, pre: Preprocess) -> None:
        """Args:
        pre: the model's preprocessing (e.g. :func:`mobilevit.weights.model_io` ``.preprocess``).
        """
        self.image = eval_transform(pre)

    def __call__(self, image: Any, target: dict[str, Any] | None) -> tuple[Tensor | None, Tensor | None]:
        if image is None or target is None:
            return None, None
        return self.image(image), torch.tensor([target["image_id"], image.width, image.height], dtype=torch.int64)


def collate_boxes(batch: list[tuple[Any, Any]]) -> tuple[Tensor, Tensor, int]:
    """Training batches of a detection set: the images stacked, the targets padded to ``[B, M, 5]`` (``M``: the most
    boxes of an image of the batch; padding rows are zeros, label 0 being the background), plus the number of
    unreadable images dropped. Validation batches (``[3]`` rows of image id and size) stack to ``[B, 3]``."""
    kept = [sample for sample in batch if sample[0] is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, 0, 5), len(batch)
    images = torch.stack([image for image, _ in kept])
    rows = [target for _, target in kept]
    if rows[0].ndim == 1:
        return images, torch.stack(rows), len(batch) - len(kept)
    targets = torch.zeros(len(rows), max(len(r) for r in rows), 5)
    for i, r in enumerate(rows):
        targets[i, : len(r)] = r
    return images, targets, len(batch) - len(kept)


def collate_targets(batch: list[tuple[Any, Any]]) -> tuple[Tensor, list[dict[str, Tensor]] | Tensor, int]:
    """Training batches of a Mask R-CNN set: the images stacked (one size per batch), the targets as torchvision's
    detectors take them (a list of one dict per image), plus the number of unreadable images dropped. Validation
    batches (``[3]`` rows of image id and size) stack to ``[B, 3]``."""
    kept = [sample for sample in batch if sample[0] is not None]
    if not kept:
        return torch.empty(0), [], len(batch)
    images = torch.stack([image for image, _ in kept])
    targets = [target for _, target in kept]
    if isinstance(targets[0], Tensor):
        return images, torch.stack(targets), len(batch) - len(kept)
    return images, targets, len(batch) - len(kept)
