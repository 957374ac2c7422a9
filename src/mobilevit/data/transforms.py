"""The eval transform: one function builds it from a weights entry's preprocessing, for every consumer.

``predict``, ``eval``, the server and the benchmarks all call :func:`eval_transform`, so a model sees the same
tensor whichever way it is used. Steps: resize the shorter side (PIL, the entry's interpolation), center-crop,
scale to [0, 1], normalize with the entry's mean/std, and reverse the channels for weights trained on BGR input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

_PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resize_size(input_size: tuple[int, int], crop_pct: float) -> int | tuple[int, int]:
    """Size to resize to before the center crop: the shorter side for square inputs (``floor(size / crop_pct)``)."""
    h, w = input_size
    if h == w:
        return math.floor(h / crop_pct)
    return math.floor(h / crop_pct), math.floor(w / crop_pct)


def _resize(img: Image.Image, size: int | tuple[int, int], interpolation: str) -> Image.Image:
    w, h = img.size
    if isinstance(size, int):  # shorter side to ``size``, aspect ratio kept (long side truncated, as torchvision)
        if w <= h:
            new_w, new_h = size, int(size * h / w)
        else:
            new_w, new_h = int(size * w / h), size
    else:
        new_h, new_w = size
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), _PIL_INTERPOLATION[interpolation])


def _center_crop(img: Image.Image, size: tuple[int, int], offset: str) -> Image.Image:
    """Center crop; ``offset`` is how the margin is halved: ``"round"`` (torchvision/timm) or ``"floor"`` (HF)."""
    crop_h, crop_w = size
    w, h = img.size
    if crop_w > w or crop_h > h:  # a tiny image: pad with black to the crop size first, as torchvision does
        canvas = Image.new("RGB", (max(w, crop_w), max(h, crop_h)))
        canvas.paste(img, ((max(w, crop_w) - w) // 2, (max(h, crop_h) - h) // 2))
        img, (w, h) = canvas, canvas.size
    halve = (lambda m: round(m / 2.0)) if offset == "round" else (lambda m: m // 2)
    top, left = halve(h - crop_h), halve(w - crop_w)
    return img.crop((left, top, left + crop_w, top + crop_h))


def eval_transform(pre: Any) -> Callable[[Image.Image], Tensor]:
    """``PIL RGB image -> [3, H, W] float tensor`` as the weights described by ``pre`` expect.

    Args:
        pre: a preprocessing description with ``input_size`` (H, W), ``resize_size`` (int for the shorter side, a
            (H, W) pair, or None to derive it from ``crop_pct``), ``crop_pct``, ``interpolation``, ``mean``, ``std``,
            ``channel_order`` ("RGB" or "BGR") and optionally ``crop_offset`` ("round" or "floor").
    """
    input_size = tuple(pre.input_size)
    size = getattr(pre, "resize_size", None) or resize_size(input_size, pre.crop_pct)
    offset = getattr(pre, "crop_offset", "round")
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(3, 1, 1)
    bgr = pre.channel_order == "BGR"

    def transform(img: Image.Image) -> Tensor:
        img = _center_crop(_resize(img, size, pre.interpolation), input_size, offset)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]
        x = x.to(torch.float32).div_(255.0).sub_(mean).div_(std)
        return x.flip(0) if bgr else x  # RGB -> BGR for weights trained on OpenCV-decoded images

    return transform
