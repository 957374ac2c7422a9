"""The TorchScript runtime: an archive written by ``mobilevit export --format torchscript`` run by ``torch.jit.load``.

The archive holds the traced, folded model and, in its extra files, the
:class:`~mobilevit.runtime.metadata.ExportMetadata` dictionary as ``mobilevit.json``. Tracing freezes the shapes that
Python code computed, so the archive takes the traced height and width (and batch 1 unless it was exported with a
dynamic batch), as its metadata says.

``.pt`` is also the suffix of plain PyTorch checkpoints (``torch.save``): :func:`is_torchscript_archive` tells the two
apart by the names in the zip file (:func:`~mobilevit.runtime.base.is_torchscript_archive`), without unpickling
anything. A TorchScript archive runs the TorchScript code it
contains: open only files you trust, as you would a checkpoint.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError
from .base import Runtime, Signature, check_threads, is_torchscript_archive, load_file, named_outputs

METADATA_FILE = "mobilevit.json"  # the metadata entry among the archive's extra files
AXES = {0: "batch", 2: "height", 3: "width"}  # input dimension -> the metadata's name for it


def load_torchscript_file(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict[str, str]]:
    """The module in a TorchScript archive and the metadata dictionary it records (``{}`` when none).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a TorchScript archive, or metadata that is not a JSON object.
    """

    def load(p: Path) -> tuple[Any, str]:
        if not is_torchscript_archive(p):
            raise UsageError("no TorchScript code in it (a zip file with code/ and constants.pkl)")
        extra = {METADATA_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated upstream; it still loads what it saved
            module = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
        return module, extra[METADATA_FILE]

    module, text = load_file(path, "TorchScript", load)
    if not text:
        return module, {}
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        data = None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: its {METADATA_FILE} entry is not a JSON object")
    return module, {str(k): str(v) for k, v in data.items()}


class TorchScriptRuntime(Runtime):
    """A TorchScript archive run in PyTorch, under ``torch.inference_mode``.

    Args:
        path: the archive (``.pt``, ``.ts`` or ``.torchscript``).
        threads: PyTorch's intra-op threads (0: leave them as they are). The setting is process-wide.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a file that is not a TorchScript archive, or negative ``threads``.
    """

    name = "torchscript"
    uses_torch_threads = True

    def __init__(self, path: str | os.PathLike, threads: int = 0) -> None:
        check_threads(threads, self.name)
        self.path = Path(path)
        self.module, self._metadata = load_torchscript_file(path)
        self.module.eval()
        if threads:
            torch.set_num_threads(threads)

    def run_named(self, batch: Tensor | np.ndarray) -> dict[str, Tensor]:
        """The module's outputs (a tensor, or a detector's tuple) by the names of :meth:`signature` (the metadata's
        ``output_names``, else its ``output_name``)."""
        with torch.inference_mode():
            outputs = self.module(torch.as_tensor(batch, dtype=torch.float32))
        return named_outputs([name for name, _ in self.signature()[1]], outputs)

    def signature(self) -> tuple[Signature, Signature]:
        """The traced shape, with the axes the metadata declares dynamic as ``None`` (a file without metadata: any
        batch and size); the logits' classes from the recorded labels; a detector's other outputs by name, as many
        axes as the logits, only the batch known."""
        if "input_size" not in self._metadata:
            inputs: list[int | None] = [None, 3, None, None]
        else:
            dynamic = set(json.loads(self._metadata.get("dynamic_axes", "[]")))
            height, width = json.loads(self._metadata["input_size"])
            fixed = {0: 1, 1: 3, 2: int(height), 3: int(width)}
            inputs = [None if AXES.get(i) in dynamic else fixed[i] for i in range(4)]
        labels = json.loads(self._metadata.get("labels", "[]"))
        num_classes = len(labels) or None
        axes = json.loads(self._metadata.get("output_axes", '["batch", "classes"]'))
        logits = [inputs[0] if axis == "batch" else num_classes if axis == "classes" else None for axis in axes]
        outputs = json.loads(self._metadata.get("output_names", "[]")) or [self._metadata.get("output_name", "logits")]
        names, others = (self._metadata.get("input_name", "pixel_values"), outputs[0]), outputs[1:]
        other = [inputs[0], *(None for _ in axes[1:])]  # the archive records no other shape
        return [(names[0], inputs)], [(names[1], logits), *((name, list(other)) for name in others)]

    def metadata(self) -> dict[str, str]:
        """The archive's ``mobilevit.json``."""
        return dict(self._metadata)
