"""Structural re-parameterization: turn any model of the package into its inference graph with one call.

Every block with train-time-only structure has a ``reparameterize()`` method that folds it in place: MobileOne blocks
and large-kernel convs (branches -> one conv), RepMixer and RepCPE (skip -> kernel), FastViT blocks (layer scales and
the attention BatchNorm -> neighbouring projections) and :class:`~mobilevit.layers.ConvNormAct` (BatchNorm -> conv,
which covers every conv-BN pair of MobileViT, including its inverted residuals). :func:`reparameterize_model` calls
them all, parents before children.
"""

from __future__ import annotations

import copy
import logging

from torch import nn

logger = logging.getLogger(__name__)


def _fold(module: nn.Module) -> int:
    """Fold ``module``, then whatever children it still has (a block folds its own branches first)."""
    folded = 0
    if hasattr(module, "reparameterize"):
        module.reparameterize()
        folded = 1
    return folded + sum(_fold(child) for child in list(module.children()))


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every re-parameterizable block of ``model`` for inference.

    The result computes the same function in eval mode (BatchNorm statistics are frozen into the weights), with
    fewer parameters and operations. Its state dict has the folded layout, which ``create_model(name,
    reparameterized=True)`` builds directly and ``create_model(name, pretrained=...)`` recognises when loading.

    Args:
        model: any model of the package (or a module containing them), train-time or already folded.
        inplace: fold ``model`` itself instead of a deep copy.

    Returns:
        The folded model (``model`` itself when ``inplace``), in the same train/eval mode as ``model``.
    """
    if not inplace:
        model = copy.deepcopy(model)
    count = _fold(model)
    logger.debug("Re-parameterized %d modules of %s", count, type(model).__name__)
    return model
