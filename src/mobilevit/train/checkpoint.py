"""Training-state checkpoints that survive a crash at any instant: atomic writes, full RNG state, resume.

A checkpoint holds what ml-cvnets' ``training_checkpoint.pt`` holds (iterations, epoch, model, optimizer, grad scaler,
EMA; https://github.com/apple/ml-cvnets ``cvnets/utils/checkpoint_utils.py``) plus the schedule, the sampler position
and the random-number generator states, so that a resumed run continues the uninterrupted one.

:func:`save_checkpoint` writes to a temporary file in the target folder, ``fsync``s it, renames it over the target with
``os.replace`` (atomic on POSIX and Windows) and ``fsync``s the folder: a reader sees the old file or the new one,
never a partial one, whatever instant the process is killed.

:func:`seed_batch` seeds the global generators from a micro-batch's position in the run, so a resumed run draws what
the uninterrupted run drew whatever it drew before.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "LAST",
    "get_rng_state",
    "load_checkpoint",
    "save_checkpoint",
    "seed_batch",
    "seed_everything",
    "set_rng_state",
]

LAST = "last.pt"  # the latest training state in the output folder; ``--resume`` reads it


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` (``torch.save``) to ``path`` atomically: temp file + fsync + ``os.replace`` + folder fsync.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}")
    # weights_only=False: the state holds numpy / python RNG states; only load checkpoints you wrote yourself
    return torch.load(path, map_location="cpu", weights_only=False)


def get_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators (CPU, and CUDA when available)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generator states of :func:`get_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch also seeds every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


_BATCH_SEED_STREAM = 0xBA7C  # tells the micro-batch seeds apart from other seed streams of the same run seed


def seed_batch(seed: int, rank: int, epoch: int, batch: int) -> None:
    """Seed the global generators (torch CPU and CUDA, Python, NumPy) for micro-batch ``batch`` of ``epoch``.

    Mixup / cutmix, dropout and drop path draw from these; seeding them from ``(seed, rank, epoch, batch)`` before
    every micro-batch makes those draws independent of what the process drew before, so a run resumed from any
    checkpoint (and replaying the steps after it) draws what the uninterrupted run drew.
    """
    entropy = [seed % 2**64, rank, epoch, batch, _BATCH_SEED_STREAM]
    value = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1  # [0, 2**63)
    seed_everything(value)
