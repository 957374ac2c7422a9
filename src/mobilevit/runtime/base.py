"""What every runtime is: a ``[B, 3, H, W]`` float32 batch in, ``[B, num_classes]`` logits out.

A :class:`Runtime` runs one classifier: the eager PyTorch module (:class:`~mobilevit.runtime.eager.TorchRuntime`), or
an exported ``.onnx`` file in onnxruntime (:class:`~mobilevit.runtime.onnx.OnnxRuntime`) or OpenVINO
(:class:`~mobilevit.runtime.openvino.OpenVINORuntime`). :data:`BACKENDS` names them and :func:`resolve_backend` picks
the one that runs a given model.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from torch import Tensor

from ..errors import UsageError

Signature = list[tuple[str, list[int | None]]]  # (name, shape) of each graph input or output; None: a dynamic dim
T = TypeVar("T")

BACKENDS: tuple[str, ...] = ("eager", "onnxruntime", "openvino")
EXPORTED_BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino")  # the backends that run an exported .onnx file

# how resolve_backend words a model/backend mismatch, per command: (an .onnx file with eager, a name with a runtime)
_MISMATCH = {
    "run": (
        "{model} is an ONNX file: run it with --backend onnxruntime or openvino (eager runs PyTorch models)",
        "--backend {backend} runs an exported .onnx file (write one with `mobilevit export --format onnx`); "
        "got {model!r}",
    ),
    "serve": (
        "{model} is an ONNX file: serve it with --backend onnxruntime or openvino (one server runs every model with "
        "the same backend)",
        "--backend {backend} serves exported .onnx files (`mobilevit export --format onnx`); model {model!r} has none: "
        "use --model FILE.onnx or --model NAME=FILE.onnx",
    ),
}


class Runtime(ABC):
    """One classifier in one runtime: :meth:`run` maps a preprocessed batch to its logits.

    Attributes:
        name: the backend name, one of :data:`BACKENDS`.
        uses_torch_threads: whether :meth:`run` computes in PyTorch's intra-op threads (else in the runtime's own).
    """

    name: str
    uses_torch_threads: bool = False

    @abstractmethod
    def run(self, batch: Tensor | np.ndarray) -> Tensor:
        """The ``[B, num_classes]`` logits of a float32 ``[B, 3, H, W]`` batch of a shape :meth:`signature` allows."""

    @abstractmethod
    def signature(self) -> tuple[Signature, Signature]:
        """``(inputs, outputs)``: the name and shape of each, a dynamic dimension as ``None``."""

    def metadata(self) -> dict[str, str]:
        """The string metadata the model carries (an exported file's ``metadata_props``; ``{}`` when none)."""
        return {}

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model takes (a graph exported with a fixed batch), or ``None`` for any."""
        return self.signature()[0][0][1][0]


def is_onnx_file(model: str | os.PathLike) -> bool:
    """Whether ``model`` names an exported ``.onnx`` file (by its suffix) rather than a PyTorch model."""
    return str(model).lower().endswith(".onnx")


def resolve_backend(model: str | os.PathLike, backend: str | None = None, command: str = "run") -> str:
    """The backend that runs ``model``: ``backend`` when given (checked against the model), else inferred from it.

    An exported ``.onnx`` file runs in onnxruntime unless ``backend="openvino"``; an architecture, ``arch.tag`` or
    saved folder runs eagerly.

    Args:
        model: architecture, ``arch.tag``, saved folder or ``.onnx`` file.
        backend: one of :data:`BACKENDS`, or ``None`` to infer it.
        command: ``"run"`` or ``"serve"``: how an error for a backend that cannot run ``model`` is worded.
    """
    exported = is_onnx_file(model)
    if backend is None:
        return "onnxruntime" if exported else "eager"
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    onnx_with_eager, name_with_runtime = _MISMATCH[command]
    if backend == "eager" and exported:
        raise UsageError(onnx_with_eager.format(model=model, backend=backend))
    if backend in EXPORTED_BACKENDS and not exported:
        raise UsageError(name_with_runtime.format(model=str(model), backend=backend))
    return backend


def check_threads(threads: int, runtime: str) -> None:
    """Raise a clear error for a negative thread count (0 is the runtime's default)."""
    if threads < 0:
        raise UsageError(f"threads must be 0 ({runtime}'s default) or more, got {threads}")


def load_file(path: str | os.PathLike, runtime: str, load: Callable[[Path], T]) -> T:
    """``load(path)`` for an existing ``.onnx`` file; a file the runtime cannot read is a :class:`UsageError`.

    An ImportError (the runtime is not installed) passes through: it says what to install.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such ONNX file: {path}")
    try:
        return load(path)
    except ImportError:
        raise
    except Exception as err:  # each runtime has its own exception types for a file it cannot read
        raise UsageError(f"{path}: not an ONNX model {runtime} can load ({err})") from None
