"""ExecuTorch export: the folded model as a ``.pte`` program for ExecuTorch's runtime, lowered to its XNNPACK delegate.

``torch.export`` captures the eval-mode, folded model; ``to_edge_transform_and_lower`` hands every subgraph XNNPACK
supports (convolutions, linear layers, matrix products, most element-wise ops) to the XNNPACK delegate, and the rest
runs in ExecuTorch's portable kernels. Input ``[B, 3, H, W]`` float32 (already preprocessed as the metadata says),
output ``[B, num_classes]`` logits (a segmentation model: ``[B, num_classes, h, w]``).

Metadata: the :class:`~mobilevit.runtime.metadata.ExportMetadata` dictionary is stored as one JSON string returned by
a constant method of the program, ``mobilevit_metadata``. A ``.pte`` file has no free-form metadata table, and a
constant method is ExecuTorch's own way to ship values with a program: every ExecuTorch runtime (Python, C++,
Android, iOS) reads it with the same ``execute("mobilevit_metadata")`` call as it runs ``forward``, so the
preprocessing and the labels travel with the program to the device.

Shapes: ExecuTorch plans every tensor's memory ahead of time, for the largest shape an input may take.

- The batch is dynamic, ``1..MAX_BATCH``, for MobileViT v1, MobileViTv3 on v1, FastViT without attention stages
  (T8, T12, S12) and MobileOne. Two kinds of block get a fixed batch of 1 instead. MobileViT v2's
  :class:`~mobilevit.layers.norm.PatchLayerNorm` (v2, and v3 on v2): ExecuTorch's portable layer-norm kernel plans
  its mean/rstd outputs at the traced batch and fails (error 0x12) at any other. FastViT's
  :class:`~mobilevit.models.fastvit.AttentionBlock` (SA12-SA36, MA36): with a symbolic batch the lowered program
  returns wrong logits (7-12% of their scale off, at every batch including 1), while the fixed-batch program matches
  eager within 1e-6.
- Height and width are fixed at the export size: arbitrary sizes trip ``torch.export``'s guards on the MobileViT
  patch grid, and a device application feeds one crop size anyway. The metadata records the fixed axes, and the
  predictor runs a fixed-batch program one image at a time.

int8 (``calibration`` given): XNNPACK's PT2E quantizer, symmetric, weights per output channel, static activation
ranges, with the fixes of :class:`~mobilevit.export.pt2e.Int8Options` (:mod:`mobilevit.export.pt2e`); the int8
program has a fixed batch of 1.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import MissingDependencyError
from ..layers.norm import PatchLayerNorm
from ..models.fastvit import AttentionBlock
from ..runtime.executorch import INSTALL_HINT, METADATA_METHOD
from ..runtime.metadata import ExportMetadata
from ..runtime.quiet import third_party_output
from .pt2e import Int8Options, quantize_pt2e, with_observer

logger = logging.getLogger(__name__)

MAX_BATCH = 8  # upper bound of a dynamic batch: memory is planned for it (see the module docstring)


def executorch_dynamic_axes(model: nn.Module) -> tuple[str, ...]:
    """``("batch",)`` when ExecuTorch runs ``model`` right at any batch, ``()`` for models with a
    :class:`~mobilevit.layers.norm.PatchLayerNorm` or a FastViT
    :class:`~mobilevit.models.fastvit.AttentionBlock` (see the module docstring)."""
    fixed = any(isinstance(m, PatchLayerNorm | AttentionBlock) for m in model.modules())
    return () if fixed else ("batch",)


def export_executorch(
    model: nn.Module,
    output: str | os.PathLike,
    metadata: ExportMetadata,
    calibration: Iterable[np.ndarray | torch.Tensor] | None = None,
    int8: Int8Options | None = None,
) -> Path:
    """Export an eval-mode (already folded) model as an ExecuTorch program with its metadata.

    Args:
        model: the model to export, in eval mode.
        output: the ``.pte`` file to write.
        metadata: input size, dynamic axes (only ``batch`` can be dynamic) and what the program returns from its
            ``mobilevit_metadata`` method.
        calibration: for an int8 program, ``[1, 3, H, W]`` float32 batches preprocessed as at prediction time
            (``metadata.dynamic_axes`` must then be empty); ``None`` for float32.
        int8: how an int8 program is quantized (default: :class:`~mobilevit.export.pt2e.Int8Options`'s defaults).

    Returns:
        The written file.
    """
    try:
        with third_party_output("ExecuTorch"):  # torchao, imported with it, warns about its enums
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
    except ImportError as err:
        raise MissingDependencyError(INSTALL_HINT) from err

    dynamic = "batch" in metadata.dynamic_axes
    # torch.export specializes a dimension traced at size 1, so a dynamic batch is traced at 2
    example = torch.randn(2 if dynamic else 1, 3, *metadata.input_size)
    shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if dynamic else None
    props = metadata.to_dict()
    if calibration is not None:
        if dynamic:
            raise ValueError("an int8 ExecuTorch program has a fixed batch: export it with dynamic_axes=()")
        model, props["quantization"] = _quantized(model, example, calibration, int8 or Int8Options())
    buffer = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), torch.no_grad():
        warnings.simplefilter("ignore")  # export and lowering warn about every op they decompose
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
        edge = to_edge_transform_and_lower(
            program, partitioner=[XnnpackPartitioner()], constant_methods={METADATA_METHOD: json.dumps(props)}
        )
        data = edge.to_executorch().buffer
    logger.debug("executorch export: %s", buffer.getvalue())
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    return output


def _quantized(
    model: nn.Module, example: torch.Tensor, calibration: Iterable[np.ndarray | torch.Tensor], int8: Int8Options
) -> tuple[nn.Module, str]:
    """The int8 graph of ``model`` for XNNPACK and the ``quantization`` metadata entry that describes it."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = with_observer(get_symmetric_quantization_config(is_per_channel=True), int8.observer)
    quantized = quantize_pt2e(model, example, XNNPACKQuantizer().set_global(config), calibration, int8)
    how = {
        "dtype": "int8",
        "quantizer": "XNNPACKQuantizer",
        "per_channel": True,
        "activations": "static",
        **quantized.details,
        "calibration_images": quantized.calibration_images,
    }
    return quantized.module, json.dumps(how)
