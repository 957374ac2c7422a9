"""Optimizer, learning-rate schedule and weight EMA of the ml-cvnets / ml-fastvit recipes (SPEC.md 2a).

- :func:`param_groups` / :func:`build_optimizer`: AdamW with no weight decay on normalization parameters, biases,
  layer scales and position parameters (cvnets ``no_decay_bn_filter_bias``; timm's ``param_groups_weight_decay``).
- :class:`WarmupCosineSchedule`: per-iteration linear warmup from ``warmup_init_lr`` to the peak, then a cosine from
  the peak to ``min_lr`` (cvnets ``cosine`` scheduler with ``warmup_iterations``).
- :class:`ModelEMA`: ``ema = (1 - momentum) * ema + momentum * model`` after each optimizer step (cvnets
  ``EMA``; momentum 0.0005 is timm's decay 0.9995); buffers (BatchNorm statistics) are copied.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch
from torch import nn

from .config import OptimizerConfig, ScheduleConfig

logger = logging.getLogger(__name__)

__all__ = ["ModelEMA", "WarmupCosineSchedule", "build_optimizer", "no_weight_decay", "param_groups", "unwrap"]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
# parameter names (last component) that are scales or positions, whatever their shape (FastViT's LayerScale2d gamma
# is [C, 1, 1])
_NO_DECAY_NAMES = ("gamma", "layer_scale", "pos_embed", "pos_emb", "position", "rel_pos", "cls_token")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` / ``torch.compile`` wrapper."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def no_weight_decay(model: nn.Module) -> set[str]:
    """Names of the trainable parameters that get no weight decay: norms, biases, 1-D tensors, scales, positions."""
    names = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if (
                isinstance(module, _NORMS)
                or name == "bias"
                or param.ndim <= 1
                or any(key in full.lower() for key in _NO_DECAY_NAMES)
            ):
                names.add(full)
    return names


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool = True) -> list[dict[str, Any]]:
    """AdamW parameter groups: ``[{decay params, weight_decay}, {no-decay params, 0.0}]`` (frozen params left out).

    Args:
        model: the (unwrapped) model.
        weight_decay: decay of the weight matrices and convolution kernels.
        no_decay_norm_bias: exempt norms, biases, layer scales and position parameters (see :func:`no_weight_decay`);
            ``False`` decays everything, as the MobileViT v1 recipe does.
    """
    skip = no_weight_decay(model) if no_decay_norm_bias else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name in skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` of ``model`` with the config's betas, eps, decay and peak ``lr``."""
    if cfg.name != "adamw":
        raise ValueError(f"unknown optimizer {cfg.name!r}")
    groups = param_groups(unwrap(model), cfg.weight_decay, cfg.no_decay_norm_bias)
    if not any(g["params"] for g in groups):
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


class WarmupCosineSchedule:
    """Sets the learning rate of every group before each optimizer step: linear warmup, then cosine.

    ``lr(t) = warmup_init_lr + (peak - warmup_init_lr) * t / warmup`` for ``t < warmup``, then
    ``min_lr + (peak - min_lr) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2``, and ``min_lr`` after ``total``.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, peak_lr: float, total_steps: int, warmup_steps: int, cfg: ScheduleConfig
    ) -> None:
        """Args:
        optimizer: the optimizer whose groups' ``lr`` is set.
        peak_lr: the learning rate at the end of warmup (the optimizer config's ``lr``).
        total_steps: optimizer steps of the whole run.
        warmup_steps: steps of linear warmup (from the config's ``warmup_iters`` / ``warmup_epochs``).
        cfg: ``warmup_init_lr`` and ``min_lr``.
        """
        if cfg.name != "cosine":
            raise ValueError(f"unknown schedule {cfg.name!r}")
        self.optimizer = optimizer
        self.peak_lr = peak_lr
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.warmup_init_lr = cfg.warmup_init_lr
        self.min_lr = cfg.min_lr
        self.step_count = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.warmup_init_lr + (self.peak_lr - self.warmup_init_lr) * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    @property
    def lr(self) -> float:
        """The learning rate the next optimizer step uses."""
        return self.lr_at(self.step_count)

    def _apply(self) -> None:
        lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        """Advance after an optimizer step and set the next step's learning rate."""
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """Everything that defines the schedule's position."""
        return {
            "step_count": self.step_count,
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_init_lr": self.warmup_init_lr,
            "min_lr": self.min_lr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved step (the current config's shape of the schedule is kept; a change is logged)."""
        for key in ("peak_lr", "total_steps", "warmup_steps", "min_lr"):
            if key in state and state[key] != getattr(self, key):
                logger.warning(
                    "schedule %s changed since the checkpoint: %s -> %s", key, state[key], getattr(self, key)
                )
        self.step_count = int(state["step_count"])
        self._apply()


class ModelEMA:
    """An exponential moving average of a model's weights, kept as a full model copy (evaluated and checkpointed)."""

    def __init__(self, model: nn.Module, momentum: float = 0.0005) -> None:
        """Args:
        model: the model to follow (a DDP wrapper is unwrapped); copied now.
        momentum: weight of the new value, ``ema = (1 - momentum) * ema + momentum * model``.
        """
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"EMA momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._param_names = {name for name, _ in self.module.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward ``model``'s current weights; copy its buffers."""
        ema_state = self.module.state_dict()
        for name, value in unwrap(model).state_dict().items():
            target = ema_state[name]
            if name in self._param_names and target.dtype.is_floating_point:
                target.lerp_(value.detach(), self.momentum)
            else:
                target.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """The averaged model's state dict."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averaged weights."""
        self.module.load_state_dict(state)
