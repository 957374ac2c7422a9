"""int8 post-training quantization in PyTorch 2 export form (PT2E), shared by the ExecuTorch and LiteRT exporters.

The flow is torchao's: ``torch.export`` the folded model at one example shape, ``prepare_pt2e`` inserts observers
where the toolchain's quantizer (XNNPACK's for ExecuTorch, LiteRT's for ``.tflite``) says its kernels take int8,
the calibration batches run through the observed graph, and ``convert_pt2e`` replaces the observers by
quantize/dequantize pairs with the measured ranges. Each exporter then lowers that graph and its backend fuses the
pairs into integer kernels. Weights are int8 with one scale per output channel (folded re-parameterized convolutions
differ widely in range between channels), activations int8 with one static range per tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UsageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quantized:
    """A quantized graph and how it was made.

    Attributes:
        module: the converted graph module (quantize/dequantize pairs around the quantized ops).
        calibration_images: the number of images its activation ranges were measured on.
    """

    module: nn.Module
    calibration_images: int


def quantize_pt2e(
    model: nn.Module,
    example: torch.Tensor,
    quantizer: Any,
    calibration: Iterable[np.ndarray | torch.Tensor],
    fold_quantize: bool = True,
) -> Quantized:
    """Observe ``model`` (eval mode, folded) with ``quantizer``, calibrate it on ``calibration`` and convert it.

    Args:
        model: the model to quantize, in eval mode.
        example: the input it is exported at; every calibration batch must have its shape.
        quantizer: a torchao PT2E quantizer configured by the caller.
        calibration: ``[B, 3, H, W]`` float32 batches of ``example``'s shape, preprocessed as at prediction time.
        fold_quantize: fold the weights' quantize ops into int8 constants (LiteRT's converter wants them unfolded).

    Raises:
        ValueError: no calibration batch, or one of another shape than ``example``.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), quantizer)
    count = 0
    with torch.no_grad():
        for batch in calibration:
            x = torch.as_tensor(batch, dtype=torch.float32)
            if x.shape != example.shape:
                raise UsageError(
                    f"calibration batch of shape {tuple(x.shape)}; the export takes {tuple(example.shape)}"
                )
            prepared(x)
            count += len(x)
    if not count:
        raise UsageError("int8 quantization needs at least one calibration image")
    logger.info("calibrated %s on %d images", type(model).__name__, count)
    return Quantized(convert_pt2e(prepared, fold_quantize=fold_quantize), count)
