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

Object detection (:class:`MultiBoxLoss`, :func:`ssd_match`): SSD's multibox loss (arXiv 1512.02325, Sec. 2.2) as
ml-cvnets trains SSDLite (``cvnets/matcher_det/ssd_matcher.py``, ``loss_fn/detection/ssd_multibox_loss.py``): each
anchor takes the box it overlaps most when their IoU is at least 0.5, and each box its best anchor whatever the IoU;
smooth-L1 on the positives' regression (encoded with variances 0.1 / 0.2,
:func:`mobilevit.tasks.detection.encode_boxes`), cross-entropy on the positives and on the three times as many
negatives with the highest background loss, both summed and divided by the number of positives in the batch.

Instance segmentation (:class:`LossDictSum`): torchvision's Mask R-CNN computes its own losses in training mode
(``model(images, targets)``: the RPN's objectness and box regression, the box head's classification and box
regression, the mask head's per-pixel binary cross-entropy); the loss is their sum, each weighted 1 as ml-cvnets'
``mask_rcnn_loss`` weights them, and each term is kept for the metrics files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, box_iou

from ..errors import UsageError
from ..layers import upsample_logits
from ..tasks.detection import encode_boxes

if TYPE_CHECKING:
    from .config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = [
    "LOSSES",
    "ClassificationLoss",
    "DistillationLoss",
    "LabelSmoothingCrossEntropy",
    "LossDictSum",
    "MultiBoxLoss",
    "SegmentationLoss",
    "SoftTargetCrossEntropy",
    "build_loss",
    "criterion",
    "segmentation_loss",
    "ssd_match",
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


def ssd_match(boxes: Tensor, labels: Tensor, anchors: Tensor, iou_threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """SSD's matching of one image's boxes to the anchors, as ml-cvnets' ``SSDMatcher`` (``assign_priors``).

    An anchor takes the box of highest IoU (``torchvision.ops.box_iou``; cvnets adds 1e-5 to the union) and its label
    when that IoU is at least ``iou_threshold``, else the background (0); then each box takes its own best anchor
    whatever the IoU (the first anchor on a tie; a later box wins an anchor two boxes both prefer, as cvnets' loop).

    Args:
        boxes: ``[G, 4]`` normalised ``xyxy`` (``G`` may be 0: every anchor is background).
        labels: ``[G]`` 1-based labels.
        anchors: ``[A, 4]`` normalised ``cx, cy, w, h``.
        iou_threshold: the overlap that makes an anchor a positive.

    Returns:
        ``(matched [A, 4] xyxy, the box each anchor regresses to; anchor_labels [A] int64, 0 for the background)``.
    """
    num_anchors = anchors.shape[0]
    if boxes.shape[0] == 0:
        return anchors.new_zeros((num_anchors, 4)), torch.zeros(num_anchors, dtype=torch.int64, device=anchors.device)
    iou = box_iou(boxes, box_convert(anchors, "cxcywh", "xyxy"))  # [G, A]
    best_iou, best_box = iou.max(dim=0)  # per anchor: [A]
    best_anchor = iou.argmax(dim=1)  # per box: [G]
    owner = torch.full_like(best_box, -1).scatter_reduce(  # the last box that picks each anchor
        0, best_anchor, torch.arange(len(best_anchor), device=boxes.device), reduce="amax"
    )
    forced = owner >= 0
    best_box = torch.where(forced, owner, best_box)
    anchor_labels = labels.long()[best_box]
    anchor_labels[(best_iou < iou_threshold) & ~forced] = 0
    return boxes[best_box], anchor_labels


class MultiBoxLoss(nn.Module):
    """SSD's multibox loss on the raw outputs of an SSD model and the padded targets of a batch.

    ``(smooth_l1(positives' regression, their encoded boxes) + cross_entropy(positives and hard negatives)) /
    max(1, positives in the batch)``, sums over the batch (ml-cvnets' ``SSDLoss`` with its default fixed weight 1 on
    the box term and no label smoothing; torchvision's ``SSD.compute_loss`` computes the same). The hard negatives of
    an image are its ``neg_pos_ratio`` times as many background anchors of highest background loss.
    """

    def __init__(self, iou_threshold: float = 0.5, neg_pos_ratio: int = 3) -> None:
        """Args:
        iou_threshold: the IoU that makes an anchor a positive (:func:`ssd_match`).
        neg_pos_ratio: hard negatives kept per positive, per image.
        """
        super().__init__()
        if not 0.0 < iou_threshold <= 1.0:
            raise UsageError(f"detection.iou_threshold must be in (0, 1], got {iou_threshold}")
        if neg_pos_ratio < 0:
            raise UsageError(f"detection.neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
        self.iou_threshold = float(iou_threshold)
        self.neg_pos_ratio = int(neg_pos_ratio)

    def targets(self, targets: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
        """Per anchor, the regression target ``[B, A, 4]`` and the label ``[B, A]`` of padded ``targets`` ``[B, M,
        5]`` (normalised ``xyxy`` and the label; label 0 rows are padding) against ``anchors`` ``[B, A, 4]``."""
        regression, labels = [], []
        for rows, image_anchors in zip(targets, anchors, strict=True):
            rows = rows[rows[:, 4] > 0]
            matched, anchor_labels = ssd_match(rows[:, :4], rows[:, 4].long(), image_anchors, self.iou_threshold)
            regression.append(encode_boxes(matched, image_anchors))  # background rows: not read
            labels.append(anchor_labels)
        return torch.stack(regression), torch.stack(labels)

    def forward(self, outputs: tuple[Tensor, Tensor, Tensor], targets: Tensor) -> Tensor:
        """Args:
        outputs: ``(logits [B, A, C], boxes [B, A, 4], anchors [B, A, 4])``, an :class:`~mobilevit.models.ssdlite.
            SSDOutput`.
        targets: ``[B, M, 5]`` boxes (normalised ``xyxy``) and labels, from
            :func:`~mobilevit.data.detection_transforms.collate_boxes`.
        """
        logits, regression, anchors = outputs
        if targets.ndim != 3 or targets.shape[0] != logits.shape[0] or targets.shape[-1] != 5:
            raise UsageError(f"detection targets {tuple(targets.shape)} do not fit logits {tuple(logits.shape)}")
        bad = targets[..., 4][targets[..., 4] >= logits.shape[-1]]
        if bad.numel():
            raise UsageError(
                f"label {int(bad.max())} is not a class of the model's {logits.shape[-1]} outputs (the background "
                "and one per category): set model.num_classes (--num-classes) to the categories + 1"
            )
        with torch.no_grad():
            target_regression, labels = self.targets(targets.float(), anchors.float())
        positive = labels > 0  # [B, A]
        num_positive = max(1, int(positive.sum()))
        box_loss = F.smooth_l1_loss(regression.float()[positive], target_regression[positive], reduction="sum")
        log_p = F.log_softmax(logits.float(), dim=-1)  # [B, A, C]
        with torch.no_grad():  # hard negative mining on the background loss
            background_loss = (-log_p[..., 0]).masked_fill(positive, -math.inf)  # [B, A], positives last
            rank = background_loss.argsort(dim=1, descending=True).argsort(dim=1)  # [B, A]: 0 = hardest
            negative = rank < self.neg_pos_ratio * positive.sum(dim=1, keepdim=True)
        chosen = positive | negative
        class_loss = F.nll_loss(log_p[chosen], labels[chosen], reduction="sum")
        return (box_loss + class_loss) / num_positive

    def extra_repr(self) -> str:
        return f"iou_threshold={self.iou_threshold}, neg_pos_ratio={self.neg_pos_ratio}"


def multibox_loss(cfg: TrainConfig) -> MultiBoxLoss:
    """The criterion of a detection run: :class:`MultiBoxLoss` with ``cfg.detection``'s IoU threshold and
    negative-to-positive ratio; distillation is refused."""
    if cfg.distill.teacher is not None:
        raise UsageError("distillation is for classification; unset distill.teacher to train a detector")
    return MultiBoxLoss(cfg.detection.iou_threshold, cfg.detection.neg_pos_ratio)


class LossDictSum(nn.Module):
    """The sum of a model's own loss dict (torchvision's detectors in training mode); the model is called with the
    targets (``takes_targets``) and :attr:`terms` holds the last call's terms as floats."""

    takes_targets = True

    def __init__(self) -> None:
        super().__init__()
        self.terms: dict[str, float] = {}

    def forward(self, losses: dict[str, Tensor], targets: object = None) -> Tensor:
        """Args:
        losses: the model's output, name -> scalar loss.
        targets: not used (the model read them).
        """
        self.terms = {name: float(value.detach()) for name, value in losses.items()}
        return torch.stack([value.float() for value in losses.values()]).sum()


def loss_dict_sum(cfg: TrainConfig) -> LossDictSum:
    """The criterion of a Mask R-CNN run: :class:`LossDictSum`; distillation is refused."""
    if cfg.distill.teacher is not None:
        raise UsageError("distillation is for classification; unset distill.teacher to train a detector")
    return LossDictSum()


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
    "multibox": multibox_loss,
    "loss_dict_sum": loss_dict_sum,
}
