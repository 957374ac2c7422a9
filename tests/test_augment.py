"""Train augmentation (mobilevit.data.augment) and losses (mobilevit.train.losses) against independent references:
torch's label-smoothing cross-entropy, timm's soft-target cross-entropy and mixup targets, hand-computed cases.
"""

from __future__ import annotations

import dataclasses
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from mobilevit.data.augment import (
    MixupCutmix,
    RandAugmentLevel,
    TrainTransformFactory,
    smooth_one_hot,
    train_transform,
)
from mobilevit.data.samplers import MultiScaleBatchSampler, MultiScaleDataset
from mobilevit.train.config import AugmentConfig, DistillConfig, TrainConfig, load_recipe
from mobilevit.train.losses import (
    ClassificationLoss,
    DistillationLoss,
    LabelSmoothingCrossEntropy,
    SoftTargetCrossEntropy,
    build_loss,
)

timm_loss = pytest.importorskip("timm.loss")
timm_mixup = pytest.importorskip("timm.data.mixup")

PLAIN = AugmentConfig()  # RRC bilinear + flip, nothing else (MobileViT v1)


# ---------------------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_ce_matches_torch(smoothing: float) -> None:
    logits = torch.randn(16, 10) * 3
    targets = torch.randint(10, (16,))
    ours = LabelSmoothingCrossEntropy(smoothing)(logits, targets)
    ref = F.cross_entropy(logits, targets, label_smoothing=smoothing)
    torch.testing.assert_close(ours, ref)


def test_soft_target_ce_matches_formula_and_timm() -> None:
    logits = torch.randn(8, 5) * 2
    targets = torch.softmax(torch.randn(8, 5), dim=-1)
    ours = SoftTargetCrossEntropy()(logits, targets)
    by_hand = -(targets * (logits.exp() / logits.exp().sum(-1, keepdim=True)).log()).sum(-1).mean()
    torch.testing.assert_close(ours, by_hand)
    torch.testing.assert_close(ours, timm_loss.SoftTargetCrossEntropy()(logits, targets))


def test_classification_loss_dispatches_on_target_shape() -> None:
    logits = torch.randn(4, 6)
    hard = torch.tensor([0, 5, 2, 2])
    loss = ClassificationLoss(0.1)
    torch.testing.assert_close(loss(logits, hard), F.cross_entropy(logits, hard, label_smoothing=0.1))
    # smoothed one-hot soft targets give the same value as label smoothing on hard targets
    torch.testing.assert_close(loss(logits, smooth_one_hot(hard, 6, 0.1)), loss(logits, hard))


def test_hard_distillation_hand_computed() -> None:
    student = torch.tensor([[0.0, math.log(3.0)]])  # p = [1/4, 3/4]
    teacher = torch.tensor([[5.0, 1.0]])  # argmax 0
    loss = DistillationLoss(ClassificationLoss(0.0), "hard", alpha=0.5)
    expected = 0.5 * -math.log(3 / 4) + 0.5 * -math.log(1 / 4)  # CE(student, y=1), CE(student, teacher argmax 0)
    assert loss(student, torch.tensor([1]), teacher).item() == pytest.approx(expected, rel=1e-6)
    alpha = DistillationLoss(ClassificationLoss(0.0), "hard", alpha=0.25)
    expected = 0.75 * -math.log(3 / 4) + 0.25 * -math.log(1 / 4)
    assert alpha(student, torch.tensor([1]), teacher).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_soft_distillation_hand_computed(tau: float) -> None:
    student = torch.tensor([[0.0, math.log(3.0)]] * 2)
    teacher = torch.tensor([[math.log(3.0), 0.0]] * 2)
    # softmax([0, ln 3] / tau) = [1, 3^(1/tau)] / (1 + 3^(1/tau)); the teacher's is its mirror
    r = 3.0 ** (1.0 / tau)
    p_s, p_t = [1 / (1 + r), r / (1 + r)], [r / (1 + r), 1 / (1 + r)]
    kl = sum(t * math.log(t / s) for s, t in zip(p_s, p_t, strict=True))  # per sample
    base = -math.log(3 / 4)  # CE(student, y=1) at tau 1, no smoothing
    loss = DistillationLoss(ClassificationLoss(0.0), "soft", alpha=0.5, tau=tau)
    targets = torch.tensor([1, 1])
    assert loss(student, targets, teacher).item() == pytest.approx(0.5 * base + 0.5 * tau**2 * kl, rel=1e-5)
    deit = DistillationLoss(ClassificationLoss(0.0), "soft", alpha=0.5, tau=tau, reduction="deit")
    assert deit(student, targets, teacher).item() == pytest.approx(0.5 * base + 0.5 * tau**2 * kl / 2, rel=1e-5)


def test_distillation_does_not_backprop_into_teacher() -> None:
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    DistillationLoss(ClassificationLoss(0.1), "soft", tau=2.0)(student, torch.randint(3, (4,)), teacher).backward()
    assert student.grad is not None and teacher.grad is None


def test_build_loss_from_config() -> None:
    cfg = load_recipe("fastvit_sa12")
    assert type(build_loss(cfg)) is ClassificationLoss
    assert build_loss(cfg).hard.smoothing == cfg.augment.label_smoothing
    cfg = dataclasses.replace(cfg, distill=DistillConfig(teacher="regnety_160", kind="soft", alpha=0.3, tau=2.0))
    loss = build_loss(cfg)
    assert isinstance(loss, DistillationLoss)
    assert (loss.kind, loss.alpha, loss.tau) == ("soft", 0.3, 2.0)
    assert build_loss(TrainConfig()).hard.smoothing == 0.1


# ---------------------------------------------------------------------------------------------------- mixup/cutmix
def _batch(b: int = 6, c: int = 10, hw: tuple[int, int] = (16, 20)) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(b, 3, *hw)
    targets = torch.randperm(c)[:b]  # distinct labels: a mixed row has two distinct non-off entries
    return images, targets


def test_mixup_pixels_and_targets() -> None:
    torch.manual_seed(1)
    images, targets = _batch()
    mixer = MixupCutmix(10, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1)
    out, soft = mixer(images, targets)
    assert mixer.last_mode == "mixup"
    partner = images.flip(0)  # the known permutation: i pairs with B - 1 - i
    # lam implied by the pixels (where the pair differs): out = lam * x + (1 - lam) * partner
    lam_px = ((out - partner) / (images - partner))[(images - partner).abs() > 0.1]
    lam = lam_px.median().item()
    torch.testing.assert_close(lam_px, torch.full_like(lam_px, lam), atol=1e-4, rtol=0)
    assert 0.0 < lam < 1.0 and lam == pytest.approx(mixer.last_lam, abs=1e-5)
    torch.testing.assert_close(out, lam * images + (1 - lam) * partner)
    # targets: rows sum to 1, the convex combination of the smoothed one-hots, as timm computes it
    torch.testing.assert_close(soft.sum(-1), torch.ones(len(targets)))
    expected = lam * smooth_one_hot(targets, 10, 0.1) + (1 - lam) * smooth_one_hot(targets.flip(0), 10, 0.1)
    torch.testing.assert_close(soft, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(soft, timm_mixup.mixup_target(targets, 10, lam, 0.1), atol=1e-5, rtol=0)
    # the same seed gives the same batch
    torch.manual_seed(1)
    _batch()
    out2, soft2 = mixer(images, targets)
    assert torch.equal(out, out2) and torch.equal(soft, soft2)


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_box_area_is_target_weight(seed: int) -> None:
    torch.manual_seed(seed)
    b, c, (h, w) = 4, 10, (17, 23)
    images = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, h, w).contiguous()
    targets = torch.tensor([3, 1, 7, 0])
    out, soft = MixupCutmix(c, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1)(images, targets)
    for i in range(b):
        pasted = out[i, 0] != images[i, 0]  # [H, W]
        assert torch.all(out[i][:, pasted] == images[b - 1 - i, 0, 0, 0])  # pasted from the mirrored sample
        rows, cols = pasted.any(1).nonzero(), pasted.any(0).nonzero()
        if len(rows):  # the pasted region is one rectangle
            assert pasted.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        area = pasted.float().mean().item()
        lam = 1.0 - area
        expected = lam * smooth_one_hot(targets[i : i + 1], c, 0.1) + area * smooth_one_hot(
            targets[b - 1 - i : b - i], c, 0.1
        )
        torch.testing.assert_close(soft[i : i + 1], expected, atol=1e-6, rtol=0)
        assert soft[i].sum().item() == pytest.approx(1.0, abs=1e-6)


def test_mixup_cutmix_switch_prob_and_disabled() -> None:
    images, targets = _batch()
    always_cutmix = MixupCutmix(10, 0.8, 1.0, switch_prob=1.0)
    always_mixup = MixupCutmix(10, 0.8, 1.0, switch_prob=0.0)
    for _ in range(5):
        always_cutmix(images, targets)
        assert always_cutmix.last_mode == "cutmix"
        always_mixup(images, targets)
        assert always_mixup.last_mode == "mixup"
    never = MixupCutmix(10, 0.8, 1.0, prob=0.0, label_smoothing=0.2)
    out, soft = never(images, targets)
    assert never.last_mode == "none" and torch.equal(out, images)
    torch.testing.assert_close(soft, F.one_hot(targets, 10).float() * 0.8 + 0.02)


def test_mixup_cutmix_from_config_and_odd_batch() -> None:
    assert MixupCutmix.from_config(load_recipe("mobilevit_xxs").augment, 1000) is None
    cfg = load_recipe("fastvit_sa12").augment
    mixer = MixupCutmix.from_config(cfg, 5)
    assert mixer is not None
    assert (mixer.mixup_alpha, mixer.cutmix_alpha, mixer.label_smoothing) == (0.8, 1.0, 0.1)
    images, targets = torch.rand(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4])
    out, soft = mixer(images, targets)  # odd batch: the middle sample mixes with itself
    assert out.shape == images.shape and soft.shape == (5, 5)
    torch.testing.assert_close(soft.sum(-1), torch.ones(5))


# ---------------------------------------------------------------------------------------------- train transform
def _solid(rgb: tuple[int, int, int], size: tuple[int, int] = (90, 70)) -> Image.Image:
    return Image.new("RGB", size, rgb)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_train_transform_size_dtype_and_normalization(interpolation: str) -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    aug = dataclasses.replace(PLAIN, interpolation=interpolation)
    t = train_transform(aug, (48, 64), mean, std, "RGB")
    rgb = (255, 128, 0)
    out = t(_solid(rgb))
    assert out.shape == (3, 48, 64) and out.dtype == torch.float32
    expected = torch.tensor([(v / 255 - m) / s for v, m, s in zip(rgb, mean, std, strict=True)])
    torch.testing.assert_close(out.amax((1, 2)), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.amin((1, 2)), expected, atol=1e-5, rtol=0)
    # MobileViT weights: no mean/std, values stay in [0, 1]
    plain = train_transform(aug, 32)(torch.randint(0, 256, (3, 50, 40), dtype=torch.uint8))
    assert plain.shape == (3, 32, 32) and plain.min() >= 0.0 and plain.max() <= 1.0


def test_train_transform_bgr() -> None:
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)  # given in the weights' (BGR) channel order
    out = train_transform(PLAIN, 24, mean, std, "BGR")(_solid((255, 0, 51)))
    bgr = (51, 0, 255)
    expected = torch.tensor([(v / 255 - m) / s for v, m, s in zip(bgr, mean, std, strict=True)])
    torch.testing.assert_close(out[:, 0, 0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, expected.view(3, 1, 1).expand(3, 24, 24), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="channel_order"):
        train_transform(PLAIN, 24, channel_order="rgb")  # type: ignore[arg-type]


def test_train_transform_follows_recipe() -> None:
    def kinds(aug: AugmentConfig) -> list[type]:
        return [type(s) for s in train_transform(aug, 32).transforms]

    v1 = load_recipe("mobilevit_xxs").augment
    assert RandAugmentLevel not in kinds(v1) and v2.RandomErasing not in kinds(v1)
    fastvit = load_recipe("fastvit_sa12").augment
    steps = train_transform(fastvit, 32).transforms
    assert RandAugmentLevel in kinds(fastvit) and v2.RandomErasing in kinds(fastvit)
    ra = next(s for s in steps if isinstance(s, RandAugmentLevel))
    assert (ra.num_ops, ra.level, ra.level_std, ra.magnitude, ra.num_magnitude_bins) == (2, 9, 0.5, 27, 31)
    rrc = next(s for s in steps if isinstance(s, v2.RandomResizedCrop))
    assert rrc.interpolation == v2.InterpolationMode.BICUBIC
    assert next(s for s in train_transform(v1, 32).transforms if isinstance(s, v2.RandomResizedCrop)).interpolation == (
        v2.InterpolationMode.BILINEAR
    )
    # behaviour: erasing with p=1 zeroes a patch of a white image; p=0 never does
    white = _solid((255, 255, 255))
    erase = dataclasses.replace(PLAIN, random_erase=1.0)
    assert all((train_transform(erase, 32)(white) == 0).any() for _ in range(5))
    assert not any((train_transform(PLAIN, 32)(white) == 0).any() for _ in range(5))


def test_randaugment_changes_images_and_level_draws() -> None:
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    on = dataclasses.replace(PLAIN, rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0), hflip=0.0, randaugment=True)
    off = dataclasses.replace(on, randaugment=False)

    def changed(aug: AugmentConfig) -> bool:
        return not torch.allclose(train_transform(aug, 32)(image), image.float() / 255, atol=1e-6)

    assert not any(changed(off) for _ in range(5))
    assert sum(changed(on) for _ in range(10)) >= 5  # Identity is 1 op in 14: two ops both Identity is rare
    ra = RandAugmentLevel(2, level=9, level_std=0.5)
    bins = torch.tensor([ra._draw_bin() for _ in range(2000)], dtype=torch.float32)
    assert bins.min() >= 0 and bins.max() <= 30
    assert bins.mean().item() / 3 == pytest.approx(9.0, abs=0.1)  # level ~ N(9, 0.5) clipped to [0, 10]
    assert bins.std().item() / 3 == pytest.approx(0.5, abs=0.1)
    assert {RandAugmentLevel(2, level=9)._draw_bin() for _ in range(10)} == {27}
    with pytest.raises(ValueError, match="level"):
        RandAugmentLevel(2, level=11)


def test_factory_fits_multi_scale_dataset() -> None:
    images = [(_solid((10 * i, 20, 30), (40 + i, 30)), i) for i in range(6)]
    factory = TrainTransformFactory(PLAIN, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    dataset = MultiScaleDataset(images, factory)
    sampler = MultiScaleBatchSampler.variable_batch(len(dataset), 64, 4, 32, 96, 3, 32, seed=0)
    for batch in sampler:
        for key in batch:
            x, label = dataset[key]
            assert x.shape == (3, key.height, key.width) and label == key.index
    assert factory(32, 64) is factory(32, 64)
    again = pickle.loads(pickle.dumps(factory))  # DataLoader workers
    assert again(16, 24)(images[0][0]).shape == (3, 16, 24)
