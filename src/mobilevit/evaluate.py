"""Top-1 / top-5 accuracy of a predictor over a labelled image set, on one process or sharded under torchrun."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .data.images import IMAGE_SUFFIXES
from .predict import Predictor

logger = logging.getLogger(__name__)

_FILE_COLUMNS = ("file", "filename", "path", "image")
_LABEL_COLUMNS = ("class_index", "label", "target", "class")


def _read_csv(path: Path) -> list[tuple[Path, int]]:
    """Rows of (file, class index); a header naming the columns is optional. Paths are relative to the CSV."""
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    if not rows:
        raise ValueError(f"{path}: empty label file")
    header = [c.strip().lower() for c in rows[0]]
    file_col, label_col, first_row = 0, 1, 1
    if len(header) >= 2 and not header[1].lstrip("-").isdigit():  # a header row
        file_col = next((header.index(c) for c in _FILE_COLUMNS if c in header), 0)
        label_col = next((header.index(c) for c in _LABEL_COLUMNS if c in header), 1)
        rows, first_row = rows[1:], 2
    samples = []
    for n, row in enumerate(rows, start=first_row):
        try:
            samples.append((path.parent / row[file_col].strip(), int(row[label_col])))
        except (IndexError, ValueError):
            raise ValueError(f"{path}, row {n}: expected a file and an integer class index, got {row}") from None
    return samples


def read_labelled(path: str | os.PathLike) -> tuple[list[tuple[Path, int]], list[str] | None]:
    """Samples ``(file, class index)`` from a CSV file, a folder holding ``labels.csv``, or an ImageFolder tree.

    Returns:
        The samples, and the class names for an ImageFolder tree (sorted sub-folder names, index order), else None.
    """
    path = Path(path)
    if path.is_file():
        return _read_csv(path), None
    if not path.is_dir():
        raise FileNotFoundError(f"No such dataset: {path}")
    if (path / "labels.csv").is_file():
        return _read_csv(path / "labels.csv"), None
    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"{path}: neither a labels.csv nor class sub-folders (ImageFolder layout)")
    samples = [
        (f, i)
        for i, c in enumerate(classes)
        for f in sorted((path / c).rglob("*"))
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    return samples, classes


def evaluate(
    predictor: Predictor,
    samples: list[tuple[Path, int]],
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Top-1 and top-5 accuracy (fractions) over ``samples``; unreadable files are counted and listed, not scored.

    Under ``torch.distributed`` each rank scores ``samples[rank::world_size]`` and the counts are summed.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    mine = samples[rank::world]
    targets = {str(p): t for p, t in mine}
    correct1 = correct5 = scored = 0
    failed: list[dict[str, str]] = []
    for path, answer in predictor.predict_files([p for p, _ in mine], top_k=5, progress=progress):
        if isinstance(answer, Exception):
            failed.append({"file": path, "error": str(answer)})
            continue
        indices = [p.index for p in answer]
        scored += 1
        correct1 += indices[0] == targets[path]
        correct5 += targets[path] in indices
    counts = torch.tensor([correct1, correct5, scored, len(failed)], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(counts)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, failed)
        failed = [f for part in gathered for f in part]
    correct1, correct5, scored, _ = (int(v) for v in counts.tolist())
    return {
        "top1": correct1 / scored if scored else float("nan"),
        "top5": correct5 / scored if scored else float("nan"),
        "count": scored,
        "correct_top1": correct1,
        "correct_top5": correct5,
        "failed": failed,
    }
