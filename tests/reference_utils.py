"""Helpers for comparisons with reference models: randomized layer scales and a scale-relative logit difference."""

from __future__ import annotations

import torch


def randomize_layer_scales(model: torch.nn.Module, seed: int = 101) -> torch.nn.Module:
    """Layer scales in [0.1, 0.5) instead of 1e-5 (as in the ml-fastvit fixtures), so that the branches they scale
    show in the logits."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "layer_scale" in name:
            p.data = 0.1 + 0.4 * torch.rand(p.shape, generator=g)
    return model


def max_rel_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's logit scale (its largest absolute logit)."""
    return ((out - ref).abs().max() / ref.abs().max()).item()
