"""Semantic segmentation of images: a class-index mask per image, at the image's own size.

A :class:`Segmenter` is a :class:`~mobilevit.predict.Predictor` for segmentation models (DeepLabV3 on a MobileViT,
FastViT or MobileOne backbone), eager or exported (``.onnx``, ``.pte``, ``.tflite``): the same runtime, decoding,
weights' preprocessing settings, labels, batching and file loop, with three differences:

- the image is resized whole to the model's input size, nothing cropped (the preprocessing's
  ``resize_mode="exact"``, which a segmenter always uses), so that every pixel gets a class;
- the model's ``[num_classes, h, w]`` logits are resized back to the image's size as
  :func:`~mobilevit.layers.upsample_logits` resizes them (bilinear, ``align_corners=False``, as transformers'
  ``post_process_semantic_segmentation``), and each pixel takes its highest-scoring class (:func:`segment_logits`).
  This runs in tiles of rows and columns, so that no image, however large or however long and thin, ever holds
  ``num_classes`` full-size float maps (or full-width rows of them) at once;
- images are always decoded exactly (``fast_decode`` does not apply): the mask must have the input's size.

Example::

    from mobilevit.segment import Segmenter

    segmenter = Segmenter.from_pretrained("deeplabv3_mobilevit_xxs.hf_voc")
    result = segmenter.segment("street.jpg")[0]
    result.mask                 # [H, W] class indices at the photo's size
    result.mask_image().save("street_mask.png")       # palette PNG, VOC colours
    result.overlay().save("street_overlay.jpg")       # the photo tinted by class, with a legend
    result.classes()            # [{"index", "label", "fraction", "score"}, ...] of the classes present
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .data.images import ImageError
from .data.segmentation import class_fractions, mask_image, overlay_image
from .errors import UsageError
from .predict import ImageInput, Predictor, check_exported_weights, check_finite, decode_input, open_exported
from .runtime import EXPORTED_BACKENDS, Runtime, resolve_backend
from .weights.entries import Preprocess, segmentation_preprocess

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


class Segmenter(Predictor):
    """Semantic segmentation: the preprocessing and labels of a segmentation model around the runtime that runs it.

    Built like a :class:`~mobilevit.predict.Predictor` (:meth:`from_pretrained`, :meth:`from_model`,
    :meth:`from_exported` for a file written by :func:`~mobilevit.export.export_model`, or a runtime or module with its
    preprocessing); a classification model, eager or exported, is refused with an error that says so.

    Args:
        runtime: the :class:`~mobilevit.runtime.Runtime`, or a PyTorch segmentation model.
        preprocess: the weights' preprocessing; its ``input_size`` is the size the whole image is resized to (a
            preprocessing that would crop is made an exact resize to that size).
        labels: class names, index-aligned with the logits' channels.
        **kwargs: ``batch_size``, ``workers``, ``fold``, ``sizes``, as for the predictor (``fast_decode`` has no
            effect: every image is decoded whole).
    """

    task = "segmentation"

    def __init__(
        self, runtime: Runtime | nn.Module, preprocess: Preprocess, labels: Sequence[str] | None = None, **kwargs: Any
    ) -> None:
        # a crop would leave part of the image without a prediction
        preprocess = segmentation_preprocess(preprocess, preprocess.input_size)
        super().__init__(runtime, preprocess, labels, **kwargs)

    def load(
        self, item: ImageInput, name: str | None = None, *, max_pixels: int | None = None
    ) -> tuple[Image.Image, Tensor]:
        """Decode one input exactly: ``(the RGB image, the model's [3, H, W] input)``.

        Raises:
            ImageError: an unreadable input, naming it.
        """
        image = decode_input(item, name, max_pixels)
        return image, self.transform(image)

    def prepare(
        self,
        item: ImageInput,
        name: str | None = None,
        *,
        max_pixels: int | None = None,
        fast_decode: bool | None = None,
    ) -> Tensor:
        """The model's ``[3, H, W]`` input for one image; ``fast_decode`` is ignored (the image is decoded whole)."""
        return self.load(item, name, max_pixels=max_pixels)[1]

    def postprocess(
        self, logits: Tensor, size: tuple[int, int], image: Image.Image | None = None, scores: bool = False
    ) -> Segmentation:
        """One image's :class:`Segmentation` from its ``[num_classes, h, w]`` logits, at ``size`` (H, W).

        Raises:
            NonFiniteOutputError: a logit is NaN or infinite (no mask is made from it), naming the model.
        """
        check_finite(logits[None], self.model_name)
        mask, class_scores = segment_logits(logits, size, scores)
        return Segmentation(mask, tuple(self.labels), class_scores, image)

    def topk(self, logits: Tensor, top_k: int = 5, function: str = "softmax") -> list:  # type: ignore[override]
        raise UsageError("a segmentation model answers a class per pixel: use Segmenter.segment(), not predict()")

    def segment(self, inputs: ImageInput | Sequence[ImageInput], scores: bool = False) -> list[Segmentation]:
        """Segment images: paths, encoded bytes, PIL images, arrays or tensors (one, or a list).

        Returns one :class:`Segmentation` per input, its mask at that input's size. A bad input raises
        :class:`~mobilevit.data.images.ImageError` naming it; :meth:`segment_files` collects per-file errors instead.
        """
        if not isinstance(inputs, list | tuple):
            inputs = [inputs]
        loaded = [self.load(item) for item in inputs]
        return self._answer(loaded, scores)

    def _answer(self, loaded: list[tuple[Image.Image, Tensor]], scores: bool) -> list[Segmentation]:
        logits = self.logits(torch.stack([x for _, x in loaded]))  # [B, C, h, w]
        return [
            self.postprocess(row, (image.height, image.width), image, scores)
            for row, (image, _) in zip(logits, loaded, strict=True)
        ]

    def segment_files(
        self,
        paths: Iterable[str | os.PathLike],
        progress: Callable[[int], None] | None = None,
        scores: bool = False,
    ) -> Iterator[tuple[str, Segmentation | ImageError]]:
        """Yield ``(path, segmentation)`` in input order, or ``(path, error)`` for a file that cannot be read.

        Decoding runs in ``workers`` threads, ahead of the model; ``progress(n)`` is called after each batch. Each
        result keeps its decoded image, for :meth:`Segmentation.overlay`.
        """

        def load(path: str | os.PathLike) -> tuple[Image.Image, Tensor]:
            return self.load(path, str(path))

        for path, result in self.map_files(paths, load, lambda batch: self._answer(batch, scores), progress):
            yield str(path), result


def load_segmenter(
    model: str | os.PathLike,
    backend: str | None = None,
    pretrained: bool | str | os.PathLike = True,
    threads: int = 0,
    **kwargs: Any,
) -> Segmenter:
    """The segmenter the CLI uses: ``model`` is an architecture, ``arch.tag`` or saved folder run eagerly, or a file
    written by :func:`~mobilevit.export.export_model` (``.onnx`` in onnxruntime or OpenVINO, ``.pte`` in ExecuTorch,
    ``.tflite`` in LiteRT); a classifier, eager or exported, is refused with an error that says so.

    Args:
        model: a segmentation model's name, folder or exported file (see :meth:`~mobilevit.predict.Predictor.create`).
        backend: one of :data:`~mobilevit.runtime.BACKENDS`; ``None`` infers it from ``model``.
        pretrained: weights of an eager model (``True``: the entry's file; a path; ``False``: random, for testing);
            an exported file carries its own.
        threads: an exported file's runtime threads (0: its default).
        **kwargs: ``batch_size``, ``workers``, ``labels``, ``fold``, ``allow_random_head`` (load a checkpoint that
            leaves the segmentation head random, such as a classification checkpoint of the backbone: refused by
            default, see :func:`~mobilevit.create_model`).
    """
    return Segmenter.create(model, backend, pretrained, threads, **kwargs)  # type: ignore[return-value]


def load_model(
    model: str | os.PathLike,
    backend: str | None = None,
    pretrained: bool | str | os.PathLike = True,
    threads: int = 0,
    *,
    allow_random_head: bool = False,
    **kwargs: Any,
) -> Predictor:
    """The runner of ``model``'s own task: a :class:`Segmenter` for a segmentation model, else a
    :class:`~mobilevit.predict.Predictor`; for an exported file, the task its metadata records.

    ``kwargs``: ``batch_size``, ``workers``, ``labels``, ``fold`` (eager), ``fast_decode`` (a classifier's only: a
    segmenter decodes every image whole). ``allow_random_head``: load weights that leave an eager model's head random
    (refused by default, see :func:`~mobilevit.create_model`).
    """
    from .registry import create_model

    backend = resolve_backend(model, backend)
    if backend in EXPORTED_BACKENDS:
        check_exported_weights(model, pretrained)
        runtime = open_exported(model, backend, threads)
        runner = Segmenter if runtime.task == "segmentation" else Predictor
        return runner.from_runtime(runtime, **kwargs)
    network = create_model(str(model), pretrained=pretrained, allow_random_head=allow_random_head)
    if getattr(network, "task", "classification") == "segmentation":
        return Segmenter.from_model(network, pretrained=pretrained, **kwargs)
    return Predictor.from_model(network, pretrained=pretrained, **kwargs)


__all__ = ["BAND_ELEMENTS", "Segmentation", "Segmenter", "load_model", "load_segmenter", "segment_logits"]
