"""Training features: distillation with a teacher in the loop, SGD, layer-wise lr decay, weight-decay
annealing, metrics.csv / TensorBoard.

Runs use the tiny synthetic ImageFolder of tests/test_train.py (3 classes, 64x64) with mobilevit_xxs as the student,
one thread; no network.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import mobilevit
from mobilevit.train import checkpoint as ckpt
from mobilevit.train import loop
from mobilevit.train import losses as train_losses
from mobilevit.train.config import OptimizerConfig, ScheduleConfig
from mobilevit.train.loop import train
from mobilevit.train.losses import ClassificationLoss, DistillationLoss
from mobilevit.train.optim import ModelEMA, WarmupCosineSchedule, build_optimizer, no_weight_decay, param_groups
from test_train import config, make_folder, records

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_folder(root / "train")
    make_folder(root / "val", per_class=3, seed=1)
    return root


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class MobileOne-S0 teacher (random weights, ImageNet mean/std preprocessing) saved as a folder."""
    torch.manual_seed(123)
    model = mobilevit.create_model("mobileone_s0", num_classes=3)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode differs from train mode
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return mobilevit.save_pretrained(model, tmp_path_factory.mktemp("teacher") / "mobileone_s0_toy")


# ---------------------------------------------------------------------------------------------------------------------
# distillation


class _Spy:
    """Patches the loop's model, teacher and criterion builders to record what the loop computes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.student_io: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.criterion_args: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.teacher: nn.Module | None = None
        real_model, real_teacher, real_criterion = loop.build_model, loop.build_teacher, train_losses.build_loss

        def build_model(cfg):
            model = real_model(cfg)

            def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                if module.training:
                    self.student_io.append((args[0].detach().clone(), output.detach().clone()))

            model.register_forward_hook(hook)
            return model

        def build_teacher(cfg, num_classes):
            self.teacher, pre = real_teacher(cfg, num_classes)
            return self.teacher, pre

        def build_criterion(cfg):
            inner = real_criterion(cfg)

            def criterion(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
                self.criterion_args.append((logits.detach().clone(), targets.clone(), teacher_logits.clone()))
                return inner(logits, targets, teacher_logits)

            return criterion

        monkeypatch.setattr(loop, "build_model", build_model)
        monkeypatch.setattr(loop, "build_teacher", build_teacher)
        monkeypatch.setitem(train_losses.LOSSES, "cross_entropy", build_criterion)  # the loss a classifier's task names


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_distillation_loss_and_frozen_teacher(
    data: Path, teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Each step's loss is losses.DistillationLoss of the student's logits and of teacher logits recomputed here from
    the student's (mixed) input with the teacher's own normalization; the teacher never changes."""
    torch.set_num_threads(1)
    spy = _Spy(monkeypatch)
    alpha, tau = 0.3, 2.0
    out = tmp_path / "distill"
    extra = [f"distill.teacher={teacher_dir}", f"distill.kind={kind}", f"distill.alpha={alpha}", f"distill.tau={tau}"]
    extra += ["augment.mixup_alpha=0.8", "augment.cutmix_alpha=1.0", "augment.label_smoothing=0.1", "epochs=1"]
    train(config(data, out, *extra))

    reference = mobilevit.create_model(teacher_dir).eval()  # loaded independently of the loop
    teacher = spy.teacher
    assert teacher is not None and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    state = teacher.state_dict()
    for name, value in reference.state_dict().items():  # weights and BatchNorm statistics untouched
        assert torch.equal(state[name], value), name

    losses = [r["loss"] for r in records(out) if r["event"] == "step"]
    assert len(losses) == len(spy.student_io) == len(spy.criterion_args) == 3
    expected_fn = DistillationLoss(ClassificationLoss(0.1), kind, alpha, tau)
    mixed = 0
    for (inputs, student_logits), (logits, targets, loop_teacher_logits), logged in zip(
        spy.student_io, spy.criterion_args, losses, strict=True
    ):
        # mobilevit_xxs (random weights) reads [0, 1] RGB, so the student's input is the mixed batch itself
        with torch.no_grad():
            teacher_logits = reference((inputs - IMAGENET_MEAN) / IMAGENET_STD)
        torch.testing.assert_close(logits, student_logits.float())
        torch.testing.assert_close(loop_teacher_logits, teacher_logits, rtol=1e-4, atol=1e-5)
        assert targets.shape == (inputs.shape[0], 3)  # soft targets: mixup/cutmix was on
        mixed += int(not torch.all((targets.max(-1).values - 0.9333).abs() < 1e-3))
        expected = float(expected_fn(student_logits.float(), targets, teacher_logits))
        assert logged == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert mixed > 0  # at least one batch really mixed two labels (the teacher saw mixed images)


def test_resume_with_teacher_continues_exactly(data: Path, teacher_dir: Path, tmp_path: Path) -> None:
    """Stop after 4 of 6 steps (mid-epoch), resume with the teacher rebuilt: same weights as one uninterrupted run.

    Constant learning rate (min_lr = lr) so that the first, shorter run's schedule is the same as the long one's.
    """
    torch.set_num_threads(1)
    extra = [f"distill.teacher={teacher_dir}", "distill.kind=soft", "epochs=2", "schedule.min_lr=0.002"]
    extra += ["checkpoint_every=100", "augment.mixup_alpha=0.2"]
    whole = train(config(data, tmp_path / "whole", *extra))
    part = train(config(data, tmp_path / "part", *extra, "max_iters=4"))
    assert part.step == 4 and ckpt.load_checkpoint(tmp_path / "part" / ckpt.LAST)["sampler"]["batches_done"] == 1
    resumed = train(config(data, tmp_path / "part", *extra), resume=True)
    assert whole.step == resumed.step == 6
    a, b = ckpt.load_checkpoint(tmp_path / "whole" / ckpt.LAST), ckpt.load_checkpoint(tmp_path / "part" / ckpt.LAST)
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"
    assert "teacher" not in str(list(a["model"]))  # the teacher is rebuilt from its source, not checkpointed
    # metrics.csv after the resume: the kept epoch records of metrics.jsonl, no duplicate row from the first run
    assert_csv_matches_jsonl(tmp_path / "part")
    assert [r["epoch"] for r in _csv_rows(tmp_path / "part")] == ["0", "1", "1"]  # 1 is partial, then complete


def test_teacher_errors(teacher_dir: Path) -> None:
    from mobilevit.train.config import DistillConfig

    with pytest.raises(ValueError, match=r"3 outputs but the student has model.num_classes=10"):
        loop.build_teacher(DistillConfig(teacher=str(teacher_dir)), 10)
    with pytest.raises(ValueError, match=r"no such file, weights name or architecture"):
        loop.build_teacher(DistillConfig(teacher="no_such_teacher"), 3)
    with pytest.raises(ValueError, match=r"teacher_arch is for a checkpoint file"):
        loop.build_teacher(DistillConfig(teacher="mobileone_s0.apple_in1k", teacher_arch="mobileone_s0"), 1000)


# ---------------------------------------------------------------------------------------------------------------------
# optimizer: SGD, layer-wise lr decay, weight-decay annealing

# layers counted from the architectures: stem, each stage, the final conv (MobileViT, FastViT), the head
NUM_LAYERS = {"mobilevit_xxs": 1 + 5 + 1 + 1, "fastvit_t8": 1 + 4 + 1 + 1, "mobileone_s0": 1 + 4 + 1}


def _expected_layer(name: str, num_layers: int) -> int:
    if name.startswith("stem."):
        return 0
    if name.startswith("stages."):
        return 1 + int(name.split(".")[1])
    if name.startswith("final_conv."):
        return num_layers - 2
    assert name.startswith("head."), name
    return num_layers - 1


@pytest.mark.parametrize("arch", list(NUM_LAYERS))
def test_layer_decay_groups(arch: str) -> None:
    model = mobilevit.create_model(arch, num_classes=5)
    decay, lr, wd = 0.75, 0.01, 0.05
    cfg = OptimizerConfig(name="sgd", lr=lr, momentum=0.9, nesterov=True, weight_decay=wd, layer_decay=decay)
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.SGD)
    WarmupCosineSchedule(optimizer, lr, 100, 0, ScheduleConfig(min_lr=0.0))
    seen: dict[int, dict] = {}
    for group in optimizer.param_groups:
        assert group["momentum"] == 0.9 and group["nesterov"] is True
        for p in group["params"]:
            assert id(p) not in seen, "a parameter is in two groups"
            seen[id(p)] = group
    names = dict(model.named_parameters())
    assert set(seen) == {id(p) for p in names.values()}  # every parameter exactly once
    skip = no_weight_decay(model)
    num_layers = NUM_LAYERS[arch]
    scales = set()
    for name, p in names.items():
        group = seen[id(p)]
        scale = decay ** (num_layers - 1 - _expected_layer(name, num_layers))
        assert group["lr"] == pytest.approx(lr * scale), name
        assert group["weight_decay"] == (0.0 if name in skip or name.endswith(".bias") else wd), name
        scales.add(round(scale, 12))
    assert max(scales) == 1.0 and min(scales) == pytest.approx(decay ** (num_layers - 1))  # head lr, stem smallest
    assert len(scales) == num_layers


def test_layer_decay_with_frozen_backbone_and_bad_value() -> None:
    model = mobilevit.create_model("mobileone_s0", num_classes=2)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.get_classifier().parameters():
        p.requires_grad_(True)
    groups = param_groups(model, 0.05, True, 0.5)
    assert {g["lr_scale"] for g in groups} == {1.0} and sum(len(g["params"]) for g in groups) == 2
    with pytest.raises(ValueError, match=r"layer_decay must be in \(0, 1\]"):
        param_groups(model, 0.05, True, 1.5)
    with pytest.raises(ValueError, match=r"needs a model with stem, stages and head"):
        param_groups(nn.Sequential(nn.Linear(2, 2)), 0.05, True, 0.5)


def test_weight_decay_annealing_and_sgd_step() -> None:
    """MobileOne: weight decay follows the cosine from 1e-4 to 1e-5; norms and biases stay at 0. One SGD step with
    momentum and decoupled-from-nothing (L2) decay matches the textbook update on a plain weight."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    cfg = OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)
    optimizer = build_optimizer(model, cfg)
    schedule = WarmupCosineSchedule(optimizer, 0.1, 10, 0, ScheduleConfig(min_lr=0.0, min_weight_decay=1e-5))
    decayed = next(g for g in optimizer.param_groups if g["initial_weight_decay"] > 0)
    undecayed = next(g for g in optimizer.param_groups if g["initial_weight_decay"] == 0)
    assert decayed["weight_decay"] == pytest.approx(1e-4) and undecayed["weight_decay"] == 0.0
    weight = model[0].weight
    before = weight.detach().clone()
    weight.grad = torch.ones_like(weight)
    optimizer.step()  # first momentum step: v = g + wd * w, w -= lr * v
    torch.testing.assert_close(weight.detach(), before - 0.1 * (1.0 + 1e-4 * before))
    for _ in range(5):
        schedule.step()
    # halfway through the cosine: the mean of the two ends
    assert decayed["weight_decay"] == pytest.approx((1e-4 + 1e-5) / 2) and decayed["lr"] == pytest.approx(0.05)
    for _ in range(5):
        schedule.step()
    assert decayed["weight_decay"] == pytest.approx(1e-5) and undecayed["weight_decay"] == 0.0


def test_nesterov_needs_momentum() -> None:
    with pytest.raises(ValueError, match=r"nesterov needs optimizer\.momentum > 0"):
        build_optimizer(nn.Linear(2, 2), OptimizerConfig(name="sgd", momentum=0.0, nesterov=True))


# ---------------------------------------------------------------------------------------------------------------------
# metrics.csv and TensorBoard


def _csv_rows(out: Path) -> list[dict[str, str]]:
    with (out / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def assert_csv_matches_jsonl(out: Path) -> None:
    epochs = [r for r in records(out) if r["event"] == "epoch"]
    with (out / "metrics.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert set(header) == set(epochs[0]) - {"event"}  # every field of an epoch record is a column
    rows = _csv_rows(out)
    assert len(rows) == len(epochs)
    for row, record in zip(rows, epochs, strict=True):
        for key in header:
            value = record[key]
            if value is None:
                assert row[key] == "", key
            elif isinstance(value, bool):
                assert row[key] == str(value), key
            else:
                assert math.isclose(float(row[key]), value, rel_tol=1e-12), key


def test_csv_matches_jsonl_and_tensorboard(data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "csv"
    with caplog.at_level(logging.INFO, logger="mobilevit.train.loop"):
        train(config(data, out, "epochs=2", "logging.tensorboard=true", "ema.enabled=false"))
    assert_csv_matches_jsonl(out)
    rows = _csv_rows(out)
    assert [r["epoch"] for r in rows] == ["0", "1"] and rows[0]["val_top1_ema"] == ""  # no EMA: empty cells
    if importlib.util.find_spec("tensorboard") is None:
        assert sum("tensorboard package is not installed" in r.getMessage() for r in caplog.records) == 1
        assert not (out / "tensorboard").exists()
    else:
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # logging.csv=false: no CSV
    train(config(data, tmp_path / "nocsv", "max_iters=1", "logging.csv=false", "ema.enabled=false"))
    assert not (tmp_path / "nocsv" / "metrics.csv").exists()


# --- EMA of the weights ----------------------------------------------------------------------------------------------


def _ema_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))


def test_ema_matches_timm_model_ema_v2():
    """ml-cvnets' momentum 0.0005 is timm's ModelEmaV2 at decay 0.9995: the same parameters after changing weights."""
    timm_utils = pytest.importorskip("timm.utils")
    model = _ema_model()
    ours, theirs = ModelEMA(model, 0.0005), timm_utils.ModelEmaV2(model, decay=0.9995)
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ours.update(model, step)
        theirs.update(model)
    theirs_params = dict(theirs.module.named_parameters())
    for name, p in ours.module.named_parameters():
        torch.testing.assert_close(p, theirs_params[name], rtol=0, atol=1e-6)


def test_ema_warmup_is_tensorflows_num_updates_rule():
    """TensorFlow's ExponentialMovingAverage(decay, num_updates): decay_n = min(decay, (1 + n) / (10 + n)). With the
    model held at w, the average after k updates from a is w + (a - w) * prod_n decay_n."""
    model = _ema_model()
    start = {k: v.clone() for k, v in model.named_parameters()}
    ema = ModelEMA(model, 0.0005, warmup=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for n in range(300):
        ema.update(model, n)
    keep = math.prod(min(0.9995, (1 + n) / (10 + n)) for n in range(300))
    assert keep < 0.04  # the plain 0.9995 average would still hold 86% of the start
    for name, p in ema.module.named_parameters():
        torch.testing.assert_close(p, start[name] + 1.0 - keep, rtol=0, atol=1e-5)
    assert ModelEMA(model, 0.0005, warmup=True).momentum_at(10**6) == 0.0005


def test_backbone_lr_scale_groups() -> None:
    """A detector's backbone at lr * backbone_lr_scale, its new head at lr; weight decay as without the scale."""
    model = mobilevit.create_model("ssdlite_mobileone_s0", num_classes=3)
    lr, wd = 0.01, 0.05
    optimizer = build_optimizer(model, OptimizerConfig(lr=lr, weight_decay=wd, backbone_lr_scale=0.1))
    WarmupCosineSchedule(optimizer, lr, 100, 0, ScheduleConfig(min_lr=0.0))
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(group_of) == len(names) == sum(len(g["params"]) for g in optimizer.param_groups)
    for name, p in names.items():
        group = group_of[id(p)]
        assert group["lr"] == pytest.approx(lr * (0.1 if name.startswith("backbone.") else 1.0)), name
        assert group["weight_decay"] == (0.0 if p.ndim <= 1 else wd), name
    with pytest.raises(ValueError, match=r"backbone_lr_scale must be in \(0, 1\]"):
        param_groups(model, wd, True, None, 0.0)
    with pytest.raises(ValueError, match=r"has no backbone"):
        param_groups(mobilevit.create_model("mobileone_s0", num_classes=2), wd, True, None, 0.1)
