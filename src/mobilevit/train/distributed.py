"""Distributed training under ``torchrun``: joining the process group, wrapping the model, reducing over ranks.

One process (``WORLD_SIZE`` unset or 1) is the degenerate case: every helper returns its input unchanged, so the
training loop reads the same either way. Gloo on CPU, NCCL on GPU (each rank on ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["Dist", "setup_distributed"]


@dataclass(frozen=True)
class Dist:
    """This process' place in the run.

    Attributes:
        rank: this process' rank, 0 for a single process.
        world_size: number of processes.
        device: the device this rank trains on.
        owns_group: :func:`setup_distributed` initialized the process group, so :meth:`close` tears it down.
    """

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files."""
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def all_true(self, flag: bool) -> bool:
        """``flag`` holds on every rank."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def average_buffers(self, model: nn.Module) -> None:
        """Replace ``model``'s floating-point buffers (BatchNorm running statistics) by their mean over ranks.

        Each rank's BatchNorm layers update their running statistics from that rank's batches only, so before an
        evaluation the ranks hold different models; after this they hold one model, the one rank 0 saves (timm's
        ``--dist-bn reduce``).
        """
        if not self.enabled:
            return
        for buffer in model.buffers():
            if buffer.dtype.is_floating_point:
                dist.all_reduce(buffer)
                buffer.div_(self.world_size)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` when there are several ranks, else ``model`` itself."""
        if not self.enabled:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def gradient_sync(self, model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """The context of one backward pass: DDP's ``no_sync()`` unless ``sync`` (the micro-batch ending a step)."""
        if sync or not self.enabled:
            return contextlib.nullcontext()
        return model.no_sync()  # type: ignore[operator]

    def close(self) -> None:
        """Destroy the process group if :func:`setup_distributed` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed() -> Dist:
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
    return Dist(rank, world, device, owns)
