"""The training loop of ``mobilevit train``: one process or many under ``torchrun``, resumable at any step.

Follows the ml-cvnets trainer (https://github.com/apple/ml-cvnets, ``engine/training_engine.py``; MobileViT arXiv
2110.02178) and the ml-fastvit recipe (arXiv 2303.14189): variable-batch multi-scale sampler, AdamW with per-iteration
warmup + cosine, label smoothing, EMA of the weights evaluated each epoch, gradient clipping and accumulation, bf16
autocast, channels_last, fine-tuning with a new head and an optional frozen backbone, and knowledge distillation from
a frozen teacher (DeiT, arXiv 2012.12877, as ml-fastvit uses it): the teacher sees the same (mixed) images as the
student, each normalized with its own preprocessing, in eval mode, without gradients, under the same autocast.

Never lose work:

- ``{output_dir}/last.pt`` is rewritten atomically (:mod:`mobilevit.train.checkpoint`) every ``checkpoint_every``
  optimizer steps and at each epoch end; it holds the model, EMA, optimizer, schedule, grad scaler, sampler position,
  per-rank RNG states, the step and the partial epoch statistics. ``resume=True`` continues from it, and the
  continued run computes exactly what the uninterrupted run computes, with any ``data.num_workers``, whenever the
  process was killed (the steps after the last checkpoint are replayed identically): every random draw is a function
  of the run's seed and its position, not of a generator's history. Per sample (crop, flip, RandAugment, erasing),
  of ``(seed, epoch, rank, position in the epoch)`` (:class:`~mobilevit.data.samplers.SizedIndex`); per micro-batch
  (mixup / cutmix, dropout, drop path), of ``(seed, rank, epoch, batch)`` (:func:`_seed_batch`). Exactness also
  needs the same hardware, thread count and library versions (CUDA kernels may be non-deterministic).
- A non-finite loss (or non-finite weights before a checkpoint) raises :class:`NonFiniteLossError` before anything
  else is written, so ``last.pt`` stays the last good state.
- Corrupt images are logged, skipped and counted (``skipped`` in the epoch records).

Metrics go to ``{output_dir}/metrics.jsonl`` (one JSON object per line: ``"event": "step" | "epoch" | "summary"``),
reduced over all ranks, to ``{output_dir}/metrics.csv`` (the epoch records, columns :data:`EPOCH_COLUMNS`) and, with
``logging.tensorboard``, to TensorBoard event files in ``{output_dir}/tensorboard``; only rank 0 writes files.
Progress bars belong to the caller: pass ``progress``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from ..data.augment import MixupCutmix, TrainTransformFactory
from ..data.datasets import ImageDataset, collate_skipping, skip_none
from ..data.samplers import MultiScaleBatchSampler, MultiScaleDataset
from ..data.transforms import eval_transform, transform_for
from ..errors import MissingDependencyError, MobileViTError, UsageError
from . import checkpoint as ckpt
from .config import DistillConfig, ModelConfig, TrainConfig, to_dict, to_yaml
from .losses import build_loss
from .optim import ModelEMA, WarmupCosineSchedule, build_optimizer

logger = logging.getLogger(__name__)

__all__ = [
    "EPOCH_COLUMNS",
    "METRICS",
    "METRICS_CSV",
    "NonFiniteLossError",
    "TrainResult",
    "build_criterion",
    "build_model",
    "build_teacher",
    "train",
]

METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
# every field of an epoch record, in the CSV's column order (fixed, so the header never changes within a run)
EPOCH_COLUMNS = (
    "epoch",
    "step",
    "complete",
    "train_loss",
    "val_top1",
    "val_top1_ema",
    "lr",
    "images",
    "skipped",
    "seconds",
    "images_per_s",
    "world_size",
)


class NonFiniteLossError(MobileViTError, RuntimeError):
    """The loss (or the weights) became NaN or infinite; the run stopped and the last good checkpoint is intact."""


@dataclass(frozen=True)
class TrainResult:
    """The final summary of a run (also the last ``"summary"`` record of ``metrics.jsonl``)."""

    step: int
    epoch: int
    train_loss: float | None
    val_top1: float | None
    val_top1_ema: float | None
    images: int  # training images seen by all ranks in this process' lifetime (not before a resume)
    skipped: int  # corrupt images skipped over the whole run (all ranks, all epochs, across resumes)
    seconds: float
    checkpoint: str | None
    output_dir: str


# ---------------------------------------------------------------------------------------------------------------------
# distributed helpers


@dataclass(frozen=True)
class _Dist:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # this module initialized the process group and tears it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def all_true(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def _setup_distributed() -> _Dist:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1`` (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return _Dist(rank, world, device, owns)


# ---------------------------------------------------------------------------------------------------------------------
# model, loss, data


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model of ``cfg``: random, or pretrained (weights name ``arch.tag`` or checkpoint path) with a new head.

    ``drop_rate`` / ``proj_drop_rate`` / ``drop_path_rate`` are passed when set and the architecture has them; with
    ``freeze_backbone`` only the classifier stays trainable.
    """
    from ..registry import create_model, get_config

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


def build_criterion(cfg: TrainConfig) -> nn.Module:
    """The training loss of :mod:`mobilevit.train.losses`: label smoothing for hard targets, soft-target
    cross-entropy for mixup/cutmix targets; with ``distill.teacher`` a
    :class:`~mobilevit.train.losses.DistillationLoss` called as ``criterion(logits, targets, teacher_logits)``.
    """
    return build_loss(cfg)


@dataclass(frozen=True)
class _TeacherPreprocess:
    """The input normalization of a teacher from outside this package (timm)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str = "RGB"


def build_teacher(cfg: DistillConfig, num_classes: int) -> tuple[nn.Module, Any]:
    """The frozen teacher of ``cfg`` (see :class:`~mobilevit.train.config.DistillConfig`) and its preprocessing.

    The teacher is in eval mode with ``requires_grad=False`` on every parameter; the preprocessing (``channel_order``,
    ``mean``, ``std``) is what its weights expect, so the loop can normalize the shared [0, 1] RGB batch for it.

    Raises:
        ValueError: no teacher configured, or its number of outputs is not ``num_classes``.
        ImportError: a ``timm:`` teacher without timm installed.
    """
    from ..registry import create_model, list_models

    spec = cfg.teacher
    if spec is None:
        raise UsageError("distill.teacher is not set")
    if spec.startswith("timm:"):
        try:
            import timm
        except ImportError as err:
            raise MissingDependencyError(f"distill.teacher={spec} needs timm: pip install timm") from err
        model = timm.create_model(spec[len("timm:") :], pretrained=True)
        info = model.pretrained_cfg
        pre: Any = _TeacherPreprocess(tuple(info["mean"]), tuple(info["std"]))
    else:
        if os.path.exists(spec):
            model = create_model(cfg.teacher_arch, pretrained=spec) if cfg.teacher_arch else create_model(spec)
        else:  # "arch.tag", or an architecture name with its default weights
            if cfg.teacher_arch is not None:
                raise UsageError(f"distill.teacher_arch is for a checkpoint file; {spec!r} is not a file")
            if "." not in spec and spec not in list_models():
                raise UsageError(f"distill.teacher {spec!r}: no such file, weights name or architecture")
            model = create_model(spec, pretrained=True)
        info = model.pretrained_cfg
        pre = info.preprocess if info is not None and info.preprocess is not None else None
        if pre is None:
            pre = transform_for(info.arch if info is not None else spec).pre
    outputs = getattr(model, "num_classes", None)
    if outputs != num_classes:
        raise UsageError(
            f"distill.teacher {spec} has {outputs} outputs but the student has model.num_classes={num_classes}; "
            "the teacher must classify the same classes"
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    logger.info("teacher %s (%s distillation, alpha %s, tau %s)", spec, cfg.kind, cfg.alpha, cfg.tau)
    return model, pre


def _train_transform_factory(cfg: TrainConfig) -> Callable[[int, int], Any]:
    """``factory(height, width)`` of the per-size train transform (:mod:`mobilevit.data.augment`): random-resized
    crop, flip, RandAugment and random erasing as the recipe says, in [0, 1] RGB; the loop normalizes each batch with
    the model's own preprocessing afterwards (mixup, cutmix and the BGR flip commute with that).
    """
    return skip_none(TrainTransformFactory(cfg.augment))


def _build_sampler(cfg: TrainConfig, num_samples: int, world: _Dist) -> MultiScaleBatchSampler:
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


class _Normalize:
    """Batch ``[B, 3, H, W]`` RGB in [0, 1] -> the model's input: channel order, mean and std of its preprocessing."""

    def __init__(self, pre: Any) -> None:
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


def _preprocess(model: nn.Module, cfg: TrainConfig) -> Any:
    """The model's preprocessing (weights entry, else the architecture's default) with the config's eval sizes."""
    info = getattr(model, "pretrained_cfg", None)
    pre = info.preprocess if info is not None and info.preprocess is not None else None
    if pre is None:
        pre = transform_for(cfg.model.name).pre
    crop = cfg.data.val_crop
    return dataclasses.replace(
        pre,
        input_size=(crop, crop),
        resize_size=cfg.data.val_resize,
        crop_pct=crop / cfg.data.val_resize,
        interpolation=cfg.data.val_interpolation,
    )


def _set_train_mode(model: nn.Module) -> None:
    """``model.train()``, but BatchNorms whose parameters are frozen keep their statistics (frozen backbone)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.requires_grad:
            m.eval()


@torch.no_grad()
def _evaluate(model: nn.Module, loader: DataLoader, world: _Dist, cfg: TrainConfig, amp: Any) -> float | None:
    """Top-1 accuracy over the (sharded) validation set, summed over ranks."""
    was_training = model.training
    model.eval()
    correct = count = 0
    for images, targets, _ in loader:
        if images.numel() == 0:
            continue
        images = images.to(world.device)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with amp():
            logits = model(images)
        correct += int((logits.argmax(-1).cpu() == targets).sum())
        count += int(targets.numel())
    model.train(was_training)
    correct_all, count_all = world.sum([float(correct), float(count)])
    return correct_all / count_all if count_all else None


# ---------------------------------------------------------------------------------------------------------------------
# metrics log


class _MetricsLog:
    """Rank 0's metrics: JSON lines, the epoch records as CSV, optionally TensorBoard scalars.

    A fresh run starts new files; on resume, the records written after the checkpoint are dropped (the CSV is
    rewritten from the kept epoch records, TensorBoard purges the events after the resume step).
    """

    def __init__(self, out: Path, enabled: bool, resume_step: int | None, csv_log: bool, tensorboard: bool) -> None:
        self.path = out / METRICS
        self.csv_path = out / METRICS_CSV if csv_log else None
        self.enabled = enabled
        self.epochs: list[dict[str, Any]] = []
        self.tb: Any = None
        if not enabled:
            return
        kept: list[str] = []
        if resume_step is not None and self.path.is_file():
            kept = [
                line for line in self.path.read_text().splitlines() if line.strip() and self._keep(line, resume_step)
            ]
        self.path.write_text("".join(line + "\n" for line in kept))
        self.epochs = [r for r in map(json.loads, kept) if r.get("event") == "epoch"]
        self._write_csv()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning(
                    "logging.tensorboard: the tensorboard package is not installed; TensorBoard logging skipped"
                )
            else:
                purge = resume_step + 1 if resume_step is not None else None
                self.tb = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=purge)

    @staticmethod
    def _keep(line: str, step: int) -> bool:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            return False
        return record.get("step", 0) <= step and record.get("event") != "summary"

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if record["event"] == "epoch":
            self.epochs.append(record)
            self._write_csv()
        if self.tb is not None:
            self._write_tensorboard(record)

    def _write_csv(self) -> None:
        """Rewrite ``metrics.csv`` from the epoch records (a few hundred rows at most), atomically."""
        if self.csv_path is None:
            return
        tmp = self.csv_path.with_name(f".{self.csv_path.name}.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=EPOCH_COLUMNS)
            writer.writeheader()
            for record in self.epochs:
                writer.writerow({k: v for k, v in record.items() if k != "event"})
        os.replace(tmp, self.csv_path)

    def _write_tensorboard(self, record: dict[str, Any]) -> None:
        step = record.get("step", 0)
        names = {
            "step": {"loss": "train/loss", "lr": "train/lr", "images_per_s": "train/images_per_s"},
            "epoch": {"train_loss": "epoch/train_loss", "val_top1": "val/top1", "val_top1_ema": "val/top1_ema"},
        }.get(record["event"], {})
        for key, tag in names.items():
            if record.get(key) is not None:
                self.tb.add_scalar(tag, record[key], step)
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------------------------------------------------------------
# the loop


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


_BATCH_SEED_STREAM = 0xBA7C  # tells the micro-batch seeds apart from other seed streams of the same run seed


def _seed_batch(seed: int, rank: int, epoch: int, batch: int) -> None:
    """Seed the global generators (torch CPU and CUDA, Python, NumPy) for micro-batch ``batch`` of ``epoch``.

    Mixup / cutmix, dropout and drop path draw from these; seeding them from ``(seed, rank, epoch, batch)`` before
    every micro-batch makes those draws independent of what the process drew before, so a run resumed from any
    checkpoint (and replaying the steps after it) draws what the uninterrupted run drew.
    """
    entropy = [seed % 2**64, rank, epoch, batch, _BATCH_SEED_STREAM]
    value = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1  # [0, 2**63)
    _seed_everything(value)


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _epoch_stats() -> dict[str, float]:
    return {"loss_sum": 0.0, "samples": 0.0, "skipped": 0.0, "seconds": 0.0}


def train(
    cfg: TrainConfig, resume: bool = False, progress: Callable[[dict[str, Any]], None] | None = None
) -> TrainResult:
    """Train (or fine-tune) as ``cfg`` says, writing checkpoints and metrics to ``cfg.output_dir``.

    Args:
        cfg: the run; ``cfg.data.train`` is an ImageFolder tree or CSV list, ``cfg.data.val`` optional.
        resume: continue from ``{output_dir}/last.pt``. Without it, an output folder that already holds a checkpoint
            is refused (nothing is overwritten).
        progress: called on rank 0 after every optimizer step with ``step``, ``epoch``, ``loss``, ``lr``,
            ``images_per_s``, ``batches_done`` and ``batches`` (for a progress bar).

    Returns:
        The final summary.

    Raises:
        NonFiniteLossError: the loss or the weights became NaN/inf; ``last.pt`` holds the last good state.
        FileNotFoundError: ``resume`` without a checkpoint, or missing data.
        FileExistsError: a checkpoint exists and ``resume`` is false.
    """
    if cfg.data.train is None:
        raise UsageError("no training data: set data.train (or pass --data)")
    if cfg.accumulation_steps < 1 or cfg.checkpoint_every < 1 or cfg.log_every < 1:
        raise UsageError("accumulation_steps, checkpoint_every and log_every must be >= 1")
    world = _setup_distributed()
    try:
        return _train(cfg, resume, progress, world)
    finally:
        if world.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    cfg: TrainConfig, resume: bool, progress: Callable[[dict[str, Any]], None] | None, world: _Dist
) -> TrainResult:
    out = Path(cfg.output_dir)
    last_path = out / ckpt.LAST
    is_main = world.rank == 0
    state: dict[str, Any] | None = None
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {last_path}")
        state = ckpt.load_checkpoint(last_path)
    elif last_path.is_file():
        raise FileExistsError(f"{last_path} exists: pass --resume to continue that run, or choose another output")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        to_yaml(cfg, out / "config.yaml")

    # -- model (same initial weights on every rank; DDP also broadcasts rank 0's) --------------------------------
    _seed_everything(cfg.seed)
    model = build_model(cfg.model).to(world.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pre = _preprocess(model, cfg)
    normalize = _Normalize(pre)
    teacher = teacher_normalize = None
    if cfg.distill.teacher is not None:
        teacher, teacher_pre = build_teacher(cfg.distill, cfg.model.num_classes)
        teacher = teacher.to(world.device)
        if cfg.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        teacher_normalize = _Normalize(teacher_pre)

    # -- data ------------------------------------------------------------------------------------------------------
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
        MultiScaleDataset(train_set, _train_transform_factory(cfg), default_size=(base, base)),
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

    # -- optimization ----------------------------------------------------------------------------------------------
    sampler.set_epoch(0)
    steps_per_epoch = math.ceil(sampler.num_batches() / cfg.accumulation_steps)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_iters is not None:
        total_steps = min(total_steps, cfg.max_iters)
    warmup = max(cfg.schedule.warmup_iters, round(cfg.schedule.warmup_epochs * steps_per_epoch))
    optimizer = build_optimizer(model, cfg.optimizer)
    schedule = WarmupCosineSchedule(optimizer, cfg.optimizer.lr, total_steps, warmup, cfg.schedule)
    amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
    if cfg.amp and world.device.type == "cpu" and amp_dtype != torch.bfloat16:
        raise UsageError("amp on CPU supports bfloat16 only (amp_dtype=bfloat16)")
    amp = functools.partial(torch.autocast, world.device.type, dtype=amp_dtype, enabled=cfg.amp)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and amp_dtype == torch.float16 else None
    criterion = build_criterion(cfg)
    mixer = MixupCutmix.from_config(cfg.augment, model.num_classes)  # batch-level mixup / cutmix, or None
    trainable = [p for p in model.parameters() if p.requires_grad]

    # -- resume ----------------------------------------------------------------------------------------------------
    step, epoch, batches_done = 0, 0, 0
    stats = _epoch_stats()
    skipped_total = 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        step, epoch, batches_done = int(state["step"]), int(state["epoch"]), int(state["sampler"]["batches_done"])
        stats = dict(state["epoch_stats"])
        skipped_total = float(state.get("skipped_total", 0.0))
        logger.info("resumed from %s: step %d, epoch %d, batch %d", last_path, step, epoch, batches_done)
    ema = None
    if cfg.ema.enabled:
        ema = ModelEMA(model, cfg.ema.momentum)
        if state is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
    train_model: nn.Module = model
    if world.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[world.device.index] if world.device.type == "cuda" else None
        )
    # the global generators before the first micro-batch; from then on each micro-batch reseeds them (_seed_batch)
    _seed_everything(cfg.seed + world.rank)
    if state is not None:
        rng = state["rng"]
        if len(rng) == world.world_size:
            ckpt.set_rng_state(rng[world.rank])
        else:
            logger.warning(
                "checkpoint has RNG states of %d ranks, this run has %d: reseeding", len(rng), world.world_size
            )

    log = _MetricsLog(out, is_main, step if state is not None else None, cfg.logging.csv, cfg.logging.tensorboard)
    last_saved: int | None = step if state is not None else None

    def save(next_epoch: int, next_batch: int) -> None:
        nonlocal last_saved
        if not _all_finite(model):
            raise NonFiniteLossError(_nan_message("the weights", step, epoch, last_path, last_saved))
        rngs = world.gather(ckpt.get_rng_state())
        if is_main:
            sampler_state = sampler.state_dict(batches_done=next_batch)
            sampler_state["epoch"] = next_epoch
            snapshot = {
                "step": step,
                "epoch": next_epoch,
                "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "sampler": sampler_state,
                "rng": rngs,
                "epoch_stats": stats if next_batch else _epoch_stats(),
                "skipped_total": skipped_total,
                "config": to_dict(cfg),
            }
            ckpt.save_checkpoint(snapshot, last_path)
            logger.info("checkpoint %s (step %d)", last_path, step)
        last_saved = step

    # -- train -----------------------------------------------------------------------------------------------------
    started = time.perf_counter()
    images_seen = 0.0
    window = {"loss_sum": 0.0, "samples": 0.0, "time": time.perf_counter()}
    val_top1 = val_top1_ema = None
    epoch_loss: float | None = None
    lr: float | None = None
    stop = cfg.max_iters is not None and step >= cfg.max_iters
    accum = cfg.accumulation_steps
    while epoch < cfg.epochs and not stop:
        sampler.set_epoch(epoch)
        num_batches = sampler.num_batches()
        # the workers' own seeds; no draw depends on them (each sample reseeds from its SizedIndex.seed)
        loader_gen.manual_seed(hash((cfg.seed, epoch, batches_done)) % 2**63)
        _set_train_mode(train_model)
        epoch_start = time.perf_counter() - stats["seconds"]
        batch_iter: Iterator = iter(train_loader)
        for i, (images, targets, skipped) in enumerate(batch_iter, start=batches_done):
            batches_done = i + 1
            stats["skipped"] += skipped
            _seed_batch(cfg.seed, world.rank, epoch, i)
            window_start = i - i % accum
            micro_in_window = min(accum, num_batches - window_start)
            is_step = batches_done == window_start + micro_in_window
            if world.all_true(images.numel() > 0):
                images, targets = images.to(world.device, non_blocking=True), targets.to(world.device)
                if mixer is not None:  # on [0, 1] RGB: mixing commutes with each model's normalization
                    images, targets = mixer(images, targets)  # targets become soft [B, num_classes]
                inputs = _prepare(normalize(images), cfg.channels_last)
                teacher_logits = None
                if teacher is not None and teacher_normalize is not None:
                    same = teacher_normalize.key == normalize.key
                    teacher_in = inputs if same else _prepare(teacher_normalize(images), cfg.channels_last)
                    with torch.no_grad(), amp():
                        teacher_logits = teacher(teacher_in).float()
                sync = (
                    contextlib.nullcontext() if is_step or not world.enabled else train_model.no_sync()  # type: ignore[operator]
                )
                with sync:
                    with amp():
                        logits = train_model(inputs)
                    if teacher_logits is None:
                        loss = criterion(logits.float(), targets)
                    else:
                        loss = criterion(logits.float(), targets, teacher_logits)
                    value = float(loss.detach())
                    if not world.all_true(math.isfinite(value)):
                        raise NonFiniteLossError(
                            _nan_message(f"the loss ({value})", step + 1, epoch, last_path, last_saved)
                        )
                    scaled = loss / micro_in_window
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                n = float(targets.shape[0])
                stats["loss_sum"] += value * n
                stats["samples"] += n
                window["loss_sum"] += value * n
                window["samples"] += n
            if not is_step:
                continue
            # -- optimizer step --
            if scaler is not None:
                scaler.unscale_(optimizer)
            if cfg.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lr = schedule.lr
            schedule.step()
            step += 1
            if ema is not None:
                ema.update(model)
            local_loss = window["loss_sum"] / max(window["samples"], 1.0)
            local_elapsed = time.perf_counter() - window["time"]
            local_ips = window["samples"] / local_elapsed if local_elapsed > 0 else 0.0
            if step % cfg.log_every == 0:
                loss_sum, samples = world.sum([window["loss_sum"], window["samples"]])
                elapsed = time.perf_counter() - window["time"]
                images_seen += samples
                log.write(
                    {
                        "event": "step",
                        "step": step,
                        "epoch": epoch,
                        "loss": loss_sum / max(samples, 1.0),
                        "lr": lr,
                        "images_per_s": samples / elapsed if elapsed > 0 else None,
                        "world_size": world.world_size,
                    }
                )
                window = {"loss_sum": 0.0, "samples": 0.0, "time": time.perf_counter()}
            if is_main and progress is not None:
                progress(
                    {
                        "step": step,
                        "epoch": epoch,
                        "loss": local_loss,
                        "lr": lr,
                        "images_per_s": local_ips,
                        "batches_done": batches_done,
                        "batches": num_batches,
                    }
                )
            if step % cfg.checkpoint_every == 0 and batches_done < num_batches:
                stats["seconds"] = time.perf_counter() - epoch_start
                save(epoch, batches_done)
            if cfg.max_iters is not None and step >= cfg.max_iters:
                stop = True
                break
        del batch_iter
        # -- end of epoch (or of the run) --
        stats["seconds"] = time.perf_counter() - epoch_start
        finished = batches_done >= num_batches
        loss_sum, samples, skipped_epoch = world.sum([stats["loss_sum"], stats["samples"], stats["skipped"]])
        images_seen += world.sum([window["samples"]])[0]  # every rank calls the collective
        window = {"loss_sum": 0.0, "samples": 0.0, "time": time.perf_counter()}
        epoch_loss = loss_sum / samples if samples else None
        if val_loader is not None:
            val_top1 = _evaluate(model, val_loader, world, cfg, amp)
            val_top1_ema = _evaluate(ema.module, val_loader, world, cfg, amp) if ema is not None else None
        record = {
            "event": "epoch",
            "step": step,
            "epoch": epoch,
            "complete": finished,
            "train_loss": epoch_loss,
            "images": int(samples),
            "skipped": int(skipped_epoch),
            "val_top1": val_top1,
            "val_top1_ema": val_top1_ema,
            "lr": lr,
            "seconds": stats["seconds"],
            "images_per_s": samples / stats["seconds"] if stats["seconds"] > 0 else None,
            "world_size": world.world_size,
        }
        log.write(record)
        logger.info(
            "epoch %d: loss %s, val top-1 %s (EMA %s), %d images, %d corrupt skipped",
            epoch,
            _fmt(epoch_loss),
            _fmt(val_top1),
            _fmt(val_top1_ema),
            int(samples),
            int(skipped_epoch),
        )
        if finished:
            skipped_total += skipped_epoch
            epoch, batches_done = epoch + 1, 0
            stats = _epoch_stats()
            save(epoch, 0)
        else:  # stopped by max_iters mid-epoch: keep the position so a longer run can resume here
            save(epoch, batches_done)
            skipped_total += skipped_epoch

    # -- final -----------------------------------------------------------------------------------------------------
    if is_main:
        from ..weights.pretrained import save_pretrained

        labels = train_set.classes if train_set.classes and len(train_set.classes) == cfg.model.num_classes else None
        save_pretrained(model, out / "final", labels=labels, preprocess=pre)
        if ema is not None:
            save_pretrained(ema.module, out / "final_ema", labels=labels, preprocess=pre)
    result = TrainResult(
        step=step,
        epoch=epoch,
        train_loss=epoch_loss,
        val_top1=val_top1,
        val_top1_ema=val_top1_ema,
        images=int(images_seen),
        skipped=int(skipped_total),
        seconds=time.perf_counter() - started,
        checkpoint=str(last_path) if last_saved is not None else None,
        output_dir=str(out),
    )
    log.write({"event": "summary", **dataclasses.asdict(result)})
    log.close()
    return result


def _prepare(x: Tensor, channels_last: bool) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _nan_message(what: str, step: int, epoch: int, last_path: Path, last_saved: int | None) -> str:
    where = (
        f"The last good checkpoint is {last_path} (step {last_saved}); nothing after it was written."
        if last_saved is not None
        else "No checkpoint had been written yet."
    )
    return (
        f"Training stopped: {what} became NaN or infinite at step {step} (epoch {epoch}). {where} "
        "Lower optimizer.lr, set clip_grad, or disable amp, then continue with --resume."
    )
