"""The predictor: build once from a model name, checkpoint or exported ONNX file, then classify images in batches.

Used by the ``predict`` and ``eval`` commands, the HTTP server and the benchmarks, so that every path runs the same
preprocessing (from the weights entry, or the metadata of an exported file) and the same folded model.
:class:`OnnxPredictor` runs an ONNX file in onnxruntime and differs from :class:`Predictor` only in ``forward``;
:class:`OpenVINOPredictor` runs the same file in OpenVINO and differs from :class:`OnnxPredictor` only in the runtime.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .data.images import ImageError, open_image
from .data.transforms import eval_transform
from .errors import UsageError
from .weights.entries import check_labels, labels_for
from .weights.pretrained import model_io

logger = logging.getLogger(__name__)

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray | Tensor
Activation = Literal["softmax", "sigmoid", "none"]
ACTIVATIONS: tuple[str, ...] = ("softmax", "sigmoid", "none")
Signature = list[tuple[str, list[int | None]]]  # (name, shape) of each graph input or output; None: a dynamic dim


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


def _as_pil(item: ImageInput, name: str | None = None) -> Image.Image:
    """Any accepted image input as an RGB PIL image (tensors must be uint8 ``[3, H, W]``/``[H, W, 3]`` or float)."""
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
        return _as_pil(item.detach().cpu().numpy(), name or "tensor")
    if isinstance(item, Path | str | os.PathLike | bytes | Image.Image):
        return open_image(item, name)
    raise ImageError(f"{name or type(item).__name__}: unsupported input type {type(item).__name__}")


class Predictor:
    """Image classifier with its preprocessing and labels.

    Args:
        model: the network (put in eval mode; folded for speed when ``fold``).
        preprocess: the weights' :class:`~mobilevit.weights.entries.Preprocess`.
        labels: class names, index-aligned with the outputs (default: ``"class_<i>"``).
        batch_size: images per forward pass.
        fold: re-parameterize (fold BatchNorms and branches) — same outputs, faster.
        workers: threads that decode and preprocess images while the model runs.
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: Any,
        labels: Sequence[str] | None = None,
        batch_size: int = 16,
        fold: bool = True,
        workers: int | None = None,
    ) -> None:
        from .reparam import reparameterize_model

        model = model.eval()
        self.model = reparameterize_model(model) if fold else model
        self._setup(preprocess, labels, getattr(model, "num_classes", None), batch_size, workers)

    def _setup(
        self,
        preprocess: Any,
        labels: Sequence[str] | None,
        num_classes: int | None,
        batch_size: int,
        workers: int | None,
    ) -> None:
        """What every backend shares: the eval transform, the labels and the batching."""
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        self.preprocess = preprocess
        self.transform: Callable[[Image.Image], Tensor] = eval_transform(preprocess)
        if labels is None:
            labels = labels_for(num_classes or 0)
        elif num_classes:
            labels = check_labels(labels, num_classes)
        self.labels = list(labels)
        self.batch_size = batch_size
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.source: str | None = None  # where the weights came from: a weights name or a file (None: unknown/random)

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        pretrained: bool | str | os.PathLike = True,
        labels: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """Build from ``"arch"``, ``"arch.tag"`` or a saved folder, and weights (``True``: the entry's file; or a path).

        The preprocessing comes from the weights entry (the architecture's default entry for a bare name or a path);
        the class names from :func:`~mobilevit.weights.model_labels` (the checkpoint's own, its entry's, ImageNet-1k's
        for 1000 outputs, else ``class_<i>``) unless ``labels`` gives one per output. ``pretrained=False`` gives
        random weights, for testing only; a warning says so.
        """
        from .registry import create_model

        model = create_model(name, pretrained=pretrained)
        if not pretrained:
            logger.warning("%s has random weights: its predictions mean nothing", name)
        io = model_io(model)
        names = check_labels(labels, model.num_classes, "--labels") if labels is not None else io.labels
        predictor = cls(model, io.preprocess, names, **kwargs)
        if io.source is not None:  # the weights name when the entry's own file was loaded, else the file or folder
            predictor.source = io.weights if pretrained is True and io.weights is not None else io.source
        return predictor

    def _load(self, item: ImageInput, name: str | None = None) -> Tensor:
        return self.transform(_as_pil(item, name))

    def forward(self, batch: Tensor) -> Tensor:
        """One pass of the model over a preprocessed ``[B, 3, H, W]`` batch (the only backend-specific step)."""
        return self.model(batch)

    @torch.inference_mode()
    def logits(self, batch: Tensor) -> Tensor:
        """Model outputs for a preprocessed ``[B, 3, H, W]`` batch, run ``batch_size`` at a time."""
        return torch.cat([self.forward(chunk) for chunk in batch.split(self.batch_size)])

    def topk(self, logits: Tensor, top_k: int = 5, function: Activation = "softmax") -> list[list[Prediction]]:
        """The ``top_k`` best classes of each row of ``logits``: higher score first, ties by lower class index.

        The order is the same for every backend and batch size: ``torch.topk`` leaves the order of equal scores
        unspecified (it differs between a batch of 1 and a batch of 16), a stable sort does not.
        """
        if top_k < 1:
            raise UsageError(f"top_k must be at least 1, got {top_k}")
        scores = scores_from_logits(logits, function)
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
        batch = torch.stack([self._load(item) for item in inputs])
        return self.topk(self.logits(batch), top_k, function)

    def predict_files(
        self,
        paths: Iterable[str | os.PathLike],
        top_k: int = 5,
        function: Activation = "softmax",
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[str, list[Prediction] | ImageError]]:
        """Yield ``(path, predictions)`` in input order, or ``(path, error)`` for a file that cannot be read.

        Decoding runs in ``workers`` threads, ahead of the model; ``progress(n)`` is called after each batch.
        """
        check_activation(function)

        def load(path: str | os.PathLike) -> Tensor | ImageError:
            try:
                return self._load(path, str(path))
            except ImageError as err:
                return err

        paths = list(paths)
        chunks = [paths[i : i + self.batch_size] for i in range(0, len(paths), self.batch_size)]
        with ThreadPoolExecutor(self.workers) as pool:
            pending = [pool.submit(load, p) for p in chunks[0]] if chunks else []
            for k, chunk in enumerate(chunks):
                loaded = [f.result() for f in pending]
                # decode the next batch while the model runs on this one
                pending = [pool.submit(load, p) for p in chunks[k + 1]] if k + 1 < len(chunks) else []
                good = [i for i, x in enumerate(loaded) if isinstance(x, Tensor)]
                preds = self.topk(self.logits(torch.stack([loaded[i] for i in good])), top_k, function) if good else []
                answers = dict(zip(good, preds, strict=True))
                for i, path in enumerate(chunk):
                    yield str(path), answers.get(i, loaded[i])
                if progress:
                    progress(len(chunk))


class OnnxPredictor(Predictor):
    """The predictor over an exported ONNX file, run by onnxruntime: same preprocessing, labels, top-k and scores.

    Only :meth:`forward` differs from :class:`Predictor`. The preprocessing and labels are the ones
    :func:`mobilevit.export.export_model` recorded in the file; pass ``preprocess`` (and ``labels``) for an ONNX file
    from elsewhere. The runtime is four small hooks (``_open_runtime``, ``_runtime_metadata``, ``_runtime_signature``,
    ``_run``); :class:`OpenVINOPredictor` overrides only those.

    Args:
        path: the ``.onnx`` file (input ``[B, 3, H, W]`` float32, output ``[B, num_classes]`` logits).
        preprocess: a :class:`~mobilevit.weights.entries.Preprocess` replacing the file's (required when it has none).
        labels: class names replacing the file's.
        batch_size: images per run (a graph exported with a fixed batch runs that many at a time).
        threads: the runtime's inference threads (0: its default, one per physical core).
        workers: threads that decode and preprocess images while the model runs.
    """

    runtime = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike,
        preprocess: Any = None,
        labels: Sequence[str] | None = None,
        batch_size: int = 16,
        threads: int = 0,
        workers: int | None = None,
    ) -> None:
        from .export import ExportMetadata

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"No such ONNX file: {self.path}")
        if threads < 0:
            raise UsageError(f"threads must be 0 ({self.runtime}'s default) or more, got {threads}")
        try:
            self._open_runtime(threads)
        except ImportError:
            raise
        except Exception as err:  # each runtime has its own exception types for a file it cannot read
            raise UsageError(f"{self.path}: not an ONNX model {self.runtime} can load ({err})") from None
        try:
            meta = ExportMetadata.from_dict(self._runtime_metadata())
        except (ValueError, KeyError):
            meta = None  # not written by `mobilevit export`
        self.metadata: ExportMetadata | None = meta
        preprocess = preprocess or (meta.preprocess if meta is not None else None)
        if preprocess is None:
            raise UsageError(
                f"{self.path}: the file records no preprocessing (not written by `mobilevit export`); export it with "
                f"`mobilevit export --format onnx`, or pass preprocess= (and labels=) to {type(self).__name__}"
            )
        if labels is None and meta is not None:
            labels = meta.labels
        inputs, outputs = self._runtime_signature()
        if len(inputs) != 1 or len(inputs[0][1]) != 4 or inputs[0][1][1] not in (3, None):
            shapes = ", ".join(str(shape) for _, shape in inputs) or "none"
            raise UsageError(f"{self.path}: expected one [batch, 3, height, width] input, got {shapes}")
        self._input, self._output = inputs[0][0], outputs[0][0]
        self._shape = inputs[0][1]  # e.g. [None, 3, None, None], or [1, 3, 256, 256] when static
        num_classes = outputs[0][1][-1]
        self._setup(preprocess, labels, num_classes, batch_size, workers)
        self.source = str(self.path)
        height, width = preprocess.input_size
        try:
            self.check_size(height, width)
        except ValueError as err:
            raise UsageError(
                f"{err}, but its preprocessing crops {height}x{width}: export it again with "
                f"`--input-size {height} {width}`"
            ) from None

    def _open_runtime(self, threads: int) -> None:
        """Load ``self.path`` in the runtime (raise anything but ImportError for a file it cannot read)."""
        from .export import onnx_session

        self.session: Any = onnx_session(self.path, threads)

    def _runtime_metadata(self) -> dict[str, str]:
        """The file's ``metadata_props``."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def _runtime_signature(self) -> tuple[Signature, Signature]:
        """``(inputs, outputs)``: the name and shape of each, a dynamic dimension as ``None``."""

        def described(values: list[Any]) -> Signature:
            return [(v.name, [d if isinstance(d, int) else None for d in v.shape]) for v in values]

        return described(self.session.get_inputs()), described(self.session.get_outputs())

    def _run(self, x: np.ndarray) -> np.ndarray:
        """One run of the graph on a float32 ``[B, 3, H, W]`` array the graph can take."""
        return self.session.run([self._output], {self._input: x})[0]

    def check_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` when the graph cannot take ``[B, 3, height, width]`` inputs."""
        fixed = self._shape[2:]
        if any(f is not None and f != n for f, n in zip(fixed, (height, width), strict=True)):
            size = "x".join(str(f or "any") for f in fixed)
            raise UsageError(f"{self.path} takes {size} inputs only (exported with a fixed size), not {height}x{width}")
        multiple = self.metadata.size_multiple if self.metadata is not None else 1
        if any(f is None and n % multiple for f, n in zip(fixed, (height, width), strict=True)):
            raise UsageError(
                f"{self.path} takes heights and widths that are multiples of {multiple} "
                f"(the patch grid of {self.metadata.arch if self.metadata else 'the model'}), not {height}x{width}"
            )

    def forward(self, batch: Tensor) -> Tensor:
        """One run of the graph (several when it has a fixed batch: the last one padded with zeros)."""
        self.check_size(batch.shape[2], batch.shape[3])
        x = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
        fixed = self._shape[0]
        if fixed is None:
            return torch.from_numpy(self._run(x))
        outputs = []
        for start in range(0, len(x), fixed):
            part = x[start : start + fixed]
            padded = np.concatenate([part, np.zeros((fixed - len(part), *part.shape[1:]), np.float32)])
            outputs.append(self._run(padded)[: len(part)])
        return torch.from_numpy(np.concatenate(outputs))


class OpenVINOPredictor(OnnxPredictor):
    """The predictor over an exported ONNX file, run by OpenVINO's CPU plugin in fp32: only the runtime differs.

    Same file, preprocessing, labels, arguments and answers as :class:`OnnxPredictor`; the file is compiled by
    :func:`~mobilevit.export.openvino_model` (``threads``: OpenVINO's inference threads, 0 for its default). The
    compiled model gets one infer request, run under a lock: an infer request is not safe to run from two threads at
    once, the server calls :meth:`forward` from one model thread, and with the LATENCY hint OpenVINO runs one
    inference at a time anyway (one stream).
    """

    runtime = "openvino"

    def _open_runtime(self, threads: int) -> None:
        from .export import openvino_model, read_openvino_metadata

        self.compiled_model: Any = openvino_model(self.path, threads)
        self._metadata_props = read_openvino_metadata(self.path)  # reads the file again: tens of ms, once
        self._request = self.compiled_model.create_infer_request()
        self._lock = threading.Lock()

    def _runtime_metadata(self) -> dict[str, str]:
        return self._metadata_props

    def _runtime_signature(self) -> tuple[Signature, Signature]:
        def described(values: list[Any]) -> Signature:
            return [
                (v.get_any_name(), [d.get_length() if d.is_static else None for d in v.get_partial_shape()])
                for v in values
            ]

        return described(self.compiled_model.inputs), described(self.compiled_model.outputs)

    def _run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:  # an infer request runs one inference at a time; its output is copied out before release
            return self._request.infer({self._input: x})[self._output]


# the runtimes of an exported ONNX file, by backend name; "eager" is Predictor on the PyTorch model
ONNX_PREDICTORS: dict[str, type[OnnxPredictor]] = {"onnxruntime": OnnxPredictor, "openvino": OpenVINOPredictor}
BACKENDS: tuple[str, ...] = ("eager", *ONNX_PREDICTORS)


def resolve_backend(model: str | os.PathLike, backend: str | None = None) -> str:
    """The backend that runs ``model``: ``backend`` when given (checked against the file), else inferred from it.

    An exported ``.onnx`` file runs in onnxruntime unless ``backend="openvino"``; an architecture, ``arch.tag`` or
    saved folder runs eagerly.
    """
    is_onnx = str(model).lower().endswith(".onnx")
    if backend is None:
        return "onnxruntime" if is_onnx else "eager"
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "eager" and is_onnx:
        raise UsageError(
            f"{model} is an ONNX file: run it with --backend onnxruntime or openvino (eager runs PyTorch models)"
        )
    if backend in ONNX_PREDICTORS and not is_onnx:
        raise UsageError(
            f"--backend {backend} runs an exported .onnx file (write one with `mobilevit export --format onnx`); "
            f"got {str(model)!r}"
        )
    return backend


def load_predictor(
    model: str | os.PathLike,
    backend: str | None = None,
    pretrained: bool | str | os.PathLike = True,
    threads: int = 0,
    **kwargs: Any,
) -> Predictor:
    """The predictor the CLI and the server use: eager for a model name, onnxruntime or OpenVINO for a ``.onnx`` file.

    Args:
        model: architecture, ``arch.tag`` or saved folder (:meth:`Predictor.from_pretrained`), or a ``.onnx`` file
            (:class:`OnnxPredictor`, :class:`OpenVINOPredictor`).
        backend: ``"eager"``, ``"onnxruntime"`` or ``"openvino"``; ``None`` infers it from ``model`` (see
            :func:`resolve_backend`).
        pretrained: weights of an eager model; an ONNX file carries its own, so it must stay ``True`` there.
        threads: the ONNX runtime's inference threads (0: its default); eager models use ``torch.set_num_threads``.
        **kwargs: ``batch_size``, ``workers``.
    """
    backend = resolve_backend(model, backend)
    if backend in ONNX_PREDICTORS:
        if pretrained is not True:
            raise UsageError(f"{model}: an ONNX file carries its weights; --pretrained/--random-weights do not apply")
        return ONNX_PREDICTORS[backend](model, threads=threads, **kwargs)
    return Predictor.from_pretrained(str(model), pretrained=pretrained, **kwargs)
