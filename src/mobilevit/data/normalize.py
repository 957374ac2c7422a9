"""Pixels to a model's input: the [0, 1] scaling, channel order, mean and std of a weights entry, written once.

A :class:`~mobilevit.weights.entries.Preprocess` (or any object with its ``channel_order``, ``mean`` and ``std``, such
as a :class:`Normalization`) says how:

1. 8-bit pixels are divided by :data:`PIXEL_MAX` into float32 [0, 1] (:func:`to_unit`);
2. the channels are put in ``channel_order``: reversed for ``"BGR"``, what weights trained on OpenCV-decoded images
   expect (:func:`to_channel_order`);
3. ``(x - mean) / std`` per channel, in float32, as torchvision's ``Normalize`` computes it; a zero mean and a unit
   std are skipped (MobileViT's weights take the [0, 1] pixels as they are) (:func:`normalize`).

Every consumer calls these: the eval transform (per image in numpy, per batch in torch), the training loop's batches,
the segmentation training pairs, the CoreML image graph, and the train augmentation (which scales with torchvision's
``ToDtype``, ``x * (1 / 255)``, before it). CoreML's ``ImageType`` applies the
``1 / PIXEL_MAX`` scale and the channel order itself, and takes one scale for all three channels (a per-channel std
cannot be folded into it), so its graph calls :func:`normalize` with ``reorder=False`` for the mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError

__all__ = [
    "CHANNEL_ORDERS",
    "PIXEL_MAX",
    "ChannelStats",
    "Normalization",
    "check_channel_order",
    "is_identity",
    "normalize",
    "to_channel_order",
    "to_unit",
]

PIXEL_MAX = 255.0  # 8-bit pixels; [0, 1] is pixels / PIXEL_MAX
CHANNEL_ORDERS: tuple[str, ...] = ("RGB", "BGR")

Pixels = TypeVar("Pixels", Tensor, np.ndarray)


class ChannelStats(Protocol):
    """What normalizing reads from a preprocessing: the channel order, and the mean and std in that order."""

    @property
    def channel_order(self) -> str: ...

    @property
    def mean(self) -> Sequence[float]: ...

    @property
    def std(self) -> Sequence[float]: ...


@dataclass(frozen=True)
class Normalization:
    """The channel order, mean and std of a preprocessing without its geometry (a timm teacher's ``pretrained_cfg``,
    the train augmentation's arguments).

    Attributes:
        mean: per-channel mean, in [0, 1] pixel units, in ``channel_order``.
        std: per-channel std, in [0, 1] pixel units, in ``channel_order``.
        channel_order: ``"RGB"`` or ``"BGR"``.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str = "RGB"


def check_channel_order(order: str) -> None:
    """Raise a :class:`~mobilevit.errors.UsageError` unless ``order`` is ``"RGB"`` or ``"BGR"``."""
    if order not in CHANNEL_ORDERS:
        raise UsageError(f"channel_order must be 'RGB' or 'BGR', got {order!r}")


def is_identity(pre: ChannelStats) -> bool:
    """:func:`normalize` leaves RGB pixels as they are: RGB order, zero mean, unit std."""
    return pre.channel_order != "BGR" and _no_mean(pre) and _no_std(pre)


def to_unit(pixels: Pixels) -> Pixels:
    """8-bit pixels (a ``uint8`` tensor or array) -> a new float32 tensor or array in [0, 1]: divided by
    :data:`PIXEL_MAX`."""
    if isinstance(pixels, np.ndarray):
        x = pixels.astype(np.float32)
        x /= np.float32(PIXEL_MAX)
        return x
    return pixels.to(torch.float32).div_(PIXEL_MAX)


def to_channel_order(rgb: Pixels, pre: ChannelStats, axis: int = -3) -> Pixels:
    """RGB pixels with the channels on ``axis`` -> in ``pre.channel_order``: ``rgb`` itself, or reversed for BGR (a
    numpy array: a view; a tensor: a copy)."""
    if pre.channel_order != "BGR":
        return rgb
    return rgb.flip(axis) if isinstance(rgb, Tensor) else np.flip(rgb, axis)


def normalize(x: Pixels, pre: ChannelStats, *, reorder: bool = True) -> Pixels:
    """``[..., 3, H, W]`` float32 pixels in [0, 1] -> the model's input as ``pre`` describes: reordered to its
    ``channel_order``, minus its ``mean``, divided by its ``std``.

    Args:
        x: a tensor (on any device) or a numpy array, RGB; with ``reorder=False`` already in ``pre.channel_order``
            (the eval transform reorders the 8-bit pixels, CoreML's ``ImageType`` hands them over so). Not modified.
        pre: the preprocessing (channel order, mean and std in that order).
        reorder: put the channels in ``pre.channel_order`` first.

    Returns:
        A new tensor or array of ``x``'s kind, or ``x`` itself when there is nothing to do.
    """
    if reorder:
        x = to_channel_order(x, pre)
    if not _no_mean(pre):
        x = x - _per_channel(pre.mean, x)
    if not _no_std(pre):
        x = x / _per_channel(pre.std, x)
    return np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x


def _no_mean(pre: ChannelStats) -> bool:
    return not any(pre.mean)


def _no_std(pre: ChannelStats) -> bool:
    return all(s == 1.0 for s in pre.std)


def _per_channel(values: Sequence[float], like: Pixels) -> Pixels:
    """``values`` as float32 ``[3, 1, 1]``, of ``like``'s kind and on its device."""
    if isinstance(like, np.ndarray):
        return np.asarray(values, dtype=np.float32).reshape(3, 1, 1)
    return torch.tensor(values, dtype=torch.float32, device=like.device).view(3, 1, 1)
