"""Training losses: label-smoothing / soft-target cross-entropy and knowledge distillation.

Models return logits (STYLE.md: losses live in ``train/``). The classification loss follows ml-cvnets
(https://github.com/apple/ml-cvnets, label smoothing 0.1) and timm (soft targets from mixup / cutmix); distillation
follows DeiT (arXiv 2012.12877, https://github.com/facebookresearch/deit ``losses.py``) as apple/ml-fastvit
(arXiv 2303.14189) uses it: hard distillation from a RegNetY-160 teacher, alpha 0.5, tau 1.

    loss_fn = build_loss(cfg)
    loss = loss_fn(logits, targets)                   # no teacher
    loss = loss_fn(logits, targets, teacher_logits)   # cfg.distill.teacher set: a DistillationLoss

``targets`` are ``[B]`` class indices or ``[B, num_classes]`` soft targets (:class:`mobilevit.data.augment.MixupCutmix`
output, which already includes the label smoothing).

Semantic segmentation (:class:`SegmentationLoss`, :func:`segmentation_loss`): per-pixel cross-entropy
on the logits resized to the mask (bilinear, as ml-cvnets' ``SegCrossEntropy`` and torchvision's DeepLabV3 reference
do), pixels labelled ``ignore_index`` (255) left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from ..layers import upsample_logits

if TYPE_CHECKING:
    from .config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = [
    "LOSSES",
    "ClassificationLoss",
    "DistillationLoss",
    "LabelSmoothingCrossEntropy",
    "SegmentationLoss",
    "SoftTargetCrossEntropy",
    "build_loss",
    "criterion",
    "segmentation_loss",
]


class LabelSmoothingCrossEntropy(nn.Module):
    """Cross-entropy against ``(1 - s) * one_hot(y) + s / C``: ``(1 - s) * NLL + s * mean_c(-log p_c)``, batch mean.

    Equal to ``F.cross_entropy(logits, y, label_smoothing=s)``.
    """

    def __init__(self, smoothing: float = 0.1) -> None:
        """Args:
        smoothing: label smoothing ``s`` in [0, 1).
        """
        super().__init__()
        if not 0 <= smoothing < 1:
            raise UsageError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = float(smoothing)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Args:
        logits: ``[B, C]``.
        targets: ``[B]`` class indices.
        """
        logp = F.log_softmax(logits.float(), dim=-1)  # [B, C]
        nll = -logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)  # [B]
        uniform = -logp.mean(dim=-1)  # [B]
        return ((1.0 - self.smoothing) * nll + self.smoothing * uniform).mean()

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}"


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against a target distribution: ``mean_b sum_c -t_bc log softmax(x)_bc`` (timm's)."""

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Args:
        logits: ``[B, C]``.
        targets: ``[B, C]`` rows of probabilities.
        """
        if targets.shape != logits.shape:
            raise UsageError(f"soft targets {tuple(targets.shape)} do not match logits {tuple(logits.shape)}")
        return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class ClassificationLoss(nn.Module):
    """The training criterion: label-smoothing CE for ``[B]`` targets, soft-target CE for ``[B, C]`` targets.

    Soft targets are used as given (mixup / cutmix already smoothed them), so ``smoothing`` applies only to hard ones.
    """

    def __init__(self, smoothing: float = 0.1) -> None:
        """Args:
        smoothing: label smoothing of hard targets.
        """
        super().__init__()
        self.hard = LabelSmoothingCrossEntropy(smoothing)
        self.soft = SoftTargetCrossEntropy()

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Args:
        logits: ``[B, C]``.
        targets: ``[B]`` class indices or ``[B, C]`` soft targets.
        """
        return self.soft(logits, targets) if targets.ndim == 2 else self.hard(logits, targets)


class DistillationLoss(nn.Module):
    """``(1 - alpha) * base(student, y) + alpha * distill(student, teacher)``, as DeiT / ml-fastvit.

    - hard: ``distill = CE(student, argmax(teacher))`` (no smoothing), DeiT's hard-label distillation;
    - soft: ``distill = tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))``, the per-sample KL averaged
      over the batch (Hinton et al.). DeiT's code (and ml-fastvit's copy) instead divides the summed KL by
      ``B * C`` (``reduction="deit"`` here), which is ``C`` times smaller.

    The teacher's logits come from the same (mixed) images as the student's, computed under ``torch.no_grad``.
    """

    def __init__(
        self,
        base: nn.Module,
        kind: Literal["hard", "soft"] = "hard",
        alpha: float = 0.5,
        tau: float = 1.0,
        reduction: Literal["batchmean", "deit"] = "batchmean",
    ) -> None:
        """Args:
        base: the criterion on the true targets (:class:`ClassificationLoss`).
        kind: "hard" or "soft" distillation.
        alpha: weight of the distillation term, in [0, 1].
        tau: softmax temperature of soft distillation (> 0).
        reduction: soft KL normalization, see the class docstring.
        """
        super().__init__()
        if kind not in ("hard", "soft"):
            raise UsageError(f"kind must be 'hard' or 'soft', got {kind!r}")
        if not 0 <= alpha <= 1:
            raise UsageError(f"alpha must be in [0, 1], got {alpha}")
        if tau <= 0:
            raise UsageError(f"tau must be > 0, got {tau}")
        if reduction not in ("batchmean", "deit"):
            raise UsageError(f"reduction must be 'batchmean' or 'deit', got {reduction!r}")
        self.base = base
        self.kind = kind
        self.alpha = float(alpha)
        self.tau = float(tau)
        self.reduction = reduction

    def distill(self, logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """The distillation term alone."""
        teacher_logits = teacher_logits.detach().float()
        if self.kind == "hard":
            return F.cross_entropy(logits.float(), teacher_logits.argmax(dim=-1))
        t = self.tau
        log_p_student = F.log_softmax(logits.float() / t, dim=-1)  # [B, C]
        log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)  # [B, C]
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
        denom = logits.shape[0] if self.reduction == "batchmean" else logits.numel()
        return kl * (t * t) / denom

    def forward(self, logits: Tensor, targets: Tensor, teacher_logits: Tensor) -> Tensor:
        """Args:
        logits: student ``[B, C]``.
        targets: ``[B]`` class indices or ``[B, C]`` soft targets, for ``base``.
        teacher_logits: teacher ``[B, C]`` on the same images.
        """
        if teacher_logits.shape != logits.shape:
            raise UsageError(f"teacher logits {tuple(teacher_logits.shape)} do not match {tuple(logits.shape)}")
        base = self.base(logits, targets)
        if self.alpha == 0:
            return base
        return (1.0 - self.alpha) * base + self.alpha * self.distill(logits, teacher_logits)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, alpha={self.alpha}, tau={self.tau}, reduction={self.reduction}"


class SegmentationLoss(nn.Module):
    """Mean cross-entropy over the scored pixels: the logits resized to the mask's size, ``ignore_index`` left out.

    A mask value that is neither a class of the model nor ``ignore_index`` is an error naming it.
    """

    def __init__(self, ignore_index: int = 255, smoothing: float = 0.0) -> None:
        """Args:
        ignore_index: the mask value of pixels that count for nothing.
        smoothing: label smoothing in [0, 1).
        """
        super().__init__()
        if not 0 <= smoothing < 1:
            raise UsageError(f"smoothing must be in [0, 1), got {smoothing}")
        self.ignore_index = int(ignore_index)
        self.smoothing = float(smoothing)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Args:
        logits: ``[B, C, h, w]`` (any ``h, w``: a DeepLabV3 answers at 1/8 or 1/16 of its input).
        targets: ``[B, H, W]`` class indices or ``ignore_index``.
        """
        if targets.ndim != 3 or logits.ndim != 4 or targets.shape[0] != logits.shape[0]:
            raise UsageError(f"masks {tuple(targets.shape)} do not fit logits {tuple(logits.shape)}")
        num_classes = logits.shape[1]
        scored = targets != self.ignore_index
        bad = targets[scored & ((targets < 0) | (targets >= num_classes))]
        if bad.numel():
            values = ", ".join(str(v) for v in bad.unique()[:5].tolist())
            raise UsageError(
                f"mask values {values} are neither classes of the model's {num_classes} outputs nor the ignore index "
                f"{self.ignore_index}: set model.num_classes (--num-classes) or segmentation.ignore_index"
            )
        if not bool(scored.any()):  # every pixel ignored: no signal, but keep the graph for DDP's backward
            return logits.sum() * 0.0
        full = upsample_logits(logits.float(), (targets.shape[1], targets.shape[2]))  # [B, C, H, W]
        return F.cross_entropy(full, targets.long(), ignore_index=self.ignore_index, label_smoothing=self.smoothing)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, smoothing={self.smoothing}"


def segmentation_loss(cfg: TrainConfig) -> SegmentationLoss:
    """The criterion of a segmentation run: :class:`SegmentationLoss` with ``cfg.segmentation.ignore_index`` and
    ``cfg.augment.label_smoothing``; distillation is refused."""
    if cfg.distill.teacher is not None:
        raise UsageError("distillation is for classification; unset distill.teacher to train a segmentation model")
    return SegmentationLoss(cfg.segmentation.ignore_index, cfg.augment.label_smoothing)


def criterion(loss: str, cfg: TrainConfig) -> nn.Module:
    """The criterion :data:`LOSSES` names ``loss`` (a task's ``Task.loss``), for the run ``cfg``."""
    if loss not in LOSSES:
        raise UsageError(f"no training loss {loss!r} (losses: {', '.join(LOSSES)}): this model's task does not train")
    return LOSSES[loss](cfg)


def build_loss(cfg: TrainConfig) -> nn.Module:
    """The criterion of a classification run: :class:`ClassificationLoss` with ``cfg.augment.label_smoothing``,
    wrapped in a :class:`DistillationLoss` (``cfg.distill`` kind, alpha, tau) when ``cfg.distill.teacher`` is set.
    """
    base = ClassificationLoss(cfg.augment.label_smoothing)
    if cfg.distill.teacher is None:
        return base
    logger.info("distillation: %s, alpha %s, tau %s", cfg.distill.kind, cfg.distill.alpha, cfg.distill.tau)
    return DistillationLoss(base, cfg.distill.kind, cfg.distill.alpha, cfg.distill.tau)


# the criterion of each kind of training target, by the name a task gives it (Task.loss)
LOSSES: dict[str, Callable[[TrainConfig], nn.Module]] = {
    "cross_entropy": build_loss,
    "per_pixel_cross_entropy": segmentation_loss,
}
