"""LiteRT export: the folded model as a ``.tflite`` flatbuffer for LiteRT (TensorFlow Lite), converted by litert-torch.

``litert_torch.convert`` lowers the ``torch.export`` graph of the eval-mode, folded model through StableHLO to LiteRT
ops. The file keeps PyTorch's layout: one ``[1, 3, H, W]`` float32 input, already preprocessed as the metadata says
(LiteRT's converter inserts the transposes XNNPACK needs), and ``[1, num_classes]`` logits
(``[1, num_classes, h, w]`` for a segmentation model).

Metadata: the :class:`~mobilevit.runtime.metadata.ExportMetadata` dictionary is one JSON string in the flatbuffer's
``metadata`` table, under the name ``mobilevit.metadata``. That table is the format's own place for named
buffers that the interpreter does not execute (the converter writes ``min_runtime_version`` there); any flatbuffer
reader finds the entry by name, and the TFLite Support metadata schema is not needed for it. The recorded input and
output names are the file's own tensor names (a detector's three outputs, ``logits``, ``boxes`` and ``anchors`` in
that order, are ``serving_default_output_<i>_output``: the runner reads them by position).

Shapes: batch 1 at the export size, nothing dynamic. A dynamic batch converts for some families and not for others
(the MobileViT patch reshapes need concrete sizes in litert-torch's lowering), and where it converts, XNNPACK fails
to reshape the graph at run time. The predictor runs the file one image at a time.

int8 (``calibration`` given): litert-torch's PT2E quantizer, symmetric, weights per output channel, static
activation ranges, with the fixes of :class:`~mobilevit.export.pt2e.Int8Options` (:mod:`mobilevit.export.pt2e`).
The converter makes the input and output tensors int8 as well; :class:`~mobilevit.runtime.LiteRTRuntime` quantizes
and dequantizes them with the scales the file records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import MissingDependencyError
from ..runtime.litert import INSTALL_HINT, METADATA_NAME
from ..runtime.metadata import ExportMetadata
from ..runtime.quiet import tensorflow_environment, third_party_output
from .pt2e import Int8Options, quantize_pt2e, with_observer

logger = logging.getLogger(__name__)


def export_litert(
    model: nn.Module,
    output: str | os.PathLike,
    metadata: ExportMetadata,
    calibration: Iterable[np.ndarray | torch.Tensor] | None = None,
    int8: Int8Options | None = None,
) -> Path:
    """Convert an eval-mode (already folded) model to a ``.tflite`` file with its metadata.

    Args:
        model: the model to convert, in eval mode.
        output: the ``.tflite`` file to write.
        metadata: the input size (the file takes batch 1 at that size) and what goes into ``mobilevit.metadata``.
        calibration: for an int8 file, ``[1, 3, H, W]`` float32 batches preprocessed as at prediction time; ``None``
            for float32.
        int8: how an int8 file is quantized (default: :class:`~mobilevit.export.pt2e.Int8Options`'s defaults).

    Returns:
        The written file.
    """
    tensorflow_environment()  # before the converter imports TensorFlow
    try:
        with third_party_output("LiteRT"):
            import litert_torch
            from ai_edge_litert.tools import flatbuffer_utils
    except ImportError as err:
        raise MissingDependencyError(INSTALL_HINT) from err

    example = torch.randn(1, 3, *metadata.input_size)
    quantization = None
    log = io.StringIO()
    # the converter prints its progress and warns about every decomposition; keep that in the debug log
    with warnings.catch_warnings(), contextlib.redirect_stdout(log), third_party_output("LiteRT converter"):
        warnings.simplefilter("ignore")
        if calibration is None:
            converted = litert_torch.convert(model, (example,))
        else:
            converted, quantization = _convert_int8(model, example, calibration, int8 or Int8Options())
        flatbuffer = flatbuffer_utils.convert_bytearray_to_object(converted.model_content())
    logger.debug("litert_torch.convert: %s", log.getvalue())
    props = _with_tensor_names(metadata, flatbuffer).to_dict()
    if quantization is not None:
        props["quantization"] = json.dumps(quantization)
    _add_metadata(flatbuffer, METADATA_NAME, json.dumps(props).encode())
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(flatbuffer_utils.convert_object_to_bytearray(flatbuffer))
    return output


def _convert_int8(
    model: nn.Module, example: torch.Tensor, calibration: Iterable[np.ndarray | torch.Tensor], int8: Int8Options
) -> tuple[Any, dict[str, Any]]:
    """The converted int8 model and the ``quantization`` metadata entry that describes it."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    quantizer = PT2EQuantizer().set_global(with_observer(config, int8.observer))
    # the converter folds the weights' quantize ops itself
    quantized = quantize_pt2e(model, example, quantizer, calibration, int8, fold_quantize=False)
    converted = litert_torch.convert(quantized.module, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    how = {
        "dtype": "int8",
        "quantizer": "litert_torch PT2EQuantizer",
        "per_channel": True,
        "activations": "static",
        **quantized.details,
        "calibration_images": quantized.calibration_images,
    }
    return converted, how


def _with_tensor_names(metadata: ExportMetadata, flatbuffer: Any) -> ExportMetadata:
    """``metadata`` with the input and output names of the flatbuffer's main graph."""
    graph = flatbuffer.subgraphs[0]

    def name(index: int) -> str:
        raw = graph.tensors[index].name
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    outputs = tuple(name(i) for i in graph.outputs)
    return dataclasses.replace(
        metadata,
        input_name=name(graph.inputs[0]),
        output_name=outputs[0],
        output_names=outputs if metadata.output_names else (),  # a detector's, in its outputs' order
    )


def _add_metadata(flatbuffer: Any, name: str, data: bytes) -> None:
    """Append a named metadata entry holding ``data`` (a new buffer) to a flatbuffer model object."""
    from ai_edge_litert import schema_py_generated as schema

    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, dtype=np.uint8)
    flatbuffer.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(flatbuffer.buffers) - 1
    flatbuffer.metadata = [m for m in flatbuffer.metadata or [] if _entry_name(m) != name] + [entry]


def _entry_name(entry: Any) -> str:
    return entry.name.decode() if isinstance(entry.name, bytes) else str(entry.name)
