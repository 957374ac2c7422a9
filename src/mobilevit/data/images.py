"""Reading real-world images: any mode PIL can open becomes 8-bit RGB, upright, with a clear error per bad file.

Photos arrive as grayscale, palette, RGBA, CMYK, 16-bit, EXIF-rotated, tiny or huge. Each is brought to plain 8-bit
RGB the way the reference pipelines (timm, transformers) do it, so that preprocessing parity holds; files that are not
images, are truncated, or would decompress to an absurd size raise :class:`ImageError` naming the file and the cause.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A 16k x 16k photo is 268M pixels; anything beyond this is treated as a decompression bomb, not a photo.
MAX_PIXELS = 16384 * 16384
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


class ImageError(ValueError):
    """An input that cannot be read as an image (not an image, truncated, too large, unsupported mode)."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode; high-bit-depth grayscale is scaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if img.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL's advice for palette images with transparency
    return img if img.mode == "RGB" else img.convert("RGB")


def open_image(source: str | os.PathLike | bytes | Image.Image, name: str | None = None) -> Image.Image:
    """Decode ``source`` (a path, encoded bytes or a PIL image) to an upright 8-bit RGB PIL image.

    Args:
        source: file path, the file's bytes, or an already opened image.
        name: how to refer to the input in error messages (default: the path, or "image bytes").

    Raises:
        ImageError: the input is not a readable image, is truncated, or exceeds :data:`MAX_PIXELS`.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(source))
    label = name or (str(source) if not isinstance(source, bytes) else "image bytes")
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"{label}: empty input")
        fp: io.BytesIO | Path = io.BytesIO(source)
    else:
        fp = Path(source)
        if not fp.is_file():
            raise ImageError(f"{label}: no such file" if not fp.exists() else f"{label}: not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageError(f"{label}: {w}x{h} pixels is more than the limit of {MAX_PIXELS} (image bomb?)")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{label}: too many pixels to decode safely ({err})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"{label}: cannot decode image: {err}") from None


def find_images(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand files, folders (recursively, image suffixes only, sorted) and glob patterns into a list of files.

    A path that matches nothing is kept as is, so that reading it reports the problem for that one input.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif not p.exists() and any(ch in str(raw) for ch in "*?["):
            anchor = Path(p.anchor) if p.is_absolute() else Path()
            pattern = str(p.relative_to(anchor)) if p.is_absolute() else str(raw)
            out += sorted(f for f in anchor.glob(pattern) if f.is_file())
        else:
            out.append(p)
    return out
