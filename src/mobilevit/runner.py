"""The runner: preprocessing + a runtime + the model's task, built once from a model name, folder or exported file.

Every path that runs a model runs through a :class:`Runner`: the ``predict``, ``segment`` and ``eval`` commands, the
HTTP server, the benchmarks and the Python API (:class:`~mobilevit.predict.Predictor` and
:class:`~mobilevit.segment.Segmenter` are runners bound to their task). A runner is the preprocessing and labels of a
model around a :class:`~mobilevit.runtime.Runtime` (the folded PyTorch model, or an exported file in onnxruntime,
OpenVINO, ExecuTorch or LiteRT), and the model's :class:`~mobilevit.tasks.Task`, which preprocesses its images (crop or
whole-image resize) and turns each image's outputs into a result. :func:`load_runner` is the one function that builds
one from whatever the user names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .data.images import ImageError, open_image
from .data.transforms import eval_transform
from .errors import UsageError
from .runtime import EXPORTED_BACKENDS, ExportMetadata, Runtime, Signature, TorchRuntime, open_runtime, resolve_backend
from .tasks import Task, get_task, task_of
from .weights.entries import Preprocess, check_labels, labels_for
from .weights.load import require_regular_file
from .weights.pretrained import model_io

logger = logging.getLogger(__name__)

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray | Tensor
T = TypeVar("T")
R = TypeVar("R", bound="Runner")


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


def check_task(runtime: Runtime, task: Task | None) -> Task:
    """The task of the model ``runtime`` runs; a clear error when it is not ``task`` (when given): the model's own task
    says what it is and what runs it."""
    own = get_task(runtime.task)
    if task is not None and own is not task:
        raise UsageError(own.wrong_runner(_runtime_name(runtime)))
    return own


def check_exported_weights(model: str | os.PathLike, pretrained: bool | str | os.PathLike) -> None:
    """An exported file carries its weights: refuse ``--pretrained`` / ``--random-weights`` for one."""
    if pretrained is not True:
        raise UsageError(f"{model}: an exported file carries its weights; --pretrained/--random-weights do not apply")


def open_exported(path: str | os.PathLike, backend: str | None = None, threads: int = 0) -> Runtime:
    """:func:`~mobilevit.runtime.open_runtime` of an exported file, refusing a path that is not a regular file (a FIFO
    would block the runtime's reader forever)."""
    require_regular_file(path, "Exported model file", UsageError)
    return open_runtime(path, backend, threads)


RUNNERS: dict[str, type[Runner]] = {}  # the runner class bound to a task (Predictor, Segmenter), by task name


class Runner:
    """A model's preprocessing and labels around the runtime that runs it, and its task's post-processing.

    A subclass bound to one task (``task = CLASSIFICATION``: :class:`~mobilevit.predict.Predictor`) refuses a model of
    another task, with that model's task's message saying what runs it; :func:`load_runner` builds the subclass bound
    to the model's task, or a plain runner for a task that has none.

    Args:
        runtime: the :class:`~mobilevit.runtime.Runtime`; a PyTorch module runs in a
            :class:`~mobilevit.runtime.TorchRuntime` (folded when ``fold``).
        preprocess: the weights' :class:`~mobilevit.weights.entries.Preprocess` (the task adapts it: a segmentation
            model resizes the whole image, never crops).
        labels: class names, index-aligned with the outputs (default: ``"class_<i>"``).
        batch_size: images per forward pass.
        workers: threads that decode and preprocess images while the model runs.
        fold: for a PyTorch module: re-parameterize it (fold BatchNorms and branches) — same outputs, faster.
        sizes: the input sizes the runtime takes (default: any).
        fast_decode: decode JPEGs at least twice the size the model needs DCT-downscaled (see :meth:`load_input`):
            several times faster for camera photos, approximate; other images are decoded as without it. ``False``
            (the default) is bit-exact with the reference pipelines. A task whose results have the image's size
            (segmentation) always decodes exactly.
        task: the task the model must answer (default: the class's, else the model's own).
        source: where the weights came from, a weights name or a file (``None``: unknown or random).
    """

    task: ClassVar[Task | None] = None  # the task a subclass is bound to (None: the model's own)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("task") is not None:
            RUNNERS[cls.task.name] = cls

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
        task: Task | None = None,
        source: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        self.runtime = runtime if isinstance(runtime, Runtime) else TorchRuntime(runtime, fold)
        self.task: Task = check_task(self.runtime, task or type(self).task)
        self.preprocess = self.task.preprocess(preprocess)
        self.transform: Callable[[Image.Image], Tensor] = eval_transform(self.preprocess)
        self.fast_decode = fast_decode
        logits = self.runtime.signature()[1][0][1]  # [B, num_classes], [B, num_classes, h, w], [B, anchors, classes]
        axis = self.task.output_axes.index("classes") if "classes" in self.task.output_axes else None
        scored = logits[axis] if axis is not None and axis < len(logits) else None  # None: the model does not say
        num_classes = self.task.labelled_classes(scored) if scored else None
        if labels is not None and scored and num_classes != scored and len(labels) == scored:
            labels = list(labels)[scored - num_classes :]  # a name for every output, the background's first
        if labels is None:
            labels = labels_for(num_classes or 0, label_set=self.task.default_label_set)
        elif num_classes:
            labels = check_labels(labels, num_classes)
        self.labels = list(labels)
        self.batch_size = batch_size
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.sizes = sizes or InputSizes()
        self.fixed_batch: int | None = self.runtime.fixed_batch  # the batch every run takes (None: any)
        self.source = source

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
        """The PyTorch module an eager runner runs (folded unless built with ``fold=False``)."""
        if not isinstance(self.runtime, TorchRuntime):
            raise AttributeError(f"a {self.runtime.name} predictor runs an exported file, not a PyTorch module")
        return self.runtime.model

    # ------------------------------------------------------------------------------------------------ building

    @classmethod
    def from_pretrained(
        cls: type[R],
        name: str,
        pretrained: bool | str | os.PathLike = True,
        labels: Sequence[str] | None = None,
        *,
        allow_random_head: bool = False,
        **kwargs: Any,
    ) -> R:
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
        cls: type[R],
        model: nn.Module,
        labels: Sequence[str] | None = None,
        *,
        pretrained: bool | str | os.PathLike = True,
        **kwargs: Any,
    ) -> R:
        """Build around a model of this package (from :func:`~mobilevit.create_model`), with the preprocessing, labels
        and source :func:`~mobilevit.weights.model_io` gives it (see :meth:`from_pretrained`).

        Args:
            model: the network; it is put in eval mode and, unless ``fold=False``, re-parameterized in place.
            labels: class names replacing the model's own.
            pretrained: how its weights were chosen: ``True`` (its entry's file), a path, or ``False`` (random: a
                warning says so).
            **kwargs: ``batch_size``, ``workers``, ``fold``, ``fast_decode``, ``task``.
        """
        io = model_io(model)
        labelled = (kwargs.get("task") or cls.task or task_of(model)).labelled_classes(model.num_classes)
        names = check_labels(labels, labelled, "--labels") if labels is not None else io.labels
        if names is not None and len(names) not in (labelled, model.num_classes):  # names of some other classes
            names = None  # the task's default names (a name per output, the background's first, is cut by __init__)
        source = None
        if io.source is not None:  # the weights name when the entry's own file was loaded, else the file or folder
            source = io.weights if pretrained is True and io.weights is not None else io.source
        runner = cls(model, io.preprocess, names, source=source, **kwargs)
        if not pretrained:
            warn_random_weights(io.arch, "its predictions mean nothing")
        return runner

    @classmethod
    def from_exported(
        cls: type[R],
        path: str | os.PathLike,
        preprocess: Preprocess | None = None,
        labels: Sequence[str] | None = None,
        batch_size: int = 16,
        threads: int = 0,
        workers: int | None = None,
        *,
        backend: str | None = None,
        fast_decode: bool = False,
    ) -> R:
        """Build over an exported file, with the metadata it records: ``.onnx`` run by onnxruntime or OpenVINO,
        ``.pte`` by ExecuTorch, ``.tflite`` by LiteRT: :meth:`from_runtime` over
        :func:`~mobilevit.runtime.open_runtime`.

        Args:
            path: the exported file (input ``[B, 3, H, W]`` float32, outputs as its task names them: ``[B,
                num_classes]`` logits for a classifier, ``[B, num_classes, h, w]`` for a segmentation model).
            preprocess: a :class:`~mobilevit.weights.entries.Preprocess` replacing the file's (required when it has
                none).
            labels: class names replacing the file's.
            batch_size: images per run.
            threads: the runtime's inference threads (0: its default, one per physical core).
            workers: threads that decode and preprocess images while the model runs.
            backend: ``"onnxruntime"`` or ``"openvino"`` for ``.onnx``, ``"executorch"``, ``"litert"``; ``None``: the
                one the suffix implies (:func:`~mobilevit.runtime.resolve_backend`).
            fast_decode: approximate, faster decoding of large JPEGs (see :class:`Runner`).
        """
        runtime = open_exported(path, backend, threads)
        return cls.from_runtime(runtime, preprocess, labels, batch_size, workers, fast_decode=fast_decode)

    @classmethod
    def from_runtime(
        cls: type[R],
        runtime: Runtime,
        preprocess: Preprocess | None = None,
        labels: Sequence[str] | None = None,
        batch_size: int = 16,
        workers: int | None = None,
        *,
        fast_decode: bool = False,
        task: Task | None = None,
    ) -> R:
        """Build over an exported file already open in its runtime (:func:`~mobilevit.runtime.open_runtime`), with
        the metadata it records.

        The preprocessing and labels are the ones :func:`mobilevit.export.export_model` recorded in the file; pass
        ``preprocess`` (and ``labels``) for a file from elsewhere. A graph exported with a fixed batch runs that
        many images at a time (the last run padded); a graph that cannot take the preprocessing's input size is
        refused, and so is a file of another task than the class's (its metadata's ``task``).
        """
        own = check_task(runtime, task or cls.task)
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
            fits = "resizes to" if own.preprocess(preprocess).resize_mode == "exact" else "crops"
            raise UsageError(
                f"{err}, but its preprocessing {fits} {height}x{width}: export it again with "
                f"`--input-size {height} {width}`"
            ) from None
        return cls(
            runtime,
            preprocess,
            labels,
            batch_size=batch_size,
            workers=workers,
            sizes=sizes,
            fast_decode=fast_decode,
            task=task,
            source=str(path),
        )

    @classmethod
    def create(
        cls: type[R],
        model: str | os.PathLike,
        backend: str | None = None,
        pretrained: bool | str | os.PathLike = True,
        threads: int = 0,
        **kwargs: Any,
    ) -> R:
        """This class over ``model`` (a name, folder or exported file): :func:`load_runner` with this class.

        ``kwargs``: ``batch_size``, ``workers``, ``labels``, ``fold``, ``fast_decode``, ``allow_random_head``.
        """
        return load_runner(model, backend, pretrained, threads, runner=cls, **kwargs)

    # ------------------------------------------------------------------------------------------------- running

    def load_input(
        self,
        item: ImageInput,
        name: str | None = None,
        *,
        max_pixels: int | None = None,
        fast_decode: bool | None = None,
    ) -> tuple[Tensor, Any]:
        """Decode one image input: ``(the model's [3, H, W] float32 input, what the task keeps of the image for its
        post-processing)``.

        Args:
            item: a path, encoded bytes, a PIL image, an array or a tensor.
            name: the input in error messages.
            max_pixels: largest accepted ``width * height`` (default: PIL's limit), checked before decoding.
            fast_decode: ``None`` for the runner's setting. ``True``: a JPEG file or bytes at least twice the
                preprocessing's ``resize_size`` on its shorter side is decoded DCT-downscaled
                (:func:`~mobilevit.data.images.open_image`), approximately, unless the task decodes exactly; any other
                input gives the same tensor as ``False``, which is bit-exact with the reference pipelines (timm,
                transformers, ml-cvnets).

        Raises:
            ImageError: an unreadable input, naming it.
        """
        fast = (self.fast_decode if fast_decode is None else fast_decode) and not self.task.exact_decode
        image = decode_input(item, name, max_pixels, self.preprocess.resize_size if fast else None)
        return self.transform(image), self.task.context(image)

    def prepare(
        self,
        item: ImageInput,
        name: str | None = None,
        *,
        max_pixels: int | None = None,
        fast_decode: bool | None = None,
    ) -> Tensor:
        """The model's ``[3, H, W]`` float32 input for one image input (see :meth:`load_input`)."""
        return self.load_input(item, name, max_pixels=max_pixels, fast_decode=fast_decode)[0]

    @torch.inference_mode()
    def forward(self, batch: Tensor) -> Outputs:
        """One pass of the runtime over a preprocessed ``[B, 3, H, W]`` batch, whatever ``B``: the model's output
        tensor, or, for a task with several outputs (:attr:`~mobilevit.tasks.Task.outputs`), a dict of them by name.

        A runtime that takes a fixed batch runs several times, the last run padded with zeros.
        """
        self.sizes.check(batch.shape[2], batch.shape[3])
        fixed = self.fixed_batch
        if fixed is None:
            return self._run(batch)
        outputs = []
        for part in batch.split(fixed):
            padded = torch.cat([part, part.new_zeros(fixed - len(part), *part.shape[1:])])
            outputs.append(_map(self._run(padded), lambda t, part=part: t[: len(part)]))
        return _cat(outputs)

    def _run(self, batch: Tensor) -> Outputs:
        """The runtime's output for one batch: the first output, or the task's outputs by name, each ``[B, ...]``."""
        names = self.task.outputs
        if len(names) == 1:
            return self.runtime.run(batch)
        named = self.runtime.run_named(batch)
        if not all(name in named for name in names):  # a graph that names its outputs otherwise: by position
            if len(named) != len(names):
                raise UsageError(
                    f"{self.model_name} gives the outputs {list(named)}; {self.task.title} needs {list(names)}"
                )
            named = dict(zip(names, named.values(), strict=True))
        return self.task.batched({name: named[name] for name in names}, len(batch))

    @torch.inference_mode()
    def logits(self, batch: Tensor) -> Outputs:
        """Model outputs for a preprocessed ``[B, 3, H, W]`` batch, run ``batch_size`` at a time (see
        :meth:`forward`)."""
        return _cat([self.forward(chunk) for chunk in batch.split(self.batch_size)])

    def postprocess(self, outputs: Tensor, context: Any = None, **options: Any) -> Any:
        """One image's result from its row of the model's outputs: the task's post-processing."""
        return self.task.postprocess(self, outputs, context, **options)

    def answer(self, loaded: list[tuple[Tensor, Any]], **options: Any) -> list[Any]:
        """The results of a batch of :meth:`load_input` pairs, one forward pass at a time."""
        outputs = self.logits(torch.stack([x for x, _ in loaded]))
        finish = self.task.postprocess
        rows = output_rows(outputs)
        return [finish(self, row, context, **options) for row, (_, context) in zip(rows, loaded, strict=True)]

    def run(self, inputs: ImageInput | Sequence[ImageInput], **options: Any) -> list[Any]:
        """The task's result for each image: paths, encoded bytes, PIL images, arrays or tensors (one, or a list).

        A bad input raises :class:`~mobilevit.data.images.ImageError` naming it; :meth:`run_files` collects per-file
        errors instead. ``options`` go to the task's post-processing.
        """
        if not isinstance(inputs, list | tuple):
            inputs = [inputs]
        self.task.check_options(**options)
        return self.answer([self.load_input(item) for item in inputs], **options)

    def predict(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """Top-k classes are a classifier's answer (:meth:`mobilevit.predict.Predictor.predict`): for a model of
        another task, an error saying what it is and what runs it (use :meth:`run`)."""
        raise UsageError(self.task.wrong_runner(self.model_name))

    def run_files(
        self, paths: Iterable[str | os.PathLike], progress: Callable[[int], None] | None = None, **options: Any
    ) -> Iterator[tuple[str, Any]]:
        """Yield ``(path, result)`` in input order, or ``(path, error)`` for a file that cannot be read.

        Decoding runs in ``workers`` threads, ahead of the model; ``progress(n)`` is called after each batch. Outputs
        that are NaN or infinite stop the run with :class:`~mobilevit.errors.NonFiniteOutputError` (the model's fault,
        not a file's).
        """
        self.task.check_options(**options)

        def load(path: str | os.PathLike) -> tuple[Tensor, Any]:
            return self.load_input(path, str(path))

        for path, result in self.map_files(paths, load, lambda batch: self.answer(batch, **options), progress):
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


Outputs = Tensor | dict[str, Tensor]  # a model's output, or its outputs by name (a task with several)


def _map(outputs: Outputs, function: Callable[[Tensor], Tensor]) -> Outputs:
    return {name: function(t) for name, t in outputs.items()} if isinstance(outputs, dict) else function(outputs)


def _cat(parts: list[Outputs]) -> Outputs:
    """Batches of outputs joined along the batch axis."""
    if isinstance(parts[0], dict):
        return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}  # type: ignore[index]
    return torch.cat(parts)  # type: ignore[arg-type]


def output_rows(outputs: Outputs) -> list[Outputs]:
    """Each image's outputs of a batch's: a row of the tensor, or a dict of the rows of each named output."""
    if isinstance(outputs, dict):
        named = list(outputs.items())
        return [{name: t[i] for name, t in named} for i in range(len(named[0][1]))]
    return list(outputs)


def all_finite(outputs: Outputs) -> bool:
    """Whether every value of the outputs is finite."""
    values = outputs.values() if isinstance(outputs, dict) else [outputs]
    return all(bool(torch.isfinite(t).all()) for t in values)


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


# the name of the constructor of a runner class over an exported file, by backend, for messages (predict.py fills it)
EXPORTED_CONSTRUCTORS: dict[tuple[type, str], str] = {}


def _constructor_name(cls: type, backend: str) -> str:
    return EXPORTED_CONSTRUCTORS.get((cls, backend), f"{cls.__name__}.from_exported")


def load_runner(
    model: str | os.PathLike,
    backend: str | None = None,
    pretrained: bool | str | os.PathLike = True,
    threads: int = 0,
    *,
    task: Task | None = None,
    runner: type[Runner] | None = None,
    allow_random_head: bool = False,
    **kwargs: Any,
) -> Any:
    """The runner of ``model``: eager for an architecture, ``arch.tag`` or saved folder, a runtime for an exported
    file (``.onnx``: onnxruntime or OpenVINO; ``.pte``: ExecuTorch; ``.tflite``: LiteRT). The one place that tells
    the two apart.

    The runner is ``runner`` when given, else the class bound to the model's task (:data:`RUNNERS`), else a plain
    :class:`Runner`. A model of another task than ``task`` (or ``runner``'s) is refused with a message saying what it
    is and what runs it.

    Args:
        model: architecture, ``arch.tag``, saved folder or exported file.
        backend: one of :data:`~mobilevit.runtime.BACKENDS`; ``None`` infers it from ``model`` (see
            :func:`~mobilevit.runtime.resolve_backend`).
        pretrained: weights of an eager model (``True``: the entry's file; a path; ``False``: random, for testing); an
            exported file carries its own, so it must stay ``True`` there.
        threads: the runtime's inference threads (0: its default); eager models use ``torch.set_num_threads``.
        task: the task the model must answer (default: its own).
        runner: the runner class (default: the one bound to the model's task).
        allow_random_head: load weights that leave an eager model's head random (refused by default, see
            :func:`~mobilevit.create_model`).
        **kwargs: ``batch_size``, ``workers``, ``labels``, ``fold`` (eager), ``fast_decode``.
    """
    from .registry import create_model

    backend = resolve_backend(model, backend)
    if backend in EXPORTED_BACKENDS:
        check_exported_weights(model, pretrained)
        runtime = open_exported(model, backend, threads)
        own = check_task(runtime, task or (runner.task if runner is not None else None))
        kwargs.pop("fold", None)  # an exported graph is run as it was exported
        return (runner or RUNNERS.get(own.name, Runner)).from_runtime(runtime, task=task, **kwargs)
    network = create_model(str(model), pretrained=pretrained, allow_random_head=allow_random_head)
    cls = runner or RUNNERS.get((task or task_of(network)).name, Runner)
    return cls.from_model(network, pretrained=pretrained, task=task, **kwargs)


__all__ = [
    "EXPORTED_CONSTRUCTORS",
    "RUNNERS",
    "ImageInput",
    "InputSizes",
    "Outputs",
    "Runner",
    "all_finite",
    "check_exported_weights",
    "check_task",
    "decode_input",
    "load_runner",
    "open_exported",
    "output_rows",
    "warn_random_weights",
]
