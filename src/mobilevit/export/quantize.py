"""int8 quantization of an exported ONNX file with onnxruntime's quantization tool.

Two modes:

- ``"static"`` (default): weights int8 per output channel, activations int8 with ranges measured on calibration
  images, written in QDQ format (``QuantizeLinear``/``DequantizeLinear`` pairs around each quantized op, which
  onnxruntime fuses into integer kernels). Calibration images go through the weights' own eval preprocessing, the
  one recorded in the file (:class:`~mobilevit.export.metadata.ExportMetadata`), exactly as at prediction time.
- ``"dynamic"``: weights uint8 ahead of time, activation ranges computed per batch at run time; no calibration
  set. onnxruntime's CPU ``ConvInteger`` kernel takes uint8 weights only, hence uint8 rather than int8.

The output keeps the input file's metadata (preprocessing, labels, sizes) and adds a ``quantization`` entry, so
:func:`~mobilevit.predict.OnnxPredictor`, ``mobilevit predict/eval --backend onnxruntime`` and the server run it
unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..data.images import find_images, open_image
from ..data.transforms import eval_transform
from ..errors import UsageError
from ..weights.entries import Preprocess
from ..weights.load import LIBRARY

logger = logging.getLogger(__name__)

QuantizeMode = Literal["static", "dynamic"]
CalibrationMethod = Literal["minmax", "entropy", "percentile"]
MODES: tuple[str, ...] = ("static", "dynamic")
METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")


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


def _reader(images: list[Path], preprocess: Preprocess, input_name: str, batch_size: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = calibration_batches(images, preprocess, batch_size)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    return _Reader()


def _read_export(model: Path) -> tuple[dict[str, str], Preprocess | None, str]:
    """The metadata properties of the ONNX file ``model``, the preprocessing they record (``None`` for a file not
    exported by this package) and the graph's input name."""
    import onnx

    from .metadata import ExportMetadata

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


def _quantize_static(prepared: Path, output: Path, reader: Any, per_channel: bool, method: CalibrationMethod) -> None:
    """int8 weights and activations in QDQ format, activation ranges from ``reader``'s batches by ``method``."""
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(prepared),
        str(output),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method={
            "minmax": OrtMethod.MinMax,
            "entropy": OrtMethod.Entropy,
            "percentile": OrtMethod.Percentile,
        }[method],
        # minmax: merge the ranges every 16 images instead of holding every activation of every image
        extra_options={"CalibMaxIntermediateOutputs": 16} if method == "minmax" else {},
    )


def _write_metadata(path: Path, props: dict[str, str], quantization: dict[str, Any]) -> None:
    """Replace the metadata of the ONNX file ``path`` by ``props`` plus a ``quantization`` JSON entry."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in {**props, "quantization": json.dumps(quantization)}.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def quantize_onnx(
    model: str | os.PathLike,
    output: str | os.PathLike,
    calibration: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    mode: QuantizeMode = "static",
    per_channel: bool = True,
    method: CalibrationMethod = "minmax",
    max_images: int = 500,
    preprocess: Preprocess | None = None,
) -> Path:
    """Write an int8 version of an ONNX file exported by :func:`~mobilevit.export.export_model`.

    Args:
        model: the float32 ``.onnx`` file.
        output: the int8 ``.onnx`` file to write.
        calibration: static mode: a folder (searched recursively), image files or glob patterns, of images like the
            ones the model will see; keep them disjoint from any images you evaluate on.
        mode: ``"static"`` (calibrated activations, QDQ) or ``"dynamic"`` (no calibration).
        per_channel: one weight scale per output channel (recommended: per-tensor scales lose most of the accuracy
            of re-parameterized convolutions, whose folded kernels differ widely in range between channels).
        method: static mode's range estimate: ``"minmax"``, ``"entropy"`` or ``"percentile"`` (99.999%). The
            histogram methods (entropy, percentile) hold every activation of every calibration image in memory
            (onnxruntime's calibrator): keep ``max_images`` to a few hundred at most with them.
        max_images: use at most this many calibration images (the first ones, sorted).
        preprocess: the calibration preprocessing, replacing the one recorded in the file.

    Returns:
        The written file.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    model, output = Path(model), Path(output)
    props, recorded, input_name = _read_export(model)
    if mode == "static":
        images = _calibration_images(calibration, max_images)
        preprocess = preprocess or recorded
        if preprocess is None:
            raise UsageError(f"{model}: the file records no preprocessing; pass preprocess= for the calibration images")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # shape inference and graph cleanup first, as onnxruntime recommends before quantizing
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=False)
        if mode == "static":
            # one image per run: the histogram methods need equal batch shapes, and a fixed-batch graph takes 1
            _quantize_static(prepared, output, _reader(images, preprocess, input_name, 1), per_channel, method)
            how = {"mode": mode, "format": "QDQ", "method": method, "calibration_images": len(images)}
        else:
            quantize_dynamic(str(prepared), str(output), per_channel=per_channel, weight_type=QuantType.QUInt8)
            how = {"mode": mode}
    _write_metadata(output, props, {"dtype": "int8", "per_channel": per_channel, **how})
    return output
