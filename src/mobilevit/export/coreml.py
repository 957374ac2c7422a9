"""CoreML export (``coremltools``) of the folded model as an ML Program (``.mlpackage``), for iOS 15 / macOS 12 on.

Converter path (measured with torch 2.14.1, coremltools 9.0): ``torch.export`` followed by the core-ATen
decompositions (``run_decompositions()``), then ``coremltools.convert``. ``torch.jit.trace`` is not used: coremltools
9.0 fails on every MobileViT and FastViT trace (``aten::Int`` over a one-element shape array, ``TypeError: only
0-dimensional arrays can be converted to Python scalars`` under NumPy 2), and converting the export without the
default decompositions stops at MobileViT v2's GroupNorm (``Unsupported fx node addcmul``).

What the file takes and gives:

- Input ``image`` (default): a ``ct.ImageType`` of the exported size (``[1, 3, H, W]``, e.g. 256x256 for MobileViT,
  224x224 for MobileOne). CoreML hands the model the pixels in the channel order the weights expect (``BGR`` for the
  MobileViT v1 / v3-on-v1 weights, else ``RGB``), scaled by 1/255; the graph then subtracts the weights' mean and
  divides by their std (:func:`mobilevit.data.normalize.normalize`; the ImageType's one scale for all channels cannot
  hold a per-channel std). So an app passes the photo's pixels (resized and center-cropped, e.g. by Vision's
  ``VNImageCropAndScaleOption.centerCrop``; the metadata records the exact resize) and nothing else.
  With ``image_input=False`` the input is the ``pixel_values`` tensor ``[1, 3, H, W]``, already preprocessed as
  the metadata says (as for ONNX).
- Output (default, a classifier): ``classLabel`` (the top label) and ``classLabel_probs`` (label -> softmax
  probability), the outputs Xcode and Vision's ``VNClassificationObservation`` read. With ``classifier=False``:
  the ``logits`` tensor ``[1, num_classes]``; a segmentation model (:func:`~mobilevit.export.export_model` exports it
  so) gives ``logits`` ``[1, num_classes, h, w]`` at 1/output stride of the input, which an app resizes to the photo
  (bilinear) and takes the argmax of per pixel, as :class:`~mobilevit.segment.Segmenter` does. Its image input is the
  whole photo resized to the input size, nothing cropped (Vision's ``VNImageCropAndScaleOption.scaleFill``). A
  detector gives its raw ``logits`` ``[1, A, num_classes]``, ``boxes`` and ``anchors`` ``[1, A, 4]``, its image
  resized whole as well; the app decodes them and runs NMS (docs/export.md says how).
- The model's user-defined metadata holds :meth:`ExportMetadata.to_dict` (preprocessing, labels, sizes), as ONNX's
  ``metadata_props`` do.

The input size is fixed (CoreML image inputs take one size per model, and phones run batch 1). Prediction needs
macOS: on Linux :func:`inspect_coreml` validates the saved spec instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..data.normalize import PIXEL_MAX, normalize
from ..errors import UsageError
from ..runtime.metadata import OUTPUT_NAME, ExportMetadata
from ..tasks import get_task
from ..weights.entries import Preprocess

logger = logging.getLogger(__name__)

Precision = Literal["float32", "float16"]
PRECISIONS: tuple[str, ...] = ("float32", "float16")
IMAGE_INPUT_NAME = "image"
LABEL_OUTPUT = "classLabel"
PROBS_OUTPUT = "classLabel_probs"  # coremltools names the probabilities "<predicted feature>_probs"


@contextlib.contextmanager
def _quiet_coremltools() -> Iterator[None]:
    """Keep coremltools' warnings that do not apply here out of the user's terminal: on Linux, that its runtime
    (macOS only) is missing; and that torch is newer than it was tested with (every variant converts; see above)."""
    log = logging.getLogger("coremltools")
    level = log.level
    log.setLevel(logging.ERROR)
    buffer = io.StringIO()  # progress bars
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(buffer):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)
        logger.debug("coremltools: %s", buffer.getvalue())


class _ImageModel(nn.Module):
    """What the CoreML graph computes: normalize ``[0, 1]`` pixels (in the weights' channel order) with the mean and
    std of ``preprocess`` (``None``: the input is preprocessed already), run the model, and turn logits into
    probabilities for the classifier outputs."""

    def __init__(self, model: nn.Module, preprocess: Preprocess | None, softmax: bool) -> None:
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preprocess is not None:  # the ImageType has scaled and ordered the channels
            x = normalize(x, self.preprocess, reorder=False)
        logits = self.model(x)
        return logits.softmax(dim=-1) if self.softmax else logits


def coreml_graph_module(
    model: nn.Module, metadata: ExportMetadata, image_input: bool = True, classifier: bool = True
) -> nn.Module:
    """The eval-mode module that :func:`export_coreml` converts (exposed so tests can check it in PyTorch).

    With ``image_input`` it takes ``[B, 3, H, W]`` pixels in ``[0, 1]`` (the ImageType's 1/255 scale already applied)
    in the weights' channel order; without, the preprocessed tensor. With ``classifier`` it returns probabilities.
    """
    if not image_input:
        return _ImageModel(model, None, classifier).eval()
    pre = metadata.preprocess
    if pre is None:
        raise UsageError(
            "an image input needs the weights' preprocessing (mean, std, channel order); pass preprocess= "
            "or export with image_input=False"
        )
    return _ImageModel(model, pre, classifier).eval()


def export_coreml(
    model: nn.Module,
    output: str | os.PathLike,
    metadata: ExportMetadata,
    precision: Precision = "float32",
    image_input: bool = True,
    classifier: bool = True,
) -> tuple[Path, ExportMetadata]:
    """Convert an eval-mode (already folded) model to a CoreML ML Program and save it as ``.mlpackage``.

    Args:
        model: the model to convert, in eval mode.
        output: the ``.mlpackage`` directory to write.
        metadata: input size, preprocessing and labels; stored in the user-defined metadata.
        precision: ``"float32"`` (the eager answers) or ``"float16"`` (half the size; what the Neural Engine runs).
        image_input: an ``ImageType`` input with the preprocessing inside the model (see the module docstring);
            ``False``: a preprocessed ``pixel_values`` tensor.
        classifier: ``classLabel`` / ``classLabel_probs`` outputs over the labels; ``False``: raw ``logits``.

    Returns:
        The written package and the metadata it records (input and output names filled in).
    """
    with _quiet_coremltools():
        import coremltools as ct

    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if Path(output).suffix != ".mlpackage":
        raise UsageError(f"{output}: an ML Program is saved as a .mlpackage directory; use that suffix")
    meta = replace(
        metadata,
        dynamic_axes=(),
        input_name=IMAGE_INPUT_NAME if image_input else metadata.input_name,
        output_name=PROBS_OUTPUT if classifier else OUTPUT_NAME,
    )
    module = coreml_graph_module(model, meta, image_input, classifier)
    shape = (1, 3, *meta.input_size)
    example = torch.rand(shape)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, (example,)).run_decompositions()
    if image_input:
        order = meta.preprocess.channel_order  # type: ignore[union-attr]  # checked by coreml_graph_module
        layout = ct.colorlayout.BGR if order == "BGR" else ct.colorlayout.RGB
        inputs = [ct.ImageType(name=meta.input_name, shape=shape, scale=1.0 / PIXEL_MAX, color_layout=layout)]
    else:
        inputs = [ct.TensorType(name=meta.input_name, shape=shape)]
    kwargs: dict[str, Any] = {}
    if classifier:
        kwargs["classifier_config"] = ct.ClassifierConfig(list(meta.labels), predicted_feature_name=LABEL_OUTPUT)
    else:
        kwargs["outputs"] = [ct.TensorType(name=name) for name in meta.outputs]  # a detector's three
    with _quiet_coremltools():
        mlmodel = ct.convert(
            program,
            inputs=inputs,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS15,
            compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32,
            **kwargs,
        )
    _describe(mlmodel, meta, image_input)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(output))
    return output, meta


def _describe(mlmodel: Any, meta: ExportMetadata, image_input: bool) -> None:
    """Write the descriptions Xcode shows and ``meta`` as the user-defined metadata of ``mlmodel``."""
    weights = f" ({meta.weights})" if meta.weights else ""
    kind = get_task(meta.task).export_kind
    mlmodel.short_description = f"{meta.arch}{weights} {kind}, exported by mobilevit"
    height, width = meta.input_size
    exact = meta.preprocess is not None and meta.preprocess.resize_mode == "exact"
    how = "resized whole (no crop)" if exact else "resized and center-cropped"
    mlmodel.input_description[meta.input_name] = (
        f"{height}x{width} image, {how} as the 'preprocess' metadata says"
        if image_input
        else f"[1, 3, {height}, {width}] float32, preprocessed as the 'preprocess' metadata says"
    )
    for key, value in meta.to_dict().items():
        mlmodel.user_defined_metadata[key] = value


def _load_spec(path: str | os.PathLike) -> Any:
    with _quiet_coremltools():
        import coremltools as ct

    if not Path(path).exists():
        raise FileNotFoundError(f"No such CoreML package: {path}")
    return ct.utils.load_spec(str(path))


def read_coreml_metadata(path: str | os.PathLike) -> ExportMetadata:
    """The :class:`ExportMetadata` stored in a ``.mlpackage`` written by :func:`export_coreml`."""
    spec = _load_spec(path)
    return ExportMetadata.from_dict(dict(spec.description.metadata.userDefined))


@dataclass(frozen=True)
class CoreMLSummary:
    """What a saved ``.mlpackage`` declares, read from its spec (no CoreML runtime needed).

    Attributes:
        model_type: the spec's kind; ``"mlProgram"`` for an ML Program.
        input_name: the single input's name.
        input_kind: ``"image"`` or ``"tensor"``.
        input_shape: ``(1, 3, H, W)``.
        color_layout: ``"RGB"`` or ``"BGR"`` for an image input, else ``""``.
        output_names: the declared outputs.
        num_outputs: length of the logits / probabilities vector (a segmentation model: the logits' channels; a
            detector: its classes, background included).
        class_labels: the classifier's labels (empty for a ``logits`` model).
        weight_dtype: ``"float32"`` or ``"float16"``, the type of the largest constant (a weight).
        metadata: the user-defined metadata.
        output_shape: the shape of a ``logits`` output (``(1, num_classes)``, or ``(1, num_classes, h, w)`` for a
            segmentation model); ``()`` for a classifier's outputs.
    """

    model_type: str
    input_name: str
    input_kind: str
    input_shape: tuple[int, ...]
    color_layout: str
    output_names: tuple[str, ...]
    num_outputs: int
    class_labels: tuple[str, ...]
    weight_dtype: str
    metadata: dict[str, str]
    output_shape: tuple[int, ...] = ()


def _dims(tensor_type: Any) -> tuple[int, ...]:
    return tuple(int(d.constant.size) for d in tensor_type.dimensions)


def inspect_coreml(path: str | os.PathLike) -> CoreMLSummary:
    """Read a ``.mlpackage``'s spec: its kind, input, outputs, classifier labels, weight type and metadata."""
    spec = _load_spec(path)  # imports coremltools quietly first
    from coremltools.proto import FeatureTypes_pb2, MIL_pb2

    kind = spec.WhichOneof("Type")
    desc = spec.description
    if len(desc.input) != 1:
        raise UsageError(f"{path}: expected one input, found {len(desc.input)}")
    feature = desc.input[0]
    labels: tuple[str, ...] = ()
    num_outputs = 0
    output_shape: tuple[int, ...] = ()
    weight_dtype = ""
    if kind == "mlProgram":
        function = spec.mlProgram.functions["main"]
        block = function.block_specializations[function.opset]
        input_shape = _dims(function.inputs[0].type.tensorType)
        produced = {out.name: out for op in block.operations for out in op.outputs}
        largest = 0
        for op in block.operations:
            if op.type == "classify":
                classes = op.inputs["classes"].arguments[0].value.immediateValue.list.values
                labels = tuple(v.immediateValue.tensor.strings.values[0] for v in classes)
                probs = produced[op.inputs["probabilities"].arguments[0].name]
                num_outputs = _dims(probs.type.tensorType)[-1]
            if op.type == "const":
                tensor = op.outputs[0].type.tensorType
                size = 1
                for d in _dims(tensor):
                    size *= d
                if size > largest:
                    largest = size
                    weight_dtype = "float16" if tensor.dataType == MIL_pb2.FLOAT16 else "float32"
        if not labels:  # a logits tensor: [1, num_classes], [1, num_classes, h, w] or a detector's [1, A, classes]
            output_shape = tuple(int(d) for d in desc.output[0].type.multiArrayType.shape)
            output_shape = output_shape or _dims(produced[block.outputs[0]].type.tensorType)
            axes = json.loads(desc.metadata.userDefined.get("output_axes", "[]")) or ["batch", "classes"]
            classes = axes.index("classes") if "classes" in axes and len(axes) == len(output_shape) else 1
            num_outputs = output_shape[classes] if len(output_shape) > 1 else output_shape[-1]
    else:
        input_shape = ()
    image = feature.type.WhichOneof("Type") == "imageType"
    layout = ""
    if image:
        layout = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(feature.type.imageType.colorSpace)
    return CoreMLSummary(
        model_type=kind or "",
        input_name=feature.name,
        input_kind="image" if image else "tensor",
        input_shape=input_shape,
        color_layout=layout,
        output_names=tuple(o.name for o in desc.output),
        num_outputs=num_outputs,
        class_labels=labels,
        weight_dtype=weight_dtype,
        metadata=dict(desc.metadata.userDefined),
        output_shape=output_shape,
    )


def validate_coreml(path: str | os.PathLike) -> CoreMLSummary:
    """Check that a ``.mlpackage`` is an ML Program whose spec agrees with its recorded metadata.

    Checks: the kind is ``mlProgram``; the input is named and shaped as recorded (``[1, 3, H, W]``); an image input's
    color layout is the weights' channel order; the output vector (a segmentation model: each pixel's) has one entry
    per label, and a classifier's labels are the recorded ones.

    Raises:
        ValueError: naming the first disagreement.
    """
    summary = inspect_coreml(path)
    meta = ExportMetadata.from_dict(summary.metadata)
    if summary.model_type != "mlProgram":
        raise UsageError(f"{path}: a {summary.model_type or 'neural network'} model, not an ML Program")
    expected_shape = (1, 3, *meta.input_size)
    if summary.input_name != meta.input_name or summary.input_shape != expected_shape:
        raise UsageError(
            f"{path}: input {summary.input_name} {summary.input_shape}, "
            f"metadata says {meta.input_name} {expected_shape}"
        )
    order = meta.preprocess.channel_order if meta.preprocess is not None else summary.color_layout
    if summary.input_kind == "image" and summary.color_layout != order:
        raise UsageError(f"{path}: image input in {summary.color_layout}, the weights expect {order}")
    if summary.num_outputs != len(meta.labels):
        raise UsageError(f"{path}: {summary.num_outputs} outputs for {len(meta.labels)} labels")
    task = get_task(meta.task)
    if not task.classifies_images and len(summary.output_shape) != len(task.output_axes):
        axes = ", ".join(task.output_axes)
        raise UsageError(f"{path}: a {task.title} model's logits are [{axes}], not {list(summary.output_shape)}")
    if summary.class_labels and summary.class_labels != meta.labels:
        raise UsageError(f"{path}: the classifier's labels differ from the recorded labels")
    for name in {meta.output_name, *meta.output_names}:
        if name not in summary.output_names:
            raise UsageError(f"{path}: no output {name!r} (outputs: {', '.join(summary.output_names)})")
    return summary
