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
  (mixup / cutmix, dropout, drop path), of ``(seed, rank, epoch, batch)``
  (:func:`~mobilevit.train.checkpoint.seed_batch`). Exactness also needs the same hardware, thread count and library
  versions (CUDA kernels may be non-deterministic).
- A non-finite loss (or non-finite weights before a checkpoint) raises :class:`NonFiniteLossError` before anything
  else is written, so ``last.pt`` stays the last good state.
- Corrupt images are logged, skipped and counted (``skipped`` in the epoch records).

The task is the model's (``model.task``): a classifier validates top-1 accuracy; a segmentation model
(``deeplabv3_*``) trains on image and mask pairs with a per-pixel cross-entropy that ignores label 255
(:class:`~mobilevit.train.losses.SegmentationLoss`) and validates mIoU and pixel accuracy, each image's prediction
resized to its mask and the pixels of the whole split summed into one confusion matrix
(:mod:`mobilevit.data.segmentation`); a detector (``ssdlite_*``) trains on COCO-format sets with SSD's multibox loss
(:class:`~mobilevit.train.losses.MultiBoxLoss`) and validates COCO box mAP by pycocotools, each image's detections
found as ``eval --task detection`` finds them; a Mask R-CNN (``maskrcnn_*``) trains on COCO-format sets with masks, the
model computing torchvision's losses from the targets (its criterion ``takes_targets``:
:class:`~mobilevit.train.losses.LossDictSum`, each term logged as ``train_<term>``), and validates box and mask mAP.
Everything else (resume, DDP, EMA, checkpoints, metrics, ``final/``,
``best/``: the weights of the model or EMA whose validation scored the task's ``best_metric`` highest) is shared.

Metrics go to ``{output_dir}/metrics.jsonl`` (one JSON object per line: ``"event": "step" | "epoch" | "summary"``),
reduced over all ranks, to ``{output_dir}/metrics.csv`` (the epoch records, columns
:data:`~mobilevit.train.metrics.EPOCH_COLUMNS`) and, with ``logging.tensorboard``, to TensorBoard event files in
``{output_dir}/tensorboard``; only rank 0 writes files (:mod:`mobilevit.train.metrics`).
Progress bars belong to the caller: pass ``progress``.

The parts: :mod:`mobilevit.train.build` (models, preprocessing, data), :mod:`mobilevit.train.distributed` (torchrun),
:mod:`mobilevit.train.metrics` (the metrics files), :mod:`mobilevit.train.checkpoint` (atomic saves, seeding). Here:
:func:`train` builds the run, resumes it, then alternates :meth:`_Trainer.train_epoch` (micro-batches and optimizer
steps) and :meth:`_Trainer.end_epoch` (evaluation, epoch record, checkpoint).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data.augment import MixupCutmix
from ..data.coco import evaluate_instances
from ..data.segmentation import confusion_matrix, segmentation_scores
from ..errors import MobileViTError, UsageError
from ..layers import upsample_logits
from ..reparam import reparameterize_model
from ..tasks import Task, get_task, task_of
from ..tasks.detection import coco_results, coco_rows
from ..weights import model_io, save_pretrained
from ..weights.entries import Preprocess
from . import checkpoint as ckpt
from .build import BatchNormalize, TrainData, build_data, build_model, build_teacher, val_preprocess
from .config import TrainConfig, to_dict, to_yaml
from .distributed import Dist, setup_distributed
from .losses import criterion
from .metrics import MetricsLog
from .optim import ModelEMA, WarmupCosineSchedule, build_optimizer

logger = logging.getLogger(__name__)

BEST = "best"  # the output folder of the best validated weights

__all__ = ["NonFiniteLossError", "TrainResult", "build_model", "build_teacher", "train"]


class NonFiniteLossError(MobileViTError, RuntimeError):
    """The loss (or the weights) became NaN or infinite; the run stopped and the last good checkpoint is intact."""


@dataclass(frozen=True)
class TrainResult:
    """The final summary of a run (also the last ``"summary"`` record of ``metrics.jsonl``)."""

    step: int
    epoch: int
    train_loss: float | None
    val_top1: float | None  # classification
    val_top1_ema: float | None
    images: int  # training images seen by all ranks in this process' lifetime (not before a resume)
    skipped: int  # corrupt images skipped over the whole run (all ranks, all epochs, across resumes)
    seconds: float
    checkpoint: str | None
    output_dir: str
    task: str = "classification"  # the name of the model's task
    val_miou: float | None = None  # segmentation
    val_miou_ema: float | None = None
    val_AP: float | None = None  # detection: COCO box mAP at IoU 0.50:0.95  # noqa: N815 (pycocotools' name)
    val_AP_ema: float | None = None  # noqa: N815
    val_mask_AP: float | None = None  # instance segmentation: COCO mask mAP  # noqa: N815
    val_mask_AP_ema: float | None = None  # noqa: N815

    def val_summary(self) -> str:
        """The validation part of ``mobilevit train``'s last line: the task's best metric, of the model and its EMA."""
        task = get_task(self.task)
        metric = f"val_{task.best_metric}"
        return f"val {task.best_metric_title} {getattr(self, metric)} (EMA {getattr(self, metric + '_ema')})"


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
    world = setup_distributed()
    try:
        out = Path(cfg.output_dir)
        state = _read_checkpoint(out / ckpt.LAST, resume)
        if world.is_main:
            out.mkdir(parents=True, exist_ok=True)
            to_yaml(cfg, out / "config.yaml")
        run = _build(cfg, world, out)
        pos = _resume(run, state)
        log = MetricsLog(out, world.is_main, pos.last_saved, cfg.logging.csv, cfg.logging.tensorboard, run.task)
        trainer = _Trainer(run, pos, log, progress)
        while pos.epoch < cfg.epochs and not trainer.stop:
            num_batches = trainer.train_epoch()
            trainer.end_epoch(num_batches)
        return trainer.finish()
    finally:
        world.close()


# ---------------------------------------------------------------------------------------------------------------------
# build and resume


@dataclass
class _Run:
    """What a run builds once: models, data, optimization."""

    cfg: TrainConfig
    task: Task  # the model's
    world: Dist
    out: Path
    model: nn.Module  # the student itself (checkpoints, EMA, evaluation, final/)
    pre: Preprocess  # the student's eval transform: the validation set and final/
    normalize: BatchNormalize
    teacher: nn.Module | None
    teacher_normalize: BatchNormalize | None
    data: TrainData
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosineSchedule
    scaler: torch.amp.GradScaler | None
    amp: Callable[[], Any]  # amp() is the autocast context of every forward pass
    criterion: Callable[..., Tensor]
    mixer: MixupCutmix | None  # batch-level mixup / cutmix, or None
    trainable: list[nn.Parameter]
    ema: ModelEMA | None = None  # set by _resume
    train_model: nn.Module | None = None  # the student, in DDP with several ranks; set by _resume

    @property
    def last_path(self) -> Path:
        return self.out / ckpt.LAST


def _epoch_stats() -> dict[str, float]:
    return {"loss_sum": 0.0, "samples": 0.0, "skipped": 0.0, "seconds": 0.0}


@dataclass
class _Position:
    """Where the run is and what this epoch has counted (checkpointed with the weights)."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0  # micro-batches of this epoch already trained on
    stats: dict[str, float] = field(default_factory=_epoch_stats)  # this rank's sums over the epoch so far
    skipped_total: float = 0.0  # corrupt images of the finished epochs (all ranks)
    last_saved: int | None = None  # the step of the latest last.pt of this run
    best: float | None = None  # the highest validation best_metric so far (of the model or its EMA): best/ holds it


def _read_checkpoint(last_path: Path, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from (``None`` for a fresh run); refuses to overwrite one without ``resume``."""
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {last_path}")
        return ckpt.load_checkpoint(last_path)
    if last_path.is_file():
        raise FileExistsError(f"{last_path} exists: pass --resume to continue that run, or choose another output")
    return None


def _to_device(model: nn.Module, world: Dist, channels_last: bool) -> nn.Module:
    model = model.to(world.device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _build(cfg: TrainConfig, world: Dist, out: Path) -> _Run:
    """The student (and teacher) on this rank's device, the data, the optimizer and schedule, AMP and the criterion."""
    ckpt.seed_everything(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = _to_device(build_model(cfg.model), world, cfg.channels_last)
    task = task_of(model)
    pre = val_preprocess(model, cfg.data)
    normalize = BatchNormalize(pre)
    teacher = teacher_normalize = None
    if cfg.distill.teacher is not None:
        teacher, teacher_pre = build_teacher(cfg.distill, cfg.model.num_classes)
        teacher = _to_device(teacher, world, cfg.channels_last)
        teacher_normalize = BatchNormalize(teacher_pre)
    data = build_data(cfg, world, pre, task)

    data.sampler.set_epoch(0)
    steps_per_epoch = math.ceil(data.sampler.num_batches() / cfg.accumulation_steps)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_iters is not None:
        total_steps = min(total_steps, cfg.max_iters)
    warmup = max(cfg.schedule.warmup_iters, round(cfg.schedule.warmup_epochs * steps_per_epoch))
    optimizer = build_optimizer(model, cfg.optimizer)
    schedule = WarmupCosineSchedule(optimizer, cfg.optimizer.lr, total_steps, warmup, cfg.schedule)
    amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
    if cfg.amp and world.device.type == "cpu" and amp_dtype != torch.bfloat16:
        raise UsageError("amp on CPU supports bfloat16 only (amp_dtype=bfloat16)")
    return _Run(
        cfg=cfg,
        task=task,
        world=world,
        out=out,
        model=model,
        pre=pre,
        normalize=normalize,
        teacher=teacher,
        teacher_normalize=teacher_normalize,
        data=data,
        optimizer=optimizer,
        schedule=schedule,
        scaler=torch.amp.GradScaler("cuda") if cfg.amp and amp_dtype == torch.float16 else None,
        amp=functools.partial(torch.autocast, world.device.type, dtype=amp_dtype, enabled=cfg.amp),
        criterion=criterion(task.loss, cfg),
        mixer=MixupCutmix.from_config(cfg.augment, model.num_classes) if task.mixes_images else None,
        trainable=[p for p in model.parameters() if p.requires_grad],
    )


def _resume(run: _Run, state: dict[str, Any] | None) -> _Position:
    """Load ``state`` (``None``: a fresh run) into ``run``, create the EMA, wrap in DDP and seed the generators."""
    cfg, world = run.cfg, run.world
    pos = _Position()
    if state is not None:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.schedule.load_state_dict(state["schedule"])
        if run.scaler is not None and state.get("scaler") is not None:
            run.scaler.load_state_dict(state["scaler"])
        run.data.sampler.load_state_dict(state["sampler"])
        step = int(state["step"])
        pos = _Position(
            step=step,
            epoch=int(state["epoch"]),
            batches_done=int(state["sampler"]["batches_done"]),
            stats=dict(state["epoch_stats"]),
            skipped_total=float(state.get("skipped_total", 0.0)),
            last_saved=step,
            best=state.get("best"),
        )
        logger.info("resumed from %s: step %d, epoch %d, batch %d", run.last_path, step, pos.epoch, pos.batches_done)
    if cfg.ema.enabled:
        run.ema = ModelEMA(run.model, cfg.ema.momentum, cfg.ema.warmup)
        if state is not None and state.get("ema") is not None:
            run.ema.load_state_dict(state["ema"])
    run.train_model = world.wrap(run.model)
    # the global generators before the first micro-batch; from then on each micro-batch reseeds them (seed_batch)
    ckpt.seed_everything(cfg.seed + world.rank)
    if state is not None:
        rng = state["rng"]
        if len(rng) == world.world_size:
            ckpt.set_rng_state(rng[world.rank])
        else:
            logger.warning(
                "checkpoint has RNG states of %d ranks, this run has %d: reseeding", len(rng), world.world_size
            )
    return pos


# ---------------------------------------------------------------------------------------------------------------------
# the loop


def _window() -> dict[str, float]:
    """Sums over the optimizer steps since the last step record."""
    return {"loss_sum": 0.0, "samples": 0.0, "time": time.perf_counter()}


class _Trainer:
    """One run's steps: an epoch of micro-batches, an optimizer step, the end of an epoch, a checkpoint, the end."""

    def __init__(
        self, run: _Run, pos: _Position, log: MetricsLog, progress: Callable[[dict[str, Any]], None] | None
    ) -> None:
        self.run, self.pos, self.log, self.progress = run, pos, log, progress
        self.started = time.perf_counter()
        self.images_seen = 0.0
        self.window = _window()
        self.epoch_start = 0.0
        # the last validation's fields of the epoch record (val_top1, val_miou, ...); None before any
        self.val: dict[str, Any] = dict.fromkeys(run.task.val_columns)
        self.epoch_loss: float | None = None
        self.epoch_terms: dict[str, float | None] = {}  # the loss's own terms over the epoch (train_<term>)
        self.lr: float | None = None
        self.stop = run.cfg.max_iters is not None and pos.step >= run.cfg.max_iters

    def train_epoch(self) -> int:
        """Train from the current position to the end of the epoch (or ``max_iters``); the epoch's batch count."""
        run, pos, cfg = self.run, self.pos, self.run.cfg
        run.data.sampler.set_epoch(pos.epoch)
        num_batches = run.data.sampler.num_batches()
        # the workers' own seeds; no draw depends on them (each sample reseeds from its SizedIndex.seed)
        run.data.loader_gen.manual_seed(hash((cfg.seed, pos.epoch, pos.batches_done)) % 2**63)
        _set_train_mode(run.train_model)
        self.epoch_start = time.perf_counter() - pos.stats["seconds"]
        accum = cfg.accumulation_steps
        for i, (images, targets, skipped) in enumerate(run.data.train_loader, start=pos.batches_done):
            pos.batches_done = i + 1
            pos.stats["skipped"] += skipped
            ckpt.seed_batch(cfg.seed, run.world.rank, pos.epoch, i)
            window_start = i - i % accum
            micro_in_window = min(accum, num_batches - window_start)  # micro-batches of this optimizer step
            is_step = pos.batches_done == window_start + micro_in_window
            if run.world.all_true(images.numel() > 0):
                self.forward_backward(images, targets, micro_in_window, is_step)
            if not is_step:
                continue
            self.optimizer_step()
            self.report_step(num_batches)
            if pos.step % cfg.checkpoint_every == 0 and pos.batches_done < num_batches:
                pos.stats["seconds"] = time.perf_counter() - self.epoch_start
                self.save(pos.epoch, pos.batches_done)
            if cfg.max_iters is not None and pos.step >= cfg.max_iters:
                self.stop = True
                break
        return num_batches

    def forward_backward(self, images: Tensor, targets: Any, micro_in_window: int, sync: bool) -> None:
        """Mix, normalize, forward (student and teacher), loss, backward of one micro-batch; gradients accumulate
        (summed over ranks only when ``sync``: the last micro-batch of the step). A criterion that ``takes_targets``
        has the model compute its losses: the model is called with the targets (torchvision's detectors)."""
        run, pos, world = self.run, self.pos, self.run.world
        images, targets = images.to(world.device, non_blocking=True), _on_device(targets, world.device)
        if run.mixer is not None:  # on [0, 1] RGB: mixing commutes with each model's normalization
            images, targets = run.mixer(images, targets)  # targets become soft [B, num_classes]
        inputs = _prepare(run.normalize(images), run.cfg.channels_last)
        teacher_logits = self.teacher_logits(images, inputs)
        with world.gradient_sync(run.train_model, sync):
            with run.amp():
                if getattr(run.criterion, "takes_targets", False):
                    logits = run.train_model(inputs, targets)
                else:
                    logits = run.train_model(inputs)
            if teacher_logits is None:
                loss = run.criterion(_float(logits), targets)
            else:
                loss = run.criterion(_float(logits), targets, teacher_logits)
            value = float(loss.detach())
            if not world.all_true(math.isfinite(value)):
                raise NonFiniteLossError(self.nan_message(f"the loss ({value})", pos.step + 1))
            scaled = loss / micro_in_window
            (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
        n = float(images.shape[0])
        terms = getattr(run.criterion, "terms", {})
        for sums in (pos.stats, self.window):
            sums["loss_sum"] += value * n
            sums["samples"] += n
            for term in run.task.loss_columns:  # the loss's own terms (train_<term> in the records)
                sums[term] = sums.get(term, 0.0) + terms.get(term, 0.0) * n

    def teacher_logits(self, images: Tensor, inputs: Tensor) -> Tensor | None:
        """The teacher's logits of the student's (mixed) batch ``images`` in its own normalization; ``None`` without
        a teacher. ``inputs`` is the student's input, reused when both normalize alike."""
        run = self.run
        if run.teacher is None or run.teacher_normalize is None:
            return None
        same = run.teacher_normalize.key == run.normalize.key
        teacher_in = inputs if same else _prepare(run.teacher_normalize(images), run.cfg.channels_last)
        with torch.no_grad(), run.amp():
            return run.teacher(teacher_in).float()

    def optimizer_step(self) -> None:
        """Unscale (fp16), clip, step and zero the gradients; advance the schedule, the step and the EMA."""
        run = self.run
        if run.scaler is not None:
            run.scaler.unscale_(run.optimizer)
        if run.cfg.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(run.trainable, run.cfg.clip_grad)
        if run.scaler is not None:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        self.lr = run.schedule.lr
        run.schedule.step()
        if run.ema is not None:
            run.ema.update(run.model, self.pos.step)
        self.pos.step += 1

    def report_step(self, num_batches: int) -> None:
        """The step record every ``log_every`` steps (reduced over ranks), and rank 0's ``progress`` call."""
        run, pos, window = self.run, self.pos, self.window
        local_loss = window["loss_sum"] / max(window["samples"], 1.0)
        local_elapsed = time.perf_counter() - window["time"]
        local_ips = window["samples"] / local_elapsed if local_elapsed > 0 else 0.0
        if pos.step % run.cfg.log_every == 0:
            terms = run.task.loss_columns
            loss_sum, samples, *term_sums = run.world.sum(
                [window["loss_sum"], window["samples"], *(window.get(t, 0.0) for t in terms)]
            )
            elapsed = time.perf_counter() - window["time"]
            self.images_seen += samples
            self.log.write(
                {
                    "event": "step",
                    "step": pos.step,
                    "epoch": pos.epoch,
                    "loss": loss_sum / max(samples, 1.0),
                    **{t: total / max(samples, 1.0) for t, total in zip(terms, term_sums, strict=True)},
                    "lr": self.lr,
                    "images_per_s": samples / elapsed if elapsed > 0 else None,
                    "world_size": run.world.world_size,
                }
            )
            self.window = _window()
        if run.world.is_main and self.progress is not None:
            self.progress(
                {
                    "step": pos.step,
                    "epoch": pos.epoch,
                    "loss": local_loss,
                    "lr": self.lr,
                    "images_per_s": local_ips,
                    "batches_done": pos.batches_done,
                    "batches": num_batches,
                }
            )

    def end_epoch(self, num_batches: int) -> None:
        """Evaluate (and the EMA), write the epoch record and checkpoint; a finished epoch moves to the next one."""
        run, pos, world = self.run, self.pos, self.run.world
        pos.stats["seconds"] = time.perf_counter() - self.epoch_start
        world.average_buffers(run.model)  # every rank evaluates, and rank 0 saves, the same model
        if run.ema is not None:
            world.average_buffers(run.ema.module)
        finished = pos.batches_done >= num_batches
        terms = run.task.loss_columns
        loss_sum, samples, skipped, *term_sums = world.sum(
            [pos.stats["loss_sum"], pos.stats["samples"], pos.stats["skipped"], *(pos.stats.get(t, 0.0) for t in terms)]
        )
        self.epoch_terms = {
            f"train_{t}": total / samples if samples else None for t, total in zip(terms, term_sums, strict=True)
        }
        self.images_seen += world.sum([self.window["samples"]])[0]  # every rank calls the collective
        self.window = _window()
        self.epoch_loss = loss_sum / samples if samples else None
        if run.data.val_loader is not None:
            self.val = self.validate()
            self.keep_best()
        self.write_epoch(finished, samples, skipped)
        if finished:
            pos.skipped_total += skipped
            pos.epoch, pos.batches_done = pos.epoch + 1, 0
            pos.stats = _epoch_stats()
            self.save(pos.epoch, 0)
        else:  # stopped by max_iters mid-epoch: keep the position so a longer run can resume here
            self.save(pos.epoch, pos.batches_done)
            pos.skipped_total += skipped

    def keep_best(self) -> None:
        """Save ``best/`` (rank 0) when the validation's ``best_metric`` of the model or of its EMA (the higher of
        the two) beats every earlier validation of the run; ``best/best.json`` says which, its value and epoch."""
        run, pos = self.run, self.pos
        metric = run.task.best_metric
        candidates = [("model", run.model, self.val.get(f"val_{metric}"))]
        if run.ema is not None:
            candidates.append(("ema", run.ema.module, self.val.get(f"val_{metric}_ema")))
        scored = [(value, which, module) for which, module, value in candidates if value is not None]
        if not scored:
            return
        value, which, module = max(scored, key=lambda c: c[0])  # the model on a tie
        if pos.best is not None and value <= pos.best:
            return
        pos.best = value
        if run.world.is_main:
            folder = run.out / BEST
            save_pretrained(_saved_form(module), folder, labels=self.labels(), preprocess=run.pre)
            record = {"metric": metric, "value": value, "weights": which, "epoch": pos.epoch, "step": pos.step}
            (folder / "best.json").write_text(json.dumps(record, indent=2) + "\n")
        logger.info("best val %s so far: %.4f (%s), saved to %s", metric, value, which, run.out / BEST)

    def labels(self) -> list[str] | None:
        """The class names saved with the weights: the training set's (with a detector's background first), else
        the loaded weights' when the task keeps them, else none (``class_<i>``)."""
        run = self.run
        classes = run.data.train_set.classes
        num_classes = run.cfg.model.num_classes
        unlabelled = num_classes - run.task.labelled_classes(num_classes)  # a detector's background
        if classes is not None and len(classes) + unlabelled == num_classes:
            return ["background"] * unlabelled + list(classes)
        if run.task.labels_from_weights:
            return list(model_io(run.model).labels)  # the loaded weights' (VOC's) or class_<i>
        return None

    def validate(self) -> dict[str, Any]:
        """The validation fields of the epoch record, of the model and of its EMA: ``val_top1`` (classification),
        or ``val_miou``, ``val_pixel_accuracy`` and ``val_class_iou`` (segmentation); ``_ema`` for the EMA's."""
        run = self.run
        evaluate = VALIDATION[run.task.train_data]
        scores = functools.partial(evaluate, loader=run.data.val_loader, world=run.world, cfg=run.cfg, amp=run.amp)
        fields = {f"val_{k}": v for k, v in scores(run.model).items()}
        ema = scores(run.ema.module) if run.ema is not None else {}
        for key in list(fields):
            if key != "val_class_iou":
                fields[f"{key}_ema"] = ema.get(key[len("val_") :])
        return fields

    def write_epoch(self, finished: bool, samples: float, skipped: float) -> None:
        """The epoch record (``samples`` and ``skipped`` summed over ranks) and its log line."""
        pos, seconds = self.pos, self.pos.stats["seconds"]
        record = {
            "event": "epoch",
            "step": pos.step,
            "epoch": pos.epoch,
            "complete": finished,
            "train_loss": self.epoch_loss,
            **self.epoch_terms,
            "images": int(samples),
            "skipped": int(skipped),
            **self.val,
            "lr": self.lr,
            "seconds": seconds,
            "images_per_s": samples / seconds if seconds > 0 else None,
            "world_size": self.run.world.world_size,
        }
        self.log.write(record)
        metric = self.run.task.best_metric
        logger.info(
            "epoch %d: loss %s, val %s %s (EMA %s), %d images, %d corrupt skipped",
            pos.epoch,
            _fmt(self.epoch_loss),
            metric,
            _fmt(self.val.get(f"val_{metric}")),
            _fmt(self.val.get(f"val_{metric}_ema")),
            int(samples),
            int(skipped),
        )

    def save(self, next_epoch: int, next_batch: int) -> None:
        """Write ``last.pt`` (rank 0; every rank's RNG state): the run continues at ``next_batch`` of ``next_epoch``.

        Raises:
            NonFiniteLossError: a weight is NaN or infinite (the previous ``last.pt`` is kept).
        """
        run, pos = self.run, self.pos
        if not all(bool(torch.isfinite(p).all()) for p in run.model.parameters()):
            raise NonFiniteLossError(self.nan_message("the weights", pos.step))
        rngs = run.world.gather(ckpt.get_rng_state())
        if run.world.is_main:
            sampler_state = run.data.sampler.state_dict(batches_done=next_batch)
            sampler_state["epoch"] = next_epoch
            snapshot = {
                "step": pos.step,
                "epoch": next_epoch,
                "model": run.model.state_dict(),
                "ema": run.ema.state_dict() if run.ema is not None else None,
                "optimizer": run.optimizer.state_dict(),
                "schedule": run.schedule.state_dict(),
                "scaler": run.scaler.state_dict() if run.scaler is not None else None,
                "sampler": sampler_state,
                "rng": rngs,
                "epoch_stats": pos.stats if next_batch else _epoch_stats(),
                "skipped_total": pos.skipped_total,
                "best": pos.best,
                "config": to_dict(run.cfg),
            }
            ckpt.save_checkpoint(snapshot, run.last_path)
            logger.info("checkpoint %s (step %d)", run.last_path, pos.step)
        pos.last_saved = pos.step

    def finish(self) -> TrainResult:
        """Save ``final/`` (and ``final_ema/``) with the eval transform and class names; the summary record."""
        run, pos = self.run, self.pos
        if run.world.is_main:
            labels = self.labels()
            save_pretrained(_saved_form(run.model), run.out / "final", labels=labels, preprocess=run.pre)
            if run.ema is not None:
                save_pretrained(_saved_form(run.ema.module), run.out / "final_ema", labels=labels, preprocess=run.pre)
        result = TrainResult(
            step=pos.step,
            epoch=pos.epoch,
            train_loss=self.epoch_loss,
            val_top1=self.val.get("val_top1"),
            val_top1_ema=self.val.get("val_top1_ema"),
            images=int(self.images_seen),
            skipped=int(pos.skipped_total),
            seconds=time.perf_counter() - self.started,
            checkpoint=str(run.last_path) if pos.last_saved is not None else None,
            output_dir=str(run.out),
            task=run.task.name,
            val_miou=self.val.get("val_miou"),
            val_miou_ema=self.val.get("val_miou_ema"),
            val_AP=self.val.get("val_AP"),
            val_AP_ema=self.val.get("val_AP_ema"),
            val_mask_AP=self.val.get("val_mask_AP"),
            val_mask_AP_ema=self.val.get("val_mask_AP_ema"),
        )
        self.log.write({"event": "summary", **dataclasses.asdict(result)})
        self.log.close()
        return result

    def nan_message(self, what: str, step: int) -> str:
        where = (
            f"The last good checkpoint is {self.run.last_path} (step {self.pos.last_saved}); nothing after it was "
            "written."
            if self.pos.last_saved is not None
            else "No checkpoint had been written yet."
        )
        return (
            f"Training stopped: {what} became NaN or infinite at step {step} (epoch {self.pos.epoch}). {where} "
            "Lower optimizer.lr, set clip_grad, or disable amp, then continue with --resume."
        )


def _saved_form(model: nn.Module) -> nn.Module:
    """``model``, or a folded copy (in eval mode) when part of it already is: a backbone loaded from a
    re-parameterized checkpoint trains folded under a new head with BatchNorms, and a checkpoint has one layout."""
    if not any(getattr(m, "reparam_conv", None) is not None for m in model.modules()):
        return model
    was_training = model.training
    folded = reparameterize_model(model.eval(), inplace=False)
    model.train(was_training)
    return folded


def _set_train_mode(model: nn.Module) -> None:
    """``model.train()``, but BatchNorms whose parameters are frozen keep their statistics (frozen backbone)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.requires_grad:
            m.eval()


@torch.no_grad()
def _evaluate(model: nn.Module, loader: DataLoader, world: Dist, cfg: TrainConfig, amp: Any) -> dict[str, Any]:
    """``{"top1": ...}``: top-1 accuracy over the (sharded) validation set, summed over ranks."""
    was_training = model.training
    model.eval()
    correct = count = 0
    for images, targets, _ in loader:
        if images.numel() == 0:
            continue
        images = _prepare(images.to(world.device), cfg.channels_last)
        with amp():
            logits = model(images)
        correct += int((logits.argmax(-1).cpu() == targets).sum())
        count += int(targets.numel())
    model.train(was_training)
    correct_all, count_all = world.sum([float(correct), float(count)])
    return {"top1": correct_all / count_all if count_all else None}


@torch.no_grad()
def _evaluate_segmentation(
    model: nn.Module, loader: DataLoader, world: Dist, cfg: TrainConfig, amp: Any
) -> dict[str, Any]:
    """``miou``, ``pixel_accuracy`` and ``class_iou`` (index order; ``None``: a class absent from both ground truth
    and prediction) over the (sharded) validation set: each prediction resized to its mask, one confusion matrix
    summed over images and ranks."""
    was_training = model.training
    model.eval()
    num_classes = model.num_classes
    confmat = np.zeros((num_classes, num_classes), dtype=np.int64)
    for images, masks, _ in loader:
        if images.numel() == 0:
            continue
        images = _prepare(images.to(world.device), cfg.channels_last)
        with amp():
            logits = model(images).float()  # [B, C, h, w]
        for scores, mask in zip(logits, masks, strict=True):
            full = upsample_logits(scores[None], (mask.shape[0], mask.shape[1]))  # [1, C, H, W] at the mask's size
            prediction = full.argmax(1)[0].cpu().numpy()
            confmat += confusion_matrix(prediction, mask.numpy(), num_classes, cfg.segmentation.ignore_index)
    model.train(was_training)
    total = np.asarray(world.sum(confmat.ravel().astype(np.float64).tolist())).reshape(num_classes, num_classes)
    if not total.sum():
        return {"miou": None, "pixel_accuracy": None, "class_iou": None}
    scores = segmentation_scores(total)
    return {
        "miou": scores["miou"],
        "pixel_accuracy": scores["pixel_accuracy"],
        "class_iou": list(scores["per_class_iou"].values()),
    }


# COCOeval's numbers that a detection run's epoch records keep (all of them: eval --task detection)
DETECTION_FIELDS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


@torch.no_grad()
def _evaluate_detection(
    model: nn.Module, loader: DataLoader, world: Dist, cfg: TrainConfig, amp: Any
) -> dict[str, Any]:
    """COCO box mAP (``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR100``) of the (sharded) validation
    set: each image's detections as ``eval --task detection`` finds them (:func:`~mobilevit.tasks.detection.
    coco_rows`), gathered from every rank and scored by pycocotools on rank 0, whose numbers every rank returns."""
    was_training = model.training
    model.eval()
    rows: list[dict[str, Any]] = []
    val_set = loader.dataset.dataset  # a Subset (this rank's shard) of a DetectionDataset
    for images, info, _ in loader:
        if images.numel() == 0:
            continue
        images = _prepare(images.to(world.device), cfg.channels_last)
        with amp():
            logits, boxes, anchors = (t.float().cpu() for t in model(images))
        for i, (image_id, width, height) in enumerate(info.tolist()):
            rows += coco_rows(logits[i], boxes[i], anchors[i], (width, height), image_id, val_set.category)
    model.train(was_training)
    everything = [row for part in world.gather(rows) for row in part]
    scores = val_set.score(everything) if world.is_main else {}
    values = world.sum([float(scores.get(key, 0.0)) for key in DETECTION_FIELDS])  # rank 0's numbers on every rank
    return dict(zip(DETECTION_FIELDS, values, strict=True))


# COCOeval's box and mask numbers that an instance segmentation run's epoch records keep
INSTANCE_FIELDS = (*DETECTION_FIELDS, *(f"mask_{key}" for key in DETECTION_FIELDS))


@torch.no_grad()
def _evaluate_instances(
    model: nn.Module, loader: DataLoader, world: Dist, cfg: TrainConfig, amp: Any
) -> dict[str, Any]:
    """COCO box and mask mAP (``AP``, ..., ``mask_AP``, ...) of the (sharded) validation set: each image's
    detections and masks in its own pixels as ``eval --task detection`` scores them (the task's ``postprocess``,
    :func:`~mobilevit.tasks.detection.coco_results`), one image at a time (the masks are pasted at the input's
    size), gathered from every rank and scored by pycocotools (:func:`~mobilevit.data.coco.evaluate_instances`) on
    rank 0, whose numbers every rank returns."""
    was_training = model.training
    model.eval()
    task = task_of(model)
    rows: list[dict[str, Any]] = []
    val_set = loader.dataset.dataset  # a Subset (this rank's shard) of a DetectionDataset
    runner = _LabelsOnly(model.num_classes)
    for images, info, _ in loader:
        for image, (image_id, width, height) in zip(images, info.tolist(), strict=True):
            with amp():
                (found,) = model(_prepare(image[None].to(world.device), cfg.channels_last))
            found = {
                key: value.float().cpu() if value.is_floating_point() else value.cpu() for key, value in found.items()
            }
            detection = task.postprocess(runner, found, size=(width, height))
            rows += coco_results(detection, image_id, val_set.category)
    model.train(was_training)
    everything = [row for part in world.gather(rows) for row in part]
    categories = sorted(set(val_set.category.values()))
    scores = evaluate_instances(val_set.coco, everything, categories) if world.is_main else {}
    values = world.sum([float(scores.get(key, 0.0)) for key in INSTANCE_FIELDS])  # rank 0's numbers on every rank
    return dict(zip(INSTANCE_FIELDS, values, strict=True))


@dataclass
class _LabelsOnly:
    """What a task's ``postprocess`` reads of a runner during validation: the model's name and class names."""

    num_classes: int
    model_name: str = "the model in training"

    @property
    def labels(self) -> list[str]:
        return [f"class_{k}" for k in range(1, self.num_classes)]


# the validation of a run, by the kind of data it trains on (its task's ``train_data``)
VALIDATION: dict[str, Callable[..., dict[str, Any]]] = {
    "labelled_images": _evaluate,
    "image_mask_pairs": _evaluate_segmentation,
    "coco_boxes": _evaluate_detection,
    "coco_masks": _evaluate_instances,
}


def _on_device(targets: Any, device: torch.device) -> Any:
    """A batch's targets on ``device``: a tensor, or each tensor of a list of target dicts (torchvision's)."""
    if isinstance(targets, Tensor):
        return targets.to(device)
    return [{key: value.to(device) for key, value in target.items()} for target in targets]


def _prepare(x: Tensor, channels_last: bool) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _float(outputs: Any) -> Any:
    """A model's output in float32: a tensor, each tensor of a tuple of them (a detector's ``SSDOutput``), or each
    value of a dict of them (torchvision's loss dict)."""
    if isinstance(outputs, dict):
        return {key: value.float() for key, value in outputs.items()}
    if not isinstance(outputs, tuple):
        return outputs.float()
    floats = [t.float() for t in outputs]
    return type(outputs)(*floats) if hasattr(outputs, "_fields") else tuple(floats)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
