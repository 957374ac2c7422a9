"""The metrics files of a training run, written by rank 0.

- ``metrics.jsonl``: one JSON object per line, ``"event": "step" | "epoch" | "summary"``;
- ``metrics.csv`` (``logging.csv``): the epoch records, columns :func:`epoch_columns` of the task
  (classification: :data:`EPOCH_COLUMNS`; segmentation: ``val_miou`` and ``val_pixel_accuracy`` in place of
  ``val_top1``; the per-class IoU of the ``val_class_iou`` field is in ``metrics.jsonl`` only; detection: COCO's
  ``val_AP``, ``val_AP50`` and ``val_AP75``, the other COCOeval numbers in ``metrics.jsonl`` only; instance
  segmentation: each term of the loss (``train_loss_mask``, ...), box and mask ``val_AP``, ``val_AP50``,
  ``val_mask_AP``, ``val_mask_AP50``);
- ``tensorboard/`` (``logging.tensorboard``): TensorBoard scalars of the step and epoch records.

On resume the records written after the checkpoint are dropped, so the files continue the interrupted run's curve
without duplicates.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..tasks import CLASSIFICATION, Task

logger = logging.getLogger(__name__)

__all__ = ["EPOCH_COLUMNS", "METRICS", "METRICS_CSV", "MetricsLog", "epoch_columns"]

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
# TensorBoard tag of each logged field, per event (an epoch's validation fields: "val_x" -> "val/x")
_TENSORBOARD_TAGS = {
    "step": {"loss": "train/loss", "lr": "train/lr", "images_per_s": "train/images_per_s"},
    "epoch": {"train_loss": "epoch/train_loss"},
}


def epoch_columns(task: Task = CLASSIFICATION) -> tuple[str, ...]:
    """The CSV columns of a run's epoch records: :data:`EPOCH_COLUMNS` with the task's validation columns in the
    place of the classifier's, after the terms of its loss (``train_<term>``, when the loss has terms)."""
    start = EPOCH_COLUMNS.index(CLASSIFICATION.val_columns[0])
    end = start + len(CLASSIFICATION.val_columns)
    terms = tuple(f"train_{term}" for term in task.loss_columns)
    return (*EPOCH_COLUMNS[:start], *terms, *task.val_columns, *EPOCH_COLUMNS[end:])


class MetricsLog:
    """Rank 0's metrics: JSON lines, the epoch records as CSV, optionally TensorBoard scalars.

    A fresh run starts new files; on resume, the records written after the checkpoint are dropped (the CSV is
    rewritten from the kept epoch records, TensorBoard purges the events after the resume step).
    """

    def __init__(
        self,
        out: Path,
        enabled: bool,
        resume_step: int | None,
        csv_log: bool,
        tensorboard: bool,
        task: Task = CLASSIFICATION,
    ) -> None:
        """Args:
        out: the run's output folder.
        enabled: write files (rank 0); other ranks get a log that writes nothing.
        resume_step: the step of the checkpoint resumed from; ``None`` for a fresh run.
        csv_log: also write ``metrics.csv``.
        tensorboard: also write TensorBoard events (skipped with a warning without the tensorboard package).
        task: the model's task, which chooses the CSV's validation columns.
        """
        self.path = out / METRICS
        self.csv_path = out / METRICS_CSV if csv_log else None
        self.task = task
        self.columns = epoch_columns(task)
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
            self.tb = _summary_writer(out / "tensorboard", resume_step)

    @staticmethod
    def _keep(line: str, step: int) -> bool:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            return False
        return record.get("step", 0) <= step and record.get("event") != "summary"

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (with its ``"event"``) to every enabled output."""
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
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            for record in self.epochs:
                writer.writerow({k: v for k, v in record.items() if k in self.columns})
        os.replace(tmp, self.csv_path)

    def _write_tensorboard(self, record: dict[str, Any]) -> None:
        step = record.get("step", 0)
        tags = dict(_TENSORBOARD_TAGS.get(record["event"], {}))
        if record["event"] == "epoch":
            tags.update({name: name.replace("val_", "val/", 1) for name in self.task.val_columns})
            tags.update({f"train_{term}": f"epoch/train_{term}" for term in self.task.loss_columns})
        for key, tag in tags.items():
            if record.get(key) is not None:
                self.tb.add_scalar(tag, record[key], step)
        self.tb.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.tb is not None:
            self.tb.close()


def _summary_writer(log_dir: Path, resume_step: int | None) -> Any:
    """A TensorBoard ``SummaryWriter`` purging the events after ``resume_step``; ``None`` without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning("logging.tensorboard: the tensorboard package is not installed; TensorBoard logging skipped")
        return None
    purge = resume_step + 1 if resume_step is not None else None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge)
