"""Multi-scale batch samplers of ml-cvnets (MobileViT, arXiv 2110.02178), for a torch ``DataLoader``.

Follows ``cvnets/data/sampler/variable_batch_sampler.py``, ``multi_scale_sampler.py`` and ``utils.py`` of
https://github.com/apple/ml-cvnets (facts, not code):

- **Sizes.** ``linspace(min, max, num_scales)`` for heights and for widths, plus the base size when it is not already
  in the list; each rounded to a multiple of ``divisor`` (32) with the MobileNet ``make_divisible`` rule
  (:func:`mobilevit.layers.make_divisible`); de-duplicated and sorted.
- **Batch per size.** The variable-batch sampler keeps the number of pixels per batch near the base:
  ``max(1, int(round(base_h * base_w * base_batch / (h * w), 2)))`` -- cvnets rounds to two decimals and then
  *truncates*, which is why the worked example (base 256, batch 128, range 160-320, 5 scales) gives
  ``(160, 327), (192, 227), (256, 128), (288, 101), (320, 81)`` (327.68 -> 327, 227.56 -> 227).
  The fixed multi-scale sampler (cvnets' ``multi_scale_sampler``) uses the same sizes with the base batch size.
- **An epoch.** The index list is shuffled with a generator seeded by ``(seed, epoch)`` (:meth:`set_epoch`), padded by
  wrapping to a multiple of the world size and split by stride ``rank::world_size``; then each batch draws one
  ``(h, w, batch_size)`` uniformly at random and takes the next ``batch_size`` indices; the last batch is padded by
  wrapping to the start of this rank's list. Every rank draws the same sizes (same generator, same list length), so
  all ranks run the same number of steps at the same resolution.

Each batch is a list of :class:`SizedIndex` ``(index, height, width, seed)``; :class:`MultiScaleDataset` receives one
such key per sample and applies the train transform at that size, so the default collate stacks equal-sized tensors.
The ``seed`` is drawn per position of the epoch from ``(seed, epoch, rank)``, and the transform's random draws come
from global generators seeded with it (:func:`seeded_rngs`): every augmentation is a function of the sampler's seed,
the epoch and the position alone, whichever ``DataLoader`` worker computes it and wherever a resumed epoch restarts::

    sampler = MultiScaleBatchSampler.variable_batch(len(folder), base_size=256, base_batch_size=128)
    loader = DataLoader(MultiScaleDataset(folder, multi_scale_train_transform), batch_sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for images, labels in loader: ...

Validation uses one fixed size: :meth:`MultiScaleBatchSampler.fixed` with ``shuffle=False``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
from collections.abc import Callable, Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler, get_worker_info

from ..errors import UsageError
from ..layers import make_divisible

logger = logging.getLogger(__name__)

__all__ = [
    "BatchShape",
    "MultiScaleBatchSampler",
    "MultiScaleDataset",
    "SizedIndex",
    "fixed_batch_shapes",
    "make_divisible",
    "multi_scale_train_transform",
    "scale_sizes",
    "seeded_rngs",
    "to_pair",
    "variable_batch_shapes",
]


class SizedIndex(NamedTuple):
    """One sample of a batch: the dataset index, the (height, width) the batch is resized to, and the seed of the
    sample's random augmentation (``None``: the transform draws from the process' global generators).
    """

    index: int
    height: int
    width: int
    seed: int | None = None


@dataclass(frozen=True, order=True)
class BatchShape:
    """A resolution and the number of images per batch at that resolution."""

    height: int
    width: int
    batch_size: int


_SAMPLE_SEED_STREAM = 0x5EED  # tells the per-sample seed stream apart from the shuffle's ``[seed, epoch]`` stream


@contextlib.contextmanager
def seeded_rngs(seed: int, restore: bool = True) -> Iterator[None]:
    """Seed torch's (CPU), Python's and NumPy's global generators with ``seed`` for the block.

    The per-sample augmentation of :class:`MultiScaleDataset` runs inside it, so a sample's crop, flip, RandAugment
    and erasing draws depend on its :attr:`SizedIndex.seed` only: not on which ``DataLoader`` worker (or the main
    process) transforms it, nor on what that process drew before. This is what makes a resumed run exact.

    Args:
        seed: any non-negative int (NumPy gets ``seed % 2**32``).
        restore: put the previous states back afterwards (~0.2 ms, mostly NumPy's); a ``DataLoader`` worker, whose
            generators serve nothing else, can skip it.
    """
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()) if restore else None
    torch.random.default_generator.manual_seed(seed)  # CPU only: the data pipeline never draws on a GPU
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        if states is not None:
            torch.set_rng_state(states[0])
            random.setstate(states[1])
            np.random.set_state(states[2])


def to_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` of a size given as one int (square) or as a pair."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def scale_sizes(
    base_size: int | Sequence[int] = 256,
    min_size: int | Sequence[int] = 160,
    max_size: int | Sequence[int] = 320,
    num_scales: int = 5,
    divisor: int = 32,
) -> list[tuple[int, int]]:
    """The sorted, de-duplicated (height, width) sizes of cvnets' multi-scale samplers.

    Args:
        base_size: the base crop (an int for square); always one of the sizes.
        min_size: the smallest crop before rounding.
        max_size: the largest crop before rounding.
        num_scales: points of ``linspace(min_size, max_size, num_scales)``.
        divisor: every size is rounded to a multiple of this (:func:`mobilevit.layers.make_divisible`).
    """
    if num_scales < 1:
        raise UsageError(f"num_scales must be >= 1, got {num_scales}")
    (base_h, base_w), (min_h, min_w), (max_h, max_w) = to_pair(base_size), to_pair(min_size), to_pair(max_size)
    if min_h > max_h or min_w > max_w:
        raise UsageError(f"min_size {min_size} is larger than max_size {max_size}")
    heights = np.linspace(min_h, max_h, num_scales).tolist()
    widths = np.linspace(min_w, max_w, num_scales).tolist()
    pairs = list(zip(heights, widths, strict=True))
    if (base_h, base_w) not in pairs:
        pairs.append((base_h, base_w))
    return sorted({(make_divisible(h, divisor), make_divisible(w, divisor)) for h, w in pairs})


def variable_batch_shapes(
    base_size: int | Sequence[int] = 256,
    base_batch_size: int = 128,
    min_size: int | Sequence[int] = 160,
    max_size: int | Sequence[int] = 320,
    num_scales: int = 5,
    divisor: int = 32,
) -> list[BatchShape]:
    """cvnets' variable-batch table: each size of :func:`scale_sizes` with a batch keeping pixels per batch constant.

    ``batch = max(1, int(round(base_h * base_w * base_batch_size / (h * w), 2)))`` (rounded to two decimals, then
    truncated, as cvnets does). Sorted by size.
    """
    if base_batch_size < 1:
        raise UsageError(f"base_batch_size must be >= 1, got {base_batch_size}")
    base_h, base_w = to_pair(base_size)
    pixels = base_h * base_w * base_batch_size
    sizes = scale_sizes(base_size, min_size, max_size, num_scales, divisor)
    return [BatchShape(h, w, max(1, int(round(pixels / (h * w), 2)))) for h, w in sizes]


def fixed_batch_shapes(
    base_size: int | Sequence[int] = 256,
    batch_size: int = 128,
    min_size: int | Sequence[int] = 160,
    max_size: int | Sequence[int] = 320,
    num_scales: int = 5,
    divisor: int = 32,
) -> list[BatchShape]:
    """cvnets' ``multi_scale_sampler`` table: the sizes of :func:`scale_sizes`, all with the same ``batch_size``."""
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    return [BatchShape(h, w, batch_size) for h, w in scale_sizes(base_size, min_size, max_size, num_scales, divisor)]


def _distributed_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
        if rank is None:
            rank = torch.distributed.get_rank() if initialized else 0
        if world_size is None:
            world_size = torch.distributed.get_world_size() if initialized else 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


class MultiScaleBatchSampler(Sampler[list[SizedIndex]]):
    """A ``batch_sampler`` whose every batch has one random (height, width) and its own batch size.

    Build it with :meth:`variable_batch` (cvnets' ``variable_batch_sampler``), :meth:`multi_scale` (cvnets'
    ``multi_scale_sampler``: fixed batch size) or :meth:`fixed` (one size: the fixed-256 recipes and validation).

    The order of an epoch depends only on ``(seed, epoch)``; ``len(sampler)`` is the number of batches the next
    iteration yields (the whole epoch, or what remains of it after :meth:`load_state_dict`).
    """

    def __init__(
        self,
        num_samples: int | Sized,
        shapes: Sequence[BatchShape],
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        """Args:
        num_samples: dataset length (or the dataset itself).
        shapes: the (height, width, batch_size) table each batch draws from uniformly.
        shuffle: shuffle the indices each epoch (the size draws are random either way, seeded the same way).
        seed: base seed; the epoch's generator is seeded by ``(seed, epoch)``. Must agree across ranks.
        rank: this process' rank; default: ``torch.distributed`` when initialized, else 0.
        world_size: number of processes; default: ``torch.distributed`` when initialized, else 1.
        """
        super().__init__()
        self.num_samples = num_samples if isinstance(num_samples, int) else len(num_samples)
        if self.num_samples < 1:
            raise UsageError("the dataset is empty")
        if not shapes:
            raise UsageError("shapes must not be empty")
        self.shapes = tuple(shapes)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank, self.world_size = _distributed_rank_world(rank, world_size)
        self.epoch = 0
        self._start = 0  # first batch of the next iteration (non-zero after load_state_dict)
        self._yielded = 0  # batches yielded so far in the current epoch
        self._plan_cache: tuple[int, list[list[SizedIndex]]] | None = None

    @classmethod
    def variable_batch(
        cls,
        num_samples: int | Sized,
        base_size: int | Sequence[int] = 256,
        base_batch_size: int = 128,
        min_size: int | Sequence[int] = 160,
        max_size: int | Sequence[int] = 320,
        num_scales: int = 5,
        divisor: int = 32,
        **kwargs: Any,
    ) -> MultiScaleBatchSampler:
        """cvnets' variable-batch sampler (:func:`variable_batch_shapes`); ``kwargs`` go to the constructor."""
        shapes = variable_batch_shapes(base_size, base_batch_size, min_size, max_size, num_scales, divisor)
        return cls(num_samples, shapes, **kwargs)

    @classmethod
    def multi_scale(
        cls,
        num_samples: int | Sized,
        base_size: int | Sequence[int] = 256,
        batch_size: int = 128,
        min_size: int | Sequence[int] = 160,
        max_size: int | Sequence[int] = 320,
        num_scales: int = 5,
        divisor: int = 32,
        **kwargs: Any,
    ) -> MultiScaleBatchSampler:
        """cvnets' fixed-batch multi-scale sampler (:func:`fixed_batch_shapes`); ``kwargs`` go to the constructor."""
        shapes = fixed_batch_shapes(base_size, batch_size, min_size, max_size, num_scales, divisor)
        return cls(num_samples, shapes, **kwargs)

    @classmethod
    def fixed(
        cls, num_samples: int | Sized, size: int | Sequence[int] = 256, batch_size: int = 128, **kwargs: Any
    ) -> MultiScaleBatchSampler:
        """One size for every batch (the fixed-256 recipes; validation with ``shuffle=False``)."""
        h, w = to_pair(size)
        return cls(num_samples, [BatchShape(h, w, batch_size)], **kwargs)

    @property
    def samples_per_rank(self) -> int:
        """Indices each rank sees per epoch (the dataset padded to a multiple of the world size, divided)."""
        return -(-self.num_samples // self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (the shuffle and size draws); a new epoch starts from its first batch."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = int(epoch)

    def _rank_indices(self, rng: np.random.Generator) -> list[int]:
        indices = rng.permutation(self.num_samples).tolist() if self.shuffle else list(range(self.num_samples))
        total = self.samples_per_rank * self.world_size
        indices += (indices * (total // len(indices) + 1))[: total - len(indices)]  # wrap to a multiple of world
        return indices[self.rank : total : self.world_size]

    def _plan(self) -> list[list[SizedIndex]]:
        """All batches of the current epoch for this rank (cached per epoch)."""
        if self._plan_cache is not None and self._plan_cache[0] == self.epoch:
            return self._plan_cache[1]
        rng = np.random.default_rng([self.seed, self.epoch])  # same on every rank: same shuffle, same size draws
        indices = self._rank_indices(rng)
        n = len(indices)
        drawn: list[BatchShape] = []
        total = 0
        while total < n:
            drawn.append(self.shapes[int(rng.integers(len(self.shapes)))])
            total += drawn[-1].batch_size
        # one augmentation seed per position of this rank's epoch: a function of (seed, epoch, rank, position) only
        seed_stream = np.random.default_rng([self.seed, self.epoch, self.rank, _SAMPLE_SEED_STREAM])
        seeds = seed_stream.integers(2**63, size=total)
        batches: list[list[SizedIndex]] = []
        start = 0
        for shape in drawn:
            positions = range(start, start + shape.batch_size)
            # the last batch wraps to the start of the index list
            batches.append([SizedIndex(indices[p % n], shape.height, shape.width, int(seeds[p])) for p in positions])
            start += shape.batch_size
        self._plan_cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[SizedIndex]]:
        plan, start = self._plan(), self._start
        self._start = 0  # a resumed epoch resumes once; the next iteration of the same epoch is whole again
        self._yielded = start
        for batch in plan[start:]:
            self._yielded += 1  # counted when handed out: a state_dict taken while the loop trains on it skips it
            yield batch

    def __len__(self) -> int:
        return len(self._plan()) - self._start

    def num_batches(self) -> int:
        """Batches in the whole current epoch, whatever has been consumed."""
        return len(self._plan())

    def state_dict(self, batches_done: int | None = None) -> dict[str, int]:
        """The position to resume from: epoch, seed and batches done in the epoch.

        Args:
            batches_done: batches the training loop has consumed in this epoch. Pass it when the ``DataLoader``
                prefetches (workers run ahead of the loop); default: batches this sampler has yielded.
        """
        done = self._yielded if batches_done is None else int(batches_done)
        return {"epoch": self.epoch, "seed": self.seed, "batches_done": done, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next iteration yields the batches of ``state["epoch"]`` after ``state["batches_done"]``."""
        if state["world_size"] != self.world_size:
            raise UsageError(f"state was saved with world_size {state['world_size']}, this run has {self.world_size}")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._plan_cache = None
        done = int(state["batches_done"])
        if not 0 <= done <= len(self._plan()):
            raise UsageError(f"batches_done {done} is outside the epoch's {len(self._plan())} batches")
        self._start = self._yielded = done


@functools.lru_cache(maxsize=64)
def multi_scale_train_transform(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    interpolation: str = "bilinear",
    hflip: float = 0.5,
) -> Callable[[Any], Tensor]:
    """The cvnets v1 train transform at one size: random-resized-crop to (height, width), flip, float in [0, 1].

    Cached per argument set, so a worker builds each size's pipeline once. Augmentations beyond RRC + flip
    (RandAugment, random erasing, mixup/cutmix) belong to the training pipeline.
    """
    from torchvision.transforms import v2

    mode = v2.InterpolationMode(interpolation)
    steps: list[Callable[[Any], Any]] = [v2.ToImage(), v2.RandomResizedCrop((height, width), scale, interpolation=mode)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


class MultiScaleDataset(Dataset):
    """Wraps an ``(image, label)`` dataset so that each item is transformed at the size its batch drew.

    Indexed by the :class:`SizedIndex` keys of :class:`MultiScaleBatchSampler`: the transform runs inside
    :func:`seeded_rngs` with the key's seed, so the same key gives the same tensor in any process, in any order.
    Plain int indices use ``default_size`` and the process' global generators. With ``joint`` the transform takes
    and returns the whole ``(image, target)`` pair (a segmentation image and its mask, cropped alike).
    """

    def __init__(
        self,
        dataset: Dataset,
        transform: Callable[[int, int], Callable[..., Any]] = multi_scale_train_transform,
        default_size: tuple[int, int] = (256, 256),
        joint: bool = False,
    ) -> None:
        """Args:
        dataset: yields ``(image, label)`` with PIL images (or tensors) and no transform of its own.
        transform: ``transform(height, width)`` returns the per-sample transform for that size.
        default_size: the size used when indexed with a plain int.
        joint: the per-sample transform maps ``(image, target)`` to ``(image, target)``; otherwise it maps the image
            and the target is kept.
        """
        self.dataset = dataset
        self.transform = transform
        self.default_size = default_size
        self.joint = joint

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SizedIndex | tuple[int, int, int] | int) -> tuple[Any, Any]:
        key = SizedIndex(key, *self.default_size) if isinstance(key, int) else SizedIndex(*key)
        image, label = self.dataset[key.index]
        transform = self.transform(key.height, key.width)
        if key.seed is None:
            return self._apply(transform, image, label)
        with seeded_rngs(key.seed, restore=get_worker_info() is None):  # the main process' generators are kept
            return self._apply(transform, image, label)

    def _apply(self, transform: Callable[..., Any], image: Any, label: Any) -> tuple[Any, Any]:
        return transform(image, label) if self.joint else (transform(image), label)
