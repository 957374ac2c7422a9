"""Segmentation fine-tuning in the training runner: exact resume, val mIoU checked by torchmetrics, backbones from
classification checkpoints, learning, the CLI recipe, joint augmentation, loss, poly schedule and bad input.

The data is a tiny synthetic PASCAL VOC folder made in ``tmp_path``: noise with a red (class 1) or green (class 2)
rectangle, its mask with a 255 line; validation images are exactly 64x64, so the model's exact resize to 64 leaves
them untouched and the test can preprocess them by hand. Models: ``deeplabv3_mobilevit_xxs`` (random weights) and
``deeplabv3_mobileone_s0`` at 64 px, one thread; no network.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mobilevit
from mobilevit.cli import main
from mobilevit.data.segmentation_transforms import SegmentationTrainTransform
from mobilevit.errors import UsageError
from mobilevit.train import checkpoint as ckpt
from mobilevit.train.build import build_model, new_tensors
from mobilevit.train.config import ModelConfig, ScheduleConfig, TrainConfig, apply_overrides
from mobilevit.train.loop import train
from mobilevit.train.losses import SegmentationLoss
from mobilevit.train.optim import WarmupCosineSchedule

COLORS = {1: (230, 40, 40), 2: (40, 220, 40)}
COMMON = [
    "model.name=deeplabv3_mobilevit_xxs",
    "model.num_classes=3",
    "sampler.kind=fixed",
    "sampler.base_size=64",
    "sampler.batch_size=4",
    "data.num_workers=0",
    "data.val_crop=64",
    "schedule.warmup_iters=0",
    "optimizer.lr=0.002",
    "augment.label_smoothing=0",
    "log_every=1",
    "checkpoint_every=100",
]


def make_voc(root: Path, split: str, count: int, seed: int, square: bool = False) -> None:
    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(count):
        h, w = (64, 64) if square else rng.integers(56, 100, 2)
        image = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        label = 1 + i % 2
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        image[y : y + h // 2, x : x + w // 2] = COLORS[label]
        mask[y : y + h // 2, x : x + w // 2] = label
        mask[y, x : x + w // 2] = 255  # a boundary, as VOC marks them
        name = f"{split}{i}"
        ids.append(name)
        # VOC's <id>.jpg name, PNG-encoded: lossless, so that the test's own preprocessing sees the same pixels
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", format="PNG")
        png = Image.fromarray(mask).convert("P")
        png.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
        png.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    make_voc(root, "train", 8, seed=0)
    make_voc(root, "val", 4, seed=1, square=True)
    return root


def config(voc: Path, out: Path, *extra: str) -> TrainConfig:
    return apply_overrides(
        TrainConfig(), [*COMMON, f"data.train={voc}", f"data.val={voc}", f"output_dir={out}", *extra]
    )


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def reference_scores(folder: Path, voc: Path) -> tuple[float, float]:
    """mIoU and pixel accuracy of the model saved in ``folder`` on the val split, by torchmetrics; the images are
    preprocessed by hand (64x64 already: the model's exact resize keeps them; v1 weights read [0, 1] BGR)."""
    metrics = pytest.importorskip("torchmetrics")
    model = mobilevit.create_model(folder).eval()
    jaccard = metrics.classification.MulticlassJaccardIndex(num_classes=3, average="macro", ignore_index=255)
    accuracy = metrics.classification.MulticlassAccuracy(num_classes=3, average="micro", ignore_index=255)
    for name in (voc / "ImageSets/Segmentation/val.txt").read_text().split():
        rgb = np.asarray(Image.open(voc / "JPEGImages" / f"{name}.jpg").convert("RGB"), dtype=np.float32) / 255
        x = torch.from_numpy(rgb[..., ::-1].copy()).permute(2, 0, 1)[None]  # [1, 3, 64, 64], BGR
        target = torch.from_numpy(np.asarray(Image.open(voc / "SegmentationClass" / f"{name}.png")).astype(np.int64))
        with torch.no_grad():
            logits = F.interpolate(model(x), size=(64, 64), mode="bilinear", align_corners=False)
        jaccard.update(logits.argmax(1), target[None])
        accuracy.update(logits.argmax(1), target[None])
    return float(jaccard.compute()), float(accuracy.compute())


def test_resume_continues_exactly_and_logs_val_miou(voc: Path, tmp_path: Path) -> None:
    """Stop after 3 of 4 steps (mid-epoch), resume: the same weights and EMA as one run; every epoch record holds
    val mIoU and pixel accuracy, equal to torchmetrics on the saved models. Constant lr (min_lr = lr), so the short
    run's schedule is the long one's."""
    extra = ["epochs=2", "schedule.min_lr=0.002", "ema.momentum=0.2"]
    whole = train(config(voc, tmp_path / "whole", *extra))
    part = train(config(voc, tmp_path / "part", *extra, "max_iters=3"))
    assert part.step == 3 and ckpt.load_checkpoint(tmp_path / "part" / ckpt.LAST)["sampler"]["batches_done"] == 1
    resumed = train(config(voc, tmp_path / "part", *extra), resume=True)
    assert whole.step == resumed.step == 4 and resumed.task == "segmentation"
    a, b = ckpt.load_checkpoint(tmp_path / "whole" / ckpt.LAST), ckpt.load_checkpoint(tmp_path / "part" / ckpt.LAST)
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"
    epochs = [r for r in records(tmp_path / "whole") if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert all(0.0 <= r["val_miou"] <= 1.0 and len(r["val_class_iou"]) == 3 for r in epochs)
    miou, accuracy = reference_scores(tmp_path / "whole" / "final", voc)
    assert epochs[-1]["val_miou"] == pytest.approx(miou, abs=1e-6) and whole.val_miou == epochs[-1]["val_miou"]
    assert epochs[-1]["val_pixel_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    ema_miou, _ = reference_scores(tmp_path / "whole" / "final_ema", voc)
    assert epochs[-1]["val_miou_ema"] == pytest.approx(ema_miou, abs=1e-6)
    header = (tmp_path / "whole" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_miou", "val_miou_ema", "val_pixel_accuracy"} <= set(header) and "val_top1" not in header


def test_learns_a_trivial_set(voc: Path, tmp_path: Path) -> None:
    """Colour decides the class: over 24 steps the loss falls to well under two thirds (about 0.45 for seeds 0-2)."""
    extra = ["epochs=12", "ema.enabled=false", "schedule.name=poly", "optimizer.lr=0.005", "data.val=none"]
    train(config(voc, tmp_path / "run", *extra, "model.classifier_init_std=0.01"))
    losses = [r["loss"] for r in records(tmp_path / "run") if r["event"] == "step"]
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4])


def test_classification_checkpoint_fills_the_backbone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A timm MobileOne-S0 classifier (random, BatchNorm statistics randomized) saved as a file: the DeepLabV3
    backbone holds its tensors, the head is new and named, and the backbone computes timm's features at stride 16."""
    timm = pytest.importorskip("timm")
    from conftest import randomize_batchnorm

    reference = randomize_batchnorm(timm.create_model("mobileone_s0")).eval()
    path = tmp_path / "s0.pth"
    torch.save(reference.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="mobilevit.train.build"):
        model = build_model(ModelConfig(name="deeplabv3_mobileone_s0", num_classes=3, pretrained=str(path)))
    state = model.state_dict()
    expected = reference.state_dict()
    backbone_keys = [k for k in expected if not k.startswith("head.")]
    for key in backbone_keys:
        assert torch.equal(state[f"backbone.{key}"], expected[key]), key
    assert len([k for k in state if k.startswith("backbone.")]) == len(backbone_keys)
    new = new_tensors(model, str(path))
    assert new == [k for k in state if not k.startswith("backbone.")] and "head.classifier.weight" in new
    assert state["head.classifier.weight"].shape[0] == 3
    assert "head.classifier" in caplog.text and "start new" in caplog.text
    features = timm.create_model("mobileone_s0", features_only=True, output_stride=16, out_indices=(4,))
    backbone_state = {k.replace("stages.", "stages_", 1): v for k, v in reference.state_dict().items()}
    features.load_state_dict({k: v for k, v in backbone_state.items() if not k.startswith("head.")})
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ours, theirs = model.eval().backbone(x)[-1], features.eval()(x)[-1]
    assert ours.shape == theirs.shape == (1, 1024, 4, 6)
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-5  # relative to the largest activation


def test_apple_reparameterized_s0_fills_the_backbone(shared: Path) -> None:
    """Apple's real folded S0 file: each of its 86 backbone tensors is in the backbone under our name (stage0 ->
    stem, stageN -> stages.N-1), its classifier is dropped and the DeepLabV3 head starts new."""
    from safetensors.torch import load_file

    path = shared / "weights" / "mobileone_s0_reparam.safetensors"
    apple = load_file(path)
    model = build_model(ModelConfig(name="deeplabv3_mobileone_s0", num_classes=3, pretrained=str(path)))
    state = model.state_dict()
    for key, value in apple.items():
        if key.startswith("linear."):
            continue
        stage, rest = key.split(".", 1)
        ours = f"backbone.stem.{rest}" if stage == "stage0" else f"backbone.stages.{int(stage[5:]) - 1}.{rest}"
        assert torch.equal(state[ours], value), key
    assert sum(k.startswith("backbone.") for k in state) == len(apple) - 2
    assert all(not k.startswith("backbone.") for k in new_tensors(model, str(path)))


def test_backbone_weights_name_keeps_their_preprocessing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe's ``model.pretrained: mobilevit_xxs.orig_in1k`` (Apple's BGR weights) on deeplabv3_mobilevit_xxs:
    the entry's file fills the backbone and the model is fed BGR, the whole image resized (the file is a local
    stand-in for the download)."""
    import mobilevit.train.build as build

    classifier = mobilevit.create_model("mobilevit_xxs")
    path = tmp_path / "xxs.pth"
    torch.save(classifier.state_dict(), path)
    monkeypatch.setattr(build, "resolve_weights", lambda entry: path)
    model = build_model(
        ModelConfig(name="deeplabv3_mobilevit_xxs", num_classes=3, pretrained="mobilevit_xxs.orig_in1k")
    )
    pre = mobilevit.weights.model_io(model).preprocess
    assert pre.channel_order == "BGR" and pre.resize_mode == "exact" and pre.input_size == (512, 512)
    state = model.state_dict()
    assert torch.equal(state["backbone.stem.conv.weight"], classifier.state_dict()["stem.conv.weight"])
    assert new_tensors(model, "mobilevit_xxs.orig_in1k") == [k for k in state if not k.startswith("backbone.")]


def test_classifier_init_std_draws_the_new_classifier() -> None:
    """``model.classifier_init_std`` draws the new classifier from N(0, std) with zero bias; without it the
    architecture's Kaiming fan-out init stays (std sqrt(2 / 3) for a 1x1 conv to 3 classes). Classifiers refuse it."""
    torch.manual_seed(0)
    drawn = build_model(ModelConfig(name="deeplabv3_mobilevit_xxs", num_classes=3, classifier_init_std=0.01))
    weight, bias = drawn.get_classifier().weight.detach(), drawn.get_classifier().bias.detach()
    assert weight.shape == (3, 256, 1, 1) and float(weight.mean().abs()) < 0.002
    assert 0.009 < float(weight.std()) < 0.011 and bool((bias == 0).all())
    kept = build_model(ModelConfig(name="deeplabv3_mobilevit_xxs", num_classes=3))
    assert 0.7 < float(kept.get_classifier().weight.detach().std()) < 0.95
    with pytest.raises(UsageError, match="must be >= 0"):
        build_model(ModelConfig(name="deeplabv3_mobilevit_xxs", num_classes=3, classifier_init_std=-1.0))
    with pytest.raises(UsageError, match="applies to segmentation models"):
        build_model(ModelConfig(name="mobilevit_xxs", num_classes=3, classifier_init_std=0.01))


def test_cli_trains_a_recipe(voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    code = main(
        ["train", "--recipe", "deeplabv3_mobilevit_xxs", "--data", str(voc), "--output", str(out), "--no-progress",
         "--num-classes", "3", "model.pretrained=none", "sampler.base_size=64", "sampler.batch_size=4",
         "data.val_crop=64", "data.num_workers=0", "max_iters=2", "amp=false", "accumulation_steps=1"]
    )  # fmt: skip
    assert code == 0
    assert "val mIoU" in capsys.readouterr().out
    model = mobilevit.create_model(out / "final")
    assert model.task == "segmentation" and model.num_classes == 3
    epoch = next(r for r in records(out) if r["event"] == "epoch")
    assert epoch["val_miou"] is not None  # the VOC folder's val split was found by --data alone


@pytest.mark.slow  # default-suite budget: `make test-slow` runs it
def test_torchrun_two_processes_score_the_whole_val_split(voc: Path, tmp_path: Path) -> None:
    """Two CPU ranks each see half of the train and val splits: the epoch record counts both ranks' images and its
    val mIoU is torchmetrics' over the whole val split (the ranks' confusion matrices summed), for the model and the
    EMA; only rank 0 writes."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mobilevit.cli", "train", "--recipe", "deeplabv3_mobilevit_xxs", "--data", str(voc),
           "--output", str(out), "--no-progress", "--num-classes", "3", "model.pretrained=none",
           "sampler.base_size=64", "sampler.batch_size=2", "data.val_crop=64", "data.num_workers=0", "epochs=1",
           "amp=false", "accumulation_steps=1", "ema.warmup=true"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done:") == 1  # only rank 0 reports
    epoch = next(r for r in records(out) if r["event"] == "epoch")
    assert epoch["world_size"] == 2 and epoch["images"] == 8  # 8 train images, 2 steps of 2 per rank
    miou, accuracy = reference_scores(out / "final", voc)
    assert epoch["val_miou"] == pytest.approx(miou, abs=1e-6)
    assert epoch["val_pixel_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert epoch["val_miou_ema"] == pytest.approx(reference_scores(out / "final_ema", voc)[0], abs=1e-6)


def test_joint_transform_keeps_image_and_mask_aligned() -> None:
    """Every red pixel of the output is labelled 1 and every green one 2 (nearest mask, same geometry); a shrunken
    image is padded with black pixels labelled 255."""
    image = np.zeros((40, 60, 3), np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    image[:, :30], mask[:, :30] = COLORS[1], 1
    image[:, 30:], mask[:, 30:] = COLORS[2], 2
    for seed in range(6):
        torch.manual_seed(seed)
        x, y = SegmentationTrainTransform(32, (0.5, 2.0))(Image.fromarray(image), mask)
        assert x.shape == (3, 32, 32) and y.shape == (32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        red = (x[0] > 0.8) & (x[1] < 0.25)
        green = (x[1] > 0.8) & (x[0] < 0.25)
        assert bool((y[red] == 1).all()) and bool((y[green] == 2).all())
    torch.manual_seed(0)
    x, y = SegmentationTrainTransform(64, (0.25, 0.25), hflip=0.0)(Image.fromarray(image), mask)
    padded = y == 255
    assert 0 < int(padded.sum()) < 64 * 64 and float(x[:, padded].abs().max()) == 0.0


def test_loss_ignores_255_and_refuses_unknown_labels() -> None:
    logits = torch.randn(1, 3, 2, 2)
    targets = torch.full((1, 4, 4), 255)
    targets[0, 1, 2] = 2
    full = F.interpolate(logits, size=(4, 4), mode="bilinear", align_corners=False)
    expected = -torch.log_softmax(full[0, :, 1, 2], 0)[2]  # the one scored pixel
    torch.testing.assert_close(SegmentationLoss()(logits, targets), expected)
    targets[0, 0, 0] = 7
    with pytest.raises(UsageError, match="mask values 7"):
        SegmentationLoss()(logits, targets)


def test_poly_schedule() -> None:
    """DeepLab's poly: lr = min + (peak - min) * (1 - progress) ** power after the warmup."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = WarmupCosineSchedule(opt, 0.1, 12, 2, ScheduleConfig(name="poly", power=0.9, min_lr=0.0))
    for step in range(12):
        progress = max(0, step - 2) / 10
        expected = 0.1 * step / 2 + 1e-6 * (1 - step / 2) if step < 2 else 0.1 * (1 - progress) ** 0.9
        assert schedule.lr_at(step) == pytest.approx(expected)


def test_bad_segmentation_setups(voc: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="mixup"):
        train(config(voc, tmp_path / "a", "augment.mixup_alpha=0.2"))
    with pytest.raises(UsageError, match="mask values 2"):
        train(config(voc, tmp_path / "b", "model.num_classes=2", "max_iters=1"))
    with pytest.raises(UsageError, match="no split 'test'"):
        train(config(voc, tmp_path / "c", "segmentation.val_split=test"))
    with pytest.raises(UsageError, match="val_resize=72 does not apply"):
        train(config(voc, tmp_path / "e", "data.val_resize=72"))
    bad = tmp_path / "bad"
    make_voc(bad, "train", 2, seed=3)
    for jpg in (bad / "JPEGImages").glob("*.jpg"):
        Image.open(jpg).resize((20, 20)).save(jpg, format="PNG")
    with pytest.raises(UsageError, match="must have its image's size"):
        train(apply_overrides(TrainConfig(), [*COMMON, f"data.train={bad}", f"output_dir={tmp_path / 'd'}"]))


@pytest.mark.parametrize(
    ("name", "head"), [("deeplabv3_mobileone_s0", "head.aspp, head.classifier"), ("mobileone_s0", "head.fc")]
)
def test_training_warns_which_head_starts_random(
    name: str, head: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fine-tuning from a classification checkpoint (3 classes, not its 1000) loads and warns, naming the head modules
    that keep random weights: DeepLabV3's ASPP and classifier, a classifier's fc."""
    path = tmp_path / "mobileone_s0.pth"
    torch.save(mobilevit.create_model("mobileone_s0").state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="mobilevit"):
        build_model(ModelConfig(name=name, num_classes=3, pretrained=str(path)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(head in message and str(path) in message for message in warnings), warnings
