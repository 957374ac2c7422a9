"""``fast_decode``: large JPEGs decoded DCT-downscaled (PIL's ``Image.draft``) for predict, eval and serve.

References: PIL's exact decode followed by torchvision's ``Resize`` + ``CenterCrop`` (what timm runs), PIL's box
``reduce`` of the exact decode (the block means that DCT scaling approximates), and the exact path's own answers
(top-1/top-5 of Apple's MobileOne-S0 on upscaled copies of ``imagenet-samples-100``, skipped without ``../shared``).
Every image is generated in ``tmp_path``.
"""

from __future__ import annotations

import base64
import csv
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mobilevit
from conftest import SHARED
from mobilevit.cli import build_parser, main
from mobilevit.data.images import ImageError, draft_scale, open_image
from mobilevit.data.transforms import eval_transform
from mobilevit.errors import UsageError
from mobilevit.evaluate import evaluate, read_labelled
from mobilevit.predict import Predictor
from mobilevit.weights.entries import get_weights

# Mean |fast - exact| of the model input, in 8-bit levels, for photos. libjpeg's 1/s decode gives each pixel about
# the mean of its s x s block; the exact path's antialiased resize averages the full-resolution pixels with a
# triangle (bilinear) or cubic filter of about the same width, centred on the same point. The two low-pass filters
# differ only where the photo has detail at that scale: measured 0.3-1.5 levels on these photos (1.5 when 1/8 leaves
# nothing for the resize to smooth), while a crop 2 pixels off gives 4-20.
MEAN_LEVELS = 2.0


def _upscaled(name: str, size: tuple[int, int], path: Path) -> Path:
    import skimage

    img = Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")
    img.resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def large_photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Photos at camera-like sizes (multiples of 8) that a 256 or 284 resize decodes at 1/2, 1/4 and 1/8."""
    pytest.importorskip("skimage")
    folder = tmp_path_factory.mktemp("large")
    sizes = {"coffee.png": (3000, 2000), "astronaut.png": (2048, 2048), "chelsea.png": (2400, 1600)}
    sizes["motorcycle_left.png"] = (1480, 1000)
    return [_upscaled(name, size, folder / f"{Path(name).stem}.jpg") for name, size in sizes.items()]


def _gradient(w: int, h: int) -> np.ndarray:
    """An RGB picture that no flip or rotation leaves unchanged: a horizontal ramp, a vertical ramp, a constant."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 77)], -1).astype(np.uint8)


def _levels(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


# ---------------------------------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", ["mobileone_s0.apple_in1k", "fastvit_t8.apple_in1k"])
def test_fast_decode_gives_the_model_input_of_the_exact_decode_within_two_levels(
    weights: str, large_photos: list[Path]
) -> None:
    """After the weights' resize and crop, the DCT-downscaled decode is close to timm's exact pipeline."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, PILToTensor, Resize

    pre = get_weights(weights).preprocess
    assert (pre.resize_backend, pre.crop_offset, pre.channel_order) == ("pil", "round", "RGB")  # torchvision's
    interpolation = InterpolationMode(pre.interpolation)
    reference = Compose([Resize(pre.resize_size, interpolation), CenterCrop(pre.input_size), PILToTensor()])
    transform = eval_transform(pre)
    scales = set()
    for path in large_photos:
        exact = reference(Image.open(path).convert("RGB"))
        fast_image = open_image(path, fast_decode=True, min_short_side=pre.resize_size)
        scale = draft_scale(*Image.open(path).size, pre.resize_size)
        assert scale > 1 and fast_image.size == tuple(n // scale for n in Image.open(path).size), path.name
        scales.add(scale)
        fast = transform.pixels(fast_image)
        assert _levels(fast, exact) <= MEAN_LEVELS, path.name
        # the bound would catch a geometry error: the exact input shifted by 2 pixels is far outside it
        assert _levels(exact[:, :, 2:], exact[:, :, :-2]) > 2 * MEAN_LEVELS, path.name
    assert scales == ({2, 4, 8} if pre.resize_size == 256 else {2, 4})


@pytest.mark.parametrize(
    ("orientation", "upright"),
    [
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_270),
        (8, Image.Transpose.ROTATE_90),
        (2, Image.Transpose.FLIP_LEFT_RIGHT),
        (5, Image.Transpose.TRANSPOSE),
    ],
)
def test_exif_rotated_large_jpeg_comes_out_upright_at_the_reduced_size(
    orientation: int, upright: Image.Transpose, tmp_path: Path
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = Image.fromarray(_gradient(2048, 1536))
    path = tmp_path / f"exif{orientation}.jpg"
    stored.save(path, exif=exif, quality=95)
    reference = Image.open(path).convert("RGB").transpose(upright).reduce(8)  # upright, 8x8 block means
    for source in (path, path.read_bytes()):
        out = open_image(source, fast_decode=True, min_short_side=192)  # 1536 // 192 = 8: the 1/8 scale
        assert out.size == reference.size == ((192, 256) if orientation in (6, 8, 5) else (256, 192))
        assert _levels(np.asarray(out), np.asarray(reference)) < 1.0


@pytest.mark.parametrize("kind", ["CMYK", "L", "progressive"])
def test_cmyk_grayscale_and_progressive_large_jpegs(kind: str, tmp_path: Path) -> None:
    rgb = Image.fromarray(_gradient(2048, 1536))
    img = rgb.convert(kind) if kind in ("CMYK", "L") else rgb
    path = tmp_path / f"{kind}.jpg"
    img.save(path, quality=95, progressive=kind == "progressive")
    assert Image.open(path).mode == img.mode
    reference = open_image(path).reduce(8)  # the exact decode (converted to RGB), as block means
    out = open_image(path, fast_decode=True, min_short_side=192)
    assert out.mode == "RGB" and out.size == reference.size == (256, 192)
    assert _levels(np.asarray(out), np.asarray(reference)) < 1.0


def _saved(kind: str, folder: Path) -> Path:
    photo = Image.fromarray(_gradient(2048, 1536))
    if kind == "png":
        photo.save(folder / "large.png")
        return folder / "large.png"
    if kind == "gif":
        photo.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "large.gif")
        return folder / "large.gif"
    if kind == "small jpeg":  # shorter side below twice the resize
        photo.resize((500, 375)).save(folder / "small.jpg")
        return folder / "small.jpg"
    photo.resize((2255, 1500)).save(folder / "odd.jpg")  # no scale divides 2255
    return folder / "odd.jpg"


@pytest.mark.parametrize("kind", ["png", "gif", "small jpeg", "odd-sized jpeg"])
def test_other_images_decode_exactly(kind: str, tmp_path: Path) -> None:
    path = _saved(kind, tmp_path)
    exact = np.asarray(Image.open(path).convert("RGB"))
    for source in (path, path.read_bytes()):
        assert np.array_equal(np.asarray(open_image(source, fast_decode=True, min_short_side=256)), exact)


def test_an_opened_pil_image_is_neither_reduced_nor_changed(tmp_path: Path) -> None:
    path = tmp_path / "large.jpg"
    Image.fromarray(_gradient(2048, 1536)).save(path)
    given = Image.open(path)
    out = open_image(given, fast_decode=True, min_short_side=192)
    assert out.size == given.size == (2048, 1536)
    assert np.array_equal(np.asarray(out), np.asarray(Image.open(path).convert("RGB")))


def test_pixel_limit_applies_to_the_stored_size(tmp_path: Path) -> None:
    """A JPEG over the limit is refused from its header, although its 1/8 decode would be small."""
    path = tmp_path / "big.jpg"
    Image.new("RGB", (2048, 1536), (10, 20, 30)).save(path)
    with pytest.raises(ImageError, match=r"big\.jpg: 2048x1536 is 3145728 pixels, more than the limit of 3000000"):
        open_image(path, max_pixels=3_000_000, fast_decode=True, min_short_side=192)
    with pytest.raises(ImageError, match=r"image bytes: 2048x1536 is 3145728 pixels"):
        open_image(path.read_bytes(), max_pixels=3_000_000, fast_decode=True, min_short_side=192)


def test_fast_decode_needs_the_resize() -> None:
    with pytest.raises(UsageError, match="min_short_side"):
        open_image(b"not read", fast_decode=True)


def test_draft_scale() -> None:
    assert draft_scale(4000, 3000, 256) == 8  # 500x375
    assert draft_scale(4032, 3024, 288) == 8  # 504x378
    assert draft_scale(4000, 1868, 224) == 4  # 1868 / 8 is not whole
    assert draft_scale(3000, 2000, 256) == 4  # 2000 < 8 * 256
    assert draft_scale(600, 511, 256) == 1  # less than twice the resize
    assert draft_scale(2255, 1500, 256) == 1  # an odd side: no scale divides it


# ---------------------------------------------------------------------------------------------------------------------
# Predictor, CLI, server
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_s0() -> Predictor:
    torch.manual_seed(0)
    model = mobilevit.create_model("mobileone_s0").eval()
    return Predictor(model, get_weights("mobileone_s0.apple_in1k").preprocess, batch_size=2, workers=1)


def test_predictor_fast_decode(random_s0: Predictor, large_photos: list[Path]) -> None:
    path = large_photos[0]
    pre = random_s0.preprocess
    exact = eval_transform(pre)(open_image(path))
    fast = eval_transform(pre)(open_image(path, fast_decode=True, min_short_side=pre.resize_size))
    assert not torch.equal(exact, fast)
    assert torch.equal(random_s0.prepare(path), exact) and random_s0.fast_decode is False
    assert torch.equal(random_s0.prepare(path.read_bytes(), fast_decode=True), fast)
    random_s0.fast_decode = True
    try:
        assert torch.equal(random_s0.prepare(path), fast)
        [(_, answer)] = list(random_s0.predict_files([path], top_k=3))
        expected = random_s0.topk(random_s0.logits(fast[None]), 3)[0]
        assert answer == expected
    finally:
        random_s0.fast_decode = False


def test_cli_flags() -> None:
    parser = build_parser()
    for command in (["predict", "x.jpg"], ["eval", "data/"]):
        assert parser.parse_args([*command, "--model", "m"]).fast_decode is False
        assert parser.parse_args([*command, "--model", "m", "--fast-decode"]).fast_decode is True
    assert parser.parse_args(["serve", "--model", "m"]).fast_decode is True
    assert parser.parse_args(["serve", "--model", "m", "--no-fast-decode"]).fast_decode is False


def test_cli_predict_passes_fast_decode(
    large_photos: list[Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import mobilevit.predict

    seen = []
    load = mobilevit.predict.load_predictor

    def spy(*args, **kwargs):
        predictor = load(*args, **kwargs)
        seen.append(predictor.fast_decode)
        return predictor

    monkeypatch.setattr(mobilevit.predict, "load_predictor", spy)
    argv = ["predict", str(large_photos[0]), "--model", "mobileone_s0", "--random-weights", "--json", "--no-progress"]
    assert main(argv) == 0 and main([*argv, "--fast-decode"]) == 0
    assert seen == [False, True]
    capsys.readouterr()


def test_server_decodes_fast_unless_told_not_to(random_s0: Predictor, large_photos: list[Path]) -> None:
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from mobilevit.serve import ModelSpec, ServeConfig, create_app

    data = large_photos[0].read_bytes()
    logits = {fast: random_s0.logits(random_s0.prepare(data, fast_decode=fast)[None])[0] for fast in (False, True)}
    assert not torch.equal(logits[False], logits[True])
    for fast, options in ((True, {}), (False, {"fast_decode": False})):
        config = ServeConfig(models=(ModelSpec("s0", False),), max_wait_ms=0, **options)
        assert config.fast_decode is fast
        with TestClient(create_app(config, loaders={"s0": lambda: random_s0})) as client:
            deadline = time.monotonic() + 60
            while client.get("/health").status_code != 200:
                assert time.monotonic() < deadline, "the model did not load"
                time.sleep(0.05)
            body = {
                "inputs": base64.b64encode(data).decode(),
                "parameters": {"top_k": 1000, "function_to_apply": "none"},
            }
            answer = client.post("/", json=body)
        assert answer.status_code == 200, answer.text
        scores = {random_s0.labels.index(p["label"]): p["score"] for p in answer.json()}
        assert torch.tensor([scores[i] for i in range(1000)]) == pytest.approx(logits[fast], abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Accuracy with Apple's MobileOne-S0 weights
# ---------------------------------------------------------------------------------------------------------------------
def _camera_copies(source: Path, dest: Path, long_side: int) -> Path:
    """Every photo of ``source/labels.csv`` upscaled (bicubic) to ``long_side`` and a multiple of 8 on the shorter
    side, as camera sizes are, saved at JPEG quality 90 with its row of ``labels.csv``."""
    with (source / "labels.csv").open(newline="") as f:
        header, *rows = list(csv.reader(f))
    for row in rows:
        img = Image.open(source / row[0]).convert("RGB")
        short = 8 * round(long_side * min(img.size) / max(img.size) / 8)
        size = (long_side, short) if img.width >= img.height else (short, long_side)
        row[0] = f"{Path(row[0]).stem}.jpg"
        img.resize(size, Image.Resampling.BICUBIC).save(dest / row[0], quality=90)
    with (dest / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return dest


@pytest.mark.parametrize(
    ("long_side", "scale"), [(2000, 4), pytest.param(4000, 8, marks=pytest.mark.slow)], ids=["2000px", "12MP"]
)
def test_fast_decode_keeps_the_accuracy_of_apples_mobileone_s0(
    long_side: int, scale: int, shared: Path, tmp_path: Path
) -> None:
    """Top-1 and top-5 on 100 photos upscaled to camera sizes: fast decoding (every file at 1/``scale``) scores
    within one image of exact decoding. 2000 px on the longer side is enough to engage the 1/4 scale."""
    weights = shared / "weights" / "mobileone_s0_reparam.safetensors"
    if not weights.is_file():
        pytest.skip(f"real MobileOne-S0 weights not found at {weights}")
    predictor = Predictor.from_pretrained("mobileone_s0.orig_in1k_reparam", pretrained=weights, batch_size=20)
    samples, _ = read_labelled(_camera_copies(shared / "data" / "imagenet-samples-100", tmp_path, long_side))
    assert {draft_scale(*Image.open(p).size, predictor.preprocess.resize_size) for p, _ in samples} == {scale}
    exact = evaluate(predictor, samples)
    predictor.fast_decode = True
    fast = evaluate(predictor, samples)
    assert exact["count"] == fast["count"] == 100
    assert abs(fast["correct_top1"] - exact["correct_top1"]) <= 1, (exact, fast)
    assert abs(fast["correct_top5"] - exact["correct_top5"]) <= 1, (exact, fast)


def test_fast_decode_keeps_the_reference_accuracy_on_the_original_photos(shared: Path) -> None:
    weights = shared / "weights" / "mobileone_s0_reparam.safetensors"
    if not weights.is_file():
        pytest.skip(f"real MobileOne-S0 weights not found at {weights}")
    predictor = Predictor.from_pretrained(
        "mobileone_s0.orig_in1k_reparam", pretrained=weights, batch_size=20, fast_decode=True
    )
    samples, _ = read_labelled(SHARED / "data" / "imagenet-samples-100")
    result = evaluate(predictor, samples)
    # exact decoding (and Apple's code) gets 77 and 93; two of these photos are large enough to be decoded at 1/2
    assert abs(result["correct_top1"] - 77) <= 1 and abs(result["correct_top5"] - 93) <= 1, result
