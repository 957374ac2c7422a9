"""Preprocessing parity on real photos: our eval transform against the pipelines the weights were published with.

- timm: ``resolve_data_config`` + ``create_transform`` from every timm tag's pretrained cfg (no weights downloaded);
- transformers: ``MobileViTImageProcessor`` configured as each ``hf_in1k`` entry's upstream pipeline, BGR flip
  included; its PIL backend must agree to 1/255 (it agrees exactly), its torchvision backend (the default class in
  transformers 5) to 2/255 with almost every pixel within 1/255, because torchvision's uint8 antialiased resize
  rounds differently from PIL's on a few pixels;
- ml-cvnets v0.1 (MobileViT v1, MobileViTv3 XXS/XS/S): ``cv2.imread`` + ``cv2.resize`` + floor-offset crop, written
  out here from apple/ml-cvnets@d38a116 ``data/transforms/image.py``; needs OpenCV (the ``opencv`` extra).

Photos: ``../shared/data/imagenet-samples-100`` (skipped when absent) and the photos inside scikit-image's package
(skipped without it), plus lossless crops and transposes of them for odd sizes in both orientations. The tolerance is
1/255 in [0, 1] pixel units: the difference multiplied back by ``std``. The last tests show that it is tight enough
to catch a missing BGR flip, a one-pixel crop shift, the wrong crop-offset rounding and a PIL resize in place of
OpenCV's.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilevit.data import transforms as T
from mobilevit.data.images import open_image
from mobilevit.data.transforms import eval_transform, transform_for
from mobilevit.weights import catalog as C
from mobilevit.weights import entries as E
from mobilevit.weights.entries import WEIGHTS, Preprocess

TOL = 1 / 255 + 1e-6
TIMM_TAGS = sorted(n for n, e in WEIGHTS.items() if e.source == "timm")
HF_TAGS = sorted(n for n, e in WEIGHTS.items() if e.source == "transformers")
OPENCV_TAGS = sorted(n for n, e in WEIGHTS.items() if e.preprocess.resize_backend == "opencv")
# What the transformers converters saved as preprocessor_config.json (MobileViTImageProcessor(crop_size=256,
# size=288) with the defaults of the time): the recorded upstream pipeline must say the same.
HF_SAVED = {"shortest_edge": 288, "crop": (256, 256), "resample": "bilinear", "flip": True}
# the DeepLabV3 converters saved MobileViTImageProcessor(crop_size=512, size=544)
HF_SAVED_SEG = {**HF_SAVED, "shortest_edge": 544, "crop": (512, 512)}

Images = list[tuple[str, Image.Image]]


# ---------------------------------------------------------------------------------------------------------------------
# Photos
# ---------------------------------------------------------------------------------------------------------------------
def _skimage_dir() -> Path:
    skimage = pytest.importorskip("skimage", reason="scikit-image (dev extra) ships the package photos")
    return Path(skimage.__file__).parent / "data"


@pytest.fixture(scope="module")
def package_files() -> list[Path]:
    """Photos shipped inside scikit-image: RGB PNGs and JPEGs with odd sizes, and one grayscale PNG."""
    d = _skimage_dir()
    names = ["chelsea.png", "coffee.png", "astronaut.png", "camera.png", "rocket.jpg", "motorcycle_left.png"]
    return [d / n for n in names]


@pytest.fixture(scope="module")
def package_images(package_files: list[Path]) -> Images:
    """The package photos, plus lossless crops/transposes: odd sizes in both orientations, small and large."""
    imgs = [(p.name, open_image(p)) for p in package_files]
    by_name = dict(imgs)
    chelsea, coffee, moto = by_name["chelsea.png"], by_name["coffee.png"], by_name["motorcycle_left.png"]
    imgs += [
        ("chelsea.T 300x451", chelsea.transpose(Image.Transpose.TRANSPOSE)),
        ("coffee 599x399", coffee.crop((1, 0, 600, 399))),
        ("coffee.T 399x599", coffee.crop((1, 0, 600, 399)).transpose(Image.Transpose.TRANSPOSE)),
        ("coffee 97x131 (upscaled)", coffee.crop((250, 100, 347, 231))),
        ("motorcycle.T 500x741", moto.transpose(Image.Transpose.TRANSPOSE)),
        ("hubble 1000x872", open_image(_skimage_dir() / "hubble_deep_field.jpg")),
    ]
    return imgs


@pytest.fixture(scope="module")
def sample_files(shared: Path) -> list[Path]:
    folder = shared / "data" / "imagenet-samples-100"
    files = sorted(folder.glob("*.JPEG"))
    if len(files) != 100:
        pytest.skip(f"{folder}: expected 100 photos, found {len(files)}")
    return files


@pytest.fixture(scope="module")
def sample_images(sample_files: list[Path]) -> Images:
    return [(p.name, open_image(p)) for p in sample_files]


def _max_pixel_diff(ours: torch.Tensor, theirs: torch.Tensor, std: tuple[float, ...]) -> float:
    """Max |difference| in [0, 1] pixel units: normalized tensors differ by (pixel difference) / std."""
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert ours.dtype == torch.float32
    return float(((ours - theirs.float()).abs() * torch.tensor(std).view(3, 1, 1)).max())


def _worst(imgs: Images, ours: Callable, theirs: Callable, std: tuple[float, ...]) -> tuple[float, str]:
    return max((_max_pixel_diff(ours(img), theirs(img), std), name) for name, img in imgs)


# ---------------------------------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------------------------------
def _timm_transform(tag: str) -> tuple[Callable, dict]:
    pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    cfg = resolve_data_config({}, pretrained_cfg=get_pretrained_cfg(tag).to_dict())
    return create_transform(**cfg, is_training=False), cfg


def _distinct(tags: list[str], attr: str = "preprocess") -> list[str]:
    """One tag per distinct preprocessing, so the 100-photo runs do not repeat identical pipelines."""
    seen: dict[Preprocess, str] = {}
    for t in tags:
        seen.setdefault(getattr(WEIGHTS[t], attr) or WEIGHTS[t].preprocess, t)
    return sorted(seen.values())


@pytest.mark.parametrize("tag", TIMM_TAGS)
def test_timm_parity_every_tag(tag: str, package_images: Images) -> None:
    theirs, cfg = _timm_transform(tag)
    worst, name = _worst(package_images, transform_for(tag), theirs, cfg["std"])
    assert worst <= TOL, f"{tag}: {worst * 255:.2f}/255 on {name}"


@pytest.mark.parametrize("tag", _distinct(TIMM_TAGS))
def test_timm_parity_imagenet_samples(tag: str, sample_images: Images) -> None:
    theirs, cfg = _timm_transform(tag)
    worst, name = _worst(sample_images, transform_for(tag), theirs, cfg["std"])
    assert worst <= TOL, f"{tag}: {worst * 255:.2f}/255 on {name}"


@pytest.mark.parametrize("tag", ["mobilevit_xxs.cvnets_in1k", "mobilevitv2_050.cvnets_in1k", "mobileone_s0.apple_in1k"])
def test_timm_model_data_config_is_the_pretrained_cfg(tag: str) -> None:
    """``resolve_model_data_config(model)`` (how timm users get it) gives the config the parity tests use."""
    timm = pytest.importorskip("timm")
    from timm.data import resolve_model_data_config

    model = timm.create_model(tag, pretrained=False)  # builds the architecture only: no download
    assert resolve_model_data_config(model) == _timm_transform(tag)[1]


@pytest.mark.parametrize(
    ("size", "crop_pct", "interpolation", "mean", "std"),
    [
        (160, 0.875, "bilinear", E.IMAGENET_MEAN, E.IMAGENET_STD),
        (192, 0.9, "bicubic", E.NO_MEAN, E.NO_STD),
        (224, 0.95, "bicubic", E.IMAGENET_MEAN, E.IMAGENET_STD),
        (320, 1.0, "bilinear", E.NO_MEAN, E.NO_STD),
    ],
)
def test_timm_parity_other_sizes(
    size: int, crop_pct: float, interpolation: str, mean: tuple, std: tuple, package_images: Images
) -> None:
    pytest.importorskip("timm")
    from timm.data import create_transform

    theirs = create_transform((3, size, size), crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std)
    pre = Preprocess((size, size), math.floor(size / crop_pct), crop_pct, interpolation, mean, std, "RGB")
    worst, name = _worst(package_images, eval_transform(pre), theirs, std)
    assert worst <= TOL, f"{size}: {worst * 255:.2f}/255 on {name}"


# ---------------------------------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------------------------------
def _hf_backends() -> dict[str, type]:
    """The PIL and torchvision implementations of MobileViTImageProcessor (names differ in transformers 4 and 5)."""
    transformers = pytest.importorskip("transformers")
    default = transformers.MobileViTImageProcessor
    try:
        from transformers.models.mobilevit.image_processing_pil_mobilevit import MobileViTImageProcessorPil
    except ImportError:  # transformers 4: the default class is the PIL/numpy one, the torchvision one is "Fast"
        fast = getattr(transformers, "MobileViTImageProcessorFast", None)
        return {"pil": default, **({"torchvision": fast} if fast else {})}
    return {"pil": MobileViTImageProcessorPil, "torchvision": default}


def _hf_transform(pre: Preprocess, backend: str) -> Callable[[Image.Image], torch.Tensor]:
    """The processor configured from a recorded pipeline (shortest edge, crop, resample, flip)."""
    from transformers.image_utils import PILImageResampling

    cls = _hf_backends().get(backend) or pytest.skip(f"no {backend} MobileViTImageProcessor in this transformers")
    resample = {"bilinear": PILImageResampling.BILINEAR, "bicubic": PILImageResampling.BICUBIC}[pre.interpolation]
    processor = cls(
        size={"shortest_edge": pre.resize_size},
        crop_size={"height": pre.input_size[0], "width": pre.input_size[1]},
        resample=resample,
        do_flip_channel_order=pre.channel_order == "BGR",
        do_rescale=True,
        do_normalize=False,
    )
    return lambda img: torch.as_tensor(np.asarray(processor(img, return_tensors="pt")["pixel_values"][0]))


def _hf_check(imgs: Images, pre: Preprocess, backend: str) -> None:
    ours, theirs = eval_transform(pre), _hf_transform(pre, backend)
    diffs = [(ours(img) - theirs(img)).abs() for _, img in imgs]
    worst, name = max((float(d.max()), n) for d, (n, _) in zip(diffs, imgs, strict=True))
    if backend == "pil":
        assert worst <= TOL, f"{worst * 255:.2f}/255 on {name}"
    else:  # torchvision's uint8 antialiased resize rounds a handful of pixels differently from PIL's
        beyond = sum(int((d > TOL).sum()) for d in diffs) / sum(d.numel() for d in diffs)
        assert worst <= 2 / 255 + 1e-6, f"{worst * 255:.2f}/255 on {name}"
        assert beyond < 1e-5, f"{beyond:.2e} of the pixels differ by more than 1/255"


@pytest.mark.parametrize("tag", HF_TAGS)
def test_hf_upstream_pipeline_is_what_the_converters_saved(tag: str) -> None:
    up = WEIGHTS[tag].upstream_preprocess or WEIGHTS[tag].preprocess
    saved = HF_SAVED_SEG if WEIGHTS[tag].task == "segmentation" else HF_SAVED
    assert (up.resize_size, up.input_size, up.interpolation) == (
        saved["shortest_edge"],
        saved["crop"],
        saved["resample"],
    )
    assert (up.channel_order == "BGR") is saved["flip"]
    assert up.crop_offset == "floor" and up.resize_backend == "pil" and up.mean == E.NO_MEAN and up.std == E.NO_STD


@pytest.mark.parametrize("backend", ["pil", "torchvision"])
@pytest.mark.parametrize("tag", HF_TAGS)
def test_hf_parity_every_entry(tag: str, backend: str, package_images: Images) -> None:
    up = WEIGHTS[tag].upstream_preprocess or WEIGHTS[tag].preprocess
    assert transform_for(tag, upstream=True).pre == up
    _hf_check(package_images, up, backend)


@pytest.mark.parametrize("backend", ["pil", "torchvision"])
@pytest.mark.parametrize("tag", _distinct(HF_TAGS, "upstream_preprocess"))
def test_hf_parity_imagenet_samples(tag: str, backend: str, sample_images: Images) -> None:
    _hf_check(sample_images, WEIGHTS[tag].upstream_preprocess or WEIGHTS[tag].preprocess, backend)


def test_hf_v2_entry_is_the_processor_without_the_flip(package_images: Images) -> None:
    """mobilevitv2_100.hf_in1k feeds RGB (its weights were trained on RGB): the processor with the flip turned off."""
    e = WEIGHTS["mobilevitv2_100.hf_in1k"]
    assert e.preprocess == dataclasses.replace(e.upstream_preprocess, channel_order="RGB")
    _hf_check(package_images, e.preprocess, "pil")


# ---------------------------------------------------------------------------------------------------------------------
# ml-cvnets v0.1 (OpenCV)
# ---------------------------------------------------------------------------------------------------------------------
def _cvnets_v01(
    source: Path | Image.Image, size: int = 256, resize: int = 288, segmentation: bool = False
) -> torch.Tensor:
    """ml-cvnets@d38a116 validation: cv2.imread (BGR), _resize_fn (cv2 INTER_LINEAR), CenterCrop, NumpyToTensor.

    ``segmentation``: its segmentation evaluation instead (``pascal_voc.py`` evaluation_transforms with
    resize_input_images): ``_resize_fn`` to exactly ``size`` x ``size``, no crop.
    """
    cv2 = pytest.importorskip("cv2", reason="OpenCV (the opencv extra) is the ml-cvnets v0.1 reference")
    if isinstance(source, Path):
        img = cv2.imread(str(source), cv2.IMREAD_COLOR)
    else:
        img = np.ascontiguousarray(np.asarray(source)[..., ::-1])  # a derived image: RGB -> BGR
    if segmentation:
        img = cv2.resize(img, dsize=(size, size), interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div(255.0)
    h, w = img.shape[:2]
    if not ((w <= h and w == resize) or (h <= w and h == resize)):
        size_h, size_w = (int(resize * h / w), resize) if w < h else (resize, int(resize * w / h))
        img = cv2.resize(img, dsize=(size_w, size_h), interpolation=cv2.INTER_LINEAR)
    h, w = img.shape[:2]
    i, j = (h - size) // 2, (w - size) // 2
    img = np.ascontiguousarray(img[i : i + size, j : j + size].transpose(2, 0, 1))
    return torch.from_numpy(img).float().div(255.0)


def _cvnets_cases(files: list[Path], imgs: Images) -> list[tuple[str, Image.Image, Path | Image.Image]]:
    """(name, our decoded image, what the reference decodes): files by cv2.imread itself, derived images as arrays."""
    by_file = {p.name: p for p in files}
    return [(n, img, by_file.get(n, img)) for n, img in imgs]


@pytest.mark.parametrize("fallback", [False, True], ids=["cv2", "torch-fallback"])
@pytest.mark.parametrize("tag", OPENCV_TAGS)
def test_cvnets_opencv_parity(
    tag: str, fallback: bool, package_files: list[Path], package_images: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("cv2")
    if fallback:
        monkeypatch.setattr(T, "_cv2", lambda: None)
    pre = WEIGHTS[tag].preprocess
    assert (pre.channel_order, pre.crop_offset, pre.interpolation) == ("BGR", "floor", "bilinear")
    ours = transform_for(tag)
    cases = _cvnets_cases(package_files, package_images)
    # segmentation and detection: the whole image resized (to 512 / 320), as cvnets' v0.1 evaluation did
    dense = WEIGHTS[tag].task in ("segmentation", "detection")
    size = pre.input_size[0]
    reference = functools.partial(_cvnets_v01, size=size, segmentation=True) if dense else _cvnets_v01
    worst, name = max((_max_pixel_diff(ours(img), reference(ref), pre.std), n) for n, img, ref in cases)
    assert worst <= (TOL if fallback else 0.0), f"{worst * 255:.2f}/255 on {name}"


@pytest.mark.parametrize("fallback", [False, True], ids=["cv2", "torch-fallback"])
def test_cvnets_opencv_parity_imagenet_samples(
    fallback: bool, sample_files: list[Path], sample_images: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("cv2")
    if fallback:
        monkeypatch.setattr(T, "_cv2", lambda: None)
    ours = eval_transform(C.CVNETS_V1)
    cases = _cvnets_cases(sample_files, sample_images)
    worst, name = max((_max_pixel_diff(ours(img), _cvnets_v01(ref), E.NO_STD), n) for n, img, ref in cases)
    assert worst <= (TOL if fallback else 0.0), f"{worst * 255:.2f}/255 on {name}"


# ---------------------------------------------------------------------------------------------------------------------
# The tolerance is tight enough to fail
# ---------------------------------------------------------------------------------------------------------------------
def _color(imgs: Images) -> Images:
    return [(n, i) for n, i in imgs if n != "camera.png"]  # a grayscale photo is its own BGR flip


def test_missing_bgr_flip_fails(package_images: Images) -> None:
    ours, theirs = eval_transform(C.HF_PROCESSOR), _hf_transform(C.HF_PROCESSOR, "pil")
    for name, img in _color(package_images):
        assert _max_pixel_diff(ours(img).flip(0), theirs(img), E.NO_STD) > 0.1, name


@pytest.mark.parametrize("tag", ["mobilevit_xxs.cvnets_in1k", "fastvit_t8.apple_in1k", "mobilevit_xxs.hf_in1k"])
def test_one_pixel_crop_shift_fails(tag: str, package_images: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    if WEIGHTS[tag].source == "timm":
        theirs, std = _timm_transform(tag)[0], WEIGHTS[tag].preprocess.std
    else:
        theirs, std = _hf_transform(WEIGHTS[tag].preprocess, "pil"), E.NO_STD
    ours = transform_for(tag)
    offsets = T.crop_offsets
    for dy, dx in [(0, 1), (1, 0)]:
        monkeypatch.setattr(T, "crop_offsets", lambda *a, dy=dy, dx=dx: tuple(np.add(offsets(*a), (dy, dx))))
        for name, img in package_images:
            assert _max_pixel_diff(ours(img), theirs(img), std) > 4 * TOL, (name, dy, dx)


def _odd_margin_crop(img: Image.Image, pre: Preprocess) -> Image.Image:
    """A crop of ``img`` whose long side, once resized, leaves a margin where round and floor halve differently."""
    for w in range(img.width, img.height, -1):
        long_side = T.resized_size(w, img.height, pre.resize_size)[0]
        if T.crop_offsets(long_side, 1, (1, pre.input_size[1]), "round") != T.crop_offsets(
            long_side, 1, (1, pre.input_size[1]), "floor"
        ):
            return img.crop((0, 0, w, img.height))
    raise AssertionError("no crop with an odd margin")


@pytest.mark.parametrize("tag", ["mobilevit_xxs.cvnets_in1k", "mobilevit_xxs.hf_in1k"])
def test_wrong_crop_offset_rounding_fails(tag: str, package_images: Images) -> None:
    pre = WEIGHTS[tag].preprocess
    theirs = _timm_transform(tag)[0] if WEIGHTS[tag].source == "timm" else _hf_transform(pre, "pil")
    img = _odd_margin_crop(dict(package_images)["coffee.png"], pre)
    wrong = dataclasses.replace(pre, crop_offset="floor" if pre.crop_offset == "round" else "round")
    assert _max_pixel_diff(eval_transform(pre)(img), theirs(img), pre.std) <= TOL
    assert _max_pixel_diff(eval_transform(wrong)(img), theirs(img), pre.std) > 4 * TOL


def test_pil_resize_instead_of_opencv_fails(package_files: list[Path], package_images: Images) -> None:
    """Antialiasing matters when shrinking: PIL's bilinear is not ml-cvnets' cv2.resize."""
    pil = eval_transform(dataclasses.replace(C.CVNETS_V1, resize_backend="pil"))
    cases = _cvnets_cases(package_files, package_images)
    shrunk = [(n, img, ref) for n, img, ref in cases if min(img.size) > C.CVNETS_V1.resize_size]
    assert shrunk
    for name, img, ref in shrunk:
        assert _max_pixel_diff(pil(img), _cvnets_v01(ref), E.NO_STD) > 4 * TOL, name


# ---------------------------------------------------------------------------------------------------------------------
# The transform object
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tag", _distinct(list(WEIGHTS)))
def test_batched_pixels_then_normalize_is_identical(tag: str, package_images: Images) -> None:
    t = transform_for(tag)
    imgs = [img for _, img in package_images]
    one_by_one = torch.stack([t(img) for img in imgs])
    pixels = torch.stack([t.pixels(img) for img in imgs])
    assert pixels.dtype == torch.uint8 and pixels.shape == (len(imgs), 3, *t.input_size)
    assert torch.equal(t.normalize(pixels), one_by_one)
    with pytest.raises(TypeError, match="uint8"):
        t.normalize(one_by_one)


def test_transform_for_names_entries_and_configs() -> None:
    entry = WEIGHTS["mobilevitv2_100.hf_in1k"]
    assert transform_for("mobilevitv2_100.hf_in1k").pre == entry.preprocess
    assert transform_for(entry, upstream=True).pre == entry.upstream_preprocess
    assert transform_for("fastvit_t8").pre == WEIGHTS[E.default_weights("fastvit_t8")].preprocess
    assert transform_for(C.CVNETS_V1).pre == C.CVNETS_V1
    assert transform_for(WEIGHTS["fastvit_t8.apple_in1k"], upstream=True).pre == C.FASTVIT  # no upstream: same
    with pytest.raises(KeyError):
        transform_for("mobilevit_xxs.nope")
    with pytest.raises(ValueError, match="no preprocessing"):
        transform_for(object())


def test_transform_for_models() -> None:
    """A model's transform is its checkpoint's own preprocessing, else its entry's, else its default weights'."""
    from mobilevit import create_model
    from mobilevit.weights import PretrainedCfg

    model = create_model("mobilevitv2_050")  # random weights: the default entry's preprocessing
    assert transform_for(model).pre == WEIGHTS[E.default_weights("mobilevitv2_050")].preprocess == C.TIMM_V2
    entry = WEIGHTS["mobilevitv2_100.hf_in1k"]
    model.pretrained_cfg = PretrainedCfg(arch="mobilevitv2_050", source="x", entry=entry)
    assert transform_for(model).pre == entry.preprocess == C.HF_PROCESSOR_RGB
    assert transform_for(model, upstream=True).pre == entry.upstream_preprocess == C.HF_PROCESSOR
    model.pretrained_cfg = PretrainedCfg(arch="mobilevitv2_050", source="x", entry=entry, preprocess=C.CVNETS_V2_384)
    assert transform_for(model).pre == C.CVNETS_V2_384
    assert transform_for(torch.nn.DataParallel(model)).pre == C.CVNETS_V2_384


def test_transform_pickles_for_dataloader_workers(package_images: Images) -> None:
    t = transform_for("mobilevit_xxs.orig_in1k")
    img = package_images[0][1]
    assert torch.equal(pickle.loads(pickle.dumps(t))(img), t(img))


def test_non_rgb_images_are_converted(package_images: Images) -> None:
    t = transform_for("mobileone_s0.apple_in1k")
    img = dict(package_images)["chelsea.png"]
    assert torch.equal(t(img.convert("RGBA")), t(img))
    gray = img.convert("L")
    assert torch.equal(t(gray), t(gray.convert("RGB")))


@pytest.mark.parametrize("tag", _distinct(list(WEIGHTS)))
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (3, 2), (1, 40), (257, 255)])
def test_any_size_gives_the_input_size(tag: str, size: tuple[int, int]) -> None:
    t = transform_for(tag)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    x = t(img)
    assert x.shape == (3, *t.input_size) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_tiny_images_match_timm() -> None:
    theirs, cfg = _timm_transform("fastvit_t8.apple_in1k")
    ours = transform_for("fastvit_t8.apple_in1k")
    rng = np.random.default_rng(1)
    for w, h in [(1, 1), (2, 3), (3, 2), (5, 1)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert _max_pixel_diff(ours(img), theirs(img), cfg["std"]) <= TOL, (w, h)


def test_bad_preprocess_is_refused() -> None:
    with pytest.raises(ValueError, match="resize_backend"):
        eval_transform(dataclasses.replace(C.FASTVIT, resize_backend="skimage"))
    with pytest.raises(ValueError, match="crop_offset"):
        eval_transform(dataclasses.replace(C.FASTVIT, crop_offset="ceil"))
    with pytest.raises(ValueError, match="channel_order"):
        eval_transform(dataclasses.replace(C.FASTVIT, channel_order="GBR"))


def test_absurd_aspect_ratio_is_cheap_not_an_error() -> None:
    """Only the crop's window is resampled (tests/test_preprocess_cost.py pins the cost): 1x300000 is an image."""
    x = transform_for("fastvit_t8.apple_in1k")(Image.new("RGB", (1, 300_000), (255, 0, 0)))
    assert x.shape == (3, 256, 256)
    assert torch.equal(x, transform_for("fastvit_t8.apple_in1k")(Image.new("RGB", (256, 256), (255, 0, 0))))
