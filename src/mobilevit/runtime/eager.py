"""The eager runtime: a PyTorch module (by default re-parameterized: BatchNorms and branches folded) in eval mode."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..reparam import reparameterize_model
from .base import Runtime, Signature, named_outputs


class TorchRuntime(Runtime):
    """A PyTorch model run eagerly, under ``torch.inference_mode``.

    Args:
        model: the network (put in eval mode); a TorchScript module runs the same way.
        fold: re-parameterize it (:func:`~mobilevit.reparameterize_model`): same outputs, faster.
    """

    name = "eager"
    uses_torch_threads = True

    def __init__(self, model: nn.Module, fold: bool = True) -> None:
        model = model.eval()
        self.model = reparameterize_model(model) if fold else model

    def run(self, batch: Tensor | np.ndarray) -> Tensor:
        with torch.inference_mode():
            return self.model(torch.as_tensor(batch))

    def run_named(self, batch: Tensor | np.ndarray) -> dict[str, Tensor]:
        """The module's output by the names of :meth:`signature` (``logits``; a tuple's later outputs ``output_<i>``,
        a dict's as they are)."""
        return named_outputs([name for name, _ in self.signature()[1]], self.run(batch))

    @property
    def task(self) -> str:
        """The module's ``task`` attribute (every model of this package has one), else ``"classification"``."""
        return getattr(self.model, "task", "classification")

    def signature(self) -> tuple[Signature, Signature]:
        """Any batch and size; ``num_classes`` outputs when the module says how many (else ``None``), with the
        further axes its ``output_axes`` name (a segmentation model's ``[h, w]`` map)."""
        num_classes = getattr(self.model, "num_classes", None)  # any module runs; ours all have it
        axes = getattr(self.model, "output_axes", ("batch", "classes"))  # ours say; [B, C] for any other module
        logits = [num_classes if axis == "classes" else None for axis in axes]
        return [("pixel_values", [None, 3, None, None])], [("logits", logits)]
