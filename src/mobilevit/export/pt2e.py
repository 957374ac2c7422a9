"""int8 post-training quantization in PyTorch 2 export form (PT2E), shared by the ExecuTorch and LiteRT exporters.

The flow is torchao's: ``torch.export`` the folded model at one example shape, ``prepare_pt2e`` inserts observers
where the toolchain's quantizer (XNNPACK's for ExecuTorch, LiteRT's for ``.tflite``) says its kernels take int8,
the calibration batches run through the observed graph, and ``convert_pt2e`` replaces the observers by
quantize/dequantize pairs with the measured ranges. Each exporter then lowers that graph and its backend fuses the
pairs into integer kernels. Weights are int8 with one scale per output channel (folded re-parameterized convolutions
differ widely in range between channels), activations int8 with one static range per tensor.

Before the quantizer sees the model, :class:`Int8Options` applies the fixes that the ONNX path applies too
(:mod:`mobilevit.export.pt2e_fixes`): channel equalization, bias correction, the first and last layers left in
float; and it picks the activation observer. The defaults are the configuration measured best on MobileOne-S0 with
Apple's weights (docs/export.md, "int8 for ExecuTorch and LiteRT").
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from .pt2e_fixes import correct_bias, equalize_model, export_graph, keep_float, resolve_keep_fp32

logger = logging.getLogger(__name__)

OBSERVERS: tuple[str, ...] = ("histogram", "minmax", "moving_average")  # Int8Options.observer values


@dataclass(frozen=True)
class Int8Options:
    """How an ExecuTorch or LiteRT file is quantized (the defaults: docs/export.md, measured on MobileOne-S0).

    Attributes:
        keep_fp32: modules left in float: ``"first"`` and ``"last"`` (the modules of the first and last conv2d/linear:
            the stem and the classifier) and/or qualified module names; ``()`` quantizes everything.
        equalize: the alpha of channel equalization before calibration (1: equal activation ranges, 0: equal weight
            ranges), or ``None`` for none.
        bias_correction: move each int8 layer's bias back by the mean shift its weights' rounding causes.
        observer: how activation ranges are measured: ``"histogram"`` (the range that minimises the quantization
            error of the observed histogram; the toolchains' own choice), ``"minmax"`` (the extremes over every
            image) or ``"moving_average"`` (min and max averaged over the images, which clips rare outliers).
    """

    keep_fp32: tuple[str, ...] = ("first", "last")
    equalize: float | None = 0.6
    bias_correction: bool = True
    observer: str = "histogram"

    def __post_init__(self) -> None:
        if isinstance(self.keep_fp32, str) or not all(isinstance(k, str) and k for k in self.keep_fp32):
            raise UsageError(f"keep_fp32 takes a tuple of module names; got {self.keep_fp32!r}")
        if self.equalize is not None and (isinstance(self.equalize, bool) or not 0 <= self.equalize <= 1):
            raise UsageError(f"equalize must be None (off) or an alpha between 0 and 1; got {self.equalize!r}")
        if not isinstance(self.bias_correction, bool):
            raise UsageError(f"bias_correction must be True or False; got {self.bias_correction!r}")
        if self.observer not in OBSERVERS:
            raise UsageError(f"observer must be one of {', '.join(OBSERVERS)}; got {self.observer!r}")


@dataclass(frozen=True)
class Quantized:
    """A quantized graph and how it was made.

    Attributes:
        module: the converted graph module (quantize/dequantize pairs around the quantized ops).
        calibration_images: the number of images its activation ranges were measured on.
        details: the ``quantization`` metadata entry's fields of the fixes (modules kept in float, equalization,
            bias correction, observer).
    """

    module: nn.Module
    calibration_images: int
    details: dict[str, Any]


def with_observer(config: Any, observer: str) -> Any:
    """A toolchain's static quantization ``config`` with its activations observed by ``observer`` (see
    :class:`Int8Options`)."""
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver

    ctor = {"histogram": HistogramObserver, "minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver}
    spec = config.input_activation
    spec = dataclasses.replace(spec, observer_or_fake_quant_ctr=ctor[observer].with_args(eps=2**-12))
    return dataclasses.replace(config, input_activation=spec, output_activation=spec)


def _batches(calibration: Iterable[np.ndarray | torch.Tensor], example: torch.Tensor) -> list[torch.Tensor]:
    batches = [torch.as_tensor(batch, dtype=torch.float32) for batch in calibration]
    for x in batches:
        if x.shape != example.shape:
            raise UsageError(f"calibration batch of shape {tuple(x.shape)}; the export takes {tuple(example.shape)}")
    if not batches:
        raise UsageError("int8 quantization needs at least one calibration image")
    return batches


def quantize_pt2e(
    model: nn.Module,
    example: torch.Tensor,
    quantizer: Any,
    calibration: Iterable[np.ndarray | torch.Tensor],
    options: Int8Options | None = None,
    fold_quantize: bool = True,
) -> Quantized:
    """Apply ``options``' fixes to a copy of ``model`` (eval mode, folded), observe it with ``quantizer``, calibrate
    it on ``calibration`` and convert it.

    Args:
        model: the model to quantize, in eval mode (not modified).
        example: the input it is exported at; every calibration batch must have its shape.
        quantizer: a torchao PT2E quantizer configured by the caller (its activation observer already chosen, see
            :func:`with_observer`).
        calibration: ``[B, 3, H, W]`` float32 batches of ``example``'s shape, preprocessed as at prediction time.
        options: the fixes applied before quantizing (default: :class:`Int8Options`'s defaults).
        fold_quantize: fold the weights' quantize ops into int8 constants (LiteRT's converter wants them unfolded).

    Raises:
        ValueError: no calibration batch, one of another shape than ``example``, or a ``keep_fp32`` entry that names
            no module.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    options = options or Int8Options()
    batches = _batches(calibration, example)
    model = copy.deepcopy(model).eval()
    pairs = equalize_model(model, example, batches, options.equalize) if options.equalize is not None else 0
    kept = resolve_keep_fp32(export_graph(model, example), model, options.keep_fp32)
    quantizer = keep_float(quantizer, kept)
    corrected = correct_bias(model, example, batches, quantizer) if options.bias_correction else 0
    prepared = prepare_pt2e(export_graph(model, example), quantizer)
    with torch.no_grad():
        for x in batches:
            prepared(x)
    count = sum(len(x) for x in batches)
    logger.info("calibrated %s on %d images", type(model).__name__, count)
    details = {
        "keep_fp32": list(kept),
        "equalize": options.equalize,
        "equalized_pairs": pairs,
        "bias_correction": options.bias_correction,
        "bias_corrected_layers": corrected,
        "observer": options.observer,
    }
    return Quantized(convert_pt2e(prepared, fold_quantize=fold_quantize), count, details)
