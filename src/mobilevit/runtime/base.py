"""What every runtime is: a ``[B, 3, H, W]`` float32 batch in, ``[B, num_classes]`` logits out (a segmentation
model: ``[B, num_classes, h, w]``).

A :class:`Runtime` runs one model: the eager PyTorch module (:class:`~mobilevit.runtime.eager.TorchRuntime`), or
an exported file: ``.onnx`` in onnxruntime (:class:`~mobilevit.runtime.onnx.OnnxRuntime`) or OpenVINO
(:class:`~mobilevit.runtime.openvino.OpenVINORuntime`), ``.pte`` in ExecuTorch, ``.tflite`` in LiteRT, a TorchScript
archive (``.pt``, ``.ts``, ``.torchscript``) in PyTorch. :data:`BACKENDS` names them and :func:`resolve_backend`
picks the one that runs a given model.
"""

from __future__ import annotations

import os
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from torch import Tensor

from ..errors import UsageError

Signature = list[tuple[str, list[int | None]]]  # (name, shape) of each graph input or output; None: a dynamic dim
T = TypeVar("T")

BACKENDS: tuple[str, ...] = ("eager", "onnxruntime", "openvino", "executorch", "litert", "torchscript")
# the backends that run each kind of exported file, by suffix; a suffix's first backend is its default. A .pt file is
# exported only when it is a TorchScript archive (is_torchscript_archive); otherwise it is a checkpoint.
FILE_BACKENDS: dict[str, tuple[str, ...]] = {
    ".onnx": ("onnxruntime", "openvino"),
    ".pte": ("executorch",),
    ".tflite": ("litert",),
    ".pt": ("torchscript",),
    ".ts": ("torchscript",),
    ".torchscript": ("torchscript",),
}
EXPORTED_BACKENDS: tuple[str, ...] = tuple(b for backends in FILE_BACKENDS.values() for b in backends)
# per suffix: what the file is called in messages and the `mobilevit export --format` that writes it
FILE_KINDS: dict[str, tuple[str, str]] = {
    ".onnx": ("ONNX", "onnx"),
    ".pte": ("ExecuTorch", "executorch"),
    ".tflite": ("LiteRT", "tflite"),
    ".pt": ("TorchScript", "torchscript"),
    ".ts": ("TorchScript", "torchscript"),
    ".torchscript": ("TorchScript", "torchscript"),
}
# files `mobilevit export` writes that no runtime here runs: suffix -> why, and what to run instead
UNRUNNABLE = {
    ".mlpackage": "a CoreML package runs only on Apple devices (Core ML, macOS/iOS); on this machine run the same "
    "model exported with `mobilevit export --format onnx` (or executorch, tflite, torchscript)",
    ".mlmodel": "a CoreML model runs only on Apple devices (Core ML, macOS/iOS); on this machine run the same model "
    "exported with `mobilevit export --format onnx` (or executorch, tflite, torchscript)",
}

# how resolve_backend words a model/backend mismatch, per command: (an exported file with eager or with a backend
# that cannot run it, a name with a runtime)
_MISMATCH = {
    "run": (
        "{model} is {article} {kind} file: run it with --backend {backends} (eager runs PyTorch models)",
        "--backend {backend} runs an exported {suffixes} file (write one with `mobilevit export --format {fmt}`); "
        "got {model!r}",
    ),
    "serve": (
        "{model} is {article} {kind} file: serve it with --backend {backends} (one server runs every model with "
        "the same backend)",
        "--backend {backend} serves exported {suffixes} files (`mobilevit export --format {fmt}`); model {model!r} "
        "has none: use --model FILE{suffix} or --model NAME=FILE{suffix}",
    ),
}


class Runtime(ABC):
    """One model in one runtime: :meth:`run` maps a preprocessed batch to its logits (:attr:`task` says which kind).

    Attributes:
        name: the backend name, one of :data:`BACKENDS`.
        uses_torch_threads: whether :meth:`run` computes in PyTorch's intra-op threads (else in the runtime's own).
    """

    name: str
    uses_torch_threads: bool = False

    @abstractmethod
    def run(self, batch: Tensor | np.ndarray) -> Tensor:
        """The ``[B, num_classes]`` (segmentation: ``[B, num_classes, h, w]``) logits of a float32 ``[B, 3, H, W]``
        batch of a shape :meth:`signature` allows."""

    @abstractmethod
    def signature(self) -> tuple[Signature, Signature]:
        """``(inputs, outputs)``: the name and shape of each, a dynamic dimension as ``None``."""

    def metadata(self) -> dict[str, str]:
        """The string metadata the model carries (an exported file's ``metadata_props``; ``{}`` when none)."""
        return {}

    @property
    def task(self) -> str:
        """What the model does: ``"classification"`` (``[B, num_classes]`` logits) or ``"segmentation"``
        (``[B, num_classes, h, w]`` logits at a fraction of the input's size).

        An exported file says so in its metadata (``"task"``); a file that does not is a classifier.
        """
        return self.metadata().get("task", "classification")

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model takes (a graph exported with a fixed batch), or ``None`` for any."""
        return self.signature()[0][0][1][0]


def exported_suffix(model: str | os.PathLike) -> str | None:
    """The suffix of an exported file (``.onnx``, ``.pte``, ``.tflite``, a TorchScript ``.pt``, ``.ts``,
    ``.torchscript``) that ``model`` names, else ``None``. A ``.pt`` file counts only when it is a TorchScript archive
    (:func:`is_torchscript_archive`): other ``.pt`` files are checkpoints."""
    suffix = Path(str(model)).suffix.lower()
    if suffix == ".pt" and not is_torchscript_archive(model):
        return None
    return suffix if suffix in FILE_BACKENDS else None


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``) rather than a checkpoint (``torch.save``) or
    anything else: a zip file whose one top folder holds ``constants.pkl`` and a ``code/`` folder. Only the zip's
    list of names is read; nothing is unpickled."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) != 1:
        return False
    (top,) = tops
    return f"{top}/constants.pkl" in names and any(name.startswith(f"{top}/code/") for name in names)


def check_runnable(model: str | os.PathLike) -> None:
    """Raise a :class:`UsageError` for a file that ``mobilevit export`` writes but no runtime here runs (CoreML)."""
    suffix = Path(str(model).rstrip("/")).suffix.lower()
    if suffix in UNRUNNABLE:
        raise UsageError(f"{model}: {UNRUNNABLE[suffix]}")


def is_exported_file(model: str | os.PathLike) -> bool:
    """Whether ``model`` names an exported file (by its suffix: :data:`FILE_BACKENDS`) rather than a PyTorch model."""
    return exported_suffix(model) is not None


def resolve_backend(model: str | os.PathLike, backend: str | None = None, command: str = "run") -> str:
    """The backend that runs ``model``: ``backend`` when given (checked against the model), else inferred from it.

    An exported file runs in the first backend :data:`FILE_BACKENDS` lists for its suffix (``.onnx``: onnxruntime,
    unless ``backend="openvino"``; ``.pte``: executorch; ``.tflite``: litert); an architecture, ``arch.tag`` or saved
    folder runs eagerly.

    Args:
        model: architecture, ``arch.tag``, saved folder or exported file.
        backend: one of :data:`BACKENDS`, or ``None`` to infer it.
        command: ``"run"`` or ``"serve"``: how an error for a backend that cannot run ``model`` is worded.
    """
    check_runnable(model)
    suffix = exported_suffix(model)
    if backend is None:
        return FILE_BACKENDS[suffix][0] if suffix else "eager"
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    file_with_other, name_with_runtime = _MISMATCH[command]
    if suffix and backend not in FILE_BACKENDS[suffix]:
        kind = FILE_KINDS[suffix][0]
        article = "an" if kind[0] in "AEIOU" else "a"
        backends = " or ".join(FILE_BACKENDS[suffix])
        raise UsageError(file_with_other.format(model=model, article=article, kind=kind, backends=backends))
    if backend in EXPORTED_BACKENDS and not suffix:
        suffixes = [s for s, names in FILE_BACKENDS.items() if backend in names]
        fmt = FILE_KINDS[suffixes[0]][1]
        raise UsageError(
            name_with_runtime.format(
                model=str(model), backend=backend, suffixes=" or ".join(suffixes), suffix=suffixes[0], fmt=fmt
            )
        )
    return backend


def check_threads(threads: int, runtime: str) -> None:
    """Raise a clear error for a negative thread count (0 is the runtime's default)."""
    if threads < 0:
        raise UsageError(f"threads must be 0 ({runtime}'s default) or more, got {threads}")


def load_file(path: str | os.PathLike, runtime: str, load: Callable[[Path], T]) -> T:
    """``load(path)`` for an existing exported file; a file the runtime cannot read is a :class:`UsageError`.

    An ImportError (the runtime is not installed) passes through: it says what to install.
    """
    path = Path(path)
    kind = FILE_KINDS.get(path.suffix.lower(), ("ONNX", ""))[0]
    if not path.is_file():
        raise FileNotFoundError(f"No such {kind} file: {path}")
    try:
        return load(path)
    except ImportError:
        raise
    except Exception as err:  # each runtime has its own exception types for a file it cannot read
        article = "an" if kind[0] in "AEIOU" else "a"
        raise UsageError(f"{path}: not {article} {kind} model {runtime} can load ({err})") from None
