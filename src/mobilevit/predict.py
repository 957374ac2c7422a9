"""The predictor: build once from a model name, checkpoint or exported file, then classify images in batches.

Used by the ``predict`` and ``eval`` commands, the HTTP server and the benchmarks, so that every path runs the same
preprocessing (from :func:`~mobilevit.weights.model_io`, or the metadata of an exported file), labels, top-k and
scores. A :class:`Predictor` is that preprocessing and those labels around a :class:`~mobilevit.runtime.Runtime`: the
folded PyTorch model (:meth:`Predictor.from_pretrained`), or an exported file (:meth:`Predictor.from_exported`): an
``.onnx`` file in onnxruntime or OpenVINO (:func:`OnnxPredictor`, :func:`OpenVINOPredictor`), an ExecuTorch ``.pte``
program or a LiteRT ``.tflite`` model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .data.images import ImageError, open_image
from .data.transforms import eval_transform
from .errors import NonFiniteOutputError, UsageError
from .runtime import (
    BACKENDS,
    EXPORTED_BACKENDS,
    ExportMetadata,
    Runtime,
    Signature,
    TorchRuntime,
    open_runtime,
    resolve_backend,
)
from .weights.entries import Preprocess, check_labels, labels_for
from .weights.load import require_regular_file
from .weights.pretrained import model_io

logger = logging.getLogger(__name__)

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray | Tensor
T = TypeVar("T")
Activation = Literal["softmax", "sigmoid", "none"]
ACTIVATIONS: tuple[str, ...] = ("softmax", "sigmoid", "none")  # the score functions: the CLI's and the server's


@dataclass(frozen=True)
class Prediction:
    """One class of a top-k answer."""

    label: str
    score: float
    index: int

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "index": self.index}


def check_activation(function: str) -> None:
    """Raise a clear error for an unknown score function, before any image is decoded."""
    if function not in ACTIVATIONS:
        raise UsageError(f"function must be one of {', '.join(ACTIVATIONS)}; got {function!r}")


def scores_from_logits(logits: Tensor, function: Activation) -> Tensor:
    """Softmax probabilities, independent sigmoid scores, or the raw logits (``"none"``)."""
    if function == "softmax":
        return logits.float().softmax(-1)
    if function == "sigmoid":
        return logits.float().sigmoid()
    if function == "none":
        return logits.float()
    raise UsageError(f"function must be one of {', '.join(ACTIVATIONS)}; got {function!r}")


def check_finite(outputs: Tensor, model: str) -> None:
    """Raise :class:`~mobilevit.errors.NonFiniteOutputError` naming ``model`` when any value of ``outputs`` (one row
    per image) is NaN or infinite: no score, class or mask is made from such outputs (one NaN logit makes a whole
    softmax NaN, and the argmax of NaNs is an arbitrary class)."""
    finite = torch.isfinite(outputs.reshape(len(outputs), -1)).all(1)  # [B, ...] -> [B]
    if bool(finite.all()):
        return
    images = f" for {int((~finite).sum())} of {len(finite)} images" if len(finite) > 1 else ""
    raise NonFiniteOutputError(f"{model} produced non-finite values (NaN or infinity){images}: check its weights")


def decode_input(
    item: ImageInput, name: str | None = None, max_pixels: int | None = None, draft: int | None = None
) -> Image.Image:
    """Any accepted image input as an RGB PIL image (tensors must be uint8 ``[3, H, W]``/``[H, W, 3]`` or float);
    files and bytes decoded by :func:`~mobilevit.data.images.open_image`, fast when ``draft`` gives the resize."""
    if isinstance(item, np.ndarray):
        arr = item
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # [C, H, W] -> [H, W, C]
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
                arr = arr * 255.0  # float images in [0, 1]
            arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise ImageError(f"{name or 'array'}: expected an [H, W], [H, W, 3|4] or [3, H, W] image, got {item.shape}")
        return open_image(Image.fromarray(np.ascontiguousarray(arr)))
    if isinstance(item, Tensor):
        return decode_input(item.detach().cpu().numpy(), name or "tensor")
    if isinstance(item, Image.Image):
        return open_image(item, name, max_pixels)
    if isinstance(item, Path | str | os.PathLike | bytes):
        return open_image(item, name, max_pixels, fast_decode=draft is not None, min_short_side=draft)
    raise ImageError(f"{name or type(item).__name__}: unsupported input type {type(item).__name__}")


@dataclass(frozen=True)
class InputSizes:
    """The input heights and widths a runtime takes: the ones its graph fixes, else multiples of ``multiple``.

    Attributes:
        fixed: (H, W) fixed by the graph, ``None`` where any size goes.
        multiple: a size that is not fixed must be a multiple of this (what an exported file records).
        model: the model in error messages (an exported file's path).
        grid: what sets ``multiple``, in error messages (an architecture name).
    """

    fixed: tuple[int | None, int | None] = (None, None)
    multiple: int = 1
    model: str = "the model"
    grid: str = "the model"

    def check(self, height: int, width: int) -> None:
        """Raise ``ValueError`` when the runtime cannot take ``[B, 3, height, width]`` inputs."""
        pairs = list(zip(self.fixed, (height, width), strict=True))
        if any(f is not None and f != n for f, n in pairs):
            size = "x".join(str(f or "any") for f in self.fixed)
            message = f"{self.model} takes {size} inputs only (exported with a fixed size), not {height}x{width}"
            raise UsageError(message)
        if any(f is None and n % self.multiple for f, n in pairs):
            raise UsageError(
                f"{self.model} takes heights and widths that are multiples of {self.multiple} "
                f"(the patch grid of {self.grid}), not {height}x{width}"
            )


def warn_random_weights(name: str, consequence: str) -> None:
    """The one warning for a model run with random weights (the CLI shows it on stderr)."""
    logger.warning("%s has random weights: %s", name, consequence)


# what to do instead when a model's task is not the one of the predictor asked to run it: (model's, predictor's)
_OTHER_TASK = {
    ("segmentation", "classification"): "{name} is a semantic segmentation model: segment images with `mobilevit "
    "segment` (Python: mobilevit.segment.Segmenter) and score it with `mobilevit eval --task segmentation`",
    ("classification", "segmentation"): "{name} is an image classification model: segmentation needs a "
    "segmentation model such as deeplabv3_mobilevit_xxs (`mobilevit list 'deeplabv3_*'`); classify images with "
    "`mobilevit predict`",
}


def _runtime_name(runtime: Runtime) -> str:
    """The model a runtime runs, for messages: the architecture of a model of this package, an exported file's path
    (and the architecture it records), else a description."""
    if isinstance(runtime, TorchRuntime):
        try:
            return model_io(runtime.model).arch
        except (AttributeError, KeyError, ValueError):  # a module of another origin
            return type(runtime.model).__name__
    path = getattr(runtime, "path", None)
    if path is None:
        return f"the {runtime.name} model"
    arch = runtime.metadata().get("arch")
    return f"{path} ({arch})" if arch else str(path)


def check_task(runtime: Runtime, task: str) -> None:
    """Raise a clear error when ``runtime`` runs a model of another task than ``task`` (a classifier given to the
    segmenter, or a segmentation model to the predictor), naming the class and command that run it."""
    if (runtime.task, task) in _OTHER_TASK:
        raise UsageError(_OTHER_TASK[runtime.task, task].format(name=_runtime_name(runtime)))


def check_exported_weights(model: str | os.PathLike, pretrained: bool | str | os.PathLike) -> None:
    """An exported file carries its weights: refuse ``--pretrained`` / ``--random-weights`` for one."""
    if pretrained is not True:
        raise UsageError(f"{model}: an exported file carries its weights; --pretrained/--random-weights do not apply")


def open_exported(path: str | os.PathLike, backend: str | None = None, threads: int = 0) -> Runtime:
    """:func:`~mobilevit.runtime.open_runtime` of an exported file, refusing a path that is not a regular file (a FIFO
    would block the runtime's reader forever)."""
    require_regular_file(path, "Exported model file", UsageError)
    return open_runtime(path, backend, threads)


class Predictor:
    """Image classifier: the preprocessing and labels of a model around the runtime that runs it.

    A model of another task is refused with an error that names the class that runs it (a segmentation model:
    :class:`~mobilevit.segment.Segmenter`, which shares this decoding, preprocessing and runtime).

    Args:
        runtime: the :class:`~mobilevit.runtime.Runtime`; a PyTorch module runs in a
            :class:`~mobilevit.runtime.TorchRuntime` (folded when ``fold``).
        preprocess: the weights' :class:`~mobilevit.weights.entries.Preprocess`.
        labels: class names, index-aligned with the outputs (default: ``"class_<i>"``).
        batch_size: images per forward pass.
        workers: threads that decode and preprocess images while the model runs.
        fold: for a PyTorch module: re-parameterize it (fold BatchNorms and branches) — same outputs, faster.
        sizes: the input sizes the runtime takes (default: any).
        fast_decode: decode JPEGs at least twice the size the model needs DCT-downscaled (see :meth:`prepare`):
            several times faster for camera photos, approximate; other images are decoded as without it. ``False``
            (the default) is bit-exact with the reference pipelines. :func:`~mobilevit.evaluate.evaluate` follows
            this setting too.
    """

    task = "classification"  # the model task this class runs (the runtime's ``task`` must match)

    def __init__(
        self,
        runtime: Runtime | nn.Module,
        preprocess: Preprocess,
        labels: Sequence[str] | None = None,
        batch_size: int = 16,
        workers: int | None = None,
        *,
        fold: bool = True,
        sizes: InputSizes | None = None,
        fast_decode: bool = False,
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        self.runtime = runtime if isinstance(runtime, Runtime) else TorchRuntime(runtime, fold)
        check_task(self.runtime, self.task)
        self.preprocess = preprocess
        self.transform: Callable[[Image.Image], Tensor] = eval_transform(preprocess)
        self.fast_decode = fast_decode
        logits = self.runtime.signature()[1][0][1]  # [B, num_classes] or [B, num_classes, h, w]
        num_classes = logits[1] if len(logits) > 1 else None  # None when the model does not say
        if labels is None:
            labels = labels_for(num_classes or 0)
        elif num_classes:
            labels = check_labels(labels, num_classes)
        self.labels = list(labels)
        self.batch_size = batch_size
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.sizes = sizes or InputSizes()
        self.fixed_batch: int | None = self.runtime.fixed_batch  # the batch every run takes (None: any)
        self.source: str | None = None  # where the weights came from: a weights name or a file (None: unknown/random)

    @property
    def model_name(self) -> str:
        """The model in messages: its architecture or exported file, and the weights it was built from."""
        name = _runtime_name(self.runtime)
        if self.source is None or self.source in name:  # random weights, or an exported file (its path)
            return name
        if self.source.startswith(f"{name}."):  # a weights name: "arch.tag"
            return self.source
        return f"{name} (weights {self.source})"

    @property
    def model(self) -> nn.Module:
        """The PyTorch module an eager predictor runs (folded unless built with ``fold=False``)."""
        if not isinstance(self.runtime, TorchRuntime):
            raise AttributeError(f"a {self.runtime.name} predictor runs an exported file, not a PyTorch module")
        return self.runtime.model

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        pretrained: bool | str | os.PathLike = True,
        labels: Sequence[str] | None = None,
        *,
        allow_random_head: bool = False,
        **kwargs: Any,
    ) -> Predictor:
        """Build from ``"arch"``, ``"arch.tag"`` or a saved folder, and weights (``True``: the entry's file; or a path).

        The preprocessing, the class names and the source come from :func:`~mobilevit.weights.model_io` (the
        checkpoint's own, its entry's, the architecture's default entry's; ImageNet-1k names for 1000 outputs, else
        ``class_<i>``) unless ``labels`` gives one per output. ``pretrained=False`` gives random weights, for testing
        only; a warning says so. Weights that leave the model's head random (a classification checkpoint given to a
        segmentation model, a checkpoint without a classifier) are refused unless ``allow_random_head`` (see
        :func:`~mobilevit.create_model`). ``kwargs``: ``batch_size``, ``workers``, ``fold``, ``fast_decode``.
        """
        from .registry import create_model

        model = create_model(name, pretrained=pretrained, allow_random_head=allow_random_head)
        return cls.from_model(model, labels, pretrained=pretrained, **kwargs)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        labels: Sequence[str] | None = None,
        *,
        pretrained: bool | str | os.PathLike = True,
        **kwargs: Any,
    ) -> Predictor:
        """Build around a model of this package (from :func:`~mobilevit.create_model`), with the preprocessing, labels
        and source :func:`~mobilevit.weights.model_io` gives it (see :meth:`from_pretrained`).

        Args:
            model: the network; it is put in eval mode and, unless ``fold=False``, re-parameterized in place.
            labels: class names replacing the model's own.
            pretrained: how its weights were chosen: ``True`` (its entry's file), a path, or ``False`` (random: a
                warning says so).
            **kwargs: ``batch_size``, ``workers``, ``fold``, ``fast_decode``.
        """
        io = model_io(model)
        names = check_labels(labels, model.num_classes, "--labels") if labels is not None else io.labels
        predictor = cls(model, io.preprocess, names, **kwargs)
        if not pretrained:
            warn_random_weights(io.arch, "its predictions mean nothing")
        if io.source is not None:  # the weights name when the entry's own file was loaded, else the file or folder
            predictor.source = io.weights if pretrained is True and io.weights is not None else io.source
        return predictor

    @classmethod
    def from_exported(
        cls,
        path: str | os.PathLike,
        preprocess: Preprocess | None = None,
        labels: Sequence[str] | None = None,
        batch_size: int = 16,
        threads: int = 0,
        workers: int | None = None,
        *,
        backend: str | None = None,
        fast_decode: bool = False,
    ) -> Predictor:
        """Build over an exported file, with the metadata it records: ``.onnx`` run by onnxruntime or OpenVINO,
        ``.pte`` by ExecuTorch, ``.tflite`` by LiteRT: :meth:`from_runtime` over
        :func:`~mobilevit.runtime.open_runtime`.

        Args:
            path: the exported file (input ``[B, 3, H, W]`` float32, output ``[B, num_classes]`` logits, or
                ``[B, num_classes, h, w]`` for a segmentation model, which :class:`~mobilevit.segment.Segmenter` runs).
            preprocess: a :class:`~mobilevit.weights.entries.Preprocess` replacing the file's (required when it has
                none).
            labels: class names replacing the file's.
            batch_size: images per run.
            threads: the runtime's inference threads (0: its default, one per physical core).
            workers: threads that decode and preprocess images while the model runs.
            backend: ``"onnxruntime"`` or ``"openvino"`` for ``.onnx``, ``"executorch"``, ``"litert"``; ``None``: the
                one the suffix implies (:func:`~mobilevit.runtime.resolve_backend`).
            fast_decode: approximate, faster decoding of large JPEGs (see :class:`Predictor`).
        """
        runtime = open_exported(path, backend, threads)
        return cls.from_runtime(runtime, preprocess, labels, batch_size, workers, fast_decode=fast_decode)

    @classmethod
    def from_runtime(
        cls,
        runtime: Runtime,
        preprocess: Preprocess | None = None,
        labels: Sequence[str] | None = None,
        batch_size: int = 16,
        workers: int | None = None,
        *,
        fast_decode: bool = False,
    ) -> Predictor:
        """Build over an exported file already open in its runtime (:func:`~mobilevit.runtime.open_runtime`), with
        the metadata it records.

        The preprocessing and labels are the ones :func:`mobilevit.export.export_model` recorded in the file; pass
        ``preprocess`` (and ``labels``) for a file from elsewhere. A graph exported with a fixed batch runs that
        many images at a time (the last run padded); a graph that cannot take the preprocessing's input size is
        refused, and so is a file of the other task (its metadata's ``task``).

        Args:
            runtime: the open file.
            preprocess, labels, batch_size, workers, fast_decode: as for :meth:`from_exported`.
        """
        check_task(runtime, cls.task)
        path = getattr(runtime, "path", runtime.name)
        meta = _recorded_metadata(runtime)
        preprocess = preprocess or (meta.preprocess if meta is not None else None)
        if preprocess is None:
            raise UsageError(
                f"{path}: the file records no preprocessing (not written by `mobilevit export`); export it with "
                f"`mobilevit export`, or pass preprocess= (and labels=) to {_constructor_name(cls, runtime.name)}"
            )
        if labels is None and meta is not None:
            labels = meta.labels
        shape = _image_input(runtime.signature()[0], path)
        sizes = InputSizes((shape[2], shape[3]), 1, str(path))
        if meta is not None:
            sizes = InputSizes(sizes.fixed, meta.size_multiple, str(path), meta.arch)
        height, width = preprocess.input_size
        try:
            sizes.check(height, width)
        except ValueError as err:
            raise UsageError(
                f"{err}, but its preprocessing {'resizes to' if cls.task == 'segmentation' else 'crops'} "
                f"{height}x{width}: export it again with "
                f"`--input-size {height} {width}`"
            ) from None
        predictor = cls(
            runtime, preprocess, labels, batch_size=batch_size, workers=workers, sizes=sizes, fast_decode=fast_decode
        )
        predictor.source = str(path)
        return predictor

    @classmethod
    def create(
        cls,
        model: str | os.PathLike,
        backend: str | None = None,
        pretrained: bool | str | os.PathLike = True,
        threads: int = 0,
        *,
        allow_random_head: bool = False,
        **kwargs: Any,
    ) -> Predictor:
        """This class over ``model``: eager for a model name or folder (:meth:`from_pretrained`), a runtime for an
        exported file (:meth:`from_exported`; ``.onnx``: onnxruntime or OpenVINO; ``.pte``: ExecuTorch; ``.tflite``:
        LiteRT). :func:`load_predictor` is this for a classifier.

        Args:
            model: architecture, ``arch.tag``, saved folder or exported file.
            backend: one of :data:`BACKENDS`; ``None`` infers it from ``model`` (see
                :func:`~mobilevit.runtime.resolve_backend`).
            pretrained: weights of an eager model; an exported file carries its own, so it must stay ``True`` there.
            threads: the runtime's inference threads (0: its default); eager models use ``torch.set_num_threads``.
            allow_random_head: load weights that leave an eager model's head random (see :meth:`from_pretrained`).
            **kwargs: ``batch_size``, ``workers``, ``labels``, ``fast_decode``.
        """
        backend = resolve_backend(model, backend)
        if backend in EXPORTED_BACKENDS:
            check_exported_weights(model, pretrained)
            return cls.from_exported(model, threads=threads, backend=backend, **kwargs)
        return cls.from_pretrained(str(model), pretrained=pretrained, allow_random_head=allow_random_head, **kwargs)

    def prepare(
        self,
        item: ImageInput,
        name: str | None = None,
        *,
        max_pixels: int | None = None,
        fast_decode: bool | None = None,
    ) -> Tensor:
        """Decode one image input and preprocess it into the model's ``[3, H, W]`` float32 input.

        Args:
            item: a path, encoded bytes, a PIL image, an array or a tensor (see :meth:`predict`).
            name: the input in error messages.
            max_pixels: largest accepted ``width * height`` (default: PIL's limit), checked before decoding.
            fast_decode: ``None`` for the predictor's setting. ``True``: a JPEG file or bytes at least twice the
                preprocessing's ``resize_size`` on its shorter side is decoded DCT-downscaled
                (:func:`~mobilevit.data.images.open_image`), approximately; any other input gives the same tensor as
                ``False``, which is bit-exact with the reference pipelines (timm, transformers, ml-cvnets).

        Raises:
            ImageError: an unreadable input, naming it.
        """
        fast = self.fast_decode if fast_decode is None else fast_decode
        return self.transform(decode_input(item, name, max_pixels, self.preprocess.resize_size if fast else None))

    @torch.inference_mode()
    def forward(self, batch: Tensor) -> Tensor:
        """One pass of the runtime over a preprocessed ``[B, 3, H, W]`` batch, whatever ``B``.

        A runtime that takes a fixed batch runs several times, the last run padded with zeros.
        """
        self.sizes.check(batch.shape[2], batch.shape[3])
        fixed = self.fixed_batch
        if fixed is None:
            return self.runtime.run(batch)
        outputs = []
        for part in batch.split(fixed):
            padded = torch.cat([part, part.new_zeros(fixed - len(part), *part.shape[1:])])
            outputs.append(self.runtime.run(padded)[: len(part)])
        return torch.cat(outputs)

    @torch.inference_mode()
    def logits(self, batch: Tensor) -> Tensor:
        """Model outputs for a preprocessed ``[B, 3, H, W]`` batch, run ``batch_size`` at a time."""
        return torch.cat([self.forward(chunk) for chunk in batch.split(self.batch_size)])

    def topk(self, logits: Tensor, top_k: int = 5, function: Activation = "softmax") -> list[list[Prediction]]:
        """The ``top_k`` best classes of each row of ``logits``: higher score first, ties by lower class index.

        The order is the same for every backend and batch size: ``torch.topk`` leaves the order of equal scores
        unspecified (it differs between a batch of 1 and a batch of 16), a stable sort does not.

        Raises:
            NonFiniteOutputError: a logit (or score) is NaN or infinite, naming the model.
        """
        if top_k < 1:
            raise UsageError(f"top_k must be at least 1, got {top_k}")
        check_finite(logits, self.model_name)
        scores = scores_from_logits(logits, function)
        check_finite(scores, self.model_name)  # finite logits give finite scores, unless "none" overflows float32
        values, indices = scores.sort(dim=-1, descending=True, stable=True)
        values, indices = values[..., :top_k], indices[..., :top_k]
        return [
            [Prediction(self.labels[i], float(v), int(i)) for v, i in zip(vs.tolist(), ix.tolist(), strict=True)]
            for vs, ix in zip(values, indices, strict=True)
        ]

    def predict(
        self, inputs: ImageInput | Sequence[ImageInput], top_k: int = 5, function: Activation = "softmax"
    ) -> list[list[Prediction]]:
        """Classify images: paths, encoded bytes, PIL images, arrays or tensors (one, or a list).

        Returns one top-k list per input. A bad input raises :class:`~mobilevit.data.images.ImageError` naming it;
        use :meth:`predict_files` to classify many files and collect per-file errors instead.
        """
        if not isinstance(inputs, list | tuple):
            inputs = [inputs]
        check_activation(function)
        batch = torch.stack([self.prepare(item) for item in inputs])
        return self.topk(self.logits(batch), top_k, function)

    def predict_files(
        self,
        paths: Iterable[str | os.PathLike],
        top_k: int = 5,
        function: Activation = "softmax",
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[str, list[Prediction] | ImageError]]:
        """Yield ``(path, predictions)`` in input order, or ``(path, error)`` for a file that cannot be read.

        Decoding runs in ``workers`` threads, ahead of the model; ``progress(n)`` is called after each batch. Outputs
        that are NaN or infinite stop the run with :class:`~mobilevit.errors.NonFiniteOutputError` (the model's fault,
        not a file's).
        """
        check_activation(function)

        def answer(images: list[Tensor]) -> list[list[Prediction]]:
            return self.topk(self.logits(torch.stack(images)), top_k, function)

        for path, result in self.map_files(paths, lambda path: self.prepare(path, str(path)), answer, progress):
            yield str(path), result

    def map_files(
        self,
        items: Iterable[T],
        load: Callable[[T], Any],
        answer: Callable[[list[Any]], list[Any]],
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[T, Any]]:
        """The loop under :meth:`predict_files` and its kin: ``load`` items in ``workers`` threads, one batch ahead of
        the model, and ``answer`` each batch of loaded items.

        Args:
            items: what ``load`` reads (a path, or a path pair), in the order the answers come back.
            load: item -> what ``answer`` takes; an :class:`~mobilevit.data.images.ImageError` it raises becomes the
                item's answer.
            answer: ``batch_size`` loaded items (or fewer) -> one answer each.
            progress: called with the number of items after each batch.

        Yields:
            ``(item, answer)``, or ``(item, error)`` for an item ``load`` could not read.
        """

        def safe_load(item: T) -> Any:
            try:
                return load(item)
            except ImageError as err:
                return err

        items = list(items)
        chunks = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        with ThreadPoolExecutor(self.workers) as pool:
            pending = [pool.submit(safe_load, item) for item in chunks[0]] if chunks else []
            for k, chunk in enumerate(chunks):
                loaded = [f.result() for f in pending]
                # decode the next batch while the model runs on this one
                pending = [pool.submit(safe_load, item) for item in chunks[k + 1]] if k + 1 < len(chunks) else []
                good = [i for i, x in enumerate(loaded) if not isinstance(x, ImageError)]
                answers = dict(zip(good, answer([loaded[i] for i in good]) if good else [], strict=True))
                for i, item in enumerate(chunk):
                    yield item, answers.get(i, loaded[i])
                if progress:
                    progress(len(chunk))


def _recorded_metadata(runtime: Runtime) -> ExportMetadata | None:
    """The :class:`~mobilevit.runtime.metadata.ExportMetadata` the file records, or ``None`` (not written by this
    package)."""
    try:
        return ExportMetadata.from_dict(runtime.metadata())
    except (ValueError, KeyError):
        return None


def _image_input(inputs: Signature, path: str | os.PathLike) -> list[int | None]:
    """The shape of the graph's one ``[batch, 3, height, width]`` input (``None`` where dynamic), or a clear error."""
    if len(inputs) != 1 or len(inputs[0][1]) != 4 or inputs[0][1][1] not in (3, None):
        shapes = ", ".join(str(shape) for _, shape in inputs) or "none"
        raise UsageError(f"{path}: expected one [batch, 3, height, width] input, got {shapes}")
    return inputs[0][1]


def OnnxPredictor(path: str | os.PathLike, *args: Any, **kwargs: Any) -> Predictor:  # noqa: N802 (a constructor)
    """The predictor over an exported ``.onnx`` file run by onnxruntime: :meth:`Predictor.from_exported`."""
    return Predictor.from_exported(path, *args, backend="onnxruntime", **kwargs)


def OpenVINOPredictor(path: str | os.PathLike, *args: Any, **kwargs: Any) -> Predictor:  # noqa: N802 (a constructor)
    """The predictor over an exported ``.onnx`` file run by OpenVINO's CPU plugin in fp32:
    :meth:`Predictor.from_exported`."""
    return Predictor.from_exported(path, *args, backend="openvino", **kwargs)


def ExecuTorchPredictor(path: str | os.PathLike, *args: Any, **kwargs: Any) -> Predictor:  # noqa: N802
    """The predictor over an exported ``.pte`` program run by ExecuTorch (XNNPACK): :meth:`Predictor.from_exported`."""
    return Predictor.from_exported(path, *args, backend="executorch", **kwargs)


def LiteRTPredictor(path: str | os.PathLike, *args: Any, **kwargs: Any) -> Predictor:  # noqa: N802 (a constructor)
    """The predictor over an exported ``.tflite`` model run by LiteRT (XNNPACK): :meth:`Predictor.from_exported`."""
    return Predictor.from_exported(path, *args, backend="litert", **kwargs)


# the predictor of an exported file, by backend name; "eager" is Predictor.from_pretrained
ONNX_PREDICTORS: dict[str, Callable[..., Predictor]] = {"onnxruntime": OnnxPredictor, "openvino": OpenVINOPredictor}
EXPORTED_PREDICTORS: dict[str, Callable[..., Predictor]] = {
    **ONNX_PREDICTORS,
    "executorch": ExecuTorchPredictor,
    "litert": LiteRTPredictor,
}


def _constructor_name(cls: type[Predictor], backend: str) -> str:
    if cls is Predictor and backend in EXPORTED_PREDICTORS:
        return EXPORTED_PREDICTORS[backend].__name__
    return f"{cls.__name__}.from_exported"


def load_predictor(
    model: str | os.PathLike,
    backend: str | None = None,
    pretrained: bool | str | os.PathLike = True,
    threads: int = 0,
    **kwargs: Any,
) -> Predictor:
    """The predictor the CLI and the server use: eager for a model name, a runtime for an exported file (``.onnx``:
    onnxruntime or OpenVINO; ``.pte``: ExecuTorch; ``.tflite``: LiteRT); :meth:`Predictor.create`.

    Args:
        model: architecture, ``arch.tag`` or saved folder (:meth:`Predictor.from_pretrained`), or an exported file
            (:meth:`Predictor.from_exported`).
        backend: one of :data:`BACKENDS`; ``None`` infers it from ``model`` (see
            :func:`~mobilevit.runtime.resolve_backend`).
        pretrained: weights of an eager model; an exported file carries its own, so it must stay ``True`` there.
        threads: the runtime's inference threads (0: its default); eager models use ``torch.set_num_threads``.
        **kwargs: ``batch_size``, ``workers``, ``labels``, ``fast_decode``, ``allow_random_head`` (load weights that
            leave the head random, refused by default: see :meth:`Predictor.from_pretrained`).
    """
    return Predictor.create(model, backend, pretrained, threads, **kwargs)


__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "EXPORTED_PREDICTORS",
    "ONNX_PREDICTORS",
    "Activation",
    "ExecuTorchPredictor",
    "ImageInput",
    "InputSizes",
    "LiteRTPredictor",
    "OnnxPredictor",
    "OpenVINOPredictor",
    "Prediction",
    "Predictor",
    "check_activation",
    "check_exported_weights",
    "check_finite",
    "check_task",
    "decode_input",
    "load_predictor",
    "open_exported",
    "resolve_backend",
    "scores_from_logits",
]
