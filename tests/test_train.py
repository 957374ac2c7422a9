"""Training loop: learning, atomic checkpoints + SIGKILL/resume, NaN stop, corrupt images, torchrun.

All runs use a tiny synthetic ImageFolder (3 classes of coloured squares, 64x64) and mobilevit_xxs at 64x64, one
thread per process; no network.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilevit.predict import Predictor
from mobilevit.train import checkpoint as ckpt
from mobilevit.train.config import TrainConfig, apply_overrides
from mobilevit.train.loop import NonFiniteLossError, train

COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]
COMMON = [
    "model.name=mobilevit_xxs",
    "model.num_classes=3",
    "sampler.kind=fixed",
    "sampler.base_size=64",
    "sampler.batch_size=8",
    "data.num_workers=0",
    "data.val_resize=64",
    "data.val_crop=64",
    "schedule.warmup_iters=0",
    "optimizer.lr=0.002",
    "log_every=1",
]


def make_folder(root: Path, per_class: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c, color in enumerate(COLORS):
        d = root / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 60, (64, 64, 3)).astype(np.uint8)
            x, y = rng.integers(0, 24, 2)
            a[y : y + 40, x : x + 40] = color
            Image.fromarray(a).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_folder(root / "train")
    make_folder(root / "val", per_class=3, seed=1)
    return root


def config(data: Path, out: Path, *extra: str) -> TrainConfig:
    return apply_overrides(
        TrainConfig(),
        [*COMMON, f"data.train={data / 'train'}", f"data.val={data / 'val'}", f"output_dir={out}", *extra],
    )


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_short_run_learns_and_writes(data: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    result = train(config(data, tmp_path / "run", "epochs=4", "checkpoint_every=2"))
    log = records(tmp_path / "run")
    epochs = [r for r in log if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert all(r["val_top1"] is not None and r["val_top1_ema"] is not None for r in epochs)
    assert {"loss", "lr", "images_per_s"} <= set(next(r for r in log if r["event"] == "step"))
    assert log[-1]["event"] == "summary" and result.step == 12
    state = ckpt.load_checkpoint(tmp_path / "run" / ckpt.LAST)
    assert state["step"] == 12 and state["epoch"] == 4 and state["ema"] is not None
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    with pytest.raises(FileExistsError):  # never overwrite a run without --resume
        train(config(data, tmp_path / "run", "epochs=4"))


_RUNNER = """
import sys, time
import torch
torch.set_num_threads(1)
from mobilevit.cli import main
if sys.argv[1] == "stall":  # sleep after the 3rd checkpoint (step 4), so the parent can SIGKILL mid-epoch
    import mobilevit.train.checkpoint as ckpt
    real, calls = ckpt.save_checkpoint, []
    def slow(state, path):
        out = real(state, path)
        calls.append(1)
        if len(calls) == 3:
            time.sleep(120)
        return out
    ckpt.save_checkpoint = slow
sys.exit(main(sys.argv[2:]))
"""


def _cli(data: Path, out: Path, *extra: str) -> list[str]:
    return [
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
        *COMMON,
        "epochs=2",
        "checkpoint_every=2",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def test_sigkill_then_resume_matches_uninterrupted(data: Path, tmp_path: Path) -> None:
    """Kill after the step-4 checkpoint (epoch 1 of 2, mid-epoch), resume, compare with a run never interrupted.

    Tolerance: exact equality. The resumed process loads bit-identical weights, optimizer moments, schedule step,
    sampler position and RNG states, and CPU kernels with one thread are deterministic, so the math is the same.
    """
    runner = [sys.executable, "-c", _RUNNER]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([*runner, "plain", *_cli(data, ref)], check=True, env=_env(), capture_output=True)
    proc = subprocess.Popen([*runner, "stall", *_cli(data, killed)], env=_env(), stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        last = killed / ckpt.LAST
        if last.is_file() and ckpt.load_checkpoint(last)["step"] == 4:
            break
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.1)
    else:
        pytest.fail("no step-4 checkpoint within 60 s")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    mid = ckpt.load_checkpoint(killed / ckpt.LAST)
    assert mid["epoch"] == 1 and mid["sampler"]["batches_done"] == 1  # mid-epoch
    assert not (killed / "final").exists()
    subprocess.run([*runner, "plain", *_cli(data, killed), "--resume"], check=True, env=_env(), capture_output=True)
    a, b = ckpt.load_checkpoint(ref / ckpt.LAST), ckpt.load_checkpoint(killed / ckpt.LAST)
    assert a["step"] == b["step"] == 6 and a["epoch"] == b["epoch"] == 2
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"
    ref_losses = [r["loss"] for r in records(ref) if r["event"] == "step"]
    res_losses = [r["loss"] for r in records(killed) if r["event"] == "step"]
    assert ref_losses == res_losses  # the log continues the curve, no duplicate steps from the killed run


def test_nan_loss_stops_and_keeps_last_checkpoint(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    import mobilevit.train.losses as losses

    real = losses.build_loss

    def poisoned(cfg: TrainConfig) -> torch.nn.Module:
        inner, calls = real(cfg), []

        def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            value = inner(logits, targets)
            return value * float("nan") if len(calls) == 3 else value

        return loss  # type: ignore[return-value]

    monkeypatch.setitem(losses.LOSSES, "cross_entropy", poisoned)  # the loss a classifier's task names
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"NaN or infinite at step 3.*last\.pt \(step 2\)"):
        train(config(data, out, "epochs=2", "checkpoint_every=2"))
    state = ckpt.load_checkpoint(out / ckpt.LAST)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_corrupt_image_is_skipped_and_counted(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    root = make_folder(tmp_path / "data" / "train", per_class=4)
    (root / "c0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "c1" / "cut.png").write_bytes((root / "c1" / "0.png").read_bytes()[:100])
    cfg = apply_overrides(
        TrainConfig(),
        [
            *COMMON,
            f"data.train={root}",
            f"output_dir={tmp_path / 'out'}",
            "epochs=1",
            "ema.enabled=false",
            "sampler.batch_size=7",
        ],
    )
    result = train(cfg)
    epoch = next(r for r in records(tmp_path / "out") if r["event"] == "epoch")
    assert epoch["skipped"] == 2 and result.skipped == 2
    assert epoch["images"] == 12  # 14 files in two batches of 7, 2 corrupt


def test_torchrun_two_cpu_processes(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "mobilevit.cli",
        *_cli(data, out)[:-2],
        "epochs=1",
        "sampler.batch_size=4",
        "checkpoint_every=100",
    ]
    env = {**_env(), "MASTER_ADDR": "127.0.0.1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done:") == 1  # only rank 0 reports
    log = records(out)
    epoch = next(r for r in log if r["event"] == "epoch")
    # 24 images, 12 per rank in 3 batches of 4: the epoch record sums both ranks
    assert epoch["world_size"] == 2 and epoch["images"] == 24 and epoch["val_top1"] is not None
    # the val top-1 of the two ranks' shards is the saved model's over the whole val folder (same BatchNorm statistics)
    files = sorted((data / "val").glob("c*/*.png"))
    answers = Predictor.from_pretrained(out / "final").predict([str(f) for f in files], top_k=1)
    correct = sum(a[0].label == f.parent.name for a, f in zip(answers, files, strict=True))
    assert epoch["val_top1"] == pytest.approx(correct / len(files))
    assert sum(r["event"] == "summary" for r in log) == 1
    assert ckpt.load_checkpoint(out / ckpt.LAST)["step"] == 3


def test_paper_augmentations_run(data: Path, tmp_path: Path) -> None:
    """RandAugment, random erasing and mixup/cutmix (soft targets) from the recipe reach the loop and train."""
    torch.set_num_threads(1)
    extra = ["epochs=1", "augment.randaugment=true", "augment.random_erase=0.25"]
    extra += ["augment.mixup_alpha=0.8", "augment.cutmix_alpha=1.0", "augment.label_smoothing=0.1"]
    result = train(config(data, tmp_path / "aug", *extra))
    epochs = [r for r in records(tmp_path / "aug") if r["event"] == "epoch"]
    assert result.step > 0 and len(epochs) == 1 and np.isfinite(epochs[0]["train_loss"])
    # soft targets are counted as images, not as class entries
    assert epochs[0]["images"] == 3 * 8


def test_val_preprocess_is_the_weights_entry_unless_the_config_sets_it() -> None:
    """The validation transform (recorded in final/) is the weights entry's; data.val_* replace only what they set."""
    import dataclasses

    import mobilevit
    from mobilevit.train.build import val_preprocess
    from mobilevit.train.config import DataConfig
    from mobilevit.weights.entries import get_weights

    model = mobilevit.create_model("fastvit_t8", num_classes=3)
    entry = get_weights("fastvit_t8").preprocess  # ImageNet mean/std, 256 crop of a 284 resize, bicubic
    unset = DataConfig()  # no val_* set: the weights entry's transform
    assert val_preprocess(model, unset) == entry
    crop_only = val_preprocess(model, dataclasses.replace(unset, val_crop=128))
    assert crop_only.input_size == (128, 128) and crop_only.interpolation == entry.interpolation
    assert abs(crop_only.resize_size - 128 * entry.resize_size / min(entry.input_size)) <= 0.5  # the entry's ratio
    every = val_preprocess(model, DataConfig(val_resize=72, val_crop=64, val_interpolation="bilinear"))
    assert (every.input_size, every.resize_size, every.interpolation) == ((64, 64), 72, "bilinear")
    assert (every.mean, every.std, every.channel_order) == (entry.mean, entry.std, entry.channel_order)
