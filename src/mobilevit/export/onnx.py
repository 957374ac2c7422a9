"""ONNX export of the folded model, with its preprocessing and labels in ``metadata_props``.

Exporter choice (measured with torch 2.14.1, onnx 1.23, onnxruntime 1.32): the dynamo-based exporter
(``torch.onnx.export(..., dynamo=True)``, ``torch.export`` + onnxscript). The TorchScript-based one
(``dynamo=False``) cannot export MobileViT v2/v3-on-v2 at all (``PatchLayerNorm`` normalises over ``x.shape[1:]``, a
shape it must treat as constant) and, for MobileViT v1, bakes the traced feature-map sizes into the patch
``Reshape`` nodes, so a dynamic height/width graph fails in onnxruntime at any other size. The dynamo exporter
records those sizes symbolically, and the MobileViT blocks always emit their patch-grid resize (an identity where the
feature map is already a multiple of the patch) with a target size computed from the input's shape, so one graph takes
any batch and every height/width the eager model takes, on the patch grid or not, within 2e-6 of the eager logits'
scale (:func:`~mobilevit.export.metadata.size_multiple` records which sizes the file promises to serve). The patch
unfold/fold (:mod:`mobilevit.layers.patches`) is reshape/permute only, so the graph has no ``Col2Im``/``Im2Col``.

Input ``pixel_values`` ``[batch, 3, height, width]`` (float32, already preprocessed as the metadata says), output
``logits`` ``[batch, num_classes]``; a segmentation model's ``[batch, num_classes, h, w]``, ``h`` and ``w`` following
the input's height and width (DeepLabV3: 1/16 of them, rounded up; its ASPP image pooling is a mean over the map's
symbolic size, so the graph takes every size too). A detector (SSDLite) has three outputs, ``logits`` ``[batch,
anchors, num_classes]``, ``boxes`` and ``anchors`` ``[batch, anchors, 4]``; its anchors are computed in the graph from
the feature maps' symbolic sizes, so the anchor count follows the input's size. ``torch.export`` fixes a size that is
1 where it traces (it checks the strides of a 1x1 map), so a detector's graph serves every size only when traced with
every level above 1x1: at more than 256 pixels a side (:attr:`~mobilevit.models.ssdlite.SSDLite.min_dynamic_size`;
the 320x320 default is); at a smaller size its height and width stay fixed.

A Mask R-CNN (``per_image`` metadata) goes through the TorchScript-based exporter (``dynamo=False``, opset 11 or
higher): ``torch.export`` stops at torchvision's ``batched_nms`` ("Could not guard on data-dependent expression
4*u1 > 4000": the number of boxes left is known only from the values), while tracing records torchvision's own
ONNX-ready paths (its RPN, NMS, RoIAlign and mask pasting check ``torchvision._is_tracing()``). The graph takes one
image at the traced size (batch 1, height and width fixed) and gives that image's ``boxes`` ``[D, 4]``, ``labels``
``[D]``, ``scores`` ``[D]`` and ``masks`` ``[D, 1, H, W]``, ``D`` varying with the image.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..runtime.metadata import ExportMetadata

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 20  # 18 is the lowest the dynamo exporter emits; 20 has a native Gelu (18 spells it out in 5 ops)
AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}


def _rename_dims(model_proto: object, names: dict[str, str]) -> None:
    """Give the exporter's symbolic dims (``s77``...) readable names, everywhere they appear in the graph."""
    graph = model_proto.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


def export_onnx(
    model: nn.Module,
    output: str | os.PathLike,
    metadata: ExportMetadata,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export an eval-mode (already folded) model to ONNX and check the file with ``onnx.checker``.

    Args:
        model: the model to export, in eval mode.
        output: the ``.onnx`` file to write.
        metadata: input size, dynamic axes and what goes into ``metadata_props``.
        opset: ONNX opset (18 or higher for the dynamo exporter).

    Returns:
        The written file.
    """
    import onnx

    write = _traced_proto if metadata.per_image else _exported_proto
    proto = write(model, metadata, opset)
    del proto.metadata_props[:]
    for key, value in metadata.to_dict().items():
        proto.metadata_props.add(key=key, value=value)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(output))
    onnx.checker.check_model(str(output), full_check=True)
    return output


def _traced_proto(model: nn.Module, metadata: ExportMetadata, opset: int) -> object:
    """The graph of a model of one image's outputs by the TorchScript-based exporter, at batch 1 and the metadata's
    size (see the module docstring)."""
    import onnx

    example = torch.rand(1, 3, *metadata.input_size)  # pixels in [0, 1], as a Mask R-CNN reads them
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about torchvision's Python shape arithmetic, fixed here
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[metadata.input_name],
            output_names=list(metadata.outputs),
            dynamic_axes={name: {0: "detections"} for name in metadata.outputs},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    _forget_traced_shapes(proto.graph)
    return proto


def _forget_traced_shapes(graph: object, subgraph: bool = False) -> None:
    """Drop the shapes the trace saw inside ``graph`` and its loops' bodies (the pasted masks of the traced image's
    detections): they are not every image's; onnxruntime infers them again."""
    del graph.value_info[:]
    if subgraph:
        for value in graph.output:
            value.type.tensor_type.ClearField("shape")
    for node in graph.node:
        for attribute in node.attribute:
            for body in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                _forget_traced_shapes(body, subgraph=True)


def _exported_proto(model: nn.Module, metadata: ExportMetadata, opset: int) -> object:
    """The graph of a model by the dynamo-based exporter, with the metadata's dynamic axes named."""
    axes = {i for i, name in AXIS_NAMES.items() if name in metadata.dynamic_axes}
    example = torch.randn(1, 3, *metadata.input_size)
    dynamic_shapes = ({i: torch.export.Dim.AUTO for i in sorted(axes)},) if axes else None
    # the exporter prints its progress and warns about every fallback; keep that in the debug log
    buffer = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[metadata.input_name],
            output_names=list(metadata.outputs),
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    logger.debug("torch.onnx.export: %s", buffer.getvalue())
    proto = program.model_proto
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    _rename_dims(proto, {dims[i].dim_param: AXIS_NAMES[i] for i in axes if dims[i].dim_param})
    return proto


def read_onnx_metadata(path: str | os.PathLike) -> ExportMetadata:
    """The :class:`ExportMetadata` stored in an ONNX file written by :func:`export_onnx` (the graph is not loaded)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return ExportMetadata.from_dict({p.key: p.value for p in proto.metadata_props})
