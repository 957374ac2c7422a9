"""Semantic segmentation of images: a class-index mask per image, at the image's own size.

A :class:`Segmenter` is the :class:`~mobilevit.runner.Runner` bound to semantic segmentation (DeepLabV3 on a
MobileViT, FastViT or MobileOne backbone), eager or exported (``.onnx``, ``.pte``, ``.tflite``): the same runtime,
decoding, weights' preprocessing settings, labels, batching and file loop as the classifier, with the task's
differences (:mod:`mobilevit.tasks.segmentation`): the whole image resized (no crop), decoded exactly, and the logits
resized back to the image's size before each pixel takes its class.

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
from typing import Any

from PIL import Image
from torch import Tensor

from .data.images import ImageError
from .predict import Predictor
from .runner import ImageInput, Runner, decode_input, load_runner
from .tasks.segmentation import BAND_ELEMENTS, SEGMENTATION, Segmentation, segment_logits


class Segmenter(Runner):
    """Semantic segmentation: the preprocessing and labels of a segmentation model around the runtime that runs it.

    Built like any :class:`~mobilevit.runner.Runner` (:meth:`from_pretrained`, :meth:`from_model`,
    :meth:`from_exported` for a file written by :func:`~mobilevit.export.export_model`, or a runtime or module with its
    preprocessing, whose ``input_size`` is the size the whole image is resized to: a preprocessing that would crop is
    made an exact resize); a classification model, eager or exported, is refused with an error that says so.
    """

    task = SEGMENTATION

    def load(
        self, item: ImageInput, name: str | None = None, *, max_pixels: int | None = None
    ) -> tuple[Image.Image, Tensor]:
        """Decode one input exactly: ``(the RGB image, the model's [3, H, W] input)``.

        Raises:
            ImageError: an unreadable input, naming it.
        """
        tensor, image = self.load_input(item, name, max_pixels=max_pixels)
        return image, tensor

    def postprocess(  # type: ignore[override]
        self, logits: Tensor, size: tuple[int, int], image: Image.Image | None = None, scores: bool = False
    ) -> Segmentation:
        """One image's :class:`Segmentation` from its ``[num_classes, h, w]`` logits, at ``size`` (H, W).

        Raises:
            NonFiniteOutputError: a logit is NaN or infinite (no mask is made from it), naming the model.
        """
        return self.task.postprocess(self, logits, image, scores=scores, size=size)

    def segment(self, inputs: ImageInput | Sequence[ImageInput], scores: bool = False) -> list[Segmentation]:
        """Segment images: paths, encoded bytes, PIL images, arrays or tensors (one, or a list).

        Returns one :class:`Segmentation` per input, its mask at that input's size. A bad input raises
        :class:`~mobilevit.data.images.ImageError` naming it; :meth:`segment_files` collects per-file errors instead.
        """
        return self.run(inputs, scores=scores)

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
        return self.run_files(paths, progress, scores=scores)


def load_segmenter(
    model: str | os.PathLike,
    backend: str | None = None,
    pretrained: bool | str | os.PathLike = True,
    threads: int = 0,
    **kwargs: Any,
) -> Segmenter:
    """The segmenter of ``model``: an architecture, ``arch.tag`` or saved folder run eagerly, or a file written by
    :func:`~mobilevit.export.export_model` (``.onnx`` in onnxruntime or OpenVINO, ``.pte`` in ExecuTorch, ``.tflite``
    in LiteRT); a classifier, eager or exported, is refused with an error that says so.
    :func:`~mobilevit.runner.load_runner` bound to :class:`Segmenter`.

    Args:
        model: a segmentation model's name, folder or exported file.
        backend: one of :data:`~mobilevit.runtime.BACKENDS`; ``None`` infers it from ``model``.
        pretrained: weights of an eager model (``True``: the entry's file; a path; ``False``: random, for testing);
            an exported file carries its own.
        threads: an exported file's runtime threads (0: its default).
        **kwargs: ``batch_size``, ``workers``, ``labels``, ``fold``, ``allow_random_head`` (load a checkpoint that
            leaves the segmentation head random, such as a classification checkpoint of the backbone: refused by
            default, see :func:`~mobilevit.create_model`).
    """
    return load_runner(model, backend, pretrained, threads, runner=Segmenter, **kwargs)


def load_model(
    model: str | os.PathLike,
    backend: str | None = None,
    pretrained: bool | str | os.PathLike = True,
    threads: int = 0,
    **kwargs: Any,
) -> Runner:
    """The runner of ``model``'s own task: a :class:`Segmenter` for a segmentation model, a
    :class:`~mobilevit.predict.Predictor` for a classifier (for an exported file, the task its metadata records), a
    :class:`~mobilevit.runner.Runner` for a task with no class of its own: :func:`~mobilevit.runner.load_runner`.

    ``kwargs``: ``batch_size``, ``workers``, ``labels``, ``fold`` (eager), ``fast_decode`` (a segmenter decodes every
    image whole), ``allow_random_head`` (load weights that leave an eager model's head random, refused by default, see
    :func:`~mobilevit.create_model`), ``task``.
    """
    return load_runner(model, backend, pretrained, threads, **kwargs)


__all__ = [
    "BAND_ELEMENTS",
    "Predictor",
    "Segmentation",
    "Segmenter",
    "decode_input",
    "load_model",
    "load_segmenter",
    "segment_logits",
]
