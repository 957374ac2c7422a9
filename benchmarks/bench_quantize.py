"""What int8 costs and buys: MobileOne-S0 (Apple's real weights) in fp32 eager, fp32 onnxruntime and int8 onnxruntime.

Accuracy: top-1 / top-5 on ``imagenet-samples-100`` (../shared/data), every backend through the same predictor
preprocessing (resize 256 bilinear, center crop 224, ImageNet mean/std). Calibration of the static int8 model uses
images disjoint from those: the ``train`` split of the ants/bees set (../shared/data/hymenoptera.tar) plus, with
``--cifar N``, N CIFAR-10 training images (``cifar10-jpeg.tar.gz``; more classes, but 32x32 photos upscaled).
Latency: median and fastest onnxruntime session time at batch 1 (one preprocessed image, ``--threads`` intra-op
threads), fp32 vs int8, runs interleaved. The extracted calibration images and the ONNX files go to a temporary
folder removed at the end, or to ``--workdir`` (kept, and the extracted images reused by the next run).

    python benchmarks/bench_quantize.py                       # static QDQ per-channel minmax, 245 calibration images
    python benchmarks/bench_quantize.py --method percentile --max-images 120 --dynamic --json
    python benchmarks/bench_quantize.py --workdir runs/quantize      # keep the files, reuse the extracted images
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common import SHARED_DATA, extract_once
from mobilevit.bench.report import markdown_table
from mobilevit.data.images import find_images, open_image
from mobilevit.evaluate import evaluate, read_labelled
from mobilevit.export import export_model, onnx_session, quantize_onnx
from mobilevit.predict import OnnxPredictor, Predictor

ENTRY = "mobileone_s0.orig_in1k_reparam"
WEIGHTS = SHARED_DATA.parent / "weights" / "mobileone_s0_reparam.safetensors"
EVAL_IMAGES = SHARED_DATA / "imagenet-samples-100"


def calibration_images(cifar: int, workdir: Path) -> list[Path]:
    """Hymenoptera ``train`` (245 photos), then ``cifar`` CIFAR-10 training images spread over the classes, extracted
    into ``workdir``."""
    ants_bees = extract_once(SHARED_DATA / "hymenoptera.tar", workdir / "hymenoptera")
    images = find_images([ants_bees / "hymenoptera_data" / "train"])
    if cifar:
        root = extract_once(SHARED_DATA / "cifar10-jpeg.tar.gz", workdir / "cifar10")
        train = next(p for p in root.rglob("train") if p.is_dir())
        per_class = [find_images([d])[: -(-cifar // 10)] for d in sorted(train.iterdir()) if d.is_dir()]
        images += [p for group in zip(*per_class, strict=False) for p in group][:cifar]
    eval_names = {p.name for p in EVAL_IMAGES.iterdir()}
    assert not eval_names & {p.name for p in images}, "calibration and evaluation images overlap"
    return images


def latency_ms(
    sessions: dict[str, ort.InferenceSession], x: np.ndarray, repeats: int
) -> dict[str, tuple[float, float]]:
    """(median, min) batch-1 session time per model, runs interleaved so that all see the same machine load (on a
    shared machine the min is the steadier of the two)."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():  # warm-up
        for _ in range(5):
            session.run(None, {session.get_inputs()[0].name: x})
    for _ in range(repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {session.get_inputs()[0].name: x})
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"])
    parser.add_argument("--cifar", type=int, default=0, help="also calibrate on this many CIFAR-10 train images")
    parser.add_argument("--max-images", type=int, default=500, help="calibrate on at most this many images")
    parser.add_argument("--dynamic", action="store_true", help="also measure dynamic (uncalibrated) int8")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for the latency")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--workdir", type=Path, help="keep the extracted images and ONNX files here (default: a temporary folder)"
    )
    args = parser.parse_args()
    if not WEIGHTS.is_file() or not (EVAL_IMAGES / "labels.csv").is_file():
        raise SystemExit(f"needs {WEIGHTS} and {EVAL_IMAGES} (the shared test data in ../shared beside the checkout)")

    samples, _ = read_labelled(EVAL_IMAGES)
    eager = Predictor.from_pretrained(ENTRY, pretrained=WEIGHTS, batch_size=10)
    rows = [{"model": "fp32 eager (PyTorch)", **evaluate(eager, samples)}]
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-quantize-")))
        else:
            workdir = args.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        calibration = calibration_images(args.cifar, workdir)[: args.max_images]
        files = {"fp32 onnxruntime": export_model(eager.model, "onnx", workdir / "s0.onnx")}
        files["int8 onnxruntime (static QDQ)"] = quantize_onnx(
            files["fp32 onnxruntime"], workdir / "s0_int8.onnx", calibration, method=args.method
        )
        if args.dynamic:
            files["int8 onnxruntime (dynamic)"] = quantize_onnx(
                files["fp32 onnxruntime"], workdir / "s0_dynamic.onnx", mode="dynamic"
            )
        for name, path in files.items():
            rows.append({"model": name, **evaluate(OnnxPredictor(path, batch_size=10), samples)})
        x = eager.transform(open_image(samples[0][0])).unsqueeze(0).numpy()  # [1, 3, 224, 224]
        latency = latency_ms({name: onnx_session(path, args.threads) for name, path in files.items()}, x, args.repeats)
        sizes = {name: path.stat().st_size / 2**20 for name, path in files.items()}
    for row in rows:
        row.pop("failed")
        median, fastest = latency.get(row["model"], (None, None))
        row["latency_ms_b1"] = round(median, 3) if median else None
        row["min_ms_b1"] = round(fastest, 3) if fastest else None
        row["file_mb"] = round(sizes[row["model"]], 2) if row["model"] in sizes else None
    setup = (
        f"MobileOne-S0 ({ENTRY}), {len(samples)} eval images ({EVAL_IMAGES.name}), calibration: {len(calibration)} "
        f"images (hymenoptera train{f' + {args.cifar} CIFAR-10 train' if args.cifar else ''}), method {args.method}; "
        f"onnxruntime {ort.__version__}, {args.threads} thread(s), batch 1, median and min of {args.repeats} "
        "interleaved runs"
    )
    if args.json:
        print(json.dumps({"setup": setup, "rows": rows}, indent=2))
    else:
        print(setup)
        print(markdown_table(rows))


if __name__ == "__main__":
    main()
