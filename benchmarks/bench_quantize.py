"""What int8 costs and buys in onnxruntime: accuracy, logit drift, file size and batch-1 latency against fp32.

MobileOne-S0 with Apple's real weights (``mobileone_s0.orig_in1k_reparam``): top-1 / top-5 on the 100 photos of
``imagenet-samples-100`` (../shared/data). Calibration uses other photos only: by default ``imagenet-calib-100`` (100
ImageNet photos of other classes). Every model also reports, on the 100 evaluation photos, how often the int8 top-1
is the fp32 top-1 (``agree``) and the largest logit difference relative to the fp32 logit scale (``drift``).

``--sweep`` runs every configuration the field uses, one row each: per-channel vs per-tensor weights; activation
ranges by minmax, percentile or entropy; the first and/or last layer left in fp32; symmetric activations; only
Conv/MatMul/Gemm quantized (softmax, normalization and element-wise ops in fp32); onnxruntime's SmoothQuant (needs
neural-compressor 2.x; the row says why when it cannot run); channel equalization and bias correction
(:mod:`mobilevit.export.quant_fixes`); and the library's default with variations. It does so for MobileOne-S0 and,
with random weights (BatchNorm statistics and layer scales randomised, as the tests do), for ``mobilevitv2_050`` and
``fastvit_t8``, which can only report agreement and drift. Latency: median of ``--repeats`` batch-1 runs of every
file of one model, interleaved (one preprocessed photo, ``--threads`` intra-op threads), and the speed-up against
the fp32 file in the same run.

    python benchmarks/bench_quantize.py                     # fp32 vs the default int8, three models
    python benchmarks/bench_quantize.py --sweep             # every configuration, three models (about 1 h, 2 cores)
    python benchmarks/bench_quantize.py --sweep --models mobileone_s0 --repeats 500 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

import mobilevit
from common import SHARED_DATA, randomize
from mobilevit.bench.report import markdown_table
from mobilevit.data.images import find_images
from mobilevit.evaluate import read_labelled
from mobilevit.export import export_model, onnx_session, quantize_onnx, read_metadata
from mobilevit.export.quantize import calibration_batches

S0_ENTRY = "mobileone_s0.orig_in1k_reparam"
S0_WEIGHTS = SHARED_DATA.parent / "weights" / "mobileone_s0_reparam.safetensors"
EVAL_IMAGES = SHARED_DATA / "imagenet-samples-100"
CALIBRATION = SHARED_DATA / "imagenet-calib-100"
RANDOM_MODELS = ("mobilevitv2_050", "fastvit_t8")
COLUMNS = ("model", "int8", "top1", "top5", "agree", "drift", "file_mb", "latency_ms", "speedup", "note")

# onnxruntime's own behaviour, without this package's additions
PLAIN = {"keep_fp32": (), "equalize": None, "bias_correction": False}
SWEEP: dict[str, dict[str, Any] | None] = {
    "dynamic (no calibration)": {"mode": "dynamic", "keep_fp32": ()},
    "per-tensor weights, minmax": {**PLAIN, "per_channel": False},
    "per-channel weights, minmax": PLAIN,
    "per-channel, percentile 99.999": {**PLAIN, "method": "percentile"},
    "per-channel, entropy": {**PLAIN, "method": "entropy"},
    "per-channel, minmax, first layer fp32": {**PLAIN, "keep_fp32": ("first",)},
    "per-channel, minmax, last layer fp32": {**PLAIN, "keep_fp32": ("last",)},
    "per-channel, minmax, first + last fp32": {**PLAIN, "keep_fp32": ("first", "last")},
    "per-channel, minmax, symmetric activations": {**PLAIN, "symmetric": True},
    "per-channel, minmax, only Conv/MatMul/Gemm": {**PLAIN, "op_types": ("Conv", "MatMul", "Gemm")},
    "per-channel, minmax, SmoothQuant 0.5 (onnxruntime)": None,  # run by smoothquant() below
    "per-channel, minmax, equalization 0.5": {**PLAIN, "equalize": 0.5},
    "per-channel, minmax, equalization 0.75": {**PLAIN, "equalize": 0.75},
    "per-channel, minmax, equalization 1.0": {**PLAIN, "equalize": 1.0},
    "per-channel, minmax, bias correction": {**PLAIN, "bias_correction": True},
    "per-channel, minmax, equalization 0.75 + bias correction": {**PLAIN, "equalize": 0.75, "bias_correction": True},
    "default: equalization 0.75 + bias correction + first/last fp32": {},
    "default, only the first layer fp32": {"keep_fp32": ("first",)},
    "default, every layer int8": {"keep_fp32": ()},
    "default, per-tensor weights": {"per_channel": False},
    "default, percentile 99.999": {"method": "percentile"},
    "default, symmetric activations": {"symmetric": True},
    "default, only Conv/MatMul/Gemm": {"op_types": ("Conv", "MatMul", "Gemm")},
}


def smoothquant(fp32: Path, output: Path, batches: list[np.ndarray]) -> Path:
    """onnxruntime's static QDQ per-channel minmax with its SmoothQuant option (alpha 0.5, folded), the metadata
    copied over. Raises ImportError when neural-compressor 2.x (which onnxruntime calls for it) is missing."""
    import importlib

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    importlib.import_module("neural_compressor.adaptor.ox_utils.smooth_quant")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"pixel_values": batch}

    prepared = output.with_suffix(".prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
    quantize_static(
        str(prepared),
        str(output),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"SmoothQuant": True, "SmoothQuantAlpha": 0.5},
    )
    proto = onnx.load(str(output))
    for prop in onnx.load(str(fp32), load_external_data=False).metadata_props:
        proto.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(proto, str(output))
    return output


def export_fp32(name: str, workdir: Path) -> Path:
    """MobileOne-S0 with Apple's weights, or ``name`` with random weights, as an fp32 ONNX file."""
    torch.manual_seed(0)
    if name == "mobileone_s0":
        model = mobilevit.create_model(S0_ENTRY, pretrained=S0_WEIGHTS)
    else:
        model = randomize(mobilevit.create_model(name))
    return export_model(model.eval(), "onnx", workdir / f"{name}.onnx")


def logits(path: Path, batches: list[np.ndarray]) -> np.ndarray:
    session = onnx_session(path, 1)
    return np.concatenate([session.run(None, {session.get_inputs()[0].name: b})[0] for b in batches])


def scores(out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """top-1/top-5 (with labels), top-1 agreement with ``ref`` and the drift (max |diff| / ref's logit scale)."""
    row: dict[str, Any] = {}
    if labels is not None:
        top5 = np.argsort(-out, axis=1)[:, :5]
        row["top1"] = int((top5[:, 0] == labels).sum())
        row["top5"] = int((top5 == labels[:, None]).any(axis=1).sum())
    row["agree"] = int((out.argmax(1) == ref.argmax(1)).sum())
    row["drift"] = round(float(np.abs(out - ref).max() / np.abs(ref).max()), 4)
    return row


def latency_ms(files: dict[str, Path], x: np.ndarray, threads: int, repeats: int) -> dict[str, float]:
    """Median batch-1 session time per file, runs interleaved so that all see the same machine load."""
    sessions = {name: onnx_session(path, threads) for name, path in files.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():  # warm-up
        for _ in range(5):
            session.run(None, {session.get_inputs()[0].name: x})
    for _ in range(repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {session.get_inputs()[0].name: x})
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def quantize_all(fp32: Path, workdir: Path, configs: dict[str, Any], calibration: list[Path]) -> dict[str, Any]:
    """``{row name: int8 file, or the reason it could not be made}``, plus each file's quantization seconds."""
    files: dict[str, Any] = {}
    preprocess = read_metadata(fp32).preprocess
    for i, (name, options) in enumerate(configs.items()):
        out = workdir / f"{fp32.stem}_int8_{i}.onnx"
        start = time.perf_counter()
        try:
            if options is None:
                files[name] = smoothquant(fp32, out, list(calibration_batches(calibration, preprocess, 1)))
            else:
                files[name] = quantize_onnx(fp32, out, calibration, **options)
        except ImportError as err:
            files[name] = f"not measured: {err}"
        except Exception as err:  # one configuration onnxruntime cannot quantize should not stop the sweep
            files[name] = f"failed: {type(err).__name__}: {err}"
        print(f"  {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return files


def bench_model(name: str, configs: dict[str, Any], args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """One row per configuration of ``name``: fp32 first."""
    print(f"{name}: exporting and quantizing {len(configs)} configuration(s)", flush=True)
    fp32 = export_fp32(name, workdir)
    samples, _ = read_labelled(EVAL_IMAGES)
    batches = list(calibration_batches([path for path, _ in samples], read_metadata(fp32).preprocess, 10))
    labels = np.array([label for _, label in samples]) if name == "mobileone_s0" else None
    made = quantize_all(fp32, workdir, configs, args.calibration_images)
    files = {"fp32": fp32, **{k: v for k, v in made.items() if isinstance(v, Path)}}
    speed = latency_ms(files, batches[0][:1], args.threads, args.repeats)
    ref = logits(fp32, batches)
    rows = []
    for row_name, result in {"fp32": fp32, **made}.items():
        row: dict[str, Any] = {"model": name, "int8": row_name}
        if isinstance(result, Path):
            row |= scores(logits(result, batches), ref, labels)
            row["file_mb"] = round(result.stat().st_size / 2**20, 2)
            row["latency_ms"] = round(speed[row_name], 2)
            row["speedup"] = round(speed["fp32"] / speed[row_name], 2)
        else:
            row["note"] = result
        rows.append(row)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="store_true", help="every configuration (default: fp32 vs default int8)")
    parser.add_argument(
        "--models",
        default=",".join(("mobileone_s0", *RANDOM_MODELS)),
        help="comma-separated, from mobileone_s0 (real weights), mobilevitv2_050, fastvit_t8 (random)",
    )
    parser.add_argument("--calibration", type=Path, default=CALIBRATION, help="calibration images (a folder)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for the latency")
    parser.add_argument("--repeats", type=int, default=200, help="interleaved batch-1 runs per file")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, help="keep the ONNX files here (default: a temporary folder)")
    args = parser.parse_args()
    for needed in (S0_WEIGHTS, EVAL_IMAGES / "labels.csv", args.calibration):
        if not needed.exists():
            raise SystemExit(f"needs {needed} (the shared test data in ../shared beside the checkout)")
    args.calibration_images = [p for p in find_images([args.calibration]) if p.is_file()]
    eval_names = {p.name for p in EVAL_IMAGES.iterdir()}
    assert not eval_names & {p.name for p in args.calibration_images}, "calibration and evaluation images overlap"
    return args


def main() -> None:
    args = parse_args()
    models = args.models.split(",")
    configs = SWEEP if args.sweep else {"default": {}}
    rows = []
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-quantize-")))
        else:
            workdir = args.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        for name in models:
            rows += bench_model(name, configs, args, workdir)
    setup = (
        f"{len(args.calibration_images)} calibration images ({args.calibration.name}), 100 evaluation photos "
        f"({EVAL_IMAGES.name}); top-1/top-5 for MobileOne-S0 with Apple's weights, the others random weights; "
        f"onnxruntime {ort.__version__}, torch {torch.__version__}, {platform.machine()}, {args.threads} thread(s), "
        f"batch 1, median of {args.repeats} interleaved runs per model"
    )
    if args.json:
        print(json.dumps({"setup": setup, "rows": rows}, indent=2))
    else:
        print(setup)
        print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
