"""The predictor: build once from a model name or checkpoint, then classify images in batches.

Used by the ``predict`` and ``eval`` commands, the HTTP server and the benchmarks, so that every path runs the same
preprocessing (from the weights entry) and the same folded model.
"""

from __future__ import annotations

import logging
import os
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

logger = logging.getLogger(__name__)

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray | Tensor
Activation = Literal["softmax", "sigmoid", "none"]
ACTIVATIONS: tuple[str, ...] = ("softmax", "sigmoid", "none")


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
        raise ValueError(f"function must be one of {', '.join(ACTIVATIONS)}; got {function!r}")


def scores_from_logits(logits: Tensor, function: Activation) -> Tensor:
    """Softmax probabilities, independent sigmoid scores, or the raw logits (``"none"``)."""
    if function == "softmax":
        return logits.float().softmax(-1)
    if function == "sigmoid":
        return logits.float().sigmoid()
    if function == "none":
        return logits.float()
    raise ValueError(f"function must be one of {', '.join(ACTIVATIONS)}; got {function!r}")


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

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        model = model.eval()
        self.model = reparameterize_model(model) if fold else model
        self.preprocess = preprocess
        self.transform: Callable[[Image.Image], Tensor] = eval_transform(preprocess)
        num_classes = getattr(model, "num_classes", None)
        self.labels = list(labels) if labels is not None else [f"class_{i}" for i in range(num_classes or 0)]
        if num_classes and len(self.labels) != num_classes:
            raise ValueError(f"{len(self.labels)} labels for a model with {num_classes} outputs")
        self.batch_size = batch_size
        self.workers = workers or min(4, os.cpu_count() or 1)

    @classmethod
    def from_pretrained(cls, name: str, pretrained: bool | str | os.PathLike = True, **kwargs: Any) -> Predictor:
        """Build from ``"arch"`` or ``"arch.tag"`` and weights (``True``: the entry's file; or a local path).

        The preprocessing and labels come from the weights entry (the architecture's default entry for a bare name
        or a path). ``pretrained=False`` gives random weights, for testing only; a warning says so.
        """
        from .registry import create_model
        from .weights.entries import get_weights, labels

        model = create_model(name, pretrained=pretrained)
        if not pretrained:
            logger.warning("%s has random weights: its predictions mean nothing", name)
        info = getattr(model, "pretrained_cfg", None)
        entry = info.entry if info is not None else None
        if entry is None and info is None:
            entry = get_weights(name)  # random weights: the architecture's default preprocessing
        preprocess = (info.preprocess if info is not None else None) or (entry or get_weights(info.arch)).preprocess
        names = info.labels if info is not None else None
        if names is None and entry is not None and entry.num_classes == model.num_classes:
            names = labels(entry)
        return cls(model, preprocess, names, **kwargs)

    def _load(self, item: ImageInput, name: str | None = None) -> Tensor:
        return self.transform(_as_pil(item, name))

    @torch.inference_mode()
    def logits(self, batch: Tensor) -> Tensor:
        """Model outputs for a preprocessed ``[B, 3, H, W]`` batch, run ``batch_size`` at a time."""
        return torch.cat([self.model(chunk) for chunk in batch.split(self.batch_size)])

    def topk(self, logits: Tensor, top_k: int = 5, function: Activation = "softmax") -> list[list[Prediction]]:
        """The ``top_k`` best classes of each row of ``logits``, best first."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        scores = scores_from_logits(logits, function)
        values, indices = scores.topk(min(top_k, scores.shape[-1]), dim=-1)
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
