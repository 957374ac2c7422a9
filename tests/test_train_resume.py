"""Exact resume with DataLoader workers and a SIGKILL between checkpoints (the README's "exact resume" promise).

A ``mobilevit train`` subprocess with ``data.num_workers=2`` and every random part of the recipe switched on
(random-resized crop, flip, RandAugment with a random magnitude, random erasing, mixup / cutmix, dropout, drop path)
SIGKILLs itself in the middle of a step between two checkpoints, twice (epoch 0 and epoch 1); each resume replays
the steps after the last checkpoint. Per-step losses and the final weights must equal an uninterrupted run's bit for
bit. The data are small synthetic JPEGs made in ``tmp_path``; one thread per process; no network.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilevit.train import checkpoint as ckpt
from mobilevit.train.loop import train
from test_train import config, make_folder

COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]

# SIGKILL this process inside optimizer step KILL_AT (after the weights moved, before its checkpoint or log line)
_RUNNER = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from mobilevit.cli import main
from mobilevit.train.optim import WarmupCosineSchedule
kill_at = int(sys.argv[1])
if kill_at:
    real = WarmupCosineSchedule.step
    def step(self):
        real(self)
        if self.step_count == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    WarmupCosineSchedule.step = step
sys.exit(main(sys.argv[2:]))
"""


def _make_jpegs(root: Path, per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for c, color in enumerate(COLORS):
        folder = root / "train" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            a = rng.integers(0, 80, (72, 80, 3)).astype(np.uint8)
            x, y = rng.integers(0, 30, 2)
            a[y : y + 40, x : x + 40] = color
            Image.fromarray(a).save(folder / f"{i}.jpg", quality=90)
    return root


def _run(kill_at: int, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        "train",
        "--recipe",
        "mobilevit_xxs",
        "--data",
        str(data),
        "--output",
        str(out),
        "--num-classes",
        "3",
        "--no-progress",
        "epochs=2",
        "sampler.kind=fixed",
        "sampler.base_size=64",
        "sampler.batch_size=4",
        "data.num_workers=2",
        "schedule.warmup_iters=0",
        "optimizer.lr=0.002",
        "augment.randaugment=true",
        "augment.randaugment_magnitude_std=0.5",
        "augment.random_erase=0.5",
        "augment.mixup_alpha=0.2",
        "augment.cutmix_alpha=1.0",
        "model.drop_path_rate=0.1",
        "checkpoint_every=4",
        "log_every=1",
        "seed=3",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [sys.executable, "-c", _RUNNER, str(kill_at), *args], env=env, capture_output=True, text=True, timeout=300
    )


def _losses(out: Path) -> list[tuple[int, float]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["event"] == "step"]


@pytest.mark.slow  # default-suite budget: `make test-slow` runs it
def test_sigkill_between_checkpoints_with_workers_resumes_exactly(tmp_path: Path) -> None:
    data = _make_jpegs(tmp_path / "data")  # 24 images, batch 4: 6 steps per epoch, 12 in all
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    done = _run(0, data, ref)
    assert done.returncode == 0, done.stderr[-3000:]

    # checkpoints at steps 4, 6 (epoch end), 8, 12; kill in step 5 (epoch 0), then in step 11 (epoch 1)
    for kill_at, saved_step in ((5, 4), (11, 8)):
        resume = ["--resume"] if (killed / ckpt.LAST).exists() else []
        crashed = _run(kill_at, data, killed, *resume)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
        state = ckpt.load_checkpoint(killed / ckpt.LAST)
        assert state["step"] == saved_step and 0 < state["sampler"]["batches_done"] < 6  # mid-epoch, steps lost
    done = _run(0, data, killed, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]

    expected = _losses(ref)
    assert [s for s, _ in expected] == list(range(1, 13))
    assert _losses(killed) == expected  # bit-equal floats, each step once
    a, b = ckpt.load_checkpoint(ref / ckpt.LAST), ckpt.load_checkpoint(killed / ckpt.LAST)
    assert a["step"] == b["step"] == 12
    for key in ("model", "ema", "optimizer"):
        flat_a, flat_b = _tensors(a[key]), _tensors(b[key])
        assert flat_a.keys() == flat_b.keys()
        for name, value in flat_a.items():
            assert torch.equal(value, flat_b[name]), f"{key}.{name}"


def _tensors(tree: object, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    else:
        return {prefix: torch.tensor(tree)} if isinstance(tree, int | float) else {}
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        out.update(_tensors(v, f"{prefix}.{k}"))
    return out


def test_random_draws_outside_the_loop_do_not_change_training(tmp_path: Path) -> None:
    """Mixup / cutmix, dropout and drop path draw from generators reseeded per micro-batch from (seed, step): a
    caller's progress callback that draws from the global generators leaves the run unchanged.
    """
    torch.set_num_threads(1)
    data = tmp_path / "data"
    make_folder(data / "train", per_class=4)
    make_folder(data / "val", per_class=1, seed=1)
    extra = ("max_iters=3", "augment.mixup_alpha=0.2", "augment.cutmix_alpha=1.0", "model.drop_path_rate=0.1")
    train(config(data, tmp_path / "quiet", *extra))

    def noisy(_: dict) -> None:
        torch.rand(3)
        np.random.rand(3)

    train(config(data, tmp_path / "noisy", *extra), progress=noisy)
    a, b = ckpt.load_checkpoint(tmp_path / "quiet" / ckpt.LAST), ckpt.load_checkpoint(tmp_path / "noisy" / ckpt.LAST)
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
