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
from .formats import FILE_FORMATS, format_of_suffix, formats_run_by, unrunnable_reason

Signature = list[tuple[str, list[int | None]]]  # (name, shape) of each graph input or output; None: a dynamic dim
T = TypeVar("T")

BACKENDS: tuple[str, ...] = ("eager", "onnxruntime", "openvino", "executorch", "litert", "torchscript")
# the views of the format table (runtime.formats.FILE_FORMATS) that choosing a backend needs, in the order of BACKENDS:
# the backends that run each suffix of an exported file (its first backend the default), and those backends
FILE_BACKENDS: dict[str, tuple[str, ...]] = {
    suffix: fmt.backends
    for fmt in sorted((f for f in FILE_FORMATS.values() if f.backends), key=lambda f: BACKENDS.index(f.backends[0]))
    for suffix in fmt.suffixes
}
EXPORTED_BACKENDS: tuple[str, ...] = tuple(b for b in BACKENDS if formats_run_by(b))

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

    def run(self, batch: Tensor | np.ndarray) -> Tensor | list[dict[str, Tensor]]:
        """The ``[B, num_classes]`` (segmentation: ``[B, num_classes, h, w]``) logits of a float32 ``[B, 3, H, W]``
        batch of a shape :meth:`signature` allows: the model's first output. A file of one image's outputs (its
        metadata's ``per_image``: a Mask R-CNN's) gives them as its eager model does: ``[{name: output}]``."""
        named = self.run_named(batch)
        if self.metadata().get("per_image") == "true":
            return [named]
        return next(iter(named.values()))

    @abstractmethod
    def run_named(self, batch: Tensor | np.ndarray) -> dict[str, Tensor]:
        """Every output of the model for ``batch``, by the names :meth:`signature` gives them, in the graph's order
        (the first is what :meth:`run` returns)."""

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


def named_outputs(names: list[str], outputs: Tensor | tuple | list | dict) -> dict[str, Tensor]:
    """``outputs`` (a module's tensor, tuple or dict, or a runtime's list) by name: ``names`` (a signature's) in order,
    ``output_<i>`` for any output past them."""
    if isinstance(outputs, dict):
        return dict(outputs)
    values = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    keys = [names[i] if i < len(names) else f"output_{i}" for i in range(len(values))]
    if len(set(keys)) != len(keys):
        raise UsageError(f"the model's outputs have repeated names: {keys}")
    return dict(zip(keys, values, strict=True))


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
    reason = unrunnable_reason(model)
    if reason is not None:
        raise UsageError(f"{model}: {reason}")


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
        kind = next(f.kind for f in FILE_FORMATS.values() if suffix in f.suffixes)
        article = "an" if kind[0] in "AEIOU" else "a"
        backends = " or ".join(FILE_BACKENDS[suffix])
        raise UsageError(file_with_other.format(model=model, article=article, kind=kind, backends=backends))
    if backend in EXPORTED_BACKENDS and not suffix:
        suffixes = [s for s, names in FILE_BACKENDS.items() if backend in names]
        fmt = formats_run_by(backend)[0].name
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
    fmt = format_of_suffix(path.suffix)
    kind = fmt.kind if fmt is not None else "ONNX"
    if not path.is_file():
        raise FileNotFoundError(f"No such {kind} file: {path}")
    try:
        return load(path)
    except ImportError:
        raise
    except Exception as err:  # each runtime has its own exception types for a file it cannot read
        article = "an" if kind[0] in "AEIOU" else "a"
        raise UsageError(f"{path}: not {article} {kind} model {runtime} can load ({err})") from None
