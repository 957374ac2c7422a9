"""Train-time augmentation: the per-sample torchvision v2 pipeline and batch-level mixup / cutmix.

Follows the recipes of ml-cvnets (https://github.com/apple/ml-cvnets; MobileViT v1 arXiv 2110.02178, v2 arXiv
2206.02680) and apple/ml-fastvit (arXiv 2303.14189, trained with timm), with these numbers:

- MobileViT v1: random-resized-crop (bilinear) + horizontal flip;
- MobileViT v2/v3: RRC (bicubic), flip, RandAugment, random erasing 0.25, mixup 0.2 / cutmix 1.0;
- FastViT: RRC (bicubic), flip, RandAugment "rand-m9-mstd0.5", random erasing 0.25, mixup 0.8 (0.2) / cutmix 1.0.

Per sample (:func:`train_transform`, or :class:`TrainTransformFactory` for the multi-scale samplers)::

    PIL / uint8 -> ToImage -> RandomResizedCrop -> flip -> [RandAugment] -> float [0, 1]
                -> [RGB -> BGR, (x - mean) / std: mobilevit.data.normalize] -> [RandomErasing]

Per batch (:class:`MixupCutmix`, applied by the training loop after collation): mixup or cutmix with the batch
reversed, targets mixed from label-smoothed one-hots exactly as timm's ``Mixup(mode="batch")``.

RandAugment magnitude. ``randaugment_magnitude`` (:class:`AugmentSettings`) is the level of timm's recipe strings
and of the RandAugment paper, on a 0-10 scale: "rand-m9-mstd0.5" is ``randaugment_magnitude=9``,
``randaugment_magnitude_std=0.5``, ``randaugment_num_ops=2`` (timm's default "n2"). torchvision's RandAugment
indexes ``num_magnitude_bins=31`` bins spanning the same op ranges (rotate 30 deg, shear 0.3, enhance 0.9, ...), so
level ``m`` is bin ``3 m``; with ``mstd > 0`` each op draws its level from ``N(m, mstd)`` clipped to [0, 10] (timm's
``magnitude_std``), rounded to the nearest bin. ml-cvnets calls torchvision's RandAugment with its defaults
(magnitude 9 of 31 bins), which is level 3 on this scale. Remaining differences from timm: timm applies each chosen
op with probability 0.5, fills with the mean pixel and includes a few extra ops; torchvision applies every chosen op
and fills with black.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import UsageError
from .normalize import Normalization, check_channel_order, is_identity, normalize
from .samplers import to_pair

logger = logging.getLogger(__name__)

__all__ = [
    "LEVEL_MAX",
    "AugmentSettings",
    "MixupCutmix",
    "RandAugmentLevel",
    "TrainTransformFactory",
    "smooth_one_hot",
    "train_transform",
]

LEVEL_MAX = 10  # timm's _LEVEL_DENOM: RandAugment levels run 0..10
_BINS_PER_LEVEL = 3  # torchvision's 31 magnitude bins = 3 per level


class AugmentSettings(Protocol):
    """The augmentation settings read here: the fields of a recipe's ``TrainConfig.augment``."""

    rrc_scale: tuple[float, float]  # random-resized-crop area range
    rrc_ratio: tuple[float, float]  # and aspect-ratio range
    interpolation: Literal["bilinear", "bicubic"]
    hflip: float  # probability
    randaugment: bool
    randaugment_num_ops: int
    randaugment_magnitude: int  # level on the 0-10 scale
    randaugment_magnitude_std: float
    random_erase: float  # probability
    mixup_alpha: float  # 0 disables
    cutmix_alpha: float  # 0 disables
    label_smoothing: float


class RandAugmentLevel(v2.RandAugment):
    """torchvision's RandAugment driven by a timm-style level (0-10) with an optional per-op random magnitude."""

    def __init__(
        self,
        num_ops: int = 2,
        level: float = 9,
        level_std: float = 0.0,
        interpolation: str = "bilinear",
        fill: Any = None,
    ) -> None:
        """Args:
        num_ops: ops applied in sequence, each drawn uniformly (timm "n").
        level: magnitude on the 0-10 scale (timm "m").
        level_std: std of the per-op level (timm "mstd"); 0 keeps it fixed, ``inf`` draws it uniformly in
            [0, level] as timm does.
        interpolation: resampling of the geometric ops.
        fill: fill value of the geometric ops (None: black).
        """
        if not 0 <= level <= LEVEL_MAX:
            raise UsageError(f"RandAugment level must be in [0, {LEVEL_MAX}], got {level}")
        if level_std < 0:
            raise UsageError(f"RandAugment level std must be >= 0, got {level_std}")
        super().__init__(
            num_ops=num_ops,
            magnitude=round(level * _BINS_PER_LEVEL),
            num_magnitude_bins=LEVEL_MAX * _BINS_PER_LEVEL + 1,
            interpolation=v2.InterpolationMode(interpolation),
            fill=fill,
        )
        self.level = float(level)
        self.level_std = float(level_std)

    def _draw_bin(self) -> int:
        if self.level_std == 0:
            return round(self.level * _BINS_PER_LEVEL)
        if math.isinf(self.level_std):
            level = float(torch.rand(())) * self.level
        else:
            level = self.level + self.level_std * float(torch.randn(()))
        return round(min(max(level, 0.0), LEVEL_MAX) * _BINS_PER_LEVEL)

    def forward(self, *inputs: Any) -> Any:
        """Apply ``num_ops`` random ops, each at its own drawn magnitude (torchvision's loop, one draw per op)."""
        if self.level_std == 0:
            return super().forward(*inputs)
        flat_inputs_with_spec, image = self._flatten_and_extract_image_or_video(inputs)
        height, width = v2.functional.get_size(image)  # type: ignore[arg-type]
        for _ in range(self.num_ops):
            transform_id, (magnitudes_fn, signed) = self._get_random_item(self._AUGMENTATION_SPACE)
            magnitudes = magnitudes_fn(self.num_magnitude_bins, height, width)
            magnitude = 0.0
            if magnitudes is not None:
                magnitude = float(magnitudes[self._draw_bin()])
                if signed and torch.rand(()) <= 0.5:
                    magnitude = -magnitude
            image = self._apply_image_or_video_transform(
                image, transform_id, magnitude, interpolation=self.interpolation, fill=self._fill
            )
        return self._unflatten_and_insert_image_or_video(flat_inputs_with_spec, image)

    def extra_repr(self) -> str:
        return f"num_ops={self.num_ops}, level={self.level}, level_std={self.level_std}"


class _Normalize(v2.Transform):
    """A ``[..., 3, H, W]`` image in [0, 1] RGB -> channel order, mean and std of ``stats``
    (:func:`~mobilevit.data.normalize.normalize`)."""

    def __init__(self, stats: Normalization) -> None:
        super().__init__()
        self.stats = stats

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, Tensor) and inpt.ndim >= 3 and inpt.shape[-3] == 3:
            out = normalize(inpt.as_subclass(Tensor), self.stats)
            return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.Image) else out
        return inpt


def train_transform(
    cfg_aug: AugmentSettings,
    size: int | Sequence[int],
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    channel_order: Literal["RGB", "BGR"] = "RGB",
    interpolation: Literal["bilinear", "bicubic"] | None = None,
) -> v2.Compose:
    """The per-sample train pipeline of a recipe at one size.

    Args:
        cfg_aug: the recipe's augmentation settings (``TrainConfig.augment``).
        size: output (height, width), or an int for square.
        mean: per-channel mean of the [0, 1] image, in ``channel_order`` (the weights entry's ``Preprocess.mean``;
            MobileViT: zeros).
        std: per-channel std, in ``channel_order`` (MobileViT: ones).
        channel_order: "BGR" flips the channels before normalizing, as the eval transform does.
        interpolation: RRC resampling; default ``cfg_aug.interpolation`` (bilinear for MobileViT v1, bicubic for
            v2/v3 and FastViT).

    Returns:
        A callable taking a PIL image or a ``uint8 [3, H, W]`` tensor and returning a ``float32 [3, h, w]`` tensor.
    """
    check_channel_order(channel_order)
    if len(mean) != 3 or len(std) != 3:
        raise UsageError(f"mean and std need 3 values, got {mean!r} and {std!r}")
    mode = v2.InterpolationMode(interpolation or cfg_aug.interpolation)
    steps: list[Callable[..., Any]] = [
        v2.ToImage(),  # PIL -> uint8 tensor first: the geometric ops below run on tensors
        v2.RandomResizedCrop(to_pair(size), scale=cfg_aug.rrc_scale, ratio=cfg_aug.rrc_ratio, interpolation=mode),
    ]
    if cfg_aug.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(cfg_aug.hflip))
    if cfg_aug.randaugment:
        steps.append(
            RandAugmentLevel(
                cfg_aug.randaugment_num_ops, cfg_aug.randaugment_magnitude, cfg_aug.randaugment_magnitude_std
            )
        )
    steps.append(v2.ToDtype(torch.float32, scale=True))
    stats = Normalization(tuple(mean), tuple(std), channel_order)
    if not is_identity(stats):
        steps.append(_Normalize(stats))
    if cfg_aug.random_erase > 0:
        steps.append(v2.RandomErasing(p=cfg_aug.random_erase, value=0))  # cvnets: torchvision's, zero fill
    return v2.Compose(steps)


class TrainTransformFactory:
    """``factory(height, width)`` -> :func:`train_transform` at that size: the ``transform`` of ``MultiScaleDataset``.

    Pipelines are built once per size and cached; the factory pickles for ``DataLoader`` workers.

        dataset = MultiScaleDataset(ImageFolder(root), TrainTransformFactory(cfg.augment, mean, std, "RGB"))
    """

    def __init__(
        self,
        cfg_aug: AugmentSettings,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        channel_order: Literal["RGB", "BGR"] = "RGB",
        interpolation: Literal["bilinear", "bicubic"] | None = None,
    ) -> None:
        """Args: as :func:`train_transform`, without the size."""
        self.cfg_aug = cfg_aug
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.channel_order = channel_order
        self.interpolation = interpolation
        self._cache: dict[tuple[int, int], v2.Compose] = {}

    def __call__(self, height: int, width: int) -> v2.Compose:
        """The train transform producing ``[3, height, width]`` tensors."""
        key = (int(height), int(width))
        if key not in self._cache:
            self._cache[key] = train_transform(
                self.cfg_aug, key, self.mean, self.std, self.channel_order, self.interpolation
            )
        return self._cache[key]


def smooth_one_hot(targets: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """``[B]`` class indices -> ``[B, num_classes]`` float rows: ``1 - smoothing + smoothing / C`` on the label,
    ``smoothing / C`` elsewhere (timm's ``one_hot`` with on/off values; each row sums to 1).
    """
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    out = torch.full((targets.shape[0], num_classes), off, dtype=torch.float32, device=targets.device)
    return out.scatter_(1, targets.long().view(-1, 1), on)


class MixupCutmix:
    """Batch-level mixup / cutmix with label-smoothed soft targets, as timm's ``Mixup(mode="batch")``.

    Each call, with probability ``prob``: pick cutmix with probability ``switch_prob`` when both are enabled (else
    the enabled one), draw ``lam ~ Beta(alpha, alpha)``, and mix every image with the one at the mirrored position
    of the batch (``images.flip(0)``: sample ``i`` pairs with ``B - 1 - i``):

    - mixup: ``lam * x + (1 - lam) * x.flip(0)``;
    - cutmix: paste a box of ``x.flip(0)`` of side ``sqrt(1 - lam)`` times the image's, centred uniformly and
      clipped at the borders; ``lam`` is then corrected to the kept area fraction.

    Targets: ``lam * smooth(y) + (1 - lam) * smooth(y.flip(0))``. Without mixing (``prob`` missed, or both alphas
    0) they are ``smooth(y)``. Randomness comes from torch's global generator (seed it for reproducible runs).
    Odd batch sizes (the variable-batch sampler's) work: the middle sample mixes with itself.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
    ) -> None:
        """Args:
        num_classes: width of the soft targets.
        mixup_alpha: Beta parameter of mixup; 0 disables mixup.
        cutmix_alpha: Beta parameter of cutmix; 0 disables cutmix.
        prob: probability of mixing a batch at all (timm ``mixup_prob``).
        switch_prob: probability of cutmix rather than mixup when both are enabled (timm ``mixup_switch_prob``).
        label_smoothing: smoothing of the one-hots before mixing.
        """
        if num_classes < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise UsageError(f"alphas must be >= 0, got mixup {mixup_alpha}, cutmix {cutmix_alpha}")
        if not (0 <= prob <= 1 and 0 <= switch_prob <= 1 and 0 <= label_smoothing < 1):
            raise UsageError("prob and switch_prob must be in [0, 1], label_smoothing in [0, 1)")
        self.num_classes = num_classes
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.label_smoothing = float(label_smoothing)
        self.last_lam = 1.0  # lam of the last call (after the cutmix correction), for logging and tests
        self.last_mode: Literal["none", "mixup", "cutmix"] = "none"

    @classmethod
    def from_config(cls, cfg_aug: AugmentSettings, num_classes: int) -> MixupCutmix | None:
        """The recipe's mixer, or None when both alphas are 0 (train with hard targets then)."""
        if cfg_aug.mixup_alpha <= 0 and cfg_aug.cutmix_alpha <= 0:
            return None
        return cls(num_classes, cfg_aug.mixup_alpha, cfg_aug.cutmix_alpha, label_smoothing=cfg_aug.label_smoothing)

    def _choose(self) -> tuple[Literal["none", "mixup", "cutmix"], float]:
        enabled_mixup, enabled_cutmix = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if not (enabled_mixup or enabled_cutmix) or float(torch.rand(())) >= self.prob:
            return "none", 1.0
        use_cutmix = enabled_cutmix and (not enabled_mixup or float(torch.rand(())) < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        return ("cutmix" if use_cutmix else "mixup"), lam

    @staticmethod
    def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
        """timm's ``rand_bbox``: a box of ``int(h * sqrt(1 - lam))`` x ``int(w * sqrt(1 - lam))`` with a uniform
        centre, clipped to the image. Returns ``(y0, y1, x0, x1)``, end exclusive.
        """
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy = int(torch.randint(height, ()))
        cx = int(torch.randint(width, ()))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, height)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, width)
        return y0, y1, x0, x1

    def __call__(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Mix a batch.

        Args:
            images: ``[B, C, H, W]`` float batch (not modified).
            targets: ``[B]`` class indices.

        Returns:
            The mixed ``[B, C, H, W]`` images and ``[B, num_classes]`` float32 soft targets (rows sum to 1).
        """
        if images.ndim != 4 or targets.ndim != 1 or targets.shape[0] != images.shape[0]:
            raise UsageError(
                f"expected images [B, C, H, W] and targets [B], got {tuple(images.shape)}, {tuple(targets.shape)}"
            )
        mode, lam = self._choose()
        if mode == "mixup":
            images = images.mul(lam).add_(images.flip(0), alpha=1.0 - lam)
        elif mode == "cutmix":
            height, width = images.shape[-2:]
            y0, y1, x0, x1 = self.cutmix_box(height, width, lam)
            images = images.clone()
            images[:, :, y0:y1, x0:x1] = images.flip(0)[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
        self.last_mode, self.last_lam = mode, lam
        one_hot = smooth_one_hot(targets, self.num_classes, self.label_smoothing)
        soft = one_hot.mul(lam).add_(one_hot.flip(0), alpha=1.0 - lam) if lam < 1.0 else one_hot
        return images, soft
