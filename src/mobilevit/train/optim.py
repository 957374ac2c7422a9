"""Optimizer, learning-rate schedule and weight EMA of the ml-cvnets / ml-fastvit / MobileOne recipes.

- :func:`param_groups` / :func:`build_optimizer`: AdamW (MobileViT, FastViT) or SGD with momentum (MobileOne, arXiv
  2206.04040) with no weight decay on 1-D parameters (norms, biases) and on what the model's ``no_weight_decay()``
  hook names (cvnets ``no_decay_bn_filter_bias``; timm's ``param_groups_weight_decay``); optionally layer-wise
  learning-rate decay for fine-tuning (BEiT, arXiv 2106.08254): the head at ``lr``, every earlier layer of
  :func:`layer_ids` (from the model's ``group_matcher()`` hook) one more factor ``layer_decay`` lower, the stem the
  lowest; optionally a lower learning rate for the backbone of a segmentation or detection model
  (``backbone_lr_scale``, as DETR trains its backbone at 1/10 of the head's rate).
- :class:`WarmupCosineSchedule`: per-iteration linear warmup from ``warmup_init_lr`` to the peak, then a cosine from
  the peak to ``min_lr`` (cvnets ``cosine`` scheduler with ``warmup_iterations``); each group's learning rate is that
  times its ``lr_scale``. Optionally the weight decay follows a cosine too (MobileOne: 1e-4 -> 1e-5).
- :class:`ModelEMA`: ``ema = (1 - momentum) * ema + momentum * model`` after each optimizer step (cvnets
  ``EMA``; momentum 0.0005 is timm's decay 0.9995); buffers (BatchNorm statistics) are copied.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..models import unwrap_model
from .config import OptimizerConfig, ScheduleConfig

logger = logging.getLogger(__name__)

__all__ = [
    "ModelEMA",
    "WarmupCosineSchedule",
    "build_optimizer",
    "layer_ids",
    "no_weight_decay",
    "param_groups",
]


def no_weight_decay(model: nn.Module) -> set[str]:
    """Names of the parameters that get no weight decay: every 1-D parameter (norm scales and shifts, biases) and
    those the model's ``no_weight_decay()`` hook names (FastViT: layer scales and position encodings)."""
    hook = getattr(model, "no_weight_decay", None)
    named = set(hook()) if callable(hook) else set()
    return {name for name, param in model.named_parameters() if param.ndim <= 1 or name in named}


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """The depth of every parameter for layer-wise learning-rate decay, from the model's ``group_matcher(coarse=True)``.

    Layers, in forward order: the stem (0), each block group of the matcher in the order of the numbers it captures
    (each stage, then the final conv of MobileViT and FastViT where it has parameters), and the head: every parameter
    no regex matches, always the last layer.

    Returns:
        ``({parameter name: layer}, number of layers)``.

    Raises:
        UsageError: the model has no ``group_matcher`` hook.
    """
    matcher = getattr(model, "group_matcher", None)
    if not callable(matcher):
        raise UsageError(
            f"layer_decay needs a model with stem, stages and head (a group_matcher() hook); {type(model).__name__} "
            "has none"
        )
    rules = []  # (position of the group, compiled regex, suffix)
    for position, spec in enumerate(matcher(coarse=True).values()):
        for regex, suffix in [(spec, None)] if isinstance(spec, str) else spec:
            rules.append((position, re.compile(regex), tuple(suffix or ())))

    def place(name: str) -> tuple[float, ...]:
        for position, regex, suffix in rules:
            match = regex.match(name)
            if match:
                return (position, *(float(n) for n in match.groups()), *suffix)
        return (math.inf,)  # the head

    places = {name: place(name) for name, _ in model.named_parameters()}
    layer = {p: i for i, p in enumerate(sorted({*places.values(), (math.inf,)}))}
    return {name: layer[p] for name, p in places.items()}, len(layer)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay_norm_bias: bool = True,
    layer_decay: float | None = None,
    backbone_lr_scale: float | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups by weight decay (and by layer with ``layer_decay``); frozen parameters left out.

    Without ``layer_decay``: ``[{decay params, weight_decay}, {no-decay params, 0.0}]``. With it, one such pair per
    layer of :func:`layer_ids`, each group carrying ``lr_scale = layer_decay ** (num_layers - 1 - layer)`` (1 for the
    head), which :class:`WarmupCosineSchedule` multiplies into the learning rate.

    Args:
        model: the (unwrapped) model.
        weight_decay: decay of the weight matrices and convolution kernels.
        no_decay_norm_bias: exempt norms, biases and the model's own choice (see :func:`no_weight_decay`);
            ``False`` decays everything, as the MobileViT v1 recipe does.
        layer_decay: factor in (0, 1] between consecutive layers; ``None`` for one learning rate.
        backbone_lr_scale: factor in (0, 1] on the learning rate of every parameter of ``model.backbone`` (a
            segmentation or detection model), its groups carrying it as ``lr_scale`` (times the layer's);
            ``None`` for one learning rate.
    """
    skip = no_weight_decay(model) if no_decay_norm_bias else set()
    if backbone_lr_scale is not None:
        return _with_backbone_scale(model, backbone_lr_scale, weight_decay, no_decay_norm_bias, layer_decay)
    if layer_decay is None:
        ids, num_layers = {name: 0 for name, _ in model.named_parameters()}, 1
    else:
        if not 0.0 < layer_decay <= 1.0:
            raise UsageError(f"optimizer.layer_decay must be in (0, 1], got {layer_decay}")
        ids, num_layers = layer_ids(model)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = name not in skip
        key = (ids[name], decay)
        if key not in groups:
            group: dict[str, Any] = {"params": [], "weight_decay": weight_decay if decay else 0.0}
            if layer_decay is not None:
                group["lr_scale"] = layer_decay ** (num_layers - 1 - ids[name])
                group["layer"] = ids[name]
            groups[key] = group
        groups[key]["params"].append(param)
    if layer_decay is None and (0, True) not in groups:  # keep the [decay, no-decay] shape
        groups[(0, True)] = {"params": [], "weight_decay": weight_decay}
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]


def _with_backbone_scale(
    model: nn.Module, scale: float, weight_decay: float, no_decay_norm_bias: bool, layer_decay: float | None
) -> list[dict[str, Any]]:
    """:func:`param_groups` of ``model``, each split into its backbone part (``lr_scale`` times ``scale``) and the
    rest."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise UsageError(
            f"optimizer.backbone_lr_scale needs a segmentation or detection model; {type(model).__name__} has no "
            "backbone"
        )
    if not 0.0 < scale <= 1.0:
        raise UsageError(f"optimizer.backbone_lr_scale must be in (0, 1], got {scale}")
    in_backbone = {id(p) for p in backbone.parameters()}
    groups = []
    for group in param_groups(model, weight_decay, no_decay_norm_bias, layer_decay):
        for part_scale, part in (
            (scale, [p for p in group["params"] if id(p) in in_backbone]),
            (1.0, [p for p in group["params"] if id(p) not in in_backbone]),
        ):
            if part:
                groups.append({**group, "params": part, "lr_scale": group.get("lr_scale", 1.0) * part_scale})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over :func:`param_groups` of ``model`` with the config's settings and peak ``lr``."""
    groups = param_groups(
        unwrap_model(model), cfg.weight_decay, cfg.no_decay_norm_bias, cfg.layer_decay, cfg.backbone_lr_scale
    )
    if not any(g["params"] for g in groups):
        raise UsageError("the model has no trainable parameters")
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.name == "sgd":
        if cfg.nesterov and cfg.momentum <= 0:
            raise UsageError("optimizer.nesterov needs optimizer.momentum > 0")
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    raise UsageError(f"unknown optimizer {cfg.name!r} (adamw or sgd)")


class WarmupCosineSchedule:
    """Sets the learning rate of every group before each optimizer step: linear warmup, then cosine or poly decay.

    ``lr(t) = warmup_init_lr + (peak - warmup_init_lr) * t / warmup`` for ``t < warmup``, then
    ``min_lr + (peak - min_lr) * d(p)`` with ``p = (t - warmup) / (total - warmup)`` and ``d(p) = (1 + cos(pi p)) / 2``
    (``cfg.name == "cosine"``) or ``(1 - p) ** cfg.power`` (``"poly"``, DeepLab's schedule), and ``min_lr`` after
    ``total``; a group with ``lr_scale`` gets that times ``lr(t)``. With ``cfg.min_weight_decay``, every group with
    weight decay follows the same ``d`` from its initial decay to ``min_weight_decay`` (constant during warmup).
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
        if cfg.name not in ("cosine", "poly"):
            raise UsageError(f"unknown schedule {cfg.name!r} (cosine or poly)")
        if cfg.power <= 0:
            raise UsageError(f"schedule.power must be > 0, got {cfg.power}")
        self.optimizer = optimizer
        self.peak_lr = peak_lr
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.warmup_init_lr = cfg.warmup_init_lr
        self.min_lr = cfg.min_lr
        self.min_weight_decay = cfg.min_weight_decay
        self.poly_power = cfg.power if cfg.name == "poly" else None
        for group in optimizer.param_groups:
            group.setdefault("initial_weight_decay", group["weight_decay"])
        self.step_count = 0
        self._apply()

    def _decay(self, step: int) -> float:
        """``d(progress)`` after warmup (cosine or poly): 1 at the peak, 0 at the end."""
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0, step - self.warmup_steps) / span)
        if self.poly_power is not None:
            return (1.0 - progress) ** self.poly_power
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based), before a group's ``lr_scale``."""
        if step < self.warmup_steps:
            return self.warmup_init_lr + (self.peak_lr - self.warmup_init_lr) * step / self.warmup_steps
        return self.min_lr + (self.peak_lr - self.min_lr) * self._decay(step)

    def weight_decay_at(self, step: int, initial: float) -> float:
        """The weight decay of a group that started at ``initial`` (constant without ``min_weight_decay``)."""
        if self.min_weight_decay is None or initial == 0.0:
            return initial
        return self.min_weight_decay + (initial - self.min_weight_decay) * self._decay(step)

    @property
    def lr(self) -> float:
        """The learning rate the next optimizer step uses."""
        return self.lr_at(self.step_count)

    def _apply(self) -> None:
        lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            group["weight_decay"] = self.weight_decay_at(self.step_count, group["initial_weight_decay"])

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

    def __init__(self, model: nn.Module, momentum: float = 0.0005, warmup: bool = False) -> None:
        """Args:
        model: the model to follow (a DDP wrapper is unwrapped); copied now.
        momentum: weight of the new value, ``ema = (1 - momentum) * ema + momentum * model``.
        warmup: the n-th update (from 0) uses ``max(momentum, 9 / (10 + n))``.
        """
        if not 0.0 < momentum <= 1.0:
            raise UsageError(f"EMA momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.warmup = warmup
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._param_names = {name for name, _ in self.module.named_parameters()}

    def momentum_at(self, n: int) -> float:
        """The weight of the new value in the n-th update (from 0)."""
        return max(self.momentum, 9.0 / (10.0 + n)) if self.warmup else self.momentum

    @torch.no_grad()
    def update(self, model: nn.Module, n: int = 0) -> None:
        """Move the average toward ``model``'s current weights (the n-th update, from 0); copy its buffers."""
        momentum = self.momentum_at(n)
        ema_state = self.module.state_dict()
        for name, value in unwrap_model(model).state_dict().items():
            target = ema_state[name]
            if name in self._param_names and target.dtype.is_floating_point:
                target.lerp_(value.detach(), momentum)
            else:
                target.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """The averaged model's state dict."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averaged weights."""
        self.module.load_state_dict(state)
