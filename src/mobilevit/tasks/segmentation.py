"""Semantic segmentation: ``[B, num_classes, h, w]`` logits, a class-index mask per image at the image's own size.

- the image is resized whole to the model's input size, nothing cropped (the preprocessing's
  ``resize_mode="exact"``), so that every pixel gets a class, and decoded exactly (no DCT-downscaled JPEG decode:
  the mask must have the input's size);
- the model's ``[num_classes, h, w]`` logits are resized back to the image's size as
  :func:`~mobilevit.layers.upsample_logits` resizes them (bilinear, ``align_corners=False``, as transformers'
  ``post_process_semantic_segmentation``), and each pixel takes its highest-scoring class (:func:`segment_logits`).
  This runs in tiles of rows and columns, so that no image, however large or however long and thin, ever holds
  ``num_classes`` full-size float maps (or full-width rows of them) at once;
- ``eval`` scores mIoU, per-class IoU and pixel accuracy on the ``(image, mask)`` pairs of
  :func:`~mobilevit.data.segmentation.list_segmentation_set`: each prediction at its mask's size, ground-truth pixels
  of 255 ignored, the pixels of the whole set summed into one confusion matrix before any ratio is taken;
- the server speaks the Inference API's ``image-segmentation`` (semantic): ``{"subtask": "semantic", "threshold":
  t}`` (``mask_threshold`` and ``overlap_mask_area_threshold``, defined for instance and panoptic segmentation, are
  checked and have no effect); the answer is one ``{"label", "score", "mask"}`` per class present, in class order, as
  transformers' ``image-segmentation`` pipeline answers: ``mask`` a base64 PNG, 8-bit grayscale at the image's size,
  255 where the class won; ``score`` the class's mean probability over its pixels (the pipeline sends ``null``);
  ``threshold`` leaves out the classes scoring below it.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data.segmentation import (
    JPEG_MAX_SIDE,
    class_fractions,
    confusion_matrix,
    list_segmentation_set,
    mask_image,
    overlay_image,
    read_mask,
    segmentation_scores,
    share_text,
)
from ..errors import UsageError
from ..weights.entries import Preprocess, segmentation_preprocess
from .base import Runner, Task, check_finite, echo, register_task, shard, sum_across_ranks

BAND_ELEMENTS = 1 << 20  # logits resized per tile (num_classes x rows x columns): 4 MB of float32


@dataclass(frozen=True, eq=False)
class Segmentation:
    """The segmentation of one image.

    Attributes:
        mask: ``[H, W]`` class indices at the image's size (``uint8`` up to 256 classes, else ``int32``).
        labels: every class name, index order.
        scores: ``[num_classes]``: each class's mean probability (softmax) over the pixels it won, ``nan`` for a class
            with no pixel; ``None`` when not asked for.
        image: the decoded input (RGB), for :meth:`overlay`; ``None`` when not kept.
    """

    mask: np.ndarray
    labels: tuple[str, ...]
    scores: np.ndarray | None = None
    image: Image.Image | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the mask, the input image's size."""
        return self.mask.shape[0], self.mask.shape[1]

    @property
    def fractions(self) -> np.ndarray:
        """``[num_classes]``: the share of the image's pixels each class won."""
        return class_fractions(self.mask, len(self.labels))

    def classes(self) -> list[dict[str, Any]]:
        """The classes present, largest share first: ``{"index", "label", "fraction"}`` and ``"score"`` when the
        scores were computed."""
        fractions = self.fractions
        rows = []
        for index in np.argsort(-fractions, kind="stable"):
            if fractions[index] == 0:
                break
            row = {"index": int(index), "label": self.labels[index], "fraction": float(fractions[index])}
            if self.scores is not None:
                row["score"] = float(self.scores[index])
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        height, width = self.size
        return {"height": height, "width": width, "classes": self.classes()}

    def mask_image(self) -> Image.Image:
        """The mask as a palette PNG-ready image: the palette index is the class, coloured as PASCAL VOC."""
        return mask_image(self.mask)

    def binary_mask(self, index: int) -> Image.Image:
        """An 8-bit image, 255 where class ``index`` won and 0 elsewhere."""
        pixels = np.equal(self.mask, index).view(np.uint8)  # [H, W] 0 / 1, made 0 / 255 in place
        pixels *= np.uint8(255)
        return Image.fromarray(pixels)

    def overlay(self, image: Image.Image | None = None, alpha: float = 0.5, legend: bool = True) -> Image.Image:
        """The image tinted with each class's colour (``background`` untinted) and a legend of the classes present.

        Args:
            image: the photo (default: the decoded input kept with this result).
            alpha: weight of the class colours.
            legend: draw the legend in the top-left corner.
        """
        image = image if image is not None else self.image
        if image is None:
            raise UsageError("this segmentation kept no image: pass the image to overlay()")
        return overlay_image(image, self.mask, self.labels, alpha, legend)


def _taps(source: int, target: int, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor]:
    """For outputs ``start..stop-1`` of a resize from ``source`` to ``target`` along one axis: the two source indices
    each output reads and the weight of the second. PyTorch's bilinear rule with ``align_corners=False``, in float32:
    the scale ``source / target``, the source coordinate ``(x + 0.5) * scale - 0.5`` clamped at 0, the first index its
    floor (at most ``source - 1``), the second the next one (at most ``source - 1``)."""
    scale = torch.tensor(source, dtype=torch.float32) / torch.tensor(target, dtype=torch.float32)
    x = ((torch.arange(start, stop, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0.0)
    first = x.floor().long().clamp_(max=source - 1)
    second = (first + 1).clamp_(max=source - 1)
    return first, second, x - first


def _tiles(num_classes: int, size: tuple[int, int], columns_in: int, budget: int) -> Iterator[tuple[slice, slice]]:
    """Tiles of an output of ``size`` (H, W), rows first, each at most ``budget`` logits (``num_classes x rows x
    columns``, or ``x columns_in`` when more: a tile's rows may be resized before its columns) and never less than
    one pixel: whole rows when one row fits, else pieces of one row."""
    height, width = size
    columns = min(width, max(1, budget // num_classes))
    rows = max(1, budget // (num_classes * max(columns, columns_in))) if columns == width else 1
    for top in range(0, height, rows):
        for left in range(0, width, columns):
            yield slice(top, min(top + rows, height)), slice(left, min(left + columns, width))


def _resize_tile(logits: Tensor, size: tuple[int, int], rows: slice, columns: slice) -> Tensor:
    """The ``[C, rows, columns]`` tile of ``upsample_logits(logits[None], size)[0]``, from the source pixels that tile
    reads only: each output row blended from two source rows (vertical taps) and each output column from two source
    columns (horizontal taps), in whichever order resizes fewer values (the source rows the tile reads across its
    columns, or its rows down the source's columns). The same taps and weights as PyTorch's kernel, in float32 (its
    compiled arithmetic can round the last bit of a logit differently).
    """
    _, rows_in, columns_in = logits.shape
    top, bottom, down = _taps(rows_in, size[0], rows.start, rows.stop)
    left, right, across = _taps(columns_in, size[1], columns.start, columns.stop)
    down = down[:, None]  # [rows] -> [rows, 1]
    first, last = int(top[0]), int(bottom[-1]) + 1  # the source rows the tile reads (the taps never decrease)
    if (last - first) * len(left) < len(top) * columns_in:  # columns first
        source = logits[:, first:last]  # [C, h, w] -> [C, k, w]
        wide = source.index_select(2, left).mul_(1 - across)  # [C, k, w] -> [C, k, columns]
        wide.add_(source.index_select(2, right).mul_(across))
        tile = wide.index_select(1, top - first).mul_(1 - down)  # [C, k, columns] -> [C, rows, columns]
        return tile.add_(wide.index_select(1, bottom - first).mul_(down))
    tall = logits.index_select(1, top).mul_(1 - down)  # [C, h, w] -> [C, rows, w]
    tall.add_(logits.index_select(1, bottom).mul_(down))
    tile = tall.index_select(2, left).mul_(1 - across)  # [C, rows, w] -> [C, rows, columns]
    return tile.add_(tall.index_select(2, right).mul_(across))


@torch.inference_mode()
def segment_logits(
    logits: Tensor, size: tuple[int, int], scores: bool = False, band_elements: int = BAND_ELEMENTS
) -> tuple[np.ndarray, np.ndarray | None]:
    """The class mask at ``size`` of one image's ``[num_classes, h, w]`` logits, and optionally each class's score.

    Equal to ``upsample_logits(logits[None], size)[0].argmax(0)`` (:func:`~mobilevit.layers.upsample_logits`:
    bilinear, ``align_corners=False``: the same source pixels and weights, in float32, so that a pixel can only differ
    where its two best classes are within the last bit of a logit), computed in tiles of output rows and columns, each
    resized from the source pixels it reads: memory stays at a few times ``band_elements`` floats besides the mask,
    whatever the image's size and aspect ratio.

    Args:
        logits: ``[num_classes, h, w]``.
        size: (H, W) of the mask.
        scores: also return ``[num_classes]``: each class's mean softmax probability over the pixels it won
            (``nan`` for a class that won none).
        band_elements: the largest ``num_classes x rows x columns`` tile resized at once (at least one pixel's
            ``num_classes`` logits).
    """
    if logits.ndim != 3:
        raise UsageError(f"expected [num_classes, h, w] logits, got shape {tuple(logits.shape)}")
    num_classes = logits.shape[0]
    height, width = size
    logits = logits.float()
    mask = torch.empty((height, width), dtype=torch.uint8 if num_classes <= 256 else torch.int32)
    won = torch.zeros(num_classes, dtype=torch.float64)
    confidence = torch.zeros(num_classes, dtype=torch.float64)
    for rows, columns in _tiles(num_classes, size, logits.shape[2], band_elements):
        tile = _resize_tile(logits, size, rows, columns)  # [C, rows, columns]
        best, index = tile.max(0)
        mask[rows, columns] = index.to(mask.dtype)
        if scores:
            probability = (tile - best).exp_().sum(0).reciprocal_()  # the winner's softmax probability
            won += torch.bincount(index.ravel(), minlength=num_classes).double()
            confidence += torch.bincount(index.ravel(), weights=probability.ravel().double(), minlength=num_classes)
    if not scores:
        return mask.numpy(), None
    mean = torch.where(won > 0, confidence / won.clamp(min=1), torch.tensor(float("nan"), dtype=torch.float64))
    return mask.numpy(), mean.numpy()


# ------------------------------------------------------------------------------------------------------ eval


def evaluate_segmentation(
    runner: Runner, pairs: list[tuple[Path, Path]], progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy of ``runner`` over ``(image, mask)`` pairs (see the module docstring).

    An image or mask that cannot be read, or a mask with a class index the model does not have, is listed in
    ``failed`` and not scored. Under ``torch.distributed`` each rank scores its share and the confusion matrices are
    summed.

    Returns:
        :func:`~mobilevit.data.segmentation.segmentation_scores` (``miou``, ``pixel_accuracy``, ``per_class_iou``,
        ``classes_scored``, ``pixels``) with ``count`` (images scored) and ``failed``.
    """
    mine, world = shard(pairs)
    num_classes = len(runner.labels)

    def load(pair: tuple[Path, Path]) -> tuple[Tensor, np.ndarray, Path]:
        image, mask = pair
        return runner.load_input(image, str(image))[0], read_mask(mask), mask

    def answer(loaded: list[tuple[Tensor, np.ndarray, Path]]) -> list[np.ndarray | UsageError]:
        logits = runner.logits(torch.stack([x for x, _, _ in loaded]))  # [B, C, h, w]
        confusions: list[np.ndarray | UsageError] = []
        for row, (_, target, path) in zip(logits, loaded, strict=True):
            check_finite(row[None], runner.model_name)
            predicted, _ = segment_logits(row, target.shape)  # at the mask's size
            try:
                confusions.append(confusion_matrix(predicted, target, num_classes))
            except UsageError as err:
                confusions.append(UsageError(f"{path}: {err}"))
        return confusions

    confmat = np.zeros((num_classes, num_classes), dtype=np.int64)
    failed: list[dict[str, str]] = []
    for (image, _), result in runner.map_files(mine, load, answer, progress):
        if isinstance(result, Exception):
            failed.append({"file": str(image), "error": str(result)})
        else:
            confmat += result
    counts = torch.from_numpy(np.append(confmat.ravel(), len(mine) - len(failed)))  # int64: exact pixel counts
    failed = sum_across_ranks(counts, failed, world)
    scored = int(counts[-1])
    confmat = counts[:-1].reshape(num_classes, num_classes).numpy()
    return {**segmentation_scores(confmat, runner.labels), "count": scored, "failed": failed}


# --------------------------------------------------------------------------------------------------- serving


def read_probability(params: dict[str, Any], name: str) -> float | None:
    """Request parameter ``name``, a probability (``None`` when not given), or a clear error."""
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise UsageError(f"{name} must be a number between 0 and 1, got {echo(value)}")
    return float(value)


def encode_segments(segmentation: Segmentation, threshold: float | None = None) -> list[dict[str, Any]]:
    """The Inference API answer for image segmentation: one ``{"label", "score", "mask"}`` per class present, in
    class order, ``mask`` a base64 PNG (8-bit grayscale, 255 = the class); classes scoring below ``threshold`` left
    out (see the module docstring)."""
    answer = []
    scores = segmentation.scores
    for row in sorted(segmentation.classes(), key=lambda r: r["index"]):
        score = float(scores[row["index"]]) if scores is not None else None
        if threshold is not None and score is not None and score < threshold:
            continue
        buffer = io.BytesIO()
        segmentation.binary_mask(row["index"]).save(buffer, format="PNG")
        mask = base64.b64encode(buffer.getvalue()).decode("ascii")
        answer.append(
            {"label": row["label"], "score": None if score is None or math.isnan(score) else score, "mask": mask}
        )
    return answer


# ------------------------------------------------------------------------------------------------------ the task


class SegmentationTask(Task):
    """Semantic segmentation: a :class:`Segmentation` (a class-index mask at the image's size) per image."""

    name = "segmentation"
    hf_task = "image-segmentation"
    title = "image segmentation"
    model_kind = "a semantic segmentation model"
    how_to_run = (
        "segment images with `mobilevit segment` (Python: mobilevit.segment.Segmenter) and score it with "
        "`mobilevit eval --task segmentation`"
    )
    output_axes = ("batch", "classes", "height", "width")
    parameter_schema: ClassVar[dict[str, dict[str, Any]]] = {
        "subtask": {"enum": ["semantic"]},
        "threshold": {"type": "number", "minimum": 0, "maximum": 1},
        # accepted, without effect on semantic masks (the Inference API defines them for instance segmentation)
        "mask_threshold": {"type": "number", "minimum": 0, "maximum": 1},
        "overlap_mask_area_threshold": {"type": "number", "minimum": 0, "maximum": 1},
    }
    answer_schema: ClassVar[
        dict[str, Any]
    ] = {  # the Inference API's ImageSegmentationOutputElement, one per class present, class order
        "type": "array",
        "items": {
            "type": "object",
            "required": ["label", "score", "mask"],
            "properties": {
                "label": {"type": "string"},
                "score": {"type": ["number", "null"]},
                "mask": {"type": "string", "description": "base64 PNG, 8-bit grayscale: 255 where the class won"},
            },
        },
    }
    exact_decode = True
    export_kind = "semantic segmentation model"
    data_help = (
        "a PASCAL VOC folder (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/SPLIT.txt) or images/ + masks/ "
        "(palette or grayscale PNGs of class indices, 255 ignored)"
    )
    val_columns = ("val_miou", "val_miou_ema", "val_pixel_accuracy", "val_pixel_accuracy_ema")
    loss = "per_pixel_cross_entropy"
    train_data = "image_mask_pairs"
    best_metric = "miou"
    best_metric_title = "mIoU"
    labels_from_weights = True

    def preprocess(self, preprocess: Preprocess) -> Preprocess:
        """The whole image resized to the input size: a crop would leave part of the image without a class."""
        return segmentation_preprocess(preprocess, preprocess.input_size)

    def bench_size(self, preprocess: Preprocess, default: int) -> tuple[int, int]:
        """The preprocessing's input size (512x512 for DeepLabV3, the size its published mIoU was measured at)."""
        height, width = preprocess.input_size
        return int(height), int(width)

    def context(self, image: Image.Image) -> Image.Image:
        """The decoded image: the mask is made at its size, and the overlay tints it."""
        return image

    def postprocess(
        self, runner: Runner, outputs: Tensor, context: Any = None, scores: bool = False, size: Any = None
    ) -> Segmentation:
        """One image's :class:`Segmentation` from its ``[num_classes, h, w]`` logits, at the size of the image
        (``context``) or at ``size`` (H, W).

        Raises:
            NonFiniteOutputError: a logit is NaN or infinite (no mask is made from it), naming the model.
        """
        image = context if isinstance(context, Image.Image) else None
        size = size if size is not None else (image.height, image.width)
        check_finite(outputs[None], runner.model_name)
        mask, class_scores = segment_logits(outputs, size, scores)
        return Segmentation(mask, tuple(runner.labels), class_scores, image)

    def render(self, result: Segmentation, stem: Path) -> dict[str, str]:
        """Write ``<stem>_mask.png`` (palette PNG) and ``<stem>_overlay.jpg`` (``.png`` past JPEG's largest side)."""
        suffix = "jpg" if max(result.size) <= JPEG_MAX_SIDE else "png"  # JPEG cannot store a longer side
        mask, overlay = stem.with_name(f"{stem.name}_mask.png"), stem.with_name(f"{stem.name}_overlay.{suffix}")
        result.mask_image().save(mask)
        result.overlay().save(overlay, quality=90)
        return {"mask": str(mask), "overlay": str(overlay)}

    def describe(
        self, path: str, result: Segmentation, files: dict[str, str] | None = None
    ) -> tuple[dict[str, Any], str]:
        shares = ", ".join(f"{c['label']} {share_text(c['fraction'])}" for c in result.classes())
        files = files or {}
        written = f" -> {', '.join(files.values())}" if files else ""
        return {"file": path, **files, **result.to_dict()}, f"{path}: {shares}{written}"

    def evaluate(
        self, runner: Runner, data: str, split: str | None, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        split = split or "val"
        return {"split": split, **evaluate_segmentation(runner, list_segmentation_set(data, split), progress)}

    def eval_total(self, data: str, split: str | None) -> int | None:
        return len(list_segmentation_set(data, split or "val"))

    def eval_summary(self, model: str, result: dict[str, Any]) -> str:
        lines = [
            f"{model}: mIoU {result['miou']:.4f} over {result['classes_scored']} classes, pixel accuracy "
            f"{result['pixel_accuracy']:.4f} ({result['count']} images, split {result['split']})"
        ]
        lines += [
            f"  {label:<24} {'-' if iou is None else f'{iou:.4f}'}" for label, iou in result["per_class_iou"].items()
        ]
        return "\n".join(lines)

    def read_parameters(self, params: dict[str, Any]) -> dict[str, Any]:
        subtask = params.get("subtask")
        if subtask not in (None, "semantic"):
            raise UsageError(
                f"this model does semantic segmentation only: subtask must be 'semantic', got {echo(subtask)}"
            )
        for name in ("mask_threshold", "overlap_mask_area_threshold"):  # checked, without effect on semantic masks
            read_probability(params, name)
        return {"threshold": read_probability(params, "threshold")}

    def answer(self, runner: Runner, outputs: Tensor, context: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
        """The masks with each class's score (``threshold`` leaves out the classes below it)."""
        return self.encode(self.postprocess(runner, outputs, context, scores=True), options)

    def encode(self, result: Segmentation, options: dict[str, Any]) -> list[dict[str, Any]]:
        return encode_segments(result, options.get("threshold"))


SEGMENTATION = register_task(SegmentationTask())
