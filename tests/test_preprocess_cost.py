"""The eval transform costs in proportion to the crop, not to the resized image (which grows with the aspect ratio).

A 10000x10 strip resized to a 256 short side is 256000x256 before the center crop keeps 256x256 of it. Beyond
``FULL_RESIZE_MAX_RATIO`` crops' worth of pixels, :mod:`mobilevit.data.transforms` resamples only the window the crop
keeps; these tests pin that nothing along the way is as large as the resized image (the sizes of the images the
resamplers produce, and the peak of Python-tracked memory, never the time), and that the window has the pixels of
the whole resize: within 2/255 for PIL (its two passes round through 8 bits), within 1/255 for OpenCV's arithmetic.
"""

from __future__ import annotations

import dataclasses
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mobilevit.data import transforms as T
from mobilevit.data.images import open_image
from mobilevit.data.transforms import transform_for
from mobilevit.weights.entries import WEIGHTS

# One tag per resize path: PIL bicubic (timm), PIL bilinear with a floor crop (transformers), OpenCV bilinear.
TAGS = ["fastvit_t8.apple_in1k", "mobilevitv2_100.hf_in1k", "mobilevit_xxs.orig_in1k"]
EXTREME = [(10_000, 10), (10, 10_000), (20_000, 20), (20, 20_000), (3, 500), (500, 3), (1, 300_000), (300_000, 1)]


@pytest.fixture(params=["cv2", "torch-fallback"])
def opencv(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "cv2":
        pytest.importorskip("cv2", reason="OpenCV (the opencv extra) is the ml-cvnets v0.1 reference")
    else:
        monkeypatch.setattr(T, "_cv2", lambda: None)
    yield request.param


def _strip(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _spy_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record the (width, height) of every image PIL, OpenCV and torch resample to during a call."""
    sizes: list[tuple[int, int]] = []
    pil_resize = Image.Image.resize

    def resize(self: Image.Image, size: tuple[int, int], *args, **kwargs) -> Image.Image:
        sizes.append(tuple(size))
        return pil_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)
    interpolate = F.interpolate

    def spy_interpolate(x: torch.Tensor, size: tuple[int, int], **kwargs) -> torch.Tensor:
        sizes.append((size[1], size[0]))
        return interpolate(x, size=size, **kwargs)

    monkeypatch.setattr(T.F, "interpolate", spy_interpolate)
    cv2 = T._cv2()
    if cv2 is not None:

        class Cv2:  # the module, with resize recorded
            def __getattr__(self, name: str):
                return getattr(cv2, name)

            @staticmethod
            def resize(arr: np.ndarray, size: tuple[int, int], **kwargs) -> np.ndarray:
                sizes.append(tuple(size))
                return cv2.resize(arr, size, **kwargs)

        monkeypatch.setattr(T, "_cv2", lambda: Cv2())
    return sizes


@pytest.mark.parametrize("size", EXTREME, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("tag", TAGS)
def test_extreme_aspect_ratios_cost_what_the_crop_keeps(
    tag: str, size: tuple[int, int], opencv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 407-byte 10000x10 PNG would be resized to 256000x256 (~200 MB) before the crop; 1x300000 is served too."""
    if opencv != "cv2" and WEIGHTS[tag].preprocess.resize_backend != "opencv":
        pytest.skip("the fallback only concerns the OpenCV path")
    t = transform_for(tag)
    img = _strip(*size)
    sizes = _spy_sizes(monkeypatch)
    crop_h, crop_w = t.input_size
    tracemalloc.start()
    try:
        x = t(img)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x.shape == (3, crop_h, crop_w) and torch.isfinite(x).all()
    assert all(w * h <= crop_h * crop_w for w, h in sizes), f"resampled to {sizes}"
    # numpy's arrays are traced: the window's integer passes are ~32 bytes per output value; the whole resize was
    # 3 bytes per pixel of 256000x256 at least
    assert peak < 64 * crop_h * crop_w * 3, f"peak {peak / 2**20:.1f} MiB"


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, Image.Image]]:
    skimage = pytest.importorskip("skimage", reason="scikit-image (dev extra) ships the package photos")
    d = Path(skimage.__file__).parent / "data"
    return [(n, open_image(d / n)) for n in ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]]


def _extreme_strips(photos: list[tuple[str, Image.Image]]) -> list[tuple[str, Image.Image]]:
    """Strips cut from photos, both orientations, that the window path takes and the whole resize can still afford:
    shrunk (1000x100), enlarged (500x40) and a few pixels thick (500x3, 300x1)."""
    out = []
    for name, img in photos:
        h = img.height
        wide = [img.resize((1000, 100)), img.crop((0, h // 2, 500, h // 2 + 40))]
        wide += [img.crop((0, h // 3, 500, h // 3 + 3)), img.crop((10, 5, 310, 6))]
        for s in wide:
            out += [
                (f"{name} {s.width}x{s.height}", s),
                (f"{name} {s.height}x{s.width}", s.transpose(Image.Transpose.TRANSPOSE)),
            ]
    return out


def _window_vs_whole(t: T.EvalTransform, img: Image.Image, monkeypatch: pytest.MonkeyPatch) -> int:
    with monkeypatch.context() as m:
        m.setattr(T, "FULL_RESIZE_MAX_RATIO", 10**12)
        whole = t.pixels(img).numpy().astype(int)
    return int(np.abs(t.pixels(img).numpy().astype(int) - whole).max())


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("tag", TAGS)
def test_window_has_the_pixels_of_the_whole_resize(
    tag: str, interpolation: str, opencv: str, photos: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    pre = dataclasses.replace(WEIGHTS[tag].preprocess, interpolation=interpolation)
    if opencv != "cv2" and pre.resize_backend != "opencv":
        pytest.skip("the fallback only concerns the OpenCV path")
    t = T.eval_transform(pre)
    crop = t.input_size[0] * t.input_size[1]
    levels = 1 if pre.resize_backend == "opencv" else 2
    # the whole resizes of 1-pixel strips are the slow reference, slowest in the torch fallback: one photo there
    strips = _extreme_strips(photos[:1] if opencv == "torch-fallback" else photos[:2])
    for name, img in strips:
        w, h = T.resized_size(*img.size, pre.resize_size)
        assert w * h > T.FULL_RESIZE_MAX_RATIO * crop, name  # the window path is the one under test
        assert _window_vs_whole(t, img, monkeypatch) <= levels, name


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
def test_opencv_window_is_opencv_on_photos(interpolation: str, photos: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forced onto ordinary photos, the window's written-out OpenCV arithmetic is cv2.resize's, to one level."""
    cv2 = pytest.importorskip("cv2")
    pre = dataclasses.replace(WEIGHTS["mobilevit_xxs.orig_in1k"].preprocess, interpolation=interpolation)
    crop_h, crop_w = pre.input_size
    for name, img in photos + [(f"{n}.T", i.transpose(Image.Transpose.TRANSPOSE)) for n, i in photos]:
        size = T.resized_size(*img.size, pre.resize_size)
        top, left = T.crop_offsets(*size, pre.input_size, pre.crop_offset)
        rows, cols = range(top, top + crop_h), range(left, left + crop_w)
        whole = cv2.resize(np.asarray(img), size, interpolation=T._CV2_INTERPOLATION[interpolation])
        window = T._window_opencv(img, size, rows, cols, interpolation)
        assert np.abs(window.astype(int) - whole[top : top + crop_h, left : left + crop_w]).max() <= 1, name


def test_ordinary_photos_are_resized_whole(photos: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below the ratio, the reference pipelines' own resize runs (the parity tests pin its pixels)."""
    monkeypatch.setattr(T, "_WINDOW_RESIZERS", {})
    for tag in TAGS:
        t = transform_for(tag)
        for _, img in photos:
            assert t(img).shape == (3, *t.input_size)


@pytest.mark.parametrize("size", [(1, 1), (3, 500), (500, 3), (1, 2), (257, 1)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("tag", TAGS)
def test_tiny_images_match_the_whole_resize(tag: str, size: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    t = transform_for(tag)
    levels = 1 if t.pre.resize_backend == "opencv" else 2
    assert _window_vs_whole(t, _strip(*size, seed=3), monkeypatch) <= levels
