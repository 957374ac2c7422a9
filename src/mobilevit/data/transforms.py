"""The eval transform: one function builds it from a weights entry's preprocessing, for every consumer.

``predict``, ``eval``, the server and the benchmarks all call :func:`eval_transform` (or :func:`transform_for`), so a
model sees the same tensor whichever way it is used. Steps, as :class:`~mobilevit.weights.entries.Preprocess`
describes them:

1. resize the shorter side to ``resize_size`` (long side ``int(resize_size * long / short)``, the torchvision,
   transformers and ml-cvnets rule) with ``interpolation``:

   - ``resize_backend="pil"``: PIL's ``Image.resize``, antialiased when shrinking, as timm/torchvision
     (``transforms.Resize`` on PIL images) and transformers' PIL image processor do it: bit-exact with them;
   - ``resize_backend="opencv"``: ``cv2.resize`` without antialiasing, as ml-cvnets v0.1 (MobileViT v1) evaluated.
     With OpenCV installed (the ``opencv`` extra) this is bit-exact with ml-cvnets; without it, torch's
     ``interpolate(antialias=False)`` reproduces ``cv2.resize`` to within one 8-bit level (OpenCV rounds its
     fixed-point weights). PIL would not do: antialiasing changes pixels by far more than 1/255 when shrinking;

2. center-crop ``input_size`` with the offset rounded as ``crop_offset`` (``"round"``: torchvision's
   ``int(round((size - crop) / 2))``; ``"floor"``: ``(size - crop) // 2``, ml-cvnets and transformers); an image
   smaller than the crop is first padded with black, centred, as torchvision does;
3. reorder the channels to ``channel_order`` (RGB -> BGR for weights trained on OpenCV-decoded images);
4. scale to [0, 1], subtract ``mean`` and divide by ``std`` (float32, the same operations in the same order as
   torchvision's ``ToTensor`` + ``Normalize``).

Decoding is :func:`mobilevit.data.images.open_image`'s job (PIL and OpenCV decode JPEGs to identical pixels; BGR is the
reorder of step 3). For batching, :meth:`EvalTransform.pixels` stops before step 4 and returns ``uint8`` (4x less data
to move between DataLoader workers) and :meth:`EvalTransform.normalize` finishes a whole batch with the same numbers.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .images import ImageError, to_rgb

if TYPE_CHECKING:
    from types import ModuleType

    from ..weights.entries import Preprocess, WeightsEntry

logger = logging.getLogger(__name__)

_PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# cv2.INTER_NEAREST / INTER_LINEAR / INTER_CUBIC (ml-cvnets v0.1 `_str_to_cv2_interpolation`)
_CV2_INTERPOLATION = {"nearest": 0, "bilinear": 1, "bicubic": 2}
# torch's non-antialiased modes that compute what cv2.resize computes (half-pixel centres, clamped borders,
# bicubic a = -0.75)
_TORCH_INTERPOLATION = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic"}
# Resizing the short side of a 1 x 100000 strip to 288 would allocate gigabytes; refuse instead (64M pixels, ~200 MB).
MAX_RESIZED_PIXELS = 1 << 26


@functools.cache
def _cv2() -> ModuleType | None:
    """OpenCV if installed (``pip install mobilevit[opencv]``), else None; tests patch this to force the fallback."""
    try:
        import cv2
    except ImportError:
        logger.info("OpenCV is not installed: cvnets-style resizes use torch (within 1/255 of cv2.resize)")
        return None
    return cv2


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``short_side``, aspect kept, long side truncated.

    The rule of torchvision's ``Resize(int)``, transformers' ``get_resize_output_image_size`` and ml-cvnets'
    ``_resize_fn``: ``int(short_side * long / short)``.
    """
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def crop_offsets(width: int, height: int, crop: tuple[int, int], offset: str) -> tuple[int, int]:
    """(top, left) of a centred ``crop`` (H, W) in an image at least that large.

    Args:
        offset: ``"round"`` (torchvision, Python's round-half-even) or ``"floor"`` (ml-cvnets, transformers).
    """
    crop_h, crop_w = crop
    if offset == "round":
        return round((height - crop_h) / 2.0), round((width - crop_w) / 2.0)  # half to even, as torchvision
    if offset == "floor":
        return (height - crop_h) // 2, (width - crop_w) // 2
    raise ValueError(f"crop_offset must be 'round' or 'floor', got {offset!r}")


def _resize_pil(img: Image.Image, size: tuple[int, int], interpolation: str) -> np.ndarray:
    if img.size != size:
        img = img.resize(size, _PIL_INTERPOLATION[interpolation])
    return np.asarray(img)


def _resize_opencv(img: Image.Image, size: tuple[int, int], interpolation: str) -> np.ndarray:
    arr = np.asarray(img)
    if img.size == size:  # ml-cvnets returns the image untouched when the short side already fits
        return arr
    cv2 = _cv2()
    if cv2 is not None:
        return cv2.resize(arr, size, interpolation=_CV2_INTERPOLATION[interpolation])
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None].float()  # [H, W, 3] -> [1, 3, H, W]
    mode = _TORCH_INTERPOLATION[interpolation]
    kwargs: dict[str, Any] = {} if mode == "nearest" else {"align_corners": False, "antialias": False}
    y = F.interpolate(x, size=(size[1], size[0]), mode=mode, **kwargs)
    y = y.round_().clamp_(0, 255).to(torch.uint8)  # OpenCV returns 8-bit pixels
    return y[0].permute(1, 2, 0).numpy()  # [1, 3, H, W] -> [H, W, 3]


_RESIZERS = {"pil": _resize_pil, "opencv": _resize_opencv}


def _center_crop(arr: np.ndarray, crop: tuple[int, int], offset: str) -> np.ndarray:
    """Center crop of an [H, W, 3] array; pads with black first (centred, as torchvision) if it is too small."""
    crop_h, crop_w = crop
    h, w = arr.shape[:2]
    if crop_h > h or crop_w > w:
        pad_h, pad_w = max(crop_h - h, 0), max(crop_w - w, 0)
        arr = np.pad(arr, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
        h, w = arr.shape[:2]
    top, left = crop_offsets(w, h, crop, offset)
    return arr[top : top + crop_h, left : left + crop_w]


def _short_side(pre: Any) -> int:
    size = getattr(pre, "resize_size", None)
    return int(size) if size else math.floor(min(pre.input_size) / pre.crop_pct)


@dataclass(frozen=True)
class EvalTransform:
    """``PIL image -> [3, H, W] float32 tensor`` as the weights described by ``pre`` expect; picklable.

    Attributes:
        pre: the preprocessing (a :class:`~mobilevit.weights.entries.Preprocess`, or any object with its fields).
    """

    pre: Preprocess

    def __post_init__(self) -> None:
        pre = self.pre
        if getattr(pre, "resize_backend", "pil") not in _RESIZERS:
            raise ValueError(f"resize_backend must be one of {sorted(_RESIZERS)}, got {pre.resize_backend!r}")
        if pre.interpolation not in _PIL_INTERPOLATION:
            raise ValueError(f"unknown interpolation {pre.interpolation!r}")
        if getattr(pre, "resize_backend", "pil") == "opencv" and pre.interpolation not in _CV2_INTERPOLATION:
            raise ValueError(f"interpolation {pre.interpolation!r} has no OpenCV equivalent here")
        if pre.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {pre.channel_order!r}")
        crop_offsets(1, 1, (1, 1), getattr(pre, "crop_offset", "round"))  # validates the name

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the output."""
        return tuple(self.pre.input_size)  # type: ignore[return-value]

    def _array(self, img: Image.Image) -> np.ndarray:
        """Resized, cropped, reordered ``uint8`` pixels, ``[3, H, W]`` contiguous."""
        if img.mode != "RGB":
            img = to_rgb(img)
        pre = self.pre
        size = resized_size(img.width, img.height, _short_side(pre))
        if size[0] * size[1] > MAX_RESIZED_PIXELS:
            raise ImageError(
                f"{img.width}x{img.height} image: aspect ratio too extreme (resizing it would give {size[0]}x{size[1]})"
            )
        arr = _RESIZERS[getattr(pre, "resize_backend", "pil")](img, size, pre.interpolation)
        arr = _center_crop(arr, self.input_size, getattr(pre, "crop_offset", "round"))
        if pre.channel_order == "BGR":
            arr = arr[..., ::-1]
        return np.ascontiguousarray(arr.transpose(2, 0, 1))  # [H, W, 3] -> [3, H, W]

    def pixels(self, img: Image.Image) -> Tensor:
        """The ``uint8`` ``[3, H, W]`` tensor before scaling, in ``channel_order``; finish with :meth:`normalize`."""
        return torch.from_numpy(self._array(img))

    def normalize(self, x: Tensor) -> Tensor:
        """``uint8 [..., 3, H, W]`` (e.g. a collated batch of :meth:`pixels`) -> float32, scaled and normalized."""
        if x.dtype != torch.uint8:
            raise TypeError(f"normalize expects the uint8 output of pixels(), got {x.dtype}")
        x = x.to(torch.float32).div_(255.0)
        mean, std = tuple(self.pre.mean), tuple(self.pre.std)
        if any(mean):
            x = x.sub_(torch.tensor(mean, dtype=torch.float32, device=x.device).view(3, 1, 1))
        if any(s != 1.0 for s in std):
            x = x.div_(torch.tensor(std, dtype=torch.float32, device=x.device).view(3, 1, 1))
        return x

    def __call__(self, img: Image.Image) -> Tensor:
        # numpy for the per-image arithmetic: the same IEEE float32 operations as torch, without torch's
        # thread-pool overhead on one small channels-last tensor (measured 10x to 100x slower with 2 busy threads)
        x = self._array(img).astype(np.float32)
        x /= np.float32(255.0)
        mean = np.asarray(self.pre.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.pre.std, dtype=np.float32).reshape(3, 1, 1)
        if mean.any():
            x -= mean
        if (std != 1.0).any():
            x /= std
        return torch.from_numpy(x)


def eval_transform(pre: Preprocess) -> EvalTransform:
    """The eval transform of a weights entry's preprocessing: ``PIL image -> [3, H, W] float32 tensor``.

    Non-RGB images are converted with :func:`~mobilevit.data.images.to_rgb`; decode files with
    :func:`~mobilevit.data.images.open_image`, which also applies the EXIF orientation.

    Args:
        pre: ``input_size`` (H, W), ``resize_size`` (the shorter side before the crop; derived from ``crop_pct``
            only when missing), ``interpolation``, ``mean``, ``std``, ``channel_order`` ("RGB" or "BGR"), and
            optionally ``resize_backend`` ("pil" or "opencv") and ``crop_offset`` ("round" or "floor").
    """
    return EvalTransform(pre)


def transform_for(weights: str | WeightsEntry | Preprocess | Any, *, upstream: bool = False) -> EvalTransform:
    """The eval transform for a weights name (``"arch.tag"`` or a bare architecture), an entry, or a model.

    Args:
        weights: a weights name, a :class:`~mobilevit.weights.entries.WeightsEntry`, a ``Preprocess``, or anything
            with a ``preprocess`` attribute (a ``PretrainedCfg``) or a ``pretrained_cfg`` one (a model from
            ``create_model``).
        upstream: use the entry's ``upstream_preprocess`` (the source's own pipeline, e.g. the transformers
            processor that flips MobileViTV2's input to BGR) when it has one; for parity checks, not for accuracy.

    Raises:
        KeyError: an unknown weights name.
        ValueError: nothing that says how the weights were preprocessed.
    """
    if isinstance(weights, str):
        from ..weights.entries import get_weights

        weights = get_weights(weights)
    cfg = getattr(weights, "pretrained_cfg", None)
    if cfg is not None and not hasattr(weights, "input_size"):
        weights = cfg
    if hasattr(weights, "input_size"):
        return eval_transform(weights)
    entry = getattr(weights, "entry", None)  # a PretrainedCfg: its own preprocess wins, the entry has the upstream
    pre = getattr(weights, "preprocess", None)
    if upstream:
        source = entry if entry is not None else weights
        pre = getattr(source, "upstream_preprocess", None) or pre
    if pre is None:
        raise ValueError(f"no preprocessing known for {weights!r}; pass a Preprocess or a weights name")
    return eval_transform(pre)


__all__ = ["EvalTransform", "crop_offsets", "eval_transform", "resized_size", "transform_for"]
