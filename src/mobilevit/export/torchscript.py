"""TorchScript export (``torch.jit.trace``) of the folded model, with its metadata in the archive's ``_extra_files``.

Tracing records the operations run on one example input: shapes that Python code computes (the MobileViT patch
grid, its resize target) are frozen at the traced size, so a MobileViT archive is exact at its ``input_size`` and at
other multiples of 64 only where the traced reshape sizes still hold. Use ONNX for inputs of varying size.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..runtime.metadata import ExportMetadata
from ..runtime.torchscript import METADATA_FILE, load_torchscript_file


def export_torchscript(model: nn.Module, output: str | os.PathLike, metadata: ExportMetadata) -> Path:
    """Trace an eval-mode (already folded) model at ``metadata.input_size`` and save it with its metadata.

    Args:
        model: the model to trace, in eval mode.
        output: the ``.pt`` archive to write.
        metadata: stored as ``mobilevit.json`` in the archive's extra files.

    Returns:
        The written file.
    """
    example = torch.randn(1, 3, *metadata.input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about Python shape arithmetic, documented above
        traced = torch.jit.trace(model, example, check_trace=False)
        traced = torch.jit.freeze(traced)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream but still the C++/mobile path
        torch.jit.save(traced, str(output), _extra_files={METADATA_FILE: json.dumps(metadata.to_dict())})
    return output


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, ExportMetadata]:
    """Load an archive written by :func:`export_torchscript` and its metadata (read as the runtime reads it)."""
    module, data = load_torchscript_file(path)
    return module, ExportMetadata.from_dict(data)
