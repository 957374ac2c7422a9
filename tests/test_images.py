"""Messy real-world inputs through ``open_image`` and ``find_images``: every PIL mode, EXIF rotation, tiny and huge
images, decompression bombs, truncated and non-image files. All files are generated in ``tmp_path``."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from conftest import PROMISED_FORMATS, refused_images, spy_on_refused_plugins
from mobilevit.data.images import IMAGE_SUFFIXES, ImageError, find_images, open_image, pixel_limit
from mobilevit.data.transforms import transform_for


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _gradient(w: int = 48, h: int = 32) -> np.ndarray:
    """An asymmetric RGB test picture: horizontal and vertical ramps and a constant channel."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 77)], -1).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------------------------------
def test_rgb_is_unchanged(tmp_path: Path) -> None:
    arr = _gradient()
    out = open_image(_save(Image.fromarray(arr), tmp_path / "rgb.png"))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), arr)


@pytest.mark.parametrize("mode", ["L", "LA", "1"])
def test_grayscale_modes_replicate_to_three_channels(mode: str, tmp_path: Path) -> None:
    gray = Image.fromarray(_gradient()[..., 0]).convert(mode)
    out = np.asarray(open_image(_save(gray, tmp_path / f"{mode}.png")))
    expected = np.asarray(gray.convert("L"))
    assert out.shape == (*expected.shape, 3)
    for c in range(3):
        assert np.array_equal(out[..., c], expected)


def test_rgba_drops_alpha_like_timm(tmp_path: Path) -> None:
    arr = _gradient()
    rgba = np.concatenate([arr, np.linspace(0, 255, arr.shape[1], dtype=np.uint8)[None, :, None].repeat(32, 0)], -1)
    out = open_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), arr)  # = Image.convert("RGB"), timm's loader


def test_palette_without_transparency(tmp_path: Path) -> None:
    p = Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out = open_image(_save(p, tmp_path / "p.png"))
    assert np.array_equal(np.asarray(out), np.asarray(p.convert("RGB")))


@pytest.mark.parametrize("fmt", ["png", "gif"])
def test_palette_with_transparency_gives_the_palette_colours_without_warning(fmt: str, tmp_path: Path) -> None:
    p = Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    path = _save(p, tmp_path / f"pt.{fmt}", transparency=3)
    assert "transparency" in Image.open(path).info
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL warns when a palette image with transparency goes straight to RGB
        out = open_image(path)
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(p.convert("RGB")))


def test_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (24, 16), (0, 255, 255, 0))  # pure red
    path = _save(cmyk, tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    out = np.asarray(open_image(path)).astype(int)
    assert np.abs(out - np.array([255, 0, 0])).max() <= 3


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 256, 1000, 32768, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "gray16.png")
    assert Image.open(path).mode.startswith("I;16")
    out = np.asarray(open_image(path))[..., 0]
    assert out.tolist() == [[0, 1, 4, 128, 255]]  # round(v * 255 / 65535); clipping would give 255 for v >= 255


@pytest.mark.parametrize(
    ("dtype", "values", "expected"),
    [
        (np.int32, [0, 100, 255], [0, 100, 255]),  # 8-bit data in a 32-bit image stays as is
        (np.int32, [0, 300, 65535], [0, 1, 255]),  # 16-bit data: scaled by 65535, not clipped at 255
        (np.int32, [-5, 0, 1 << 20], [0, 0, 255]),  # beyond 16 bits: scaled by the maximum; negatives become 0
        (np.float32, [0.0, 0.5, 1.0], [0, 128, 255]),  # float in [0, 1]
        (np.float32, [0.0, 127.5, 255.0], [0, 128, 255]),  # float in [0, 255]
        (np.float32, [np.nan, 10.0, 255.0], [0, 10, 255]),  # NaN becomes 0
    ],
)
def test_32_bit_integer_and_float_modes(dtype: type, values: list, expected: list, tmp_path: Path) -> None:
    img = Image.fromarray(np.array([values], dtype=dtype))
    assert img.mode == ("F" if dtype is np.float32 else "I")
    path = _save(img, tmp_path / "wide.tif")
    assert Image.open(path).mode == img.mode
    for source in (path, img):
        out = np.asarray(open_image(source))
        assert out.dtype == np.uint8 and out[..., 0].tolist() == [expected]
        assert np.array_equal(out[..., 0], out[..., 2])


def test_multiframe_gif_gives_the_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert tuple(np.asarray(open_image(path))[0, 0]) == (255, 0, 0)


# ---------------------------------------------------------------------------------------------------------------------
# EXIF orientation
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("orientation", "rotation"), [(6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90), (3, None)]
)
def test_exif_rotated_jpeg_comes_out_upright(orientation: int, rotation, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(Image.fromarray(_gradient(48, 32)), tmp_path / f"exif{orientation}.jpg", exif=exif, quality=95)
    stored = Image.open(path)
    assert stored.size == (48, 32) and stored.getexif()[0x0112] == orientation
    reference = stored.convert("RGB").transpose(rotation or Image.Transpose.ROTATE_180)  # the same decoded pixels
    out = open_image(path)
    assert out.size == reference.size == ((32, 48) if rotation else (48, 32))
    assert np.array_equal(np.asarray(out), np.asarray(reference))
    # the bytes and an opened PIL image go the same way
    assert np.array_equal(np.asarray(open_image(path.read_bytes())), np.asarray(reference))
    assert np.array_equal(np.asarray(open_image(Image.open(path))), np.asarray(reference))


# ---------------------------------------------------------------------------------------------------------------------
# Tiny and huge
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (3, 2)])
@pytest.mark.parametrize("tag", ["mobilevit_xxs.cvnets_in1k", "mobilevit_xxs.orig_in1k", "mobileone_s0.apple_in1k"])
def test_tiny_images_give_the_model_input_size(size: tuple[int, int], tag: str, tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = open_image(_save(Image.fromarray(arr), tmp_path / "tiny.png"))
    assert img.size == size
    t = transform_for(tag)
    assert t(img).shape == (3, *t.input_size)


def test_huge_but_legal_image(tmp_path: Path) -> None:
    path = _save(Image.new("L", (8000, 6000), 200), tmp_path / "huge.png")  # 48M pixels, a 47 kB file
    assert path.stat().st_size < 1_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = open_image(path)
    assert img.size == (8000, 6000) and img.mode == "RGB" and img.getpixel((7999, 5999)) == (200, 200, 200)
    assert transform_for("fastvit_t8.apple_in1k")(img).shape == (3, 256, 256)


def _png_with_header_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` (8-bit gray) with a few bytes of pixel data: a 'bomb' header."""
    data = io.BytesIO()
    Image.new("L", (1, 1)).save(data, "PNG")
    raw = bytearray(data.getvalue())
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))  # CRC over chunk type + data
    return bytes(raw)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _complete_black_png(side: int) -> bytes:
    """A valid ``side x side`` 8-bit gray PNG, all black: a small file that decodes to ``side**2`` bytes."""
    deflate = zlib.compressobj(9)
    row = bytes(side + 1)  # filter type 0, then the pixels
    data = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


# Run in a fresh interpreter: PIL allocates pixel memory with C malloc, which tracemalloc does not see, and a peak RSS
# is a high-water mark that only a process of its own starts low. The peak read is VmHWM, the high-water mark of the
# process's own memory map (ru_maxrss would carry over the parent's peak from before the exec). The script prints the
# error, how much its peak grew (MiB) over the call with a pixel limit below the image's size, then over the call
# without a limit (the control: decoding the whole image does show in the measurement).
_PEAK_GROWTH = """
import sys
from PIL import Image
from mobilevit.data.images import ImageError, open_image

def peak_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024  # kB

for limit in (int(sys.argv[2]), None):
    Image.MAX_IMAGE_PIXELS = limit
    start = peak_mib()
    try:
        open_image(sys.argv[1])
        print("decoded")
    except ImageError as err:
        print(err)
    print(peak_mib() - start)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="the peak RSS is read from Linux's /proc")
def test_decompression_bomb_fails_without_allocating(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_complete_black_png(6000))  # 36M pixels (34 MiB gray, 103 MiB as RGB) in 35 kB
    assert path.stat().st_size < 100_000
    limit = 1_000_000  # PIL refuses above twice its MAX_IMAGE_PIXELS
    cmd = [sys.executable, "-c", _PEAK_GROWTH, str(path), str(limit)]
    message, refused_mib, decoded, decoded_mib = subprocess.run(
        cmd, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert decoded == "decoded"
    assert re.search(r"bomb\.png.*(pixels|bomb)", message), message
    assert float(decoded_mib) > 30, f"decoding 6000x6000 gray pixels grew the peak by only {decoded_mib} MiB"
    assert float(refused_mib) < 10, f"refusing the bomb grew the peak by {refused_mib} MiB"


@pytest.mark.parametrize("side", [100_000, 14_000])
def test_decompression_bomb_header_is_refused(side: int, tmp_path: Path) -> None:
    path = tmp_path / f"bomb{side}.png"
    path.write_bytes(_png_with_header_size(side, side))
    assert path.stat().st_size < 100
    with pytest.raises(ImageError, match=rf"bomb{side}\.png.*(pixels|bomb)"):
        open_image(path)


def test_pixel_limit_follows_pil_and_can_be_lowered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pixel_limit() == 2 * Image.MAX_IMAGE_PIXELS
    path = _save(Image.new("RGB", (50, 30)), tmp_path / "small.png")  # 1500 pixels
    with pytest.raises(ImageError, match=r"small\.png: 50x30 is 1500 pixels, more than the limit of 1000"):
        open_image(path, max_pixels=1000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns above 1000 and refuses above 2000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_image(path).size == (50, 30)  # between PIL's warning and its hard limit: decoded, no warning
    big = _save(Image.new("RGB", (50, 50)), tmp_path / "big.png")
    with pytest.raises(ImageError, match=r"big\.png"):
        open_image(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert pixel_limit() is None and open_image(big).size == (50, 50)


# ---------------------------------------------------------------------------------------------------------------------
# Broken inputs: each gets an ImageError naming the input and the cause
# ---------------------------------------------------------------------------------------------------------------------
def test_truncated_jpeg(tmp_path: Path) -> None:
    full = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(full, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    with pytest.raises(ImageError, match=r"cut\.jpg: cannot decode image \(.*truncated"):
        open_image(path)
    with pytest.raises(ImageError, match=r"^upload\.jpg: cannot decode"):
        open_image(path.read_bytes(), name="upload.jpg")


def test_truncated_png(tmp_path: Path) -> None:
    full = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(full, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(full.getvalue()[:-200])
    with pytest.raises(ImageError, match=r"cut\.png: cannot decode image"):
        open_image(path)


def test_we_never_turn_on_pils_truncated_image_loading() -> None:
    import mobilevit
    import mobilevit.data.images
    import mobilevit.data.transforms
    import mobilevit.predict  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    ("name", "content", "cause"),
    [
        ("noise.jpg", os.urandom(2048), "not an image"),
        ("notes.txt", b"hello, this is a text file\n" * 10, "not an image"),
        ("fake.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "cannot decode image|not an image"),
        ("empty.jpg", b"", "empty file"),
    ],
)
def test_not_an_image(name: str, content: bytes, cause: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match=rf"^{path}: ({cause})"):
        open_image(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=rf"^{tmp_path / 'nope.jpg'}: no such file"):
        open_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match=rf"^{tmp_path}: not a file \(a directory\)"):
        open_image(tmp_path)
    with pytest.raises(ImageError, match=r"^image bytes: empty input"):
        open_image(b"")
    with pytest.raises(ImageError, match=r"^request: not an image"):
        open_image(b"GIF-ish but not", name="request")


def test_unreadable_file(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (4, 4)), tmp_path / "secret.png")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(ImageError, match=r"secret\.png: cannot read file \(PermissionError"):
            open_image(path)
    finally:
        path.chmod(0o644)


# ---------------------------------------------------------------------------------------------------------------------
# Formats: the raster formats the documentation promises, and no other Pillow plugin
# ---------------------------------------------------------------------------------------------------------------------
def _quadrants() -> np.ndarray:
    """32x32, four flat 16x16 colours: exact in every lossless format (and GIF's palette), near-exact in lossy ones."""
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:16, :16], arr[:16, 16:], arr[16:, :16], arr[16:, 16:] = (200, 30, 30), (30, 200, 30), (30, 30, 200), (90,) * 3
    return arr


@pytest.mark.parametrize(
    ("fmt", "options", "tolerance"),
    [
        ("JPEG", {"quality": 95}, 4.0),
        ("PNG", {}, 0.0),
        ("WEBP", {"lossless": True}, 0.0),
        ("GIF", {}, 0.0),
        ("BMP", {}, 0.0),
        ("TIFF", {}, 0.0),
        ("TIFF", {"compression": "tiff_lzw"}, 0.0),
        ("AVIF", {"quality": 95}, 4.0),
        ("PPM", {}, 0.0),  # the Netpbm family (.ppm, .pgm), which find_images collects
        ("MPO", {}, 4.0),  # JPEGs with several frames, from some cameras
    ],
)
def test_accepted_formats_decode(fmt: str, options: dict, tolerance: float) -> None:
    from PIL import features

    if fmt in ("WEBP", "AVIF") and not features.check(fmt.lower()):
        pytest.skip(f"this Pillow has no {fmt} support")
    source = _quadrants()
    buffer = io.BytesIO()
    Image.fromarray(source).save(buffer, fmt, **options)
    decoded = np.asarray(open_image(buffer.getvalue()), dtype=float)
    assert decoded.shape == source.shape
    assert np.abs(decoded - source).mean() <= tolerance


@pytest.mark.parametrize("fmt", ["EPS", "PSD", "ICO"])
def test_other_formats_are_refused_without_their_plugin(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EPS, PSD and ICO are formats Pillow reads (EPS through Ghostscript): refused by name with the accepted list,
    and their plugins never open the bytes."""
    from mobilevit.data.images import UnsupportedFormatError

    reached = spy_on_refused_plugins(monkeypatch)
    data = refused_images()[fmt]
    path = tmp_path / f"file.{fmt.lower()}"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(UnsupportedFormatError) as refused:
            open_image(source)
        message = str(refused.value)
        assert fmt in message and all(name in message for name in PROMISED_FORMATS), message
    assert reached == []


def test_cli_refuses_an_eps_file_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """``predict`` reports the EPS file's error on its own line (exit 1) and classifies the PNG beside it; Pillow's
    EPS plugin and Ghostscript are never reached."""
    import mobilevit
    from mobilevit.cli import main

    model = mobilevit.save_pretrained(
        mobilevit.create_model("mobilevit_xxs", num_classes=2), tmp_path / "m", ["a", "b"]
    )
    reached = spy_on_refused_plugins(monkeypatch)
    eps = tmp_path / "figure.eps"
    eps.write_bytes(refused_images()["EPS"])
    png = _save(Image.fromarray(_quadrants()), tmp_path / "ok.png")
    code = main(["predict", str(eps), str(png), "--model", str(model), "--json", "--top-k", "1"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and reached == []
    assert lines[0]["file"] == str(eps) and "EPS" in lines[0]["error"] and "WebP" in lines[0]["error"]
    assert lines[1]["file"] == str(png) and len(lines[1]["predictions"]) == 1


# ---------------------------------------------------------------------------------------------------------------------
# find_images
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel in ["b.jpg", "a.PNG", "notes.txt", "sub/c.jpeg", "sub/deeper/d.webp", "sub/e.gif", ".hidden.jpg",
                ".cache/f.jpg", "sub/model.pt"]:  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    return tmp_path


def test_find_images_in_a_folder_is_recursive_sorted_and_images_only(tree: Path) -> None:
    found = find_images([tree])
    assert [p.relative_to(tree).as_posix() for p in found] == [
        "a.PNG",
        "b.jpg",
        "sub/c.jpeg",
        "sub/deeper/d.webp",
        "sub/e.gif",
    ]
    assert all(p.suffix.lower() in IMAGE_SUFFIXES for p in found)


def test_find_images_globs(tree: Path) -> None:
    rel = lambda paths: [p.relative_to(tree).as_posix() for p in paths]  # noqa: E731
    assert rel(find_images([str(tree / "*.jpg")])) == ["b.jpg"]  # like a shell: no hidden files
    assert rel(find_images([str(tree / "**" / "*.jp*g")])) == ["b.jpg", "sub/c.jpeg"]
    assert rel(find_images([str(tree / "s*")])) == ["sub/c.jpeg", "sub/deeper/d.webp", "sub/e.gif"]  # folder expanded
    assert rel(find_images([str(tree / "*.txt")])) == ["notes.txt"]  # what the user asked for, image or not
    cwd = os.getcwd()
    os.chdir(tree)
    try:
        assert [p.as_posix() for p in find_images(["sub/*.gif", "*.PNG"])] == ["sub/e.gif", "a.PNG"]
    finally:
        os.chdir(cwd)


def test_find_images_keeps_order_and_unmatched_inputs(tree: Path) -> None:
    missing, no_match = tree / "missing.jpg", tree / "nothing-*.jpg"
    found = find_images([tree / "sub" / "e.gif", missing, no_match, tree / "notes.txt", tree / "sub" / "deeper"])
    assert found == [tree / "sub" / "e.gif", missing, no_match, tree / "notes.txt", tree / "sub" / "deeper" / "d.webp"]
    for p in (missing, no_match):  # each then fails on its own, naming itself
        with pytest.raises(ImageError, match="no such file"):
            open_image(p)
    assert find_images([]) == []
