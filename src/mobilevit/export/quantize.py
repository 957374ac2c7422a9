"""int8 quantization of an exported ONNX file with onnxruntime's quantization tool.

Two modes:

- ``"static"`` (default): weights int8 per output channel, activations int8 with ranges measured on calibration
  images, written in QDQ format (``QuantizeLinear``/``DequantizeLinear`` pairs around each quantized op, which
  onnxruntime fuses into integer kernels). Calibration images go through the weights' own eval preprocessing, the
  one recorded in the file (:class:`~mobilevit.runtime.metadata.ExportMetadata`), exactly as at prediction time.
  Before calibration the channels between consecutive convolutions are equalized, and after quantization each bias
  is corrected for its weights' rounding (:mod:`mobilevit.export.quant_fixes`); the first and last layers stay in
  float. Each of these is an option of :func:`quantize_onnx`; docs/export.md measures every choice.
- ``"dynamic"``: weights uint8 ahead of time, activation ranges computed per batch at run time; no calibration
  set. onnxruntime's CPU ``ConvInteger`` kernel takes uint8 weights only, hence uint8 rather than int8.

The output keeps the input file's metadata (preprocessing, labels, sizes) and adds a ``quantization`` entry that
records what was done (mode, weights, method, the nodes kept in float, equalization, bias correction, calibration
image count), so :func:`~mobilevit.predict.OnnxPredictor`, ``mobilevit predict/eval --backend onnxruntime`` and the
server run it unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..data.images import find_images, open_image
from ..data.transforms import eval_transform
from ..errors import UsageError
from ..weights.entries import Preprocess
from ..weights.load import LIBRARY
from .quant_fixes import correct_bias, equalize_channels

logger = logging.getLogger(__name__)

QuantizeMode = Literal["static", "dynamic"]
CalibrationMethod = Literal["minmax", "entropy", "percentile"]
MODES: tuple[str, ...] = ("static", "dynamic")
METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
ANCHORS: tuple[str, ...] = ("first", "last")  # keep_fp32 words for the first and last Conv/Gemm/MatMul
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class Options:
    """What :func:`quantize_onnx` does, checked; ``keep_fp32`` holds node names (``first``/``last`` resolved)."""

    mode: str
    per_channel: bool
    method: str
    keep_fp32: tuple[str, ...]
    symmetric: bool
    op_types: tuple[str, ...] | None
    equalize: float | None
    bias_correction: bool


def calibration_batches(
    images: Sequence[str | os.PathLike], preprocess: Preprocess, batch_size: int = 1
) -> Iterator[np.ndarray]:
    """``[B, 3, H, W]`` float32 batches of ``images``, preprocessed as ``preprocess`` says (unreadable files skipped
    with a warning)."""
    transform = eval_transform(preprocess)
    batch: list[np.ndarray] = []
    for path in images:
        try:
            batch.append(transform(open_image(path)).numpy())
        except ValueError as err:  # ImageError: one bad file should not stop a calibration run
            logger.warning("calibration: skipping %s", err)
            continue
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def _reader(batches: list[np.ndarray], input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    return _Reader()


def _read_export(model: Path) -> tuple[dict[str, str], Preprocess | None, str]:
    """The metadata properties of the ONNX file ``model``, the preprocessing they record (``None`` for a file not
    exported by this package) and the graph's input name."""
    import onnx

    from ..runtime.metadata import ExportMetadata

    if not model.is_file():
        raise FileNotFoundError(f"No such ONNX file: {model}")
    proto = onnx.load(str(model), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    preprocess = ExportMetadata.from_dict(props).preprocess if props.get("library") == LIBRARY else None
    return props, preprocess, proto.graph.input[0].name


def _calibration_images(
    calibration: str | os.PathLike | Sequence[str | os.PathLike] | None, max_images: int
) -> list[Path]:
    """The first ``max_images`` image files of ``calibration`` (a folder, files or glob patterns); none raises."""
    if calibration is None:
        raise UsageError("static quantization needs calibration images (a folder or files); or use mode='dynamic'")
    sources = [calibration] if isinstance(calibration, str | os.PathLike) else list(calibration)
    images = [p for p in find_images(sources) if p.is_file()][:max_images]
    if not images:
        raise UsageError(f"no calibration images found in {', '.join(str(s) for s in sources)}")
    return images


def _quantize_static(
    prepared: Path, output: Path, batches: list[np.ndarray], input_name: str, options: Options
) -> None:
    """int8 weights and activations in QDQ format, activation ranges from ``batches`` by ``options.method``."""
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    # no CalibMaxIntermediateOutputs: onnxruntime 1.32 then drops every full group of images and calibrates on the
    # last partial one (and fails when the count is a multiple); minmax keeps two small vectors per tensor and image
    quantize_static(
        str(prepared),
        str(output),
        _reader(batches, input_name),
        quant_format=QuantFormat.QDQ,
        per_channel=options.per_channel,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method={
            "minmax": OrtMethod.MinMax,
            "entropy": OrtMethod.Entropy,
            "percentile": OrtMethod.Percentile,
        }[options.method],
        op_types_to_quantize=list(options.op_types) if options.op_types else None,
        nodes_to_exclude=list(options.keep_fp32),
        extra_options={"ActivationSymmetric": options.symmetric},
    )


def _write_metadata(path: Path, props: dict[str, str], quantization: dict[str, Any]) -> None:
    """Replace the metadata of the ONNX file ``path`` by ``props`` plus a ``quantization`` JSON entry."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in {**props, "quantization": json.dumps(quantization)}.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _names(value: str | Sequence[str] | None, what: str) -> tuple[str, ...]:
    """``value`` as a tuple of non-empty strings (one string is one entry)."""
    if value is None:
        return ()
    items = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(v, str) and v for v in items):
        raise UsageError(f"{what} takes names (strings); got {value!r}")
    return items


def resolve_anchors(
    keep_fp32: Iterable[str], layers: Sequence[str], names: Container[str], kind: str, layer_kind: str
) -> tuple[str, ...]:
    """``keep_fp32`` with ``first``/``last`` replaced by the first/last of ``layers`` (the graph's compute layers, in
    order); every other entry must be one of ``names``. ``kind`` and ``layer_kind`` name both in errors ("node" and
    "Conv/Gemm/MatMul", "module" and "conv2d/linear")."""
    resolved = []
    for entry in keep_fp32:
        if entry in ANCHORS:
            if not layers:
                raise UsageError(f"keep_fp32={entry!r}: the graph has no {layer_kind} {kind}")
            resolved.append(layers[0] if entry == "first" else layers[-1])
        elif entry in names:
            resolved.append(entry)
        else:
            raise UsageError(
                f"keep_fp32: no {kind} named {entry!r} in the graph; give {' or '.join(ANCHORS)} or {kind} names "
                f"(its {layer_kind} {kind}s are named like {', '.join(layers[:3])})"
            )
    return tuple(dict.fromkeys(resolved))


def _resolve_keep_fp32(graph: Any, keep_fp32: tuple[str, ...]) -> tuple[str, ...]:
    """Node names for ``keep_fp32``: ``first``/``last`` become the first/last Conv, Gemm or MatMul of the graph."""
    compute = [n.name for n in graph.node if n.op_type in COMPUTE_OPS]
    return resolve_anchors(keep_fp32, compute, {n.name for n in graph.node}, "node", "/".join(COMPUTE_OPS))


def _check_op_types(graph: Any, op_types: tuple[str, ...]) -> None:
    """Every entry an ONNX operator, and at least one of them in ``graph`` (a list may name types a model lacks)."""
    import onnx

    present = sorted({n.op_type for n in graph.node})
    for op in op_types:
        if not onnx.defs.has(op):
            close = [p for p in present if p.lower() == op.lower()]
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"op_types: {op!r} is not an ONNX operator{hint}")
    if not set(op_types) & set(present):
        raise UsageError(f"op_types: the graph has no {', '.join(op_types)} node (it has {', '.join(present)})")


def _options(
    mode: str,
    per_channel: bool,
    method: str,
    keep_fp32: str | Sequence[str] | None,
    symmetric: bool,
    op_types: str | Sequence[str] | None,
    equalize: float | None,
    bias_correction: bool,
) -> Options:
    """The checked options, before the graph is read (``keep_fp32`` still as given)."""
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if equalize is not None and (isinstance(equalize, bool) or not 0 <= equalize <= 1):
        raise UsageError(f"equalize must be None (off) or an alpha between 0 and 1; got {equalize!r}")
    for name, flag in (("per_channel", per_channel), ("symmetric", symmetric), ("bias_correction", bias_correction)):
        if not isinstance(flag, bool):
            raise UsageError(f"{name} must be True or False; got {flag!r}")
    ops = _names(op_types, "op_types") or None
    return Options(mode, per_channel, method, _names(keep_fp32, "keep_fp32"), symmetric, ops, equalize, bias_correction)


def quantize_onnx(
    model: str | os.PathLike,
    output: str | os.PathLike,
    calibration: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    mode: QuantizeMode = "static",
    per_channel: bool = True,
    method: CalibrationMethod = "minmax",
    keep_fp32: str | Sequence[str] | None = ("first", "last"),
    symmetric: bool = False,
    op_types: str | Sequence[str] | None = None,
    equalize: float | None = 0.75,
    bias_correction: bool = True,
    max_images: int = 500,
    preprocess: Preprocess | None = None,
) -> Path:
    """Write an int8 version of an ONNX file exported by :func:`~mobilevit.export.export_model`.

    The defaults are the configuration measured best on MobileOne-S0 with Apple's weights (docs/export.md, "int8
    quantization"): per-channel weights, minmax activation ranges, the first and last layers in float,
    channel equalization and bias correction (:mod:`mobilevit.export.quant_fixes`).

    Args:
        model: the float32 ``.onnx`` file.
        output: the int8 ``.onnx`` file to write.
        calibration: static mode: a folder (searched recursively), image files or glob patterns, of images like the
            ones the model will see; keep them disjoint from any images you evaluate on.
        mode: ``"static"`` (calibrated activations, QDQ) or ``"dynamic"`` (no calibration).
        per_channel: one weight scale per output channel (per-tensor scales lose most of the accuracy of
            re-parameterized convolutions, whose folded kernels differ widely in range between channels).
        method: static mode's activation range estimate: ``"minmax"``, ``"entropy"`` or ``"percentile"`` (99.999%).
            The histogram methods hold every activation of every calibration image in memory (onnxruntime's
            calibrator): keep ``max_images`` to a few hundred at most with them.
        keep_fp32: nodes left in float: ``"first"`` and ``"last"`` (the first and last Conv/Gemm/MatMul: the stem and
            the classifier) and/or node names of the graph. ``None`` or ``()`` quantizes every node.
        symmetric: static mode: activations quantized symmetrically around 0 (zero point 0) instead of over their
            measured [min, max].
        op_types: quantize only nodes of these ONNX op types (e.g. ``("Conv", "Gemm", "MatMul")`` keeps softmax,
            normalization and element-wise ops in float); ``None``: every op type onnxruntime quantizes.
        equalize: static mode: the alpha of channel equalization before calibration (1: equal activation ranges, 0:
            equal weight ranges), or ``None`` for none.
        bias_correction: static mode: move each quantized bias back by the mean shift its weights' rounding causes.
        max_images: use at most this many calibration images (the first ones, sorted); they are held in memory
            preprocessed (0.6 MB each at 224x224).
        preprocess: the calibration preprocessing, replacing the one recorded in the file.

    Returns:
        The written file.
    """
    options = _options(mode, per_channel, method, keep_fp32, symmetric, op_types, equalize, bias_correction)
    model, output = Path(model), Path(output)
    props, recorded, input_name = _read_export(model)
    batches: list[np.ndarray] = []
    if mode == "static":
        images = _calibration_images(calibration, max_images)
        preprocess = preprocess or recorded
        if preprocess is None:
            raise UsageError(f"{model}: the file records no preprocessing; pass preprocess= for the calibration images")
        batches = list(calibration_batches(images, preprocess, 1))  # one image per run: equal histogram shapes
        if not batches:
            raise UsageError(f"none of the {len(images)} calibration images could be read")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        how = _quantize(model, output, Path(tmp), batches, input_name, options)
    _write_metadata(output, props, how)
    return output


def _quantize(
    model: Path, output: Path, tmp: Path, batches: list[np.ndarray], input_name: str, options: Options
) -> dict[str, Any]:
    """Prepare, (equalize,) quantize and (correct) ``model`` into ``output``; returns the metadata entry."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # shape inference and graph cleanup first, as onnxruntime recommends before quantizing
    prepared = tmp / "prepared.onnx"
    quant_pre_process(str(model), str(prepared), skip_symbolic_shape=False)
    graph = onnx.load(str(prepared), load_external_data=False).graph
    if options.op_types:
        _check_op_types(graph, options.op_types)
    resolved = Options(**{**asdict(options), "keep_fp32": _resolve_keep_fp32(graph, options.keep_fp32)})
    how: dict[str, Any] = {"dtype": "int8", "mode": options.mode, "per_channel": options.per_channel}
    how |= {"keep_fp32": list(resolved.keep_fp32), "op_types": list(options.op_types) if options.op_types else None}
    if options.mode == "dynamic":
        quantize_dynamic(
            str(prepared),
            str(output),
            per_channel=options.per_channel,
            weight_type=QuantType.QUInt8,
            op_types_to_quantize=how["op_types"],
            nodes_to_exclude=how["keep_fp32"],
        )
        return how
    source, pairs = prepared, 0
    if options.equalize is not None:
        source = tmp / "equalized.onnx"
        pairs = equalize_channels(prepared, source, batches, options.equalize)
    _quantize_static(source, output, batches, input_name, resolved)
    corrected = correct_bias(source, output, batches) if options.bias_correction else 0
    return how | {
        "format": "QDQ",
        "method": options.method,
        "activations": "symmetric" if options.symmetric else "asymmetric",
        "equalize": options.equalize,
        "equalized_pairs": pairs,
        "bias_correction": options.bias_correction,
        "bias_corrected_layers": corrected,
        "calibration_images": len(batches),
    }
