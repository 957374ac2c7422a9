"""Optimizer, learning-rate schedule and weight EMA of the ml-cvnets / ml-fastvit / MobileOne recipes (SPEC.md 2a).

- :func:`param_groups` / :func:`build_optimizer`: AdamW (MobileViT, FastViT) or SGD with momentum (MobileOne, arXiv
  2206.04040) with no weight decay on normalization parameters, biases, layer scales and position parameters (cvnets
  ``no_decay_bn_filter_bias``; timm's ``param_groups_weight_decay``); optionally layer-wise learning-rate decay for
  fine-tuning (BEiT, arXiv 2106.08254): the head at ``lr``, every earlier layer of :func:`layer_ids` one more factor
  ``layer_decay`` lower, the stem the lowest.
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
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from .config import OptimizerConfig, ScheduleConfig

logger = logging.getLogger(__name__)

__all__ = [
    "ModelEMA",
    "WarmupCosineSchedule",
    "build_optimizer",
    "layer_ids",
    "no_weight_decay",
    "param_groups",
    "unwrap",
]

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


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """The depth of every parameter for layer-wise learning-rate decay, from the model contract.

    Layers, in forward order: ``stem`` (0), each element of ``stages`` (1 .. S), each other top-level module that has
    parameters (the final conv of MobileViT and FastViT), and ``head`` (the last layer).

    Returns:
        ``({parameter name: layer}, number of layers)``.

    Raises:
        ValueError: the model does not have ``stem``, ``stages`` and ``head``, or a parameter is outside them.
    """
    missing = [a for a in ("stem", "stages", "head") if not isinstance(getattr(model, a, None), nn.Module)]
    if missing:
        raise UsageError(
            f"layer_decay needs a model with stem, stages and head modules; {type(model).__name__} has no "
            f"{', '.join(missing)}"
        )
    num_stages = len(model.stages)  # type: ignore[arg-type]
    necks = [
        name
        for name, child in model.named_children()
        if name not in ("stem", "stages", "head") and any(True for _ in child.parameters())
    ]
    head_id = num_stages + 1 + len(necks)
    ids = {}
    for name, _ in model.named_parameters():
        top, _, rest = name.partition(".")
        if top == "stem":
            ids[name] = 0
        elif top == "stages":
            ids[name] = 1 + int(rest.split(".", 1)[0])
        elif top in necks:
            ids[name] = num_stages + 1 + necks.index(top)
        elif top == "head":
            ids[name] = head_id
        else:
            raise UsageError(f"layer_decay: parameter {name!r} is in no stem, stage, top-level module or head")
    return ids, head_id + 1


def param_groups(
    model: nn.Module, weight_decay: float, no_decay_norm_bias: bool = True, layer_decay: float | None = None
) -> list[dict[str, Any]]:
    """Optimizer parameter groups by weight decay (and by layer with ``layer_decay``); frozen parameters left out.

    Without ``layer_decay``: ``[{decay params, weight_decay}, {no-decay params, 0.0}]``. With it, one such pair per
    layer of :func:`layer_ids`, each group carrying ``lr_scale = layer_decay ** (num_layers - 1 - layer)`` (1 for the
    head), which :class:`WarmupCosineSchedule` multiplies into the learning rate.

    Args:
        model: the (unwrapped) model.
        weight_decay: decay of the weight matrices and convolution kernels.
        no_decay_norm_bias: exempt norms, biases, layer scales and position parameters (see :func:`no_weight_decay`);
            ``False`` decays everything, as the MobileViT v1 recipe does.
        layer_decay: factor in (0, 1] between consecutive layers; ``None`` for one learning rate.
    """
    skip = no_weight_decay(model) if no_decay_norm_bias else set()
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


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over :func:`param_groups` of ``model`` with the config's settings and peak ``lr``."""
    groups = param_groups(unwrap(model), cfg.weight_decay, cfg.no_decay_norm_bias, cfg.layer_decay)
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
    """Sets the learning rate of every group before each optimizer step: linear warmup, then cosine.

    ``lr(t) = warmup_init_lr + (peak - warmup_init_lr) * t / warmup`` for ``t < warmup``, then
    ``min_lr + (peak - min_lr) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2``, and ``min_lr`` after ``total``;
    a group with ``lr_scale`` gets that times ``lr(t)``. With ``cfg.min_weight_decay``, every group with weight decay
    follows the same cosine from its initial decay to ``min_weight_decay`` (constant during warmup).
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
            raise UsageError(f"unknown schedule {cfg.name!r}")
        self.optimizer = optimizer
        self.peak_lr = peak_lr
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.warmup_init_lr = cfg.warmup_init_lr
        self.min_lr = cfg.min_lr
        self.min_weight_decay = cfg.min_weight_decay
        for group in optimizer.param_groups:
            group.setdefault("initial_weight_decay", group["weight_decay"])
        self.step_count = 0
        self._apply()

    def _cosine(self, step: int) -> float:
        """``(1 + cos(pi * progress)) / 2`` after warmup: 1 at the peak, 0 at the end."""
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0, step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based), before a group's ``lr_scale``."""
        if step < self.warmup_steps:
            return self.warmup_init_lr + (self.peak_lr - self.warmup_init_lr) * step / self.warmup_steps
        return self.min_lr + (self.peak_lr - self.min_lr) * self._cosine(step)

    def weight_decay_at(self, step: int, initial: float) -> float:
        """The weight decay of a group that started at ``initial`` (constant without ``min_weight_decay``)."""
        if self.min_weight_decay is None or initial == 0.0:
            return initial
        return self.min_weight_decay + (initial - self.min_weight_decay) * self._cosine(step)

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

    def __init__(self, model: nn.Module, momentum: float = 0.0005) -> None:
        """Args:
        model: the model to follow (a DDP wrapper is unwrapped); copied now.
        momentum: weight of the new value, ``ema = (1 - momentum) * ema + momentum * model``.
        """
        if not 0.0 < momentum <= 1.0:
            raise UsageError(f"EMA momentum must be in (0, 1], got {momentum}")
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
