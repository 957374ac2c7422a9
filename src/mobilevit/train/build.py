"""What a training run is made of: the student, the frozen teacher, their preprocessing, and the data loaders.

The models' preprocessing is :func:`mobilevit.weights.model_io`'s (the checkpoint's own, else its weights entry's,
else the architecture's default entry's); the training images are augmented in [0, 1] RGB
(:mod:`mobilevit.data.augment`) and each model normalizes the batch its own way (:class:`BatchNormalize`), so mixup,
cutmix and a BGR flip commute with the normalization and a teacher sees the same images as the student.

The task is the model's (``model.task``): a segmentation model (``deeplabv3_*``) trains on ``(image, mask)`` pairs
of a PASCAL VOC or ``images/`` + ``masks/`` folder, augmented together
(:mod:`mobilevit.data.segmentation_transforms`), and validates on whole images with their masks at full size; a
detector (``ssdlite_*``) trains on the images of a COCO-format set with their boxes, moved together
(:mod:`mobilevit.data.detection_transforms`), and validates COCO mAP on whole images; a Mask R-CNN (``maskrcnn_*``)
the same with each box's mask (polygons or RLE), its targets torchvision's (a list of dicts per batch).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from ..data.augment import TrainTransformFactory
from ..data.coco import DetectionDataset, release_splits
from ..data.datasets import ImageDataset, SegmentationDataset, collate_masks, collate_skipping, skip_none
from ..data.detection_transforms import (
    DetectionEvalTransform,
    DetectionTrainFactory,
    collate_boxes,
    collate_targets,
)
from ..data.normalize import ChannelStats, Normalization, normalize
from ..data.samplers import MultiScaleBatchSampler, MultiScaleDataset
from ..data.segmentation_transforms import SegmentationEvalTransform, SegmentationTrainFactory
from ..data.transforms import eval_transform
from ..errors import MissingDependencyError, UsageError
from ..registry import create_model, get_config, list_models
from ..tasks import CLASSIFICATION, Task, task_of
from ..weights import model_io
from ..weights.entries import Preprocess, get_weights, segmentation_preprocess
from ..weights.hub import resolve_weights
from ..weights.load import is_segmentation_checkpoint, read_checkpoint
from .config import DataConfig, DistillConfig, ModelConfig, TrainConfig
from .distributed import Dist

logger = logging.getLogger(__name__)

__all__ = [
    "BatchNormalize",
    "TrainData",
    "build_data",
    "build_model",
    "build_teacher",
    "data_paths",
    "new_tensors",
    "val_preprocess",
]


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model of ``cfg``: random, or pretrained (weights name ``arch.tag`` or checkpoint path) with a new head.

    ``drop_rate`` / ``proj_drop_rate`` / ``drop_path_rate`` are passed when set and the architecture has them; with
    ``freeze_backbone`` only the classifier (a segmentation or detection model: all outside its backbone) stays
    trainable. A segmentation or detection model takes a classification checkpoint of its backbone as
    ``pretrained``: the backbone loads, the head starts new (the tensors left new are logged).
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
    elif _is_backbone_weights(cfg.name, cfg.pretrained):  # e.g. deeplabv3_mobilevit_s from mobilevit_s.orig_in1k
        model = _with_backbone_weights(cfg, overrides)
    else:  # a weights name such as "mobileone_s0.apple_in1k"
        model = create_model(cfg.pretrained, pretrained=True, num_classes=cfg.num_classes, **overrides)
    dense = task_of(model) is not CLASSIFICATION  # a backbone under a head of its own (segmentation, detection)
    if dense:
        _start_dense_head(model, cfg)
    elif cfg.classifier_init_std is not None:
        raise UsageError("model.classifier_init_std applies to segmentation models; unset it for a classifier")
    if cfg.freeze_backbone:
        backbone = {id(p) for p in model.backbone.parameters()} if dense else set()
        head = {id(p) for p in model.get_classifier().parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head or (dense and id(p) not in backbone))
    return model


def _is_backbone_weights(name: str, weights: str) -> bool:
    """Whether ``weights`` names a weights entry of segmentation architecture ``name``'s backbone."""
    backbone = getattr(get_config(name), "backbone", None)
    return backbone is not None and weights.split(".", 1)[0] == backbone


def _with_backbone_weights(cfg: ModelConfig, overrides: dict[str, Any]) -> nn.Module:
    """Segmentation or detection model ``cfg.name`` whose backbone holds the file of weights entry ``cfg.pretrained``
    (cached or downloaded), fed the way those weights expect (e.g. BGR for Apple's MobileViT v1), the whole image
    resized to the model's input."""
    assert cfg.pretrained is not None
    entry = get_weights(cfg.pretrained)
    model = create_model(cfg.name, pretrained=resolve_weights(entry), num_classes=cfg.num_classes, **overrides)
    loaded = model.pretrained_cfg
    preprocess = segmentation_preprocess(entry.preprocess, loaded.preprocess.input_size)
    model.pretrained_cfg = dataclasses.replace(loaded, preprocess=preprocess)
    return model


def new_tensors(model: nn.Module, pretrained: str) -> list[str]:
    """The tensors of segmentation or detection ``model`` that ``pretrained`` (a checkpoint path or weights name) did
    not supply: none for a checkpoint of the same task and classes, the classifier for one of other classes, and the
    whole head (every tensor outside ``backbone.``, a Mask R-CNN's ``backbone.body.``) for a classification
    checkpoint, which fills the backbone only."""
    if os.path.exists(pretrained):
        state_dict, info = read_checkpoint(pretrained)
        from_segmentation = is_segmentation_checkpoint(state_dict, info)
    else:
        from_segmentation = pretrained.split(".", 1)[0] in list_models(task=task_of(model).name)
    keys = list(model.state_dict())
    if not from_segmentation:  # the classifier fills the backbone (a Mask R-CNN's: backbone.body, not its pyramid)
        loaded = getattr(model, "backbone_module", "backbone") + "."
        return [k for k in keys if not k.startswith(loaded)]
    labels = getattr(getattr(model, "pretrained_cfg", None), "labels", None)
    return [] if labels is not None else [k for k in keys if k.startswith(f"{model.classifier_name}.")]


def _start_dense_head(model: nn.Module, cfg: ModelConfig) -> None:
    """Log the tensors that ``cfg.pretrained`` did not supply; draw a new classifier from
    ``N(0, cfg.classifier_init_std)`` with zero bias when that is set (a classifier the checkpoint supplied stays)."""
    new = list(model.state_dict()) if cfg.pretrained is None else new_tensors(model, cfg.pretrained)
    if cfg.pretrained is not None:
        if new:
            modules = sorted({k.rsplit(".", 1)[0] for k in new})
            logger.info(
                "%s: the backbone loaded from %s; %d tensors start new: %s",
                type(model).__name__,
                cfg.pretrained,
                len(new),
                ", ".join(modules),
            )
        else:
            logger.info("every tensor of %s loaded from %s", type(model).__name__, cfg.pretrained)
    std = cfg.classifier_init_std
    if std is None:
        return
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Conv2d):
        raise UsageError(f"model.classifier_init_std applies to segmentation models; unset it for {cfg.name}")
    if std < 0:
        raise UsageError(f"model.classifier_init_std must be >= 0, got {std}")
    if f"{model.classifier_name}.weight" not in new:
        logger.info("model.classifier_init_std ignored: the classifier was loaded from %s", cfg.pretrained)
        return
    with torch.no_grad():
        nn.init.normal_(classifier.weight, std=std)
        if classifier.bias is not None:
            nn.init.zeros_(classifier.bias)


def _teacher_model(cfg: DistillConfig) -> tuple[nn.Module, ChannelStats]:
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
        return model, Normalization(tuple(model.pretrained_cfg["mean"]), tuple(model.pretrained_cfg["std"]))
    if os.path.exists(spec):  # a teacher is run for its outputs: a head its checkpoint lacks is refused
        if cfg.teacher_arch:
            model = create_model(cfg.teacher_arch, pretrained=spec, allow_random_head=False)
        else:
            model = create_model(spec, allow_random_head=False)
    else:  # "arch.tag", or an architecture name with its default weights
        if cfg.teacher_arch is not None:
            raise UsageError(f"distill.teacher_arch is for a checkpoint file; {spec!r} is not a file")
        if "." not in spec and spec not in list_models():
            raise UsageError(f"distill.teacher {spec!r}: no such file, weights name or architecture")
        model = create_model(spec, pretrained=True, allow_random_head=False)
    return model, model_io(model).preprocess


def build_teacher(cfg: DistillConfig, num_classes: int) -> tuple[nn.Module, ChannelStats]:
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

    A crop without a resize keeps the model's resize-to-crop ratio; a resize without a crop keeps its crop. A model
    that resizes the whole image (segmentation) takes ``val_crop`` only.
    """
    pre = model_io(model).preprocess
    crop, resize, interpolation = data.val_crop, data.val_resize, data.val_interpolation
    if pre.resize_mode == "exact" and resize is not None:
        raise UsageError(
            f"data.val_resize={resize} does not apply to {type(model).__name__}: it resizes the whole image to a "
            "square, data.val_crop; unset data.val_resize"
        )
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
    """Batch ``[B, 3, H, W]`` RGB in [0, 1] -> the model's input: channel order, mean and std of its preprocessing
    (:func:`~mobilevit.data.normalize.normalize`); the batch itself is not modified."""

    def __init__(self, pre: ChannelStats) -> None:
        self.pre = pre
        self.key = (pre.channel_order == "BGR", tuple(pre.mean), tuple(pre.std))  # equal keys: the same transform

    def __call__(self, x: Tensor) -> Tensor:
        return normalize(x, self.pre)


@dataclass
class TrainData:
    """The data of a run.

    Attributes:
        train_set: the training images (labels from the folder tree or CSV), or image and mask pairs.
        sampler: the multi-scale batch sampler of the training set (this rank's share).
        loader_gen: the training loader's private generator (seeds its workers; reseeded each epoch).
        train_loader: ``(images, targets, skipped)`` batches of [0, 1] RGB, augmented (segmentation: the targets
            are ``[B, h, w]`` masks cropped with the images; detection: ``[B, M, 5]`` boxes and labels, padded;
            Mask R-CNN: a list of torchvision's target dicts).
        val_loader: this rank's shard of the validation set at the eval transform, or ``None`` (segmentation:
            ``(images, masks, skipped)`` with each mask a tensor at its image's own size; detection: ``(images,
            [B, 3] image ids and sizes, skipped)``).
    """

    train_set: ImageDataset | SegmentationDataset | DetectionDataset
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


def build_data(cfg: TrainConfig, world: Dist, pre: Preprocess, task: Task = CLASSIFICATION) -> TrainData:
    """The training loader (multi-scale sampler, per-sample augmentation in [0, 1] RGB, corrupt images skipped) and
    the validation loader (eval transform ``pre``, sharded over ranks), of the kind ``task`` (the model's) trains on
    (its ``train_data``: :data:`TRAIN_DATA`).

    Raises:
        ValueError: the training data has more classes than the model has outputs.
    """
    if task.train_data not in TRAIN_DATA:
        raise UsageError(f"{task.model_kind}s cannot be trained: no training data of kind {task.train_data!r}")
    return TRAIN_DATA[task.train_data](cfg, world, pre)


def _labelled_images(cfg: TrainConfig, world: Dist, pre: Preprocess) -> TrainData:
    """:func:`build_data` for a classifier: labelled images (an ImageFolder tree or a CSV)."""
    train_set = ImageDataset.from_path(cfg.data.train)
    if train_set.num_classes > cfg.model.num_classes:
        raise UsageError(
            f"{cfg.data.train} has {train_set.num_classes} classes but the model has {cfg.model.num_classes} outputs; "
            f"set model.num_classes={train_set.num_classes} (or --num-classes)"
        )
    train = MultiScaleDataset(train_set, skip_none(TrainTransformFactory(cfg.augment)), _base_size(cfg))
    val_loader = None
    if cfg.data.val is not None:
        val_set = ImageDataset.from_path(cfg.data.val, transform=eval_transform(pre))
        val_loader = _val_loader(cfg, world, val_set, collate_skipping)
    return _with_loaders(cfg, world, train_set, train, val_loader)


def _segmentation_data(cfg: TrainConfig, world: Dist, pre: Preprocess) -> TrainData:
    """:func:`build_data` for a segmentation model: image and mask pairs, augmented together."""
    _refuse_mixing(cfg, "a segmentation model")
    seg = cfg.segmentation
    train_set = SegmentationDataset.from_path(cfg.data.train, seg.train_split)
    factory = SegmentationTrainFactory(seg.scale_range, cfg.augment.hflip, cfg.augment.interpolation, seg.ignore_index)
    train = MultiScaleDataset(train_set, factory, _base_size(cfg), joint=True)
    val_loader = None
    if cfg.data.val is not None:
        val_set = SegmentationDataset.from_path(cfg.data.val, seg.val_split, transform=SegmentationEvalTransform(pre))
        val_loader = _val_loader(cfg, world, val_set, collate_masks)
    return _with_loaders(cfg, world, train_set, train, val_loader)


def _detection_data(cfg: TrainConfig, world: Dist, pre: Preprocess, masks: bool = False) -> TrainData:
    """:func:`build_data` for a detector: the images of COCO-format sets and their boxes (with ``masks``, and their
    instance masks: a Mask R-CNN's torchvision targets), augmented together; the validation set's detections are
    scored by pycocotools, its categories matched to the training set's by name."""
    _refuse_mixing(cfg, "a detector")
    det = cfg.detection
    train_set = DetectionDataset(cfg.data.train, masks=masks)
    if len(train_set.classes) + 1 > cfg.model.num_classes:
        raise UsageError(
            f"{cfg.data.train} has {len(train_set.classes)} categories but the detector scores "
            f"{cfg.model.num_classes - 1} classes (model.num_classes counts the background too); set "
            f"model.num_classes={len(train_set.classes) + 1} (or --num-classes)"
        )
    interpolation = cfg.augment.interpolation
    factory = DetectionTrainFactory(det.iou_crop, det.photometric, cfg.augment.hflip, interpolation, masks)
    train = MultiScaleDataset(train_set, factory, _base_size(cfg), joint=True)
    collate = collate_targets if masks else collate_boxes
    val_loader = None
    if cfg.data.val is not None:
        val_set = DetectionDataset(cfg.data.val, DetectionEvalTransform(pre), labels=train_set.classes)
        val_loader = _val_loader(cfg, world, val_set, collate)
    return _with_loaders(cfg, world, train_set, train, val_loader, collate)


def _instance_data(cfg: TrainConfig, world: Dist, pre: Preprocess) -> TrainData:
    """:func:`build_data` for a Mask R-CNN: :func:`_detection_data` with the instance masks (polygons or RLE)."""
    return _detection_data(cfg, world, pre, masks=True)


def _refuse_mixing(cfg: TrainConfig, model_kind: str) -> None:
    """Refuse the classification-only augmentations (they mix or distort images but not the targets)."""
    if cfg.augment.mixup_alpha > 0 or cfg.augment.cutmix_alpha > 0 or cfg.augment.randaugment:
        raise UsageError(
            "mixup, cutmix and RandAugment are classification augmentations: set augment.mixup_alpha=0, "
            f"augment.cutmix_alpha=0 and augment.randaugment=false to train {model_kind}"
        )


# the loaders of each kind of training data, by the name a task gives it (Task.train_data)
TRAIN_DATA: dict[str, Callable[[TrainConfig, Dist, Preprocess], TrainData]] = {
    "labelled_images": _labelled_images,
    "image_mask_pairs": _segmentation_data,
    "coco_boxes": _detection_data,
    "coco_masks": _instance_data,
}


def _base_size(cfg: TrainConfig) -> tuple[int, int]:
    return cfg.sampler.base_size, cfg.sampler.base_size


def _val_loader(cfg: TrainConfig, world: Dist, val_set: Any, collate: Any) -> DataLoader:
    """This rank's shard of ``val_set``; an evaluation draws nothing from the global RNG (exact resume after it)."""
    shard = Subset(val_set, range(world.rank, len(val_set), world.world_size))
    return DataLoader(
        shard,
        batch_size=cfg.sampler.batch_size,
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        generator=torch.Generator(),
    )


def _with_loaders(
    cfg: TrainConfig,
    world: Dist,
    train_set: Any,
    train: MultiScaleDataset,
    val_loader: DataLoader | None,
    collate: Callable[[list[Any]], Any] = collate_skipping,
) -> TrainData:
    """The run's sampler and training loader over ``train`` (the transformed ``train_set``)."""
    sampler = _build_sampler(cfg, len(train_set), world)
    loader_gen = torch.Generator()
    train_loader = DataLoader(
        train,
        batch_sampler=sampler,
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        generator=loader_gen,  # a private generator: creating an iterator does not draw from the global RNG
        pin_memory=world.device.type == "cuda",
    )
    return TrainData(train_set, sampler, loader_gen, train_loader, val_loader)


def data_paths(data: str | os.PathLike) -> tuple[str, str | None]:
    """``(data.train, data.val)`` of a data folder given as ``--data``.

    A folder with ``train/`` (and ``val/``) sub-folders gives those (ImageFolder trees, ``images/`` + ``masks/``
    segmentation sets, or COCO-format detection sets); a PASCAL VOC folder gives itself for both when it lists a
    ``val`` split (the splits are read from ``ImageSets/Segmentation/``), and so does an ADE20K folder with a
    ``validation`` split (``images/<split>/``, ``annotations/<split>/``); a folder in COCO's release layout gives its
    ``annotations/instances_train2017.json`` and ``instances_val2017.json`` (images in ``train2017/``, ``val2017/``);
    anything else (an ImageFolder tree, a CSV, an ``images/`` + ``masks/`` folder, a COCO-format set) is the training
    data alone.
    """
    root = Path(data)
    release = release_splits(root)  # COCO's own layout: annotations/instances_train2017.json, train2017/, ...
    if release is not None:
        return release
    if (root / "train").is_dir():
        return str(root / "train"), str(root / "val") if (root / "val").is_dir() else None
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        has_val = (root / "ImageSets" / "Segmentation" / "val.txt").is_file()
        return str(root), str(root) if has_val else None
    if (root / "images").is_dir() and (root / "annotations").is_dir():  # ADE20K: images/<split>/, annotations/<split>/
        return str(root), str(root) if (root / "images" / "validation").is_dir() else None
    return str(root), None
