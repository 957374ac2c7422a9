"""Tests of the cvnets multi-scale samplers (mobilevit.data.samplers) against a worked example of cvnets' defaults."""

from __future__ import annotations

import itertools

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mobilevit.data.samplers import (
    BatchShape,
    MultiScaleBatchSampler,
    MultiScaleDataset,
    fixed_batch_shapes,
    make_divisible,
    scale_sizes,
    variable_batch_shapes,
)


def _flat(batches):
    return [key.index for batch in batches for key in batch]


def test_spec_worked_example():
    shapes = variable_batch_shapes(base_size=256, base_batch_size=128, min_size=160, max_size=320, num_scales=5)
    assert [(s.height, s.batch_size) for s in shapes] == [(160, 327), (192, 227), (256, 128), (288, 101), (320, 81)]
    assert all(s.height == s.width for s in shapes)


def test_sizes_rounding_dedup_and_base():
    assert make_divisible(200, 32) == 192 and make_divisible(280, 32) == 288 and make_divisible(240, 32) == 256
    assert scale_sizes(224, 128, 320, 3) == [(128, 128), (224, 224), (320, 320)]
    assert (224, 224) in scale_sizes(224, 160, 320, 5)  # base size always present
    rect = scale_sizes((256, 192), (160, 128), (320, 256), 3)
    assert rect == sorted(set(rect)) and (256, 192) in rect


def test_batch_formula():
    for shape in variable_batch_shapes(224, 64, 128, 384, 6):
        assert shape.batch_size == max(1, int(round(224 * 224 * 64 / (shape.height * shape.width), 2)))
    assert variable_batch_shapes(32, 1, 32, 1024, 2)[-1].batch_size == 1  # never below one
    assert {s.batch_size for s in fixed_batch_shapes(256, 48)} == {48}


def test_batches_per_size_follow_table():
    sampler = MultiScaleBatchSampler.variable_batch(5000, seed=3)
    table = {(s.height, s.width): s.batch_size for s in sampler.shapes}
    sizes = set()
    for batch in sampler:
        h, w = batch[0].height, batch[0].width
        assert all((k.height, k.width) == (h, w) for k in batch)
        assert len(batch) == table[(h, w)]
        sizes.add((h, w))
    assert len(sizes) > 1  # it does draw several sizes


def test_determinism_per_epoch():
    a = MultiScaleBatchSampler.variable_batch(3000, seed=1)
    b = MultiScaleBatchSampler.variable_batch(3000, seed=1)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b) == list(a)
    first = list(a)
    a.set_epoch(5)
    assert list(a) != first
    c = MultiScaleBatchSampler.variable_batch(3000, seed=2)
    c.set_epoch(4)
    assert list(c) != first


@pytest.mark.parametrize("n", [1, 7, 128, 1000, 1001])
def test_coverage_and_wrap_padding(n):
    sampler = MultiScaleBatchSampler.variable_batch(n, base_batch_size=16, seed=0)
    batches = list(sampler)
    flat = _flat(batches)
    assert len(batches) == len(sampler)
    assert set(flat) == set(range(n))
    total = sum(len(b) for b in batches)
    assert total >= n and total - n < max(s.batch_size for s in sampler.shapes)
    assert flat[:n] == sorted(range(n), key=flat.index)  # first n are a permutation, each once
    assert len(set(flat[:n])) == n
    assert flat[n:] == [flat[i % n] for i in range(len(flat) - n)]  # padding wraps to the start


def test_no_shuffle_is_in_order():
    sampler = MultiScaleBatchSampler.fixed(10, 256, 4, shuffle=False)
    assert _flat(sampler) == [*range(10), 0, 1]
    assert {(k.height, k.width) for b in sampler for k in b} == {(256, 256)}


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("n", [100, 101])
def test_ddp_split(world, n):
    samplers = [
        MultiScaleBatchSampler.variable_batch(n, base_batch_size=8, seed=7, rank=r, world_size=world)
        for r in range(world)
    ]
    per_rank = -(-n // world)
    unpadded = []
    for s in samplers:
        s.set_epoch(2)
        flat = _flat(s)
        unpadded.append(flat[:per_rank])
        assert len(set(flat[:per_rank])) == per_rank or n % world  # distinct unless wrap-padding reused one
    # same number of batches and same sizes on every rank (DDP steps in lockstep)
    plans = [[(b[0].height, len(b)) for b in s] for s in samplers]
    assert all(p == plans[0] for p in plans)
    # strided split of one padded permutation: interleaving the ranks gives it back
    interleaved = [idx for group in zip(*unpadded, strict=True) for idx in group]
    assert len(interleaved) == per_rank * world
    assert set(interleaved) == set(range(n))
    assert interleaved[:n] == sorted(interleaved[:n], key=interleaved.index) and len(set(interleaved[:n])) == n
    assert interleaved[n:] == interleaved[: per_rank * world - n]  # padding to a multiple of world wraps
    # disjoint apart from the padding
    if n % world == 0:
        assert not set(unpadded[0]) & set(unpadded[1])


def test_world_from_arguments_validated():
    with pytest.raises(ValueError):
        MultiScaleBatchSampler.fixed(10, rank=2, world_size=2)
    assert MultiScaleBatchSampler.fixed(10).world_size == 1  # not initialized: single process


@pytest.mark.parametrize("stop", [0, 1, 5, 11])
def test_resume_mid_epoch(stop):
    ref = MultiScaleBatchSampler.variable_batch(2000, base_batch_size=32, seed=5)
    ref.set_epoch(3)
    full = list(ref)
    assert stop < len(full)

    run = MultiScaleBatchSampler.variable_batch(2000, base_batch_size=32, seed=5)
    run.set_epoch(3)
    state = None
    for i, _ in enumerate(run):
        if i + 1 == stop:
            state = run.state_dict()
            break
    state = state or run.state_dict(batches_done=0)
    assert state["batches_done"] == stop

    resumed = MultiScaleBatchSampler.variable_batch(2000, base_batch_size=32, seed=0)  # seed comes from the state
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # the training loop calls it again: the position is kept
    assert len(resumed) == len(full) - stop
    assert list(resumed) == full[stop:]
    assert list(resumed) == full  # the next pass over the same epoch is whole
    resumed.set_epoch(4)
    ref.set_epoch(4)
    assert list(resumed) == list(ref)


def test_load_state_dict_checks():
    s = MultiScaleBatchSampler.fixed(100, batch_size=10)
    with pytest.raises(ValueError, match="world_size"):
        s.load_state_dict({"epoch": 0, "seed": 0, "batches_done": 1, "world_size": 2})
    with pytest.raises(ValueError, match="outside"):
        s.load_state_dict({"epoch": 0, "seed": 0, "batches_done": 11, "world_size": 1})


class _Images(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return Image.new("RGB", (40 + i, 30 + 2 * i), (i * 10, 0, 0)), i


def test_dataloader_produces_drawn_sizes():
    shapes = [BatchShape(32, 32, 4), BatchShape(64, 48, 2), BatchShape(96, 96, 1)]
    sampler = MultiScaleBatchSampler(12, shapes, seed=0)
    loader = DataLoader(MultiScaleDataset(_Images()), batch_sampler=sampler, num_workers=0)
    drawn = [(b[0].height, b[0].width, len(b)) for b in sampler]
    got = [(images.shape, labels.tolist()) for images, labels in loader]
    assert len(got) == len(drawn) == len(loader)
    for (h, w, bs), (shape, _) in zip(drawn, got, strict=True):
        assert shape == (bs, 3, h, w)
    assert set(itertools.chain.from_iterable(lbl for _, lbl in got)) == set(range(12))
    images, _ = next(iter(loader))
    assert images.dtype == torch.float32 and images.min() >= 0.0 and images.max() <= 1.0
    assert MultiScaleDataset(_Images(), default_size=(16, 24))[3][0].shape == (3, 16, 24)


def _augmented_loader(workers: int, sampler: MultiScaleBatchSampler) -> DataLoader:
    """A random-resized crop + flip + RandAugment + random erasing pipeline, as the training loop builds it."""
    from mobilevit.data.augment import TrainTransformFactory
    from mobilevit.train.config import AugmentConfig

    aug = AugmentConfig(randaugment=True, randaugment_magnitude_std=0.5, random_erase=0.5)
    dataset = MultiScaleDataset(_Images(), TrainTransformFactory(aug))
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, generator=torch.Generator())


def test_augmentation_depends_on_position_only():
    """A resumed epoch in worker processes gives the tensors of an uninterrupted single-process pass, bit for bit:
    each sample's draws come from its key's seed, not from the worker it lands on or the global generators.
    """
    shapes = [BatchShape(32, 32, 2), BatchShape(48, 32, 3)]
    ref = MultiScaleBatchSampler(12, shapes, seed=4)
    ref.set_epoch(1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    full = [images for images, _ in _augmented_loader(0, ref)]
    assert torch.equal(torch.get_rng_state(), before)  # transformed in this process, its generator restored
    assert not torch.equal(full[0][0], full[0][1])  # the pipeline is random

    state = {**ref.state_dict(batches_done=0), "batches_done": 2}
    resumed = MultiScaleBatchSampler(12, shapes)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    torch.manual_seed(1)  # another global state and other worker seeds
    before = torch.get_rng_state()
    tail = [images for images, _ in _augmented_loader(2, resumed)]
    assert len(tail) == len(full) - 2
    for a, b in zip(full[2:], tail, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), before)  # the main process' generator was not drawn from


def test_sample_seeds_are_per_position_epoch_and_rank():
    def seeds(epoch, rank=0, world=1):
        s = MultiScaleBatchSampler.fixed(10, 32, 4, seed=0, rank=rank, world_size=world)
        s.set_epoch(epoch)
        return [key.seed for batch in s for key in batch]

    first = seeds(0)
    assert len(first) == len(set(first)) == 12  # distinct even where the last batch wraps to the same index
    assert seeds(0) == first and seeds(1) != first
    assert seeds(0, 0, 2) != seeds(0, 1, 2)  # ranks augment their (padding-)shared indices differently
