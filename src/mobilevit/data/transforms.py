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

   (``resize_mode="exact"``, the segmentation models': resize to ``input_size`` itself, aspect not kept; step 2 then
   keeps everything);
2. center-crop ``input_size`` with the offset rounded as ``crop_offset`` (``"round"``: torchvision's
   ``int(round((size - crop) / 2))``; ``"floor"``: ``(size - crop) // 2``, ml-cvnets and transformers); an image
   smaller than the crop is first padded with black, centred, as torchvision does;

   steps 1 and 2 cost in proportion to what the crop keeps, not to the resized image, which grows with the aspect
   ratio (a 10000x10 strip would become 256000x256): up to :data:`FULL_RESIZE_MAX_RATIO` times the crop's pixels
   the whole image is resized and cropped, exactly as the reference pipelines do; beyond, only the crop window is
   resampled, with the filter weights of the whole resize (PIL: ``Image.resize(box=...)`` one axis at a time, in
   the order PIL uses; OpenCV: ``cv2.resize``'s fixed-point arithmetic written out in numpy), within one 8-bit
   level of resizing everything;
3. reorder the channels to ``channel_order`` (RGB -> BGR for weights trained on OpenCV-decoded images);
4. scale to [0, 1], subtract ``mean`` and divide by ``std`` (float32, the same operations in the same order as
   torchvision's ``ToTensor`` + ``Normalize``).

Steps 3 and 4 are :mod:`mobilevit.data.normalize`'s, which the training batches and the CoreML graph also use.

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
from torch import Tensor, nn

from ..errors import UsageError
from ..weights.entries import Preprocess, WeightsEntry, get_weights
from ..weights.pretrained import model_io
from .images import to_rgb
from .normalize import check_channel_order, normalize, to_channel_order, to_unit

if TYPE_CHECKING:
    from types import ModuleType

logger = logging.getLogger(__name__)

_PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# cv2.INTER_NEAREST / INTER_LINEAR / INTER_CUBIC (ml-cvnets v0.1 `_str_to_cv2_interpolation`)
_CV2_INTERPOLATION = {"nearest": 0, "bilinear": 1, "bicubic": 2}
# Above this many times the crop's pixels, only the window that the crop keeps is resampled. Photos up to an aspect
# ratio of about 6:1 stay below it and are resized whole, bit-exact with timm, transformers and ml-cvnets; the cost is
# then at most 8 crops' worth of pixels (0.5M for a 256x256 crop).
FULL_RESIZE_MAX_RATIO = 8
# PIL's filter supports in source pixels at scale 1 (libImaging/Resample.c); the window's source region adds these
_PIL_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}


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
    raise UsageError(f"crop_offset must be 'round' or 'floor', got {offset!r}")


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
    # torch's non-antialiased modes of the same names compute what cv2.resize computes (half-pixel centres, clamped
    # borders, bicubic a = -0.75)
    kwargs: dict[str, Any] = {} if interpolation == "nearest" else {"align_corners": False, "antialias": False}
    y = F.interpolate(x, size=(size[1], size[0]), mode=interpolation, **kwargs)
    y = y.round_().clamp_(0, 255).to(torch.uint8)  # OpenCV returns 8-bit pixels
    return y[0].permute(1, 2, 0).numpy()  # [1, 3, H, W] -> [H, W, 3]


_RESIZERS = {"pil": _resize_pil, "opencv": _resize_opencv}


def _source_span(src: int, resized: int, start: int, stop: int, support: float) -> tuple[int, int, float, float]:
    """The source pixels that resized pixels ``[start, stop)`` read, and where those pixels begin and end in them.

    Returns:
        (first, last) integer source pixels (the filter's support and a pixel of slack either side, clipped to the
        image) and the (begin, end) of the window in source coordinates relative to ``first``, as PIL's ``box``.
    """
    scale = src / resized
    reach = support * max(scale, 1.0) + 1.0  # the filter widens when shrinking (antialiasing)
    first = max(math.floor(start * scale - reach), 0)
    last = min(math.ceil(stop * scale + reach), src)
    return first, last, start * scale - first, stop * scale - first


def _box(src: tuple[int, int], size: tuple[int, int], rows: range, cols: range) -> tuple[float, float, float, float]:
    """The source box of resized pixels ``[rows, cols]``."""
    sx, sy = src[0] / size[0], src[1] / size[1]
    return cols.start * sx, rows.start * sy, cols.stop * sx, rows.stop * sy


def _window_pil(img: Image.Image, size: tuple[int, int], rows: range, cols: range, interpolation: str) -> np.ndarray:
    """``_resize_pil(img, size, interpolation)[rows, cols]`` resampling only those pixels.

    ``Image.resize(box=...)`` computes the same filter weights as the whole resize (the box's offset is a float);
    the source is first cut to the window's reach so that the box stays small and exact in PIL's float32. PIL resizes
    in two passes with an 8-bit image between them, and its order changes the result by several levels: whole
    resizes of tall images that shrink run the vertical pass first (Pillow 13), so the window does the same.
    """
    (w, h), resample = size, _PIL_INTERPOLATION[interpolation]
    if interpolation == "nearest":  # one affine pass, from a region around the box
        bx0, by0, bx1, by1 = _box(img.size, size, rows, cols)
        x0, y0 = math.floor(bx0), math.floor(by0)
        region = img.crop((x0, y0, min(math.ceil(bx1) + 1, img.width), min(math.ceil(by1) + 1, img.height)))
        return np.asarray(region.resize((len(cols), len(rows)), resample, box=(bx0 - x0, by0 - y0, bx1 - x0, by1 - y0)))
    support = _PIL_SUPPORT[interpolation]
    x0, x1, bx0, bx1 = _source_span(img.width, w, cols.start, cols.stop, support)
    y0, y1, by0, by1 = _source_span(img.height, h, rows.start, rows.stop, support)
    region = img.crop((x0, y0, x1, y1))
    if img.height > img.width and h < img.height:  # vertical pass first
        region = region.resize((region.width, len(rows)), resample, box=(0, by0, region.width, by1))
        region = region.resize((len(cols), len(rows)), resample, box=(bx0, 0, bx1, len(rows)))
    else:
        region = region.resize((len(cols), region.height), resample, box=(bx0, 0, bx1, region.height))
        region = region.resize((len(cols), len(rows)), resample, box=(0, by0, len(cols), by1))
    return np.asarray(region)


def _cv2_taps(src: int, resized: int, window: range, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """Source pixels [N, K] and 11-bit fixed-point weights [N, K] that ``cv2.resize`` gives resized pixels ``window``.

    As OpenCV's ``resize`` computes them (imgproc/src/resize.cpp): pixel centres at ``(d + 0.5) * scale - 0.5`` in
    float32, borders replicated, bicubic with a = -0.75, weights rounded to multiples of 1/2048; INTER_NEAREST takes
    ``floor(d * scale)``.
    """
    d = np.arange(window.start, window.stop, dtype=np.float64)
    scale = 1.0 / (resized / src)  # OpenCV's scale_x = 1 / inv_scale_x
    if interpolation == "nearest":
        return np.minimum(np.floor(d * scale), src - 1).astype(np.intp)[:, None], np.full((len(d), 1), 2048)
    fx = ((d + 0.5) * scale - 0.5).astype(np.float32)
    sx = np.floor(fx)
    fx, sx = (fx - sx).astype(np.float32), sx.astype(np.intp)
    one = np.float32(1.0)
    if interpolation == "bilinear":
        low, high = sx < 0, sx >= src - 1  # OpenCV takes the edge pixel whole there
        fx[low | high] = 0.0
        sx[low], sx[high] = 0, src - 1
        weights = np.stack([one - fx, fx], 1)
        taps = sx[:, None] + np.arange(2)
    else:  # interpolateCubic, float32, in OpenCV's order of operations
        a = np.float32(-0.75)
        x1, x2 = fx + one, one - fx
        w0 = ((a * x1 - np.float32(5.0) * a) * x1 + np.float32(8.0) * a) * x1 - np.float32(4.0) * a
        w1 = ((a + np.float32(2.0)) * fx - (a + np.float32(3.0))) * fx * fx + one
        w2 = ((a + np.float32(2.0)) * x2 - (a + np.float32(3.0))) * x2 * x2 + one
        weights = np.stack([w0, w1, w2, one - w0 - w1 - w2], 1)
        taps = sx[:, None] + np.arange(-1, 3)
    return np.clip(taps, 0, src - 1), np.rint(weights * np.float32(2048.0)).astype(np.int64)


def _window_opencv(img: Image.Image, size: tuple[int, int], rows: range, cols: range, interpolation: str) -> np.ndarray:
    """``cv2.resize(np.asarray(img), size)[rows, cols]`` computing only those pixels, with or without OpenCV.

    ``cv2.resize`` cannot start its sampling grid between two pixels, so its arithmetic is written out: integer
    horizontal sums of 11-bit weights, then the vertical pass rounded as OpenCV's SIMD loop does (bilinear) or as
    its scalar one (bicubic). On photos this is bit-exact for nearest, for 99.9% of bilinear pixels and within one
    level everywhere.
    """
    w, h = size
    ty, wy = _cv2_taps(img.height, h, rows, interpolation)
    tx, wx = _cv2_taps(img.width, w, cols, interpolation)
    y0, x0 = int(ty.min()), int(tx.min())  # only the source pixels the window reads become an array
    arr = np.asarray(img.crop((x0, y0, int(tx.max()) + 1, int(ty.max()) + 1)))
    ty, tx = ty - y0, tx - x0
    if interpolation == "nearest":
        return arr[ty[:, 0]][:, tx[:, 0]]
    used, where = np.unique(ty, return_inverse=True)  # the source rows the window reads
    src = arr[used][:, tx].astype(np.int64)  # [R, W, 3] -> [R, N, K, 3]
    horizontal = np.einsum("rnkc,nk->rnc", src, wx)  # [R, N, 3], fixed point x 2048
    s = horizontal[where.reshape(ty.shape)]  # [M, K, N, 3]: the rows each output row reads
    wy = wy[:, :, None, None]
    if interpolation == "bilinear":  # VResizeLinearVec_32s8u: ((S >> 4) * b) >> 16, summed, + 2 >> 2
        return np.clip(((((s >> 4) * wy) >> 16).sum(1) + 2) >> 2, 0, 255).astype(np.uint8)
    return np.clip(((s * wy).sum(1) + (1 << 21)) >> 22, 0, 255).astype(np.uint8)  # FixedPtCast<int, uchar, 22>


_WINDOW_RESIZERS = {"pil": _window_pil, "opencv": _window_opencv}


def _crop_window(resized: int, crop: int, offset: int) -> tuple[range, int]:
    """The resized pixels that a crop starting at ``offset`` (in the image padded to the crop) keeps, and where
    they land in the crop: ``(range, first)``."""
    pad = max(crop - resized, 0) // 2  # torchvision pads a too small image with black, centred
    start = offset - pad
    kept = range(min(max(start, 0), resized), min(max(start + crop, 0), resized))
    return kept, kept.start - start


@dataclass(frozen=True)
class EvalTransform:
    """``PIL image -> [3, H, W] float32 tensor`` as the weights described by ``pre`` expect; picklable.

    Attributes:
        pre: the preprocessing.
    """

    pre: Preprocess

    def __post_init__(self) -> None:
        pre = self.pre
        if pre.resize_backend not in _RESIZERS:
            raise UsageError(f"resize_backend must be one of {sorted(_RESIZERS)}, got {pre.resize_backend!r}")
        if pre.interpolation not in _PIL_INTERPOLATION:
            raise UsageError(f"unknown interpolation {pre.interpolation!r}")
        if pre.resize_backend == "opencv" and pre.interpolation not in _CV2_INTERPOLATION:
            raise UsageError(f"interpolation {pre.interpolation!r} has no OpenCV equivalent here")
        check_channel_order(pre.channel_order)
        crop_offsets(1, 1, (1, 1), pre.crop_offset)  # validates the name

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the output."""
        return tuple(self.pre.input_size)  # type: ignore[return-value]

    def _array(self, img: Image.Image) -> np.ndarray:
        """Resized, cropped, reordered ``uint8`` pixels, ``[3, H, W]`` contiguous."""
        if img.mode != "RGB":
            img = to_rgb(img)
        pre = self.pre
        backend = pre.resize_backend
        crop = self.input_size
        exact = (crop[1], crop[0])  # (W, H) of an exact resize
        size = exact if pre.resize_mode == "exact" else resized_size(img.width, img.height, pre.resize_size)
        (w, h), (crop_h, crop_w) = size, crop
        # the crop's (top, left) in the resized image, padded with black to the crop where it is smaller
        top, left = crop_offsets(max(w, crop_w), max(h, crop_h), crop, pre.crop_offset)
        (rows, y), (cols, x) = _crop_window(h, crop_h, top), _crop_window(w, crop_w, left)
        if img.size == size:  # nothing to resample: cut the window out before converting to numpy
            kept = np.asarray(img.crop((cols.start, rows.start, cols.stop, rows.stop)))
        elif w * h <= FULL_RESIZE_MAX_RATIO * crop_h * crop_w:
            kept = _RESIZERS[backend](img, size, pre.interpolation)[rows.start : rows.stop, cols.start : cols.stop]
        else:
            kept = _WINDOW_RESIZERS[backend](img, size, rows, cols, pre.interpolation)
        arr = kept
        if kept.shape[:2] != crop:
            arr = np.zeros((crop_h, crop_w, 3), np.uint8)
            arr[y : y + len(rows), x : x + len(cols)] = kept
        arr = to_channel_order(arr, pre, axis=-1)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))  # [H, W, 3] -> [3, H, W]

    def pixels(self, img: Image.Image) -> Tensor:
        """The ``uint8`` ``[3, H, W]`` tensor before scaling, in ``channel_order``; finish with :meth:`normalize`."""
        return torch.from_numpy(self._array(img))

    def normalize(self, x: Tensor) -> Tensor:
        """``uint8 [..., 3, H, W]`` (e.g. a collated batch of :meth:`pixels`) -> float32, scaled and normalized."""
        if x.dtype != torch.uint8:
            raise TypeError(f"normalize expects the uint8 output of pixels(), got {x.dtype}")
        return normalize(to_unit(x), self.pre, reorder=False)  # the pixels are in channel_order already

    def __call__(self, img: Image.Image) -> Tensor:
        # numpy for the per-image arithmetic: the same IEEE float32 operations as torch, without torch's
        # thread-pool overhead on one small channels-last tensor (measured 10x to 100x slower with 2 busy threads)
        return torch.from_numpy(normalize(to_unit(self._array(img)), self.pre, reorder=False))


def eval_transform(preprocess: Preprocess) -> EvalTransform:
    """The eval transform of a weights entry's preprocessing: ``PIL image -> [3, H, W] float32 tensor``.

    Non-RGB images are converted with :func:`~mobilevit.data.images.to_rgb`; decode files with
    :func:`~mobilevit.data.images.open_image`, which also applies the EXIF orientation.

    Args:
        preprocess: the steps (size, resize, crop, channel order, normalization) the weights expect.
    """
    return EvalTransform(preprocess)


def transform_for(weights: str | WeightsEntry | Preprocess | nn.Module, *, upstream: bool = False) -> EvalTransform:
    """The eval transform for a weights name (``"arch.tag"`` or a bare architecture), an entry, or a model.

    Args:
        weights: a weights name, a :class:`~mobilevit.weights.entries.WeightsEntry`, a ``Preprocess``, or a model of
            this package (its preprocessing by :func:`~mobilevit.weights.model_io`).
        upstream: use the entry's ``upstream_preprocess`` (the source's own pipeline, e.g. the transformers
            processor that flips MobileViTV2's input to BGR) when it has one; for parity checks, not for accuracy.
            A model's entry is the one it was loaded from.

    Raises:
        KeyError: an unknown weights name.
        ValueError: an argument of none of these types.
    """
    if isinstance(weights, str):
        weights = get_weights(weights)
    if isinstance(weights, Preprocess):
        return eval_transform(weights)
    if isinstance(weights, WeightsEntry):
        return eval_transform((upstream and weights.upstream_preprocess) or weights.preprocess)
    if isinstance(weights, nn.Module):
        io = model_io(weights)
        upstream_pre = get_weights(io.weights).upstream_preprocess if upstream and io.weights else None
        return eval_transform(upstream_pre or io.preprocess)
    raise UsageError(
        f"no preprocessing known for {type(weights).__name__}; pass a weights name, a WeightsEntry, a Preprocess or "
        "a model of this package"
    )


__all__ = ["EvalTransform", "crop_offsets", "eval_transform", "resized_size", "transform_for"]
