"""Decoding + preprocessing time per image: ours (exact and ``fast_decode``) vs timm's ``create_transform``.

What ``mobilevit predict``, ``eval`` and ``serve`` do to each image before the model: decode the JPEG
(:func:`mobilevit.data.images.open_image`: upright 8-bit RGB) and apply the weights' eval transform (resize, centre
crop, channel order, normalization). timm's side is its own pipeline for the same architecture:
``Image.open(...).convert("RGB")`` and ``timm.data.create_transform(**resolve_data_config(model=...))``. Every pipeline
gets the same encoded bytes from memory (no disk reads), one thread, and the runs are interleaved: each round
runs every pipeline over every image, and the tables give the median over rounds of the mean time per image.

Two sets: the ImageNet-sized photos of ``imagenet-samples-100`` (about 500x375) and 12-megapixel JPEGs made from
them (upscaled to 4000 px on the longer side, re-encoded at quality 90, in a temporary folder unless
``--upscaled-dir`` keeps them). A third table times the JPEG decoders alone on the large set: PIL exact, PIL
DCT-downscaled (``Image.draft``, what ``fast_decode`` uses) and ``torchvision.io.decode_jpeg``.

    python benchmarks/bench_decode.py                       # mobileone_s0 and mobilevit_xxs.orig_in1k (BGR, OpenCV)
    python benchmarks/bench_decode.py --weights fastvit_t8 --large 20 --rounds 5 --json decode.json
    python benchmarks/bench_decode.py --write-upscaled /tmp/up4000   # then: mobilevit eval /tmp/up4000 [--fast-decode]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import timm
import torch
import torchvision
from PIL import Image
from timm.data import create_transform, resolve_data_config

import mobilevit
from common import IMAGENET_SAMPLES, upscaled_copies
from mobilevit.bench.report import markdown_table
from mobilevit.data.datasets import read_labelled
from mobilevit.data.images import draft_scale, open_image
from mobilevit.data.transforms import eval_transform
from mobilevit.predict import Predictor
from mobilevit.weights.entries import get_weights

Stage = Callable[[bytes], object]


def pipelines(weights: str) -> dict[str, tuple[Callable[[bytes], Image.Image], Callable[[Image.Image], torch.Tensor]]]:
    """(decode, preprocess) of each pipeline for ``weights``: ours exact, ours fast, timm's."""
    entry = get_weights(weights)
    pre = entry.preprocess
    transform = eval_transform(pre)
    timm_transform = create_transform(**resolve_data_config({}, model=timm.create_model(entry.arch)))

    def timm_decode(data: bytes) -> Image.Image:
        return Image.open(io.BytesIO(data)).convert("RGB")

    def fast_decode(data: bytes) -> Image.Image:
        return open_image(data, fast_decode=True, min_short_side=pre.resize_size)

    return {
        "ours exact": (open_image, transform),
        "ours fast_decode": (fast_decode, transform),
        "timm": (timm_decode, timm_transform),
    }


def check_against_predictor(weights: str, data: bytes) -> None:
    """The stages timed here are what the predictor runs (same tensor), exact and fast."""
    entry = get_weights(weights)
    predictor = Predictor(mobilevit.create_model(entry.arch).eval(), entry.preprocess)  # weights play no part here
    for name, (decode, transform) in pipelines(weights).items():
        if name.startswith("ours"):
            expected = predictor.prepare(data, fast_decode=name.endswith("fast_decode"))
            if not torch.equal(transform(decode(data)), expected):
                raise SystemExit(f"{name} here is not what Predictor.prepare computes for {weights}")


def time_sets(sets: dict[str, list[bytes]], weights: list[str], rounds: int) -> list[dict[str, object]]:
    """Per (set, weights, pipeline): median over rounds of the mean decode, preprocess and total ms per image."""
    runs = {(s, w, p): stages for s in sets for w in weights for p, stages in pipelines(w).items()}
    times: dict[tuple[str, str, str], list[tuple[float, float]]] = {key: [] for key in runs}
    for r in range(rounds + 1):  # round 0 warms up (first-call allocations, lazy imports)
        for (set_name, w, p), (decode, transform) in runs.items():
            decode_s = preprocess_s = 0.0
            for data in sets[set_name]:
                t0 = time.perf_counter()
                img = decode(data)
                t1 = time.perf_counter()
                transform(img)
                t2 = time.perf_counter()
                decode_s, preprocess_s = decode_s + t1 - t0, preprocess_s + t2 - t1
            if r:
                n = len(sets[set_name])
                times[(set_name, w, p)].append((1e3 * decode_s / n, 1e3 * preprocess_s / n))
    rows = []
    for (set_name, w, p), samples in times.items():
        decode_ms = statistics.median(d for d, _ in samples)
        preprocess_ms = statistics.median(q for _, q in samples)
        total_ms = statistics.median(d + q for d, q in samples)
        rows.append(
            {
                "set": set_name,
                "weights": w,
                "pipeline": p,
                "decode_ms": decode_ms,
                "preprocess_ms": preprocess_ms,
                "total_ms": total_ms,
            }
        )
    for row in rows:
        ref = next(x for x in rows if (x["set"], x["weights"], x["pipeline"]) == (row["set"], row["weights"], "timm"))
        row["vs_timm"] = row["total_ms"] / ref["total_ms"]
    return rows


def time_decoders(images: list[bytes], short_side: int, rounds: int) -> list[dict[str, object]]:
    """JPEG decoding alone (to an RGB PIL image or uint8 tensor), median over rounds of the mean ms per image."""
    from torchvision.io import decode_jpeg

    def pil(data: bytes) -> object:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img

    def pil_draft(data: bytes) -> object:
        img = Image.open(io.BytesIO(data))
        scale = draft_scale(img.width, img.height, short_side)
        img.draft(None, (img.width // scale, img.height // scale))
        img.load()
        return img

    def tv(data: bytes) -> object:
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))

    decoders = {
        "PIL (exact)": pil,
        f"PIL draft (fast_decode for {short_side})": pil_draft,
        "torchvision decode_jpeg": tv,
    }
    times: dict[str, list[float]] = {name: [] for name in decoders}
    for r in range(rounds + 1):
        for name, decode in decoders.items():
            t0 = time.perf_counter()
            for data in images:
                decode(data)
            if r:
                times[name].append(1e3 * (time.perf_counter() - t0) / len(images))
    return [{"decoder": name, "ms_per_image": statistics.median(t)} for name, t in times.items()]


def setup_line(threads: int, rounds: int) -> str:
    return (
        f"Pillow {PIL.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, timm "
        f"{timm.__version__}, numpy {np.__version__}, {platform.machine()}, {threads} thread(s), median of {rounds} "
        "interleaved rounds"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", default=["mobileone_s0", "mobilevit_xxs.orig_in1k"])
    parser.add_argument("--images", type=Path, default=IMAGENET_SAMPLES, help="folder with labels.csv")
    parser.add_argument("--large", type=int, default=20, help="how many of the photos to time as 12 MP JPEGs")
    parser.add_argument("--long-side", type=int, default=4000, help="longer side of the large JPEGs")
    parser.add_argument("--upscaled-dir", type=Path, help="keep the large JPEGs here (default: a temporary folder)")
    parser.add_argument(
        "--write-upscaled",
        type=Path,
        metavar="DIR",
        help="only write every photo upscaled, with labels.csv, to DIR (for `mobilevit eval DIR`), and stop",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a decode worker runs one)")
    parser.add_argument("--json", type=Path, help="also write the tables here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.write_upscaled:
        upscaled_copies(args.images, args.write_upscaled, args.long_side)
        return

    with tempfile.TemporaryDirectory() as tmp:
        large_dir = upscaled_copies(args.images, args.upscaled_dir or Path(tmp), args.long_side, args.large)
        small = [p.read_bytes() for p, _ in read_labelled(args.images)[0]]
        large = [p.read_bytes() for p, _ in read_labelled(large_dir)[0]]
    large_name = f"JPEGs {args.long_side} px on the longer side (x{len(large)})"
    sets = {f"ImageNet-sized (x{len(small)})": small, large_name: large}
    for w in args.weights:
        check_against_predictor(w, large[0])
        check_against_predictor(w, small[0])

    rows = time_sets(sets, args.weights, args.rounds)
    short_side = min(get_weights(w).preprocess.resize_size for w in args.weights)
    decoders = time_decoders(large, short_side, args.rounds)
    header = setup_line(args.threads, args.rounds)
    print(f"\n{header}\n\n{markdown_table(rows)}\n\nJPEG decoders, {large_name}:\n\n{markdown_table(decoders)}")
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "rows": rows, "decoders": decoders}, indent=2))


if __name__ == "__main__":
    main()
