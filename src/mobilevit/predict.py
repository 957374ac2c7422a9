"""The predictor: an image classifier built once from a model name, checkpoint or exported file.

A :class:`Predictor` is the :class:`~mobilevit.runner.Runner` bound to image classification: the preprocessing and
labels of a model around a :class:`~mobilevit.runtime.Runtime` (the folded PyTorch model,
:meth:`Predictor.from_pretrained`, or an exported file, :meth:`Predictor.from_exported`: an ``.onnx`` file in
onnxruntime or OpenVINO (:func:`OnnxPredictor`, :func:`OpenVINOPredictor`), an ExecuTorch ``.pte`` program or a LiteRT
``.tflite`` model), with top-k answers (:mod:`mobilevit.tasks.classification`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from torch import Tensor

from .data.images import ImageError
from .runner import (
    EXPORTED_CONSTRUCTORS,
    ImageInput,
    InputSizes,
    Runner,
    check_exported_weights,
    check_task,
    decode_input,
    load_runner,
    open_exported,
    warn_random_weights,
)
from .runtime import BACKENDS, resolve_backend
from .tasks.base import check_finite
from .tasks.classification import (
    ACTIVATIONS,
    CLASSIFICATION,
    Activation,
    Prediction,
    check_activation,
    scores_from_logits,
    topk,
)


class Predictor(Runner):
    """Image classifier: the preprocessing and labels of a model around the runtime that runs it (see
    :class:`~mobilevit.runner.Runner` for the constructors and arguments).

    A model of another task is refused with an error that names what runs it (a segmentation model:
    :class:`~mobilevit.segment.Segmenter`).
    """

    task = CLASSIFICATION

    def topk(self, logits: Tensor, top_k: int = 5, function: Activation = "softmax") -> list[list[Prediction]]:
        """The ``top_k`` best classes of each row of ``logits``: higher score first, ties by lower class index.

        The order is the same for every backend and batch size: ``torch.topk`` leaves the order of equal scores
        unspecified (it differs between a batch of 1 and a batch of 16), a stable sort does not.

        Raises:
            NonFiniteOutputError: a logit (or score) is NaN or infinite, naming the model.
        """
        return topk(logits, self.labels, self.model_name, top_k, function)

    def predict(
        self, inputs: ImageInput | Sequence[ImageInput], top_k: int = 5, function: Activation = "softmax"
    ) -> list[list[Prediction]]:
        """Classify images: paths, encoded bytes, PIL images, arrays or tensors (one, or a list).

        Returns one top-k list per input. A bad input raises :class:`~mobilevit.data.images.ImageError` naming it;
        use :meth:`predict_files` to classify many files and collect per-file errors instead.
        """
        return self.run(inputs, top_k=top_k, function=function)

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
        return self.run_files(paths, progress, top_k=top_k, function=function)


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


EXPORTED_CONSTRUCTORS.update(
    {(Predictor, backend): constructor.__name__ for backend, constructor in EXPORTED_PREDICTORS.items()}
)


def load_predictor(
    model: str | os.PathLike,
    backend: str | None = None,
    pretrained: bool | str | os.PathLike = True,
    threads: int = 0,
    **kwargs: Any,
) -> Predictor:
    """The classifier of ``model``: eager for a model name, a runtime for an exported file (``.onnx``: onnxruntime or
    OpenVINO; ``.pte``: ExecuTorch; ``.tflite``: LiteRT); :func:`~mobilevit.runner.load_runner` bound to
    :class:`Predictor`.

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
    return load_runner(model, backend, pretrained, threads, runner=Predictor, **kwargs)


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
    "warn_random_weights",
]
