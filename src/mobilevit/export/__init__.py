"""Export for deployment: one call from a model to an ONNX, CoreML, TorchScript, ExecuTorch or LiteRT file that gives
the same answers.

Every export is of the re-parameterized, BatchNorm-folded model (:func:`mobilevit.reparameterize_model`) in eval mode,
and carries its task, the preprocessing and the labels (:class:`~mobilevit.runtime.metadata.ExportMetadata`), so a
runtime needs nothing else. Classifiers and segmentation models (``deeplabv3_*``, ``semfpn_*``: ``[B, num_classes, h,
w]`` logits) export alike. :func:`check_export` runs the file and compares its logits with the eager model's (CoreML
runs only on macOS: :func:`validate_coreml` checks its spec instead). :func:`quantize_onnx` writes an int8 ONNX file;
ExecuTorch and LiteRT files are quantized while exporting (``export_model(..., quantize="int8", calibration=...)``,
tuned by :class:`Int8Options`).
:mod:`mobilevit.runtime` runs the files (``onnx_session``, ``openvino_model`` and ``read_openvino_metadata`` are its
names, also importable from here).

Example::

    import mobilevit
    from mobilevit.export import check_export, export_model

    model = mobilevit.create_model("mobilevitv2_050.cvnets_in1k", pretrained=True)
    path = export_model(model, "onnx", "mobilevitv2_050.onnx")
    print(check_export(model, path, input_size=(320, 192)).max_abs_diff)
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..data.images import find_images
from ..errors import UsageError
from ..reparam import reparameterize_model
from ..runtime import (
    FILE_FORMATS,
    Runtime,
    TorchRuntime,
    onnx_session,
    open_runtime,
    openvino_model,
    read_executorch_metadata,
    read_litert_metadata,
    read_openvino_metadata,
    suffix_of,
)
from ..runtime.base import named_outputs
from ..runtime.metadata import ExportMetadata
from ..tasks import get_task
from ..weights.entries import Preprocess
from .coreml import CoreMLSummary, Precision, export_coreml, inspect_coreml, read_coreml_metadata, validate_coreml
from .executorch import MAX_BATCH, executorch_dynamic_axes, export_executorch
from .litert import export_litert
from .metadata import model_metadata, size_multiple
from .onnx import DEFAULT_OPSET, export_onnx, read_onnx_metadata
from .pt2e import OBSERVERS, Int8Options
from .quantize import calibration_batches, quantize_onnx
from .torchscript import export_torchscript, load_torchscript

logger = logging.getLogger(__name__)

AXES = ("batch", "height", "width")  # the input axes that an export keeps dynamic or fixes
ExportFormat = Literal["onnx", "coreml", "torchscript", "executorch", "tflite"]
# views of the one format table (mobilevit.runtime.FILE_FORMATS): the --format names, suffix -> format name
FORMATS: tuple[str, ...] = tuple(FILE_FORMATS)
SUFFIXES = {suffix: fmt.name for fmt in FILE_FORMATS.values() for suffix in fmt.suffixes}
QUANTIZED_FORMATS = tuple(f.name for f in FILE_FORMATS.values() if f.int8)  # ONNX is quantized after: quantize_onnx
Calibration = str | os.PathLike | Sequence[str | os.PathLike]


@dataclass(frozen=True)
class ExportOptions:
    """What :func:`export_model` hands every exporter besides the model, the file and its metadata; each exporter
    uses the options of its format (see :func:`export_model`'s arguments).

    Attributes:
        opset: ONNX opset.
        precision: CoreML weights and arithmetic.
        image_input: CoreML: an image input with the preprocessing inside the model.
        calibration: ExecuTorch and LiteRT int8: the preprocessed ``[1, 3, H, W]`` batches (``None``: float32).
        int8: ExecuTorch and LiteRT int8: the fixes and the observer.
    """

    opset: int = DEFAULT_OPSET
    precision: Precision = "float32"
    image_input: bool = True
    calibration: list[np.ndarray] | None = None
    int8: Int8Options | None = None


@dataclass(frozen=True)
class Exporter:
    """How the files of one format of :data:`~mobilevit.runtime.FILE_FORMATS` are written and read back.

    Attributes:
        write: ``(folded eval-mode model, file, metadata, options)``: writes the file.
        read: the :class:`ExportMetadata` a file records.
        dynamic_axes: ``(folded model, (H, W))``: the input axes a file of this format can keep dynamic.
    """

    write: Callable[[nn.Module, Path, ExportMetadata, ExportOptions], object]
    read: Callable[[str | os.PathLike], ExportMetadata]
    dynamic_axes: Callable[[nn.Module, tuple[int, int]], tuple[str, ...]]


EXPORTERS: dict[str, Exporter] = {}  # format name -> its exporter, filled by registers() below


def registers(
    fmt: str,
    read: Callable[[str | os.PathLike], ExportMetadata],
    dynamic_axes: Callable[[nn.Module, tuple[int, int]], tuple[str, ...]],
) -> Callable[[Callable], Callable]:
    """Register the decorated ``write(model, file, metadata, options)`` as the exporter of format ``fmt`` (a name of
    :data:`~mobilevit.runtime.FILE_FORMATS`), with how its files are read back and which axes they keep dynamic."""

    def register(write: Callable) -> Callable:
        if fmt not in FILE_FORMATS or fmt in EXPORTERS:
            raise ValueError(f"{fmt!r} is not a format of FILE_FORMATS, or has an exporter already")
        EXPORTERS[fmt] = Exporter(write, read, dynamic_axes)
        return write

    return register


def _onnx_axes(model: nn.Module, input_size: tuple[int, int]) -> tuple[str, ...]:
    """``batch``, plus ``height``/``width`` if the graph generalises from the traced size."""
    smallest = getattr(model, "min_dynamic_size", 1)  # a detector's: see mobilevit.export.onnx
    if min(input_size) < smallest:
        logger.warning(
            "%s: an ONNX graph traced at %s serves that size only (traced below %d pixels a side, a feature map is "
            "1x1 and torch.export fixes it); height and width stay fixed (the batch stays dynamic)",
            type(model).__name__,
            input_size,
            smallest,
        )
        return ("batch",)
    multiple = size_multiple(model)
    if input_size[0] % multiple or input_size[1] % multiple:
        logger.warning(
            "%s: input size %s is not a multiple of %d, so height and width stay fixed (the batch stays dynamic)",
            type(model).__name__,
            input_size,
            multiple,
        )
        return ("batch",)
    return ("batch", "height", "width")


def _no_axes(model: nn.Module, input_size: tuple[int, int]) -> tuple[str, ...]:
    return ()  # CoreML, LiteRT: one image size per model, batch 1 (see mobilevit.export.coreml and .litert)


def _batch_axis(model: nn.Module, input_size: tuple[int, int]) -> tuple[str, ...]:
    return ("batch",)  # tracing freezes Python shape arithmetic (see mobilevit.export.torchscript)


def _executorch_axes(model: nn.Module, input_size: tuple[int, int]) -> tuple[str, ...]:
    return executorch_dynamic_axes(model)  # at most the batch (see mobilevit.export.executorch)


# each exporter calls its module's function through this package's name for it, so that replacing that name (a test
# that makes an export fail half way) replaces what export_model runs


@registers("onnx", read_onnx_metadata, _onnx_axes)
def _write_onnx(model: nn.Module, output: Path, meta: ExportMetadata, options: ExportOptions) -> None:
    export_onnx(model, output, meta, options.opset)


@registers("coreml", read_coreml_metadata, _no_axes)
def _write_coreml(model: nn.Module, output: Path, meta: ExportMetadata, options: ExportOptions) -> None:
    classifier = get_task(meta.task).classifies_images  # else its outputs are maps (a segmentation model's)
    export_coreml(model, output, meta, options.precision, options.image_input, classifier)


@registers("torchscript", lambda path: load_torchscript(path)[1], _batch_axis)
def _write_torchscript(model: nn.Module, output: Path, meta: ExportMetadata, options: ExportOptions) -> None:
    export_torchscript(model, output, meta)


@registers("executorch", lambda path: ExportMetadata.from_dict(read_executorch_metadata(path)), _executorch_axes)
def _write_executorch(model: nn.Module, output: Path, meta: ExportMetadata, options: ExportOptions) -> None:
    export_executorch(model, output, meta, options.calibration, options.int8)


@registers("tflite", lambda path: ExportMetadata.from_dict(read_litert_metadata(path)), _no_axes)
def _write_litert(model: nn.Module, output: Path, meta: ExportMetadata, options: ExportOptions) -> None:
    export_litert(model, output, meta, options.calibration, options.int8)


def _dynamic_axes(model: nn.Module, input_size: tuple[int, int], dynamic: bool, fmt: str) -> tuple[str, ...]:
    """The axes the exporter of ``fmt`` keeps dynamic (none unless ``dynamic``)."""
    return EXPORTERS[fmt].dynamic_axes(model, input_size) if dynamic else ()


def export_model(
    model: nn.Module,
    format: ExportFormat,
    output: str | os.PathLike,
    input_size: tuple[int, int] | None = None,
    dynamic: bool = True,
    opset: int = DEFAULT_OPSET,
    preprocess: Preprocess | None = None,
    labels: list[str] | tuple[str, ...] | None = None,
    precision: Precision = "float32",
    image_input: bool = True,
    quantize: Literal["int8"] | None = None,
    calibration: Calibration | None = None,
    max_calibration_images: int = 500,
    int8: Int8Options | None = None,
) -> Path:
    """Write the folded, eval-mode ``model`` as an ONNX, CoreML, TorchScript, ExecuTorch or LiteRT file with its
    task, preprocessing and labels.

    Args:
        model: a classifier or segmentation model of this package (train-time or already folded; it is not
            modified).
        format: ``"onnx"``, ``"coreml"`` (an ML Program, ``.mlpackage``), ``"torchscript"``, ``"executorch"``
            (``.pte``, XNNPACK delegate) or ``"tflite"`` (LiteRT). A Mask R-CNN exports to ONNX and TorchScript
            only, one image at its input size (:mod:`mobilevit.export.onnx`).
        output: the file to write.
        input_size: (H, W) to trace at (default: the preprocessing's input size, e.g. 256x256; 512x512 for
            segmentation).
        dynamic: let the batch vary, and for ONNX also height and width when ``input_size`` is a multiple of
            :func:`~mobilevit.export.metadata.size_multiple` (any size for every family); ExecuTorch: the batch
            (``1..MAX_BATCH``) for the families whose program runs at any batch. ``False`` fixes every axis. CoreML
            and LiteRT always take one size, batch 1.
        opset: ONNX opset (ignored for the other formats).
        preprocess: preprocessing to record instead of ``model.pretrained_cfg``'s (a segmentation model's is made an
            exact resize of the whole image, as :class:`~mobilevit.segment.Segmenter` feeds it).
        labels: class names to record instead of ``model.pretrained_cfg``'s.
        precision: CoreML only: ``"float32"`` or ``"float16"`` weights and arithmetic.
        image_input: CoreML only: an image input with the preprocessing inside the model (default), or a
            preprocessed ``pixel_values`` tensor (see :mod:`mobilevit.export.coreml`).
        quantize: ExecuTorch and LiteRT only: ``"int8"`` for int8 weights and activations (static ranges measured on
            ``calibration``; batch 1). An ONNX file is quantized after export: :func:`quantize_onnx`.
        calibration: int8: a folder (searched recursively), image files or glob patterns, of images like the ones
            the model will see (not your evaluation images), preprocessed as the recorded preprocessing says.
        max_calibration_images: int8: use at most this many calibration images (the first ones, sorted).
        int8: with ``quantize="int8"``: the fixes and the activation observer (default: :class:`Int8Options`'s
            defaults, measured on MobileOne-S0).

    Returns:
        The written file.
    """
    _check_request(model, format, output, quantize, int8)
    folded = reparameterize_model(model).eval()
    meta = model_metadata(folded, input_size, (), preprocess, labels)
    # a model of one image's outputs (per_image) is traced at batch 1 and its size: its shapes follow the values
    axes = _dynamic_axes(folded, meta.input_size, dynamic and quantize is None and not meta.per_image, format)
    meta = model_metadata(folded, meta.input_size, axes, preprocess, labels)
    batches = _calibration(calibration, meta, max_calibration_images) if quantize else None
    options = ExportOptions(opset, precision, image_input, batches, int8)
    graph = _PlainTuple(folded, meta.output_names if meta.per_image else ()).eval() if len(meta.outputs) > 1 else folded
    with written_atomically(output) as temp:
        EXPORTERS[format].write(graph, temp, meta, options)
    return Path(output)


class _PlainTuple(nn.Module):
    """A model of several outputs (a detector's :class:`~mobilevit.models.ssdlite.SSDOutput` named tuple) returning a
    plain tuple of them: ExecuTorch cannot serialize a named tuple's output spec, and no format keeps its names. Given
    ``image_outputs``, the model returns one dict per image (a Mask R-CNN's): the first image's, in that order."""

    def __init__(self, model: nn.Module, image_outputs: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.model = model
        self.image_outputs = image_outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.image_outputs:
            first = self.model(x)[0]
            return tuple(first[name] for name in self.image_outputs)
        return tuple(self.model(x))


def _check_request(
    model: nn.Module, format: str, output: str | os.PathLike, quantize: str | None, int8: Int8Options | None
) -> None:
    """Refuse, before anything is written, a format, output name, model or int8 option that cannot be exported."""
    if format not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    check_output_suffix(output, format)
    if getattr(model, "features_only", False):
        raise UsageError(
            "export a classifier or a segmentation model: features_only models have no logits to check or label"
        )
    task = get_task(getattr(model, "task", "classification"))
    if task.export_formats is not None and format not in task.export_formats:
        raise UsageError(
            f"{format} cannot hold {task.model_kind}: its detections' number and shapes depend on the image (RPN "
            f"proposals, NMS, RoIAlign), which torch.export cannot trace; export it as "
            f"{' or '.join(task.export_formats)}"
        )
    if int8 is not None and quantize is None:
        raise UsageError("int8= options are for quantize='int8'")
    if quantize is not None and (quantize != "int8" or format not in QUANTIZED_FORMATS):
        raise UsageError(
            f"quantize='int8' applies to {' and '.join(QUANTIZED_FORMATS)} (ONNX: quantize_onnx); got {quantize!r} "
            f"for {format}"
        )


def check_output_suffix(output: str | os.PathLike, format: str) -> None:
    """Refuse an output name whose suffix belongs to another format than ``format`` (an ONNX file named ``.tflite``
    would be run by the wrong runtime); a suffix of no known format is left to the caller."""
    suffix = suffix_of(output)
    if SUFFIXES.get(suffix, format) != format:
        wanted = " or ".join(s for s, f in SUFFIXES.items() if f == format)
        raise UsageError(
            f"{output}: {suffix} is the suffix of {SUFFIXES[suffix]} files, but the format is {format} "
            f"(name it {wanted})"
        )


@contextlib.contextmanager
def written_atomically(output: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``output`` (same folder and suffix) to write to: renamed to ``output`` when the block
    succeeds, removed when it fails, so that a failed export leaves no partial file. Files written beside it under its
    name plus a tail (``NAME.data``) follow it."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temp = output.with_name(f".{output.stem}.partial-{secrets.token_hex(4)}{output.suffix}")

    def written() -> list[Path]:
        return [p for p in output.parent.iterdir() if p.name.startswith(temp.name)]

    try:
        yield temp
    except BaseException:
        for path in written():
            _remove(path)
        raise
    for path in written():
        target = output.with_name(output.name + path.name[len(temp.name) :])
        if target.is_dir() and not target.is_symlink():  # a .mlpackage is a folder: os.replace cannot overwrite it
            shutil.rmtree(target)
        os.replace(path, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _calibration(calibration: Calibration | None, meta: ExportMetadata, max_images: int) -> list[np.ndarray]:
    """``[1, 3, H, W]`` batches of the first ``max_images`` images of ``calibration``, preprocessed as ``meta`` says
    and checked against the export size."""
    if calibration is None:
        raise UsageError("int8 quantization needs calibration images: calibration= a folder or files")
    sources = [calibration] if isinstance(calibration, str | os.PathLike) else list(calibration)
    images = [p for p in find_images(sources) if p.is_file()][:max_images]
    if not images:
        raise UsageError(f"no calibration images found in {', '.join(str(s) for s in sources)}")
    if meta.preprocess is None or tuple(meta.preprocess.input_size) != tuple(meta.input_size):
        crop = meta.preprocess.input_size if meta.preprocess is not None else None
        raise UsageError(f"calibrating needs the preprocessing to crop the export size {meta.input_size}, not {crop}")
    return list(calibration_batches(images, meta.preprocess, 1))


def read_metadata(path: str | os.PathLike) -> ExportMetadata:
    """The metadata stored in a file written by :func:`export_model`."""
    return EXPORTERS[_format_of(path)].read(path)


def _format_of(path: str | os.PathLike) -> str:
    suffix = suffix_of(path)
    if suffix not in SUFFIXES:
        raise UsageError(f"{path}: cannot tell the format from the suffix (expected one of {', '.join(SUFFIXES)})")
    return SUFFIXES[suffix]


@dataclass(frozen=True)
class ExportParity:
    """How far an exported file's outputs are from the eager model's on one random batch.

    Attributes:
        input_shape: the ``[B, 3, H, W]`` batch compared.
        max_abs_diff: largest absolute logit difference (the first output).
        logit_scale: the eager model's largest absolute logit.
        others: for a model of several outputs (a detector's ``boxes`` and ``anchors``), each later output's
            ``(name, largest absolute difference, the eager output's largest absolute value)``.
    """

    input_shape: tuple[int, int, int, int]
    max_abs_diff: float
    logit_scale: float
    others: tuple[tuple[str, float, float], ...] = ()

    @property
    def max_rel_diff(self) -> float:
        """The largest difference relative to its output's scale (random-init MobileOne logits reach 1e5): the
        logits', or a later output's when larger."""
        pairs = [(self.max_abs_diff, self.logit_scale), *((diff, scale) for _, diff, scale in self.others)]
        return max(diff / scale if scale else diff for diff, scale in pairs)


def check_export(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int] | None = None,
    batch_size: int | None = None,
    seed: int = 0,
) -> ExportParity:
    """Run the exported file in its runtime (:mod:`mobilevit.runtime`: onnxruntime for ONNX, ExecuTorch for ``.pte``,
    LiteRT for ``.tflite``, the loaded module for TorchScript) against the eager model: every logit of a classifier's
    ``[B, num_classes]`` or a segmentation model's ``[B, num_classes, h, w]``; every value of each of a detector's
    raw outputs (``logits``, ``boxes``, ``anchors``, in the graph's order); a Mask R-CNN's ``boxes``, ``labels``,
    ``scores`` and ``masks`` of its one image (the same number of detections, else a :class:`UsageError`).

    The comparison runs at the shape the file takes: an ONNX file exported with ``dynamic=False``, an ExecuTorch
    program without a dynamic batch and every LiteRT file fix the batch (1) and the size in the file and are checked
    at exactly those; a TorchScript archive exported so is checked at batch 1.

    Args:
        model: the eager model the file was exported from (train-time or folded; used in eval mode, not modified).
        path: a file written by :func:`export_model`; the format comes from its suffix.
        input_size: (H, W) of the random batch (default: the size recorded in the file).
        batch_size: batch of the comparison (default: 2, which exercises a dynamic batch axis, or the file's fixed
            batch).
        seed: seed of the random batch.

    Returns:
        The comparison.

    Raises:
        ValueError: for a CoreML package (its runtime exists only on macOS; :func:`validate_coreml` checks the spec),
            or for a ``batch_size`` / ``input_size`` that the file fixes to other values.
    """
    fmt = _format_of(path)
    if not FILE_FORMATS[fmt].backends:
        raise UsageError(f"{path}: CoreML models run only on macOS; check the spec with validate_coreml()")
    runtime, meta, fixed = _open_export(path, fmt)
    batch_size = batch_size if batch_size is not None else fixed[0] or 2
    size = tuple(input_size or meta.input_size)
    for axis, want, got in zip(AXES, fixed, (batch_size, *size), strict=True):
        if want is not None and want != got:
            raise UsageError(f"{path} was exported with a fixed {axis} of {want}; cannot check it at {got}")
    x = torch.randn(batch_size, 3, *size, generator=torch.Generator().manual_seed(seed))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
            ref = named_outputs(list(meta.outputs), out[0] if meta.per_image else out)
    finally:
        model.train(was_training)
    got = runtime.run_named(x)
    if len(got) != len(ref):
        raise UsageError(f"{path}: {len(got)} outputs ({', '.join(got)}), eager {len(ref)} ({', '.join(ref)})")
    compared = []
    for name, want, out in zip(ref, ref.values(), got.values(), strict=True):  # in order: a file may rename them
        if out.shape != want.shape:
            raise UsageError(f"{path}: output {name} of shape {tuple(out.shape)}, eager {tuple(want.shape)}")
        compared.append((name, _largest(out - want), _largest(want)))
    (_, diff, scale), *others = compared
    return ExportParity(tuple(x.shape), diff, scale, tuple(others))


def _largest(t: torch.Tensor) -> float:
    """The largest absolute value of ``t``; 0 for an empty tensor (a Mask R-CNN's image without detections)."""
    return float(t.abs().max()) if t.numel() else 0.0


def _open_export(path: str | os.PathLike, fmt: str) -> tuple[Runtime, ExportMetadata, tuple[int | None, ...]]:
    """``(runtime, metadata, fixed)`` of an ONNX, ExecuTorch, LiteRT or TorchScript file: ``fixed`` is its (batch,
    height, width), an int where the file fixes the axis, ``None`` where it is dynamic."""
    if fmt != "torchscript":
        runtime = open_runtime(path)  # onnxruntime, ExecuTorch or LiteRT, by the suffix
        meta = ExportMetadata.from_dict(runtime.metadata())
        batch, _, height, width = runtime.signature()[0][0][1]  # the file's own input shape
        return runtime, meta, (batch, height, width)
    module, meta = load_torchscript(path)
    # an archive declares its shapes only in its metadata: a fixed batch is 1; the size is checked where asked
    return TorchRuntime(module, fold=False), meta, (None if "batch" in meta.dynamic_axes else 1, None, None)


__all__ = [
    "EXPORTERS",
    "FORMATS",
    "MAX_BATCH",
    "OBSERVERS",
    "SUFFIXES",
    "CoreMLSummary",
    "ExportMetadata",
    "ExportOptions",
    "ExportParity",
    "Exporter",
    "Int8Options",
    "check_export",
    "check_output_suffix",
    "export_executorch",
    "export_litert",
    "export_model",
    "inspect_coreml",
    "load_torchscript",
    "model_metadata",
    "onnx_session",
    "openvino_model",
    "quantize_onnx",
    "read_executorch_metadata",
    "read_litert_metadata",
    "read_metadata",
    "read_openvino_metadata",
    "registers",
    "size_multiple",
    "validate_coreml",
    "written_atomically",
]
