"""What a training run is made of: the student, the frozen teacher, their preprocessing, and the data loaders.

The models' preprocessing is :func:`mobilevit.weights.model_io`'s (the checkpoint's own, else its weights entry's,
else the architecture's default entry's); the training images are augmented in [0, 1] RGB
(:mod:`mobilevit.data.augment`) and each model normalizes the batch its own way (:class:`BatchNormalize`), so mixup,
cutmix and a BGR flip commute with the normalization and a teacher sees the same images as the student.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from ..data.augment import TrainTransformFactory
from ..data.datasets import ImageDataset, collate_skipping, skip_none
from ..data.samplers import MultiScaleBatchSampler, MultiScaleDataset
from ..data.transforms import eval_transform
from ..errors import MissingDependencyError, UsageError
from ..registry import create_model, get_config, list_models
from ..weights import model_io
from ..weights.entries import Preprocess
from .config import DataConfig, DistillConfig, ModelConfig, TrainConfig
from .distributed import Dist

logger = logging.getLogger(__name__)

__all__ = ["BatchNormalize", "TrainData", "build_data", "build_model", "build_teacher", "val_preprocess"]


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model of ``cfg``: random, or pretrained (weights name ``arch.tag`` or checkpoint path) with a new head.

    ``drop_rate`` / ``proj_drop_rate`` / ``drop_path_rate`` are passed when set and the architecture has them; with
    ``freeze_backbone`` only the classifier stays trainable.
    """
    arch_fields = {f.name for f in dataclasses.fields(get_config(cfg.name))}
    overrides: dict[str, Any] = {}
    for name in ("drop_rate", "proj_drop_rate", "drop_path_rate"):
        value = getattr(cfg, name)
        if value is None:
            continue
        if name in arch_fields:
            overrides[name] = value
        else:
            logger.warning("model.%s=%s ignored: %s has no such setting", name, value, cfg.name)
    if cfg.pretrained is None:
        model = create_model(cfg.name, num_classes=cfg.num_classes, **overrides)
    elif os.path.exists(cfg.pretrained):
        model = create_model(cfg.name, pretrained=cfg.pretrained, num_classes=cfg.num_classes, **overrides)
    else:  # a weights name such as "mobileone_s0.apple_in1k"
        model = create_model(cfg.pretrained, pretrained=True, num_classes=cfg.num_classes, **overrides)
    if cfg.freeze_backbone:
        head = {id(p) for p in model.get_classifier().parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head)
    return model


@dataclass(frozen=True)
class _TimmPreprocess:
    """The input normalization of a timm teacher (its ``pretrained_cfg``)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str = "RGB"


def _teacher_model(cfg: DistillConfig) -> tuple[nn.Module, Any]:
    """The teacher of ``cfg.teacher`` (``timm:name``, a checkpoint file, ``arch.tag`` or an architecture) and its
    preprocessing."""
    spec = cfg.teacher
    assert spec is not None
    if spec.startswith("timm:"):
        try:
            import timm
        except ImportError as err:
            raise MissingDependencyError(f"distill.teacher={spec} needs timm: pip install timm") from err
        model = timm.create_model(spec[len("timm:") :], pretrained=True)
        return model, _TimmPreprocess(tuple(model.pretrained_cfg["mean"]), tuple(model.pretrained_cfg["std"]))
    if os.path.exists(spec):
        model = create_model(cfg.teacher_arch, pretrained=spec) if cfg.teacher_arch else create_model(spec)
    else:  # "arch.tag", or an architecture name with its default weights
        if cfg.teacher_arch is not None:
            raise UsageError(f"distill.teacher_arch is for a checkpoint file; {spec!r} is not a file")
        if "." not in spec and spec not in list_models():
            raise UsageError(f"distill.teacher {spec!r}: no such file, weights name or architecture")
        model = create_model(spec, pretrained=True)
    return model, model_io(model).preprocess


def build_teacher(cfg: DistillConfig, num_classes: int) -> tuple[nn.Module, Any]:
    """The frozen teacher of ``cfg`` (see :class:`~mobilevit.train.config.DistillConfig`) and its preprocessing.

    The teacher is in eval mode with ``requires_grad=False`` on every parameter; the preprocessing (``channel_order``,
    ``mean``, ``std``) is what its weights expect, so the loop can normalize the shared [0, 1] RGB batch for it.

    Raises:
        ValueError: no teacher configured, or its number of outputs is not ``num_classes``.
        ImportError: a ``timm:`` teacher without timm installed.
    """
    if cfg.teacher is None:
        raise UsageError("distill.teacher is not set")
    model, pre = _teacher_model(cfg)
    outputs = getattr(model, "num_classes", None)
    if outputs != num_classes:
        raise UsageError(
            f"distill.teacher {cfg.teacher} has {outputs} outputs but the student has model.num_classes={num_classes}; "
            "the teacher must classify the same classes"
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    logger.info("teacher %s (%s distillation, alpha %s, tau %s)", cfg.teacher, cfg.kind, cfg.alpha, cfg.tau)
    return model, pre


def val_preprocess(model: nn.Module, data: DataConfig) -> Preprocess:
    """The validation transform: the model's (:func:`~mobilevit.weights.model_io`), with ``data.val_crop``,
    ``val_resize`` and ``val_interpolation`` where the config sets them (``None``: the model's).

    A crop without a resize keeps the model's resize-to-crop ratio; a resize without a crop keeps its crop.
    """
    pre = model_io(model).preprocess
    crop, resize, interpolation = data.val_crop, data.val_resize, data.val_interpolation
    changes: dict[str, Any] = {}
    if crop is not None:
        changes["input_size"] = (crop, crop)
        if resize is None:
            resize = round(crop * pre.resize_size / min(pre.input_size))
    if resize is not None:
        changes["resize_size"] = resize
        changes["crop_pct"] = min(changes.get("input_size", pre.input_size)) / resize
    if interpolation is not None:
        changes["interpolation"] = interpolation
    return dataclasses.replace(pre, **changes)


class BatchNormalize:
    """Batch ``[B, 3, H, W]`` RGB in [0, 1] -> the model's input: channel order, mean and std of its preprocessing."""

    def __init__(self, pre: Preprocess) -> None:
        self.bgr = pre.channel_order == "BGR"
        self.mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.identity = not any(pre.mean) and all(s == 1.0 for s in pre.std)
        self.key = (self.bgr, tuple(pre.mean), tuple(pre.std))  # equal keys: the same transform

    def __call__(self, x: Tensor) -> Tensor:
        if self.bgr:
            x = x.flip(1)
        if self.identity:
            return x
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


@dataclass
class TrainData:
    """The data of a run.

    Attributes:
        train_set: the training images (labels from the folder tree or CSV).
        sampler: the multi-scale batch sampler of the training set (this rank's share).
        loader_gen: the training loader's private generator (seeds its workers; reseeded each epoch).
        train_loader: ``(images, targets, skipped)`` batches of [0, 1] RGB, augmented.
        val_loader: this rank's shard of the validation set at the eval transform, or ``None``.
    """

    train_set: ImageDataset
    sampler: MultiScaleBatchSampler
    loader_gen: torch.Generator
    train_loader: DataLoader
    val_loader: DataLoader | None


def _build_sampler(cfg: TrainConfig, num_samples: int, world: Dist) -> MultiScaleBatchSampler:
    s = cfg.sampler
    common = {"seed": cfg.seed, "rank": world.rank, "world_size": world.world_size}
    if s.kind == "variable_batch":
        return MultiScaleBatchSampler.variable_batch(
            num_samples, s.base_size, s.batch_size, s.min_size, s.max_size, s.num_scales, s.divisor, **common
        )
    if s.kind == "multi_scale":
        return MultiScaleBatchSampler.multi_scale(
            num_samples, s.base_size, s.batch_size, s.min_size, s.max_size, s.num_scales, s.divisor, **common
        )
    return MultiScaleBatchSampler.fixed(num_samples, s.base_size, s.batch_size, **common)


def build_data(cfg: TrainConfig, world: Dist, pre: Preprocess) -> TrainData:
    """The training loader (multi-scale sampler, per-sample augmentation in [0, 1] RGB, corrupt images skipped) and
    the validation loader (eval transform ``pre``, sharded over ranks).

    Raises:
        ValueError: the training data has more classes than the model has outputs.
    """
    train_set = ImageDataset.from_path(cfg.data.train)
    if train_set.num_classes > cfg.model.num_classes:
        raise UsageError(
            f"{cfg.data.train} has {train_set.num_classes} classes but the model has {cfg.model.num_classes} outputs; "
            f"set model.num_classes={train_set.num_classes} (or --num-classes)"
        )
    sampler = _build_sampler(cfg, len(train_set), world)
    base = cfg.sampler.base_size
    loader_gen = torch.Generator()
    train_loader = DataLoader(
        MultiScaleDataset(train_set, skip_none(TrainTransformFactory(cfg.augment)), default_size=(base, base)),
        batch_sampler=sampler,
        num_workers=cfg.data.num_workers,
        collate_fn=collate_skipping,
        generator=loader_gen,  # a private generator: creating an iterator does not draw from the global RNG
        pin_memory=world.device.type == "cuda",
    )
    val_loader = None
    if cfg.data.val is not None:
        val_set = ImageDataset.from_path(cfg.data.val, transform=eval_transform(pre))
        shard = Subset(val_set, range(world.rank, len(val_set), world.world_size))
        val_loader = DataLoader(
            shard,
            batch_size=cfg.sampler.batch_size,
            num_workers=cfg.data.num_workers,
            collate_fn=collate_skipping,
            generator=torch.Generator(),  # an evaluation draws nothing from the global RNG (exact resume after it)
        )
    return TrainData(train_set, sampler, loader_gen, train_loader, val_loader)
