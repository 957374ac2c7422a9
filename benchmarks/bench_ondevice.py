"""ExecuTorch and LiteRT files: parity with eager per family, int8 accuracy of Apple's MobileOne-S0, batch-1 latency.

Three parts, every file written by ``mobilevit.export.export_model`` and run through the package's own runtimes
(``mobilevit.runtime``), as ``mobilevit predict --model FILE`` runs it:

1. Parity: one variant per family (random weights, BatchNorms and layer scales randomised), exported at
   ``--resolution``; the largest logit difference from the eager model relative to the largest eager logit
   (``check_export``), and the export time.
2. int8 accuracy: Apple's real MobileOne-S0 weights (../shared/weights), fp32 and int8 files of each format, top-1 /
   top-5 on ``imagenet-samples-100`` through the predictor (eager fp32 beside them), int8 calibrated on the 100
   disjoint photos of ``imagenet-calib-100``; how often the int8 top-1 equals the fp32 file's, and the int8 logits'
   signal-to-noise ratio against the fp32 file's (dB). The int8 files are the default configuration
   (``mobilevit.export.Int8Options()``); ``--int8-sweep`` adds the configurations of ``INT8_CONFIGS`` (each fix
   alone and the default without each one).
3. Latency: batch-1 time of one preprocessed 224x224 image in the S0 files (fp32 and int8 per runtime) and eager
   PyTorch, the runtimes interleaved round by round (``mobilevit.bench.profile.compare_latency``) so a busy machine
   slows them alike; ``--threads`` for every runtime; the speed-up of each int8 file over the fp32 file of its
   runtime.
4. int8 beyond MobileOne: ``--random-int8`` models (default ``mobilevitv2_050`` and ``fastvit_t8``) with random
   weights (BatchNorms and layer scales randomised), fp32 and default int8 files of each format: on the 100 photos
   of ``imagenet-samples-100``, how often the int8 top-1 equals the fp32 file's, the int8 logits' SNR against the
   fp32 file's (dB) and the drift (largest difference relative to the fp32 logit scale); and the batch-1 speed-up of
   each int8 file over the fp32 file of its runtime, the four files of a model interleaved. Random weights give no
   accuracy; these rows say whether int8 keeps the fp32 function and what it buys in time.

    python benchmarks/bench_ondevice.py                          # all four parts
    python benchmarks/bench_ondevice.py --skip-parity --threads 1 --repeats 50 --int8-sweep --json
    python benchmarks/bench_ondevice.py --workdir runs/ondevice  # keep the exported files
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mobilevit
from common import SHARED_DATA, randomize
from mobilevit.bench.profile import compare_latency
from mobilevit.bench.report import markdown_table
from mobilevit.evaluate import evaluate, read_labelled
from mobilevit.export import Int8Options, check_export, export_model
from mobilevit.predict import Predictor, load_predictor
from mobilevit.runtime import FILE_FORMATS

FAMILIES = ("mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "fastvit_t8", "mobileone_s0")
# the on-device formats (those export_model quantizes) -> the suffix a file gets (the runtime follows the suffix)
FORMATS = {f.name: f.suffixes[0] for f in FILE_FORMATS.values() if f.int8}
ENTRY = "mobileone_s0.orig_in1k_reparam"
WEIGHTS = SHARED_DATA.parent / "weights" / "mobileone_s0_reparam.safetensors"
EVAL_IMAGES = SHARED_DATA / "imagenet-samples-100"
CALIBRATION = SHARED_DATA / "imagenet-calib-100"
DEFAULT = "default"
# --int8-sweep: configuration name -> how the int8 files are quantized (docs/export.md explains each fix)
INT8_CONFIGS = {
    "toolchain quantizer alone": Int8Options(keep_fp32=(), equalize=None, bias_correction=False),
    "+ first/last layers fp32": Int8Options(equalize=None, bias_correction=False),
    "+ equalization 0.6": Int8Options(bias_correction=False),
    DEFAULT: Int8Options(),
    "default without equalization": Int8Options(equalize=None),
    "default, equalization 0.75": Int8Options(equalize=0.75),
    "default, minmax observer": Int8Options(observer="minmax"),
    "default, moving-average observer": Int8Options(observer="moving_average"),
    "default, every layer int8": Int8Options(keep_fp32=()),
}


def parity_rows(workdir: Path, resolution: int) -> list[dict]:
    rows = []
    for name in FAMILIES:
        torch.manual_seed(0)
        model = randomize(mobilevit.create_model(name)).eval()
        for fmt, suffix in FORMATS.items():
            t0 = time.perf_counter()
            path = export_model(model, fmt, workdir / f"{name}{suffix}", input_size=(resolution, resolution))
            export_s = time.perf_counter() - t0
            parity = check_export(model, path)
            meta = mobilevit.export.read_metadata(path)
            rows.append(
                {
                    "model": name,
                    "format": fmt,
                    "dynamic_axes": ",".join(meta.dynamic_axes) or "none",
                    "max_rel_diff": f"{parity.max_rel_diff:.1e}",
                    "export_s": round(export_s, 1),
                    "size_MB": round(path.stat().st_size / 1e6, 2),
                }
            )
            print(rows[-1], flush=True)
    return rows


def s0_files(workdir: Path, configs: list[str]) -> dict[str, Path]:
    """Apple's MobileOne-S0 as fp32 and int8 files of each format: ``{"executorch fp32": path, "executorch int8
    default": path, ...}``, one int8 file per name of ``INT8_CONFIGS`` in ``configs``."""
    model = mobilevit.create_model(ENTRY, pretrained=str(WEIGHTS))
    files = {}
    for fmt, suffix in FORMATS.items():
        files[f"{fmt} fp32"] = export_model(model, fmt, workdir / f"s0{suffix}")
        for i, name in enumerate(configs):
            t0 = time.perf_counter()
            path = workdir / f"s0_int8_{i}{suffix}"
            options = INT8_CONFIGS[name]
            files[f"{fmt} int8 {name}"] = export_model(
                model, fmt, path, quantize="int8", calibration=CALIBRATION, int8=options
            )
            took = time.perf_counter() - t0
            print(f"{fmt} int8 {name}: export (100 calibration images) took {took:.0f} s", flush=True)
    return files


def fp32_key(key: str) -> str:
    """``"executorch int8 default"`` -> ``"executorch fp32"``."""
    return key.split(" int8")[0] + " fp32" if " int8" in key else key


def accuracy_rows(files: dict[str, Path], threads: int) -> list[dict]:
    samples, _ = read_labelled(EVAL_IMAGES)
    eager = Predictor.from_pretrained(ENTRY, pretrained=str(WEIGHTS))
    predictors = {"eager fp32": eager} | {k: load_predictor(p, threads=threads) for k, p in files.items()}
    photos = [path for path, _ in samples]
    batch = torch.stack([eager.prepare(path) for path in photos])
    logits = {k: p.logits(batch).numpy() for k, p in predictors.items()}
    rows = []
    for key, predictor in predictors.items():
        result = evaluate(predictor, samples)
        ref = logits[fp32_key(key)]
        agree = int((logits[key].argmax(1) == ref.argmax(1)).sum())
        noise = float(((logits[key] - ref) ** 2).sum())
        rows.append(
            {
                "runtime": key,
                "top1": f"{result['correct_top1']}/{result['count']}",
                "top5": f"{result['correct_top5']}/{result['count']}",
                "top1_same_as_fp32": f"{agree}/{len(photos)}",
                "snr_db": round(10 * np.log10(float((ref**2).sum()) / noise), 1) if noise else "-",
            }
        )
        print(rows[-1], flush=True)
    return rows


def latency_rows(files: dict[str, Path], threads: int, repeats: int) -> list[dict]:
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    eager = mobilevit.reparameterize_model(mobilevit.create_model(ENTRY, pretrained=str(WEIGHTS))).eval()
    runtimes = {k: load_predictor(p, threads=threads).runtime for k, p in files.items()}
    fns = {"eager fp32 (folded)": lambda: eager(x)} | {k: (lambda r=r: r.run(x)) for k, r in runtimes.items()}
    with torch.inference_mode():
        stats = compare_latency(fns, rounds=repeats, warmup=5)
    return [
        {
            "runtime": k,
            "median_ms": round(s["median_ms"], 2),
            "min_ms": round(s["min_ms"], 2),
            "speedup_vs_fp32": round(stats[fp32_key(k)]["median_ms"] / s["median_ms"], 2) if " int8" in k else "-",
        }
        for k, s in stats.items()
    ]


def random_int8_rows(name: str, workdir: Path, threads: int, repeats: int) -> list[dict]:
    """Part 4 for one model: fp32 and default int8 files of each format, their agreement, SNR, drift and speed-up."""
    torch.manual_seed(0)
    model = randomize(mobilevit.create_model(name)).eval()
    files = {}
    for fmt, suffix in FORMATS.items():
        files[f"{fmt} fp32"] = export_model(model, fmt, workdir / f"{name}{suffix}")
        t0 = time.perf_counter()
        int8 = workdir / f"{name}_int8{suffix}"
        files[f"{fmt} int8"] = export_model(model, fmt, int8, quantize="int8", calibration=CALIBRATION)
        print(f"{name} {fmt} int8: export (100 calibration images) took {time.perf_counter() - t0:.0f} s", flush=True)
    predictors = {k: load_predictor(p, threads=threads) for k, p in files.items()}
    first = next(iter(predictors.values()))
    samples, _ = read_labelled(EVAL_IMAGES)
    batch = torch.stack([first.prepare(path) for path, _ in samples])
    logits = {k: p.logits(batch).numpy() for k, p in predictors.items()}
    x = batch[:1]
    fns = {k: (lambda r=p.runtime: r.run(x)) for k, p in predictors.items()}
    with torch.inference_mode():
        stats = compare_latency(fns, rounds=repeats, warmup=5)
    rows = []
    for fmt in FORMATS:
        ref, out = logits[f"{fmt} fp32"], logits[f"{fmt} int8"]
        fp32_ms, int8_ms = stats[f"{fmt} fp32"]["median_ms"], stats[f"{fmt} int8"]["median_ms"]
        rows.append(
            {
                "model": name,
                "format": fmt,
                "top1_same_as_fp32": f"{int((out.argmax(1) == ref.argmax(1)).sum())}/{len(samples)}",
                "snr_db": round(float(10 * np.log10(float((ref**2).sum()) / float(((out - ref) ** 2).sum()))), 1),
                "drift": round(float(np.abs(out - ref).max() / np.abs(ref).max()), 3),
                "fp32_ms": round(fp32_ms, 2),
                "int8_ms": round(int8_ms, 2),
                "speedup": round(fp32_ms / int8_ms, 2),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads of every runtime (and PyTorch)")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds of the latency part")
    parser.add_argument("--resolution", type=int, default=224, help="export size of the parity part")
    parser.add_argument("--skip-parity", action="store_true", help="skip part 1 (parity of every family)")
    parser.add_argument("--int8-sweep", action="store_true", help="every int8 configuration of INT8_CONFIGS")
    parser.add_argument(
        "--random-int8",
        nargs="*",
        default=["mobilevitv2_050", "fastvit_t8"],
        metavar="MODEL",
        help="part 4's models (none: skip it)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the exported files here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the tables as JSON")
    args = parser.parse_args()
    if not WEIGHTS.is_file() or not (EVAL_IMAGES / "labels.csv").is_file() or not CALIBRATION.is_dir():
        raise SystemExit(f"needs the shared weights and photos at {SHARED_DATA.parent}")
    torch.set_num_threads(args.threads)
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("executorch", "litert-torch"))
    print(f"torch {torch.__version__}, {versions}, {platform.machine()}, {args.threads} threads", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        tables = {} if args.skip_parity else {"parity": parity_rows(workdir, args.resolution)}
        files = s0_files(workdir, list(INT8_CONFIGS) if args.int8_sweep else [DEFAULT])
        tables["accuracy"] = accuracy_rows(files, args.threads)
        tables["latency"] = latency_rows(files, args.threads, args.repeats)
        if args.random_int8:
            rows = [
                row for name in args.random_int8 for row in random_int8_rows(name, workdir, args.threads, args.repeats)
            ]
            tables["int8 with random weights"] = rows
    for name, rows in tables.items():
        print(json.dumps({name: rows}) if args.json else f"\n{name}\n\n{markdown_table(rows)}")


if __name__ == "__main__":
    main()
