"""Reading real-world images: any mode PIL can open becomes 8-bit RGB, upright, with a clear error per bad file.

Photos arrive as grayscale, palette, RGBA, CMYK, 16-bit, EXIF-rotated, tiny or huge. Each is brought to plain 8-bit
RGB the way the reference pipelines do it (timm and torchvision: ``Image.convert("RGB")``, which drops alpha), except
that high-bit-depth images are scaled to 8 bits instead of clipped, and EXIF orientation is applied (as transformers'
``load_image`` and OpenCV's ``imread`` do). Files that are not images, are truncated, or would decompress to an absurd
size raise :class:`ImageError` naming the file and the cause.

Exact decoding is the default. ``fast_decode`` trades exactness for speed on large JPEGs: one whose shorter side is at
least twice the size the caller will resize it to is decoded DCT-downscaled by libjpeg (PIL's ``Image.draft``: 1/2,
1/4 or 1/8 of each side, never below that size): less than half the decoding time of a 12-megapixel photo and a
fraction of the resizing after it. Other files decode as without it.

Only the raster formats of :data:`ACCEPTED_FORMATS` are decoded: Pillow is asked to try those plugins and no other
(``Image.open(..., formats=...)``), so that bytes from a client never reach a plugin that hands them to an interpreter
(EPS goes to Ghostscript) or to a rarely used parser. A file in another format Pillow knows is named from its first
bytes (its plugin's signature check; the plugin never opens it) and refused with :class:`UnsupportedFormatError`.

PIL's global switches are left alone: ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays as the user set it (``False`` by
default, so a truncated file is an error), and the pixel limit follows ``PIL.Image.MAX_IMAGE_PIXELS`` unless a
``max_pixels`` argument is given.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import MobileViTError, UsageError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".avif", ".ppm", ".pgm"}
)
# The formats decoded, by Pillow's name, and as messages name them. PPM is Pillow's plugin for the Netpbm family;
# the JPEG plugin also opens MPO files (JPEGs with more frames, from some cameras).
ACCEPTED_FORMATS: dict[str, str] = {
    "JPEG": "JPEG",
    "PNG": "PNG",
    "WEBP": "WebP",
    "GIF": "GIF",
    "BMP": "BMP",
    "TIFF": "TIFF",
    "AVIF": "AVIF",
    "PPM": "PNM (PBM, PGM, PPM)",
}
# Modes with more than 8 bits per sample; they are scaled to 8 bits, never clipped.
_HIGH_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image


class ImageError(MobileViTError, ValueError):
    """An input that cannot be read as an image (missing, not an image, truncated, too large, unsupported mode)."""


class UnsupportedFormatError(ImageError):
    """An image in a format Pillow knows and this package does not decode (not in :data:`ACCEPTED_FORMATS`)."""


def accepted_formats() -> str:
    """The accepted formats, for messages: ``"JPEG, PNG, WebP, ..."``."""
    return ", ".join(ACCEPTED_FORMATS.values())


def _decoders() -> list[str]:
    """The accepted formats this Pillow build has a plugin for (AVIF needs libavif)."""
    if not all(name in Image.OPEN for name in ACCEPTED_FORMATS):
        Image.init()  # imports the plugins (registration only: nothing is opened)
    return [name for name in ACCEPTED_FORMATS if name in Image.OPEN]


def _refused_format(fp: IO[bytes]) -> str | None:
    """The format Pillow would take ``fp`` for when it is not an accepted one, from its first 16 bytes and that
    plugin's signature check alone (the check Pillow runs before opening), else ``None``."""
    fp.seek(0)
    prefix = fp.read(16)
    for name, (_, accept) in list(Image.OPEN.items()):
        if name in ACCEPTED_FORMATS or accept is None:  # a plugin without a signature would claim any bytes
            continue
        try:
            claimed = accept(prefix)
        except Exception:  # a signature check that cannot read these bytes does not claim them
            continue
        if claimed and not isinstance(claimed, str):  # a string is Pillow's warning, not a claim
            return name
    return None


def pixel_limit() -> int | None:
    """The default maximum number of pixels: PIL's own hard limit, ``2 * Image.MAX_IMAGE_PIXELS`` (~179M pixels).

    PIL refuses larger images itself (``DecompressionBombError``), so this is the largest image PIL will decode;
    ``None`` when the user disabled PIL's check with ``Image.MAX_IMAGE_PIXELS = None``.
    """
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def _scale_high_bit(img: Image.Image) -> Image.Image:
    """8-bit grayscale from a 16-bit, 32-bit integer or float image, scaled by the range of its type (not clipped).

    ``I;16*`` is 0..65535. ``I`` and ``F`` carry no declared range, so the smallest of 0..1 (float only), 0..255,
    0..65535 that holds the data is used, else the image's maximum; negative values and NaN become 0.
    """
    arr = np.asarray(img, dtype=np.float64)
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(arr.max()) if arr.size else 0.0
    if img.mode.startswith("I;16"):
        full = 65535.0
    elif img.mode == "F" and top <= 1.0:
        full = 1.0
    elif top <= 255.0:
        full = 255.0
    elif top <= 65535.0:
        full = 65535.0
    else:
        full = top
    arr = np.clip(arr * (255.0 / full) + 0.5, 0.0, 255.0).astype(np.uint8)
    return Image.fromarray(arr, mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode.

    Alpha is dropped (``convert("RGB")``, as timm and torchvision do); palette images with transparency go through
    RGBA first, as PIL advises; high-bit-depth grayscale is scaled, not clipped.

    Raises:
        ImageError: a mode PIL cannot convert to RGB.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _HIGH_BIT_MODES:
        img = _scale_high_bit(img)
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise ImageError(f"cannot convert image mode {img.mode!r} to RGB: {err}") from None


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def draft_scale(width: int, height: int, short_side: int) -> int:
    """The DCT scale (8, 4, 2, or 1: none) at which ``fast_decode`` decodes a ``width`` x ``height`` JPEG that is
    resized to ``short_side``: the largest that keeps both sides at ``short_side`` or more and divides both.

    A scale that does not divide a side would give a last row or column covering only part of a block (libjpeg rounds
    the scaled size up), so the image would stretch by up to a pixel against the exact decode; camera sizes (4000x3000,
    4032x3024, 6000x4000) divide by 8, and other sizes take the largest scale that divides them.
    """
    for scale in (8, 4, 2):
        if min(width, height) >= scale * short_side and width % scale == 0 and height % scale == 0:
            return scale
    return 1


def _decode(fp: IO[bytes] | Image.Image, label: str, max_pixels: int | None, draft: int | None) -> Image.Image:
    """Open (unless given an image), check the size before any pixel is decoded, load (a JPEG at the
    :func:`draft_scale` for a resize to ``draft``), rotate upright, convert."""
    try:
        if isinstance(fp, Image.Image):
            img = fp
        else:
            with warnings.catch_warnings():
                # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; the explicit check below decides.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(fp, formats=_decoders())
        w, h = img.size  # the header's: the pixel limit applies to the stored image, whatever scale decodes it
        if max_pixels is not None and w * h > max_pixels:
            raise ImageError(f"{label}: {w}x{h} is {w * h} pixels, more than the limit of {max_pixels} (image bomb?)")
        if w == 0 or h == 0:
            raise ImageError(f"{label}: image has no pixels ({w}x{h})")
        scale = draft_scale(w, h, draft) if draft is not None else 1
        if scale > 1:
            img.draft(None, (w // scale, h // scale))  # JPEG only: other formats ignore it
        img.load()  # decode now, so that a truncated or corrupt file fails here, naming the file
        if img is fp:  # the caller's image: rotated into a new one (an upright image is copied)
            return to_rgb(ImageOps.exif_transpose(img))
        ImageOps.exif_transpose(img, in_place=True)  # ours: no copy of an upright image (36 MB for 12 megapixels)
        return to_rgb(img)
    except ImageError as err:
        msg = str(err)
        raise ImageError(msg if msg.startswith(label) else f"{label}: {msg}") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"{label}: too many pixels to decode safely ({err})") from None
    except UnidentifiedImageError:
        assert not isinstance(fp, Image.Image)
        refused = _refused_format(fp)
        if refused is not None:
            accepted = accepted_formats()
            message = f"{label}: {refused} (by its first bytes) is not an accepted format: {accepted}"
            raise UnsupportedFormatError(message) from None
        raise ImageError(f"{label}: not an image in an accepted format ({accepted_formats()})") from None
    except MemoryError:
        raise ImageError(f"{label}: not enough memory to decode the image") from None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... for corrupt files
        raise ImageError(f"{label}: cannot decode image ({_describe(err)})") from None


def open_image(
    source: ImageSource,
    name: str | None = None,
    max_pixels: int | None = None,
    *,
    fast_decode: bool = False,
    min_short_side: int | None = None,
) -> Image.Image:
    """Decode ``source`` (a path, encoded bytes or a PIL image) to an upright 8-bit RGB PIL image.

    Multi-frame files (GIF, TIFF) give their first frame.

    Args:
        source: file path, the file's bytes, or an already opened image.
        name: how to refer to the input in error messages (default: the path, or "image bytes").
        max_pixels: largest accepted ``width * height``, checked from the header before any pixel is decoded;
            default :func:`pixel_limit` (PIL's own limit). A server may pass a smaller one.
        fast_decode: decode a JPEG file whose shorter side is at least ``2 * min_short_side`` DCT-downscaled (1/2,
            1/4 or 1/8 per side, the shorter side kept at ``min_short_side`` or more, see :func:`draft_scale`):
            several times faster, and approximate (each pixel is about the mean of its block, not the exact
            decode's). The image comes back smaller by that scale, upright. Other inputs are decoded exactly.
        min_short_side: the shorter side the caller resizes to (a model's ``resize_size``); needed by
            ``fast_decode``.

    Raises:
        ImageError: the input is missing, is not a readable image, is truncated, or is larger than ``max_pixels``.
            The message starts with ``name`` (or the path) and says why.
        ValueError: ``fast_decode`` without a positive ``min_short_side``.
    """
    limit = pixel_limit() if max_pixels is None else max_pixels
    if fast_decode and (min_short_side is None or min_short_side < 1):
        raise UsageError(f"fast_decode needs the size the image is resized to: min_short_side={min_short_side!r}")
    draft = min_short_side if fast_decode else None
    if isinstance(source, Image.Image):
        return _decode(source, name or "image", limit, None)
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "image bytes"
        if not len(source):
            raise ImageError(f"{label}: empty input (0 bytes)")
        return _decode(io.BytesIO(source), label, limit, draft)
    path = Path(source)
    label = name or str(source)
    if not path.exists():
        raise ImageError(f"{label}: no such file")
    if not path.is_file():
        raise ImageError(f"{label}: not a file ({'a directory' if path.is_dir() else 'a special file'})")
    try:
        f = path.open("rb")
    except OSError as err:
        raise ImageError(f"{label}: cannot read file ({_describe(err)})") from None
    with f:
        if path.stat().st_size == 0:
            raise ImageError(f"{label}: empty file (0 bytes)")
        return _decode(f, label, limit, draft)


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _expand_dir(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders (``.name``) are skipped."""
    return sorted(
        f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and not _is_hidden(f, folder)
    )


def _glob(pattern: Path) -> list[Path]:
    """Sorted matches of a glob pattern; like a shell, wildcards do not match hidden names (``.name``) unless the
    pattern spells a leading dot itself."""
    parts = pattern.parts
    fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
    root = Path(*parts[:fixed]) if fixed else Path()
    wild = parts[fixed:]
    dotted = any(part.startswith(".") for part in wild)
    return sorted(
        m
        for m in root.glob(str(Path(*wild)))
        if dotted or not any(q.startswith(".") for q in m.relative_to(root).parts)
    )


def find_images(paths: list[str | os.PathLike] | tuple[str | os.PathLike, ...]) -> list[Path]:
    """Expand files, folders and glob patterns into a list of files, in the order given.

    - a folder gives its image files (suffix in :data:`IMAGE_SUFFIXES`), recursively, sorted, hidden ones skipped;
    - a glob pattern (``*``, ``?``, ``[``; ``**`` recurses) gives its matches, sorted, as a shell would, except that
      a matching folder is expanded as above;
    - a file is kept whatever its suffix (reading it reports the problem), and so is a path or pattern that matches
      nothing, so that the caller reports a per-input error instead of silently dropping it.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(os.path.expanduser(os.fspath(raw)))
        if p.is_dir():
            out += _expand_dir(p)
        elif not p.exists() and any(ch in str(p) for ch in "*?["):
            matches = _glob(p)
            for m in matches:
                if m.is_dir():
                    out += _expand_dir(m)
                elif m.is_file():
                    out.append(m)
            if not matches:
                out.append(p)
        else:
            out.append(p)
    return out


__all__ = [
    "ACCEPTED_FORMATS",
    "IMAGE_SUFFIXES",
    "ImageError",
    "UnsupportedFormatError",
    "accepted_formats",
    "draft_scale",
    "find_images",
    "open_image",
    "pixel_limit",
    "to_rgb",
]
