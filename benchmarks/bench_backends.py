"""Ours vs timm, every way each can run, in one process: the anchor comparison for `mobilevit bench`.

For each architecture timm also has, timm's model is built with random weights (randomized BatchNorm statistics and
layer scales), and the same state dict is converted into ours by our checkpoint converters (``common.same_weights``),
so all forms compute the same logits (checked: ``max_rel_diff``). At the weights' native resolution (256 for
MobileViT and FastViT, 224 for MobileOne) the forms are

    timm_eager   timm's model as created
    timm_rep     timm.utils.reparameterize_model (folded)
    timm_ort     timm's folded model exported with torch.onnx.export, run by onnxruntime
    timm_ov      that file run by OpenVINO (mobilevit.export.openvino_model: CPU plugin, fp32)
    eager        ours as created (train-time form)
    reparam      mobilevit.reparameterize_model (folded)
    compile      torch.compile of our folded model (compiled before timing)
    ort          our folded model exported by mobilevit.export.export_model, run by onnxruntime
    ov           that file run by OpenVINO (same settings as timm_ov)

timed round-robin (one call of each per round, ``--rounds`` rounds, median), so a noisy neighbour slows every form
alike. Both onnxruntime sessions get the same options (intra-op threads = torch threads, sequential execution, no
spinning), and both OpenVINO models too (inference threads = torch threads). ``vs_timm_eager`` = timm eager / our
best (2 means twice as fast); ``vs_timm_best`` = our best / timm's best form (1.0 is parity), where timm's forms
include its ONNX file in OpenVINO, so a faster runtime alone does not count as ours.

The roofline columns say what those ratios cost in arithmetic: ``GMACs`` of the folded model (the least work any
form does per image), the rate in GMAC/s of timm eager (``timm_eager_GMAC_s``), of our best form (``best_GMAC_s``)
and the rate a form would need to be twice as fast as timm eager (``2x_needs_GMAC_s = 2 * GMACs * batch /
timm_eager_s``), and each as a % of this CPU's fp32 FMA limit (``*_pct_limit``; cores x fp32 FMA lanes per cycle x
maximum clock, ``mobilevit.bench.fp32_fma_limit``): above 100, no fp32 form that does the counted MACs can reach 2x
on this CPU. The limit needs the maximum clock: from cpufreq where the machine exposes it, else ``--max-clock-ghz``
(virtual machines hide it; without either the % columns stay empty). The dense peak measured at the start (the
fastest of a matmul, a 1x1 and a direct 3x3 convolution, ``mobilevit.bench.measure_peak_gmacs``) is printed beside the
limit: it is what tuned kernels reach, and a whole network can run above it.

    python benchmarks/bench_backends.py                                # every shared architecture, batch 1 and 8
    python benchmarks/bench_backends.py --quick --models mobileone_s0,mobilevit_xxs
    python benchmarks/bench_backends.py --models 'fastvit*' --rounds 30 --threads 2 --json out.json
    python benchmarks/bench_backends.py --threads 2 --max-clock-ghz 3.7    # a VM that hides its boost clock
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from timm.utils import reparameterize_model as timm_reparameterize

import mobilevit
from common import same_weights
from mobilevit.bench import compare_latency, count_macs, measure_peak_gmacs
from mobilevit.bench.report import markdown_table
from mobilevit.bench.run import make_backend, system_info
from mobilevit.predict import ONNX_PREDICTORS
from mobilevit.weights.entries import get_weights

TIMM_FORMS = ("timm_eager", "timm_rep", "timm_ort", "timm_ov")
OUR_FORMS = ("eager", "reparam", "compile", "ort", "ov")
QUICK_MODELS = ("mobileone_s0", "mobilevit_xxs")


def native_resolution(name: str) -> int:
    """The input size of the architecture's default weights (256 MobileViT/FastViT, 224 MobileOne)."""
    height, width = get_weights(name).preprocess.input_size
    assert height == width, f"{name}: non-square native input {height}x{width}"
    return height


def timm_onnx(model: torch.nn.Module, path: Path, resolution: int) -> Path:
    """Export timm's (folded) model with ``torch.onnx.export`` (dynamo exporter, dynamic batch)."""
    example = torch.randn(1, 3, resolution, resolution)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim.AUTO},),
        )
    return path


def in_runtime(runtime: str, path: Path, name: str) -> Callable[[torch.Tensor], object]:
    """timm's ONNX file run the way ours is (the predictor's runtime; the file has no metadata, so the preprocessing
    is the weights entry's)."""
    predictor = ONNX_PREDICTORS[runtime](path, get_weights(name).preprocess, threads=torch.get_num_threads())
    return predictor.forward


def prepare(
    name: str, workdir: Path, forms: list[str]
) -> tuple[dict[str, Callable], dict[str, str], dict[str, float], float]:
    """(forward per form, error per form that could not be built, preparation seconds per form, GMACs per image of the
    folded model) for one model."""
    ours, ref = same_weights(name, workdir)
    ref_rep, folded = timm_reparameterize(ref), mobilevit.reparameterize_model(ours)
    resolution = native_resolution(name)
    size = (resolution, resolution)
    files: dict[str, object] = {}  # each side's ONNX file, exported once for both runtimes

    def timm_file() -> Path:
        files.setdefault("timm", timm_onnx(ref_rep, workdir / f"timm_{name}.onnx", resolution))
        return files["timm"]

    def ours_in(runtime: str) -> Callable:
        backend = make_backend(runtime, ours, folded, size, workdir, files.get("ours"))
        files["ours"] = backend.exported
        return backend.forward

    builders: dict[str, Callable[[], Callable]] = {
        "timm_eager": lambda: ref,
        "timm_rep": lambda: ref_rep,
        "timm_ort": lambda: in_runtime("onnxruntime", timm_file(), name),
        "timm_ov": lambda: in_runtime("openvino", timm_file(), name),
        "eager": lambda: make_backend("eager", ours, folded, size, workdir).forward,
        "reparam": lambda: make_backend("reparam", ours, folded, size, workdir).forward,
        "compile": lambda: make_backend("compile", ours, folded, size, workdir).forward,
        "ort": lambda: ours_in("onnxruntime"),
        "ov": lambda: ours_in("openvino"),
    }
    forwards, errors, setup = {}, {}, {}
    for form in forms:
        t0 = time.perf_counter()
        try:
            forwards[form] = builders[form]()
        except Exception as error:  # report it in the table, go on with the other forms
            errors[form] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:120]}"
        setup[form] = time.perf_counter() - t0
    return forwards, errors, setup, count_macs(folded, (resolution, resolution)) / 1e9


def run_model(
    name: str, batch_sizes: list[int], rounds: int, forms: list[str], workdir: Path, limit_gmacs: float | None
) -> list[dict]:
    resolution = native_resolution(name)
    forwards, errors, _, gmacs = prepare(name, workdir, forms)
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            ref = forwards["timm_eager"](x)
            scale, worst = ref.abs().max(), 0.0
            fns = {}
            for form, forward in forwards.items():
                try:
                    out = torch.as_tensor(forward(x))  # the first call: compiles for `compile`
                except Exception as error:
                    errors[form] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:120]}"
                    continue
                worst = max(worst, ((out - ref).abs().max() / scale).item())
                fns[form] = lambda f=forward, x=x: f(x)
            stats = compare_latency(fns, rounds=rounds, warmup=2)
        row: dict = {"model": name, "res": resolution, "batch": batch}
        row |= {f"{form}_ms": stats[form]["median_ms"] if form in stats else None for form in forms}
        ours = {f: stats[f]["median_ms"] for f in OUR_FORMS if f in stats}
        theirs = {f: stats[f]["median_ms"] for f in TIMM_FORMS if f in stats}
        best = min(ours, key=ours.get) if ours else None
        row["best_ours"] = best
        row["vs_timm_eager"] = stats["timm_eager"]["median_ms"] / ours[best] if best else None
        row["vs_timm_best"] = ours[best] / min(theirs.values()) if best and theirs else None
        row["timm_best"] = min(theirs, key=theirs.get) if theirs else None
        row["GMACs"] = round(gmacs, 3)

        work = gmacs * batch * 1000  # GMAC/s x ms
        rates = {
            "timm_eager": work / stats["timm_eager"]["median_ms"],
            "best": work / ours[best] if best else None,
            "2x_needs": 2 * work / stats["timm_eager"]["median_ms"],
        }
        for key, rate in rates.items():
            row[f"{key}_GMAC_s"] = round(rate, 1) if rate else None
        for key, rate in rates.items():
            row[f"{key}_pct_limit"] = round(100 * rate / limit_gmacs, 1) if rate and limit_gmacs else None
        row["max_rel_diff"] = f"{worst:.1e}"
        row["errors"] = "; ".join(f"{k}: {v}" for k, v in errors.items())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated names or patterns (default: every architecture timm has)")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed calls per form")
    parser.add_argument("--threads", type=int, default=0, help="torch and onnxruntime threads (default: torch's)")
    parser.add_argument("--skip", default="", help="comma-separated forms to leave out, e.g. compile")
    parser.add_argument("--quick", action="store_true", help=f"5 rounds, batch 1, default models {QUICK_MODELS}")
    parser.add_argument("--json", type=Path, help="also write the header and rows as JSON here")
    parser.add_argument(
        "--max-clock-ghz",
        type=float,
        help="the CPU's maximum (boost) clock for the FMA limit, where cpufreq does not expose it (virtual machines)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.batch_sizes = 5, "1"
    patterns = args.models.split(",") if args.models else ([] if not args.quick else list(QUICK_MODELS))
    shared = set(timm.list_models())
    candidates = [n for p in (patterns or ["*"]) for n in (mobilevit.list_models(p) if "*" in p else [p])]
    names = [n for n in dict.fromkeys(candidates) if n in shared]
    if skipped := [n for n in candidates if n not in shared]:
        print(f"not in timm, skipped: {', '.join(skipped)}")
    forms = [f for f in (*TIMM_FORMS, *OUR_FORMS) if f not in args.skip.split(",")]
    assert "timm_eager" in forms, "timm_eager is the reference; it cannot be skipped"
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    peak = measure_peak_gmacs(clock_ghz=args.max_clock_ghz)
    print(f"measured dense fp32 peak: {peak['measured_peak_gmacs']:.1f} GMAC/s ({peak['peak_method']})", flush=True)
    limit = peak["fma_limit_gmacs"]
    print(f"fp32 FMA limit: {peak['fma_limit_method']}", flush=True)
    if not limit:
        print("the *_pct_limit columns stay empty: pass --max-clock-ghz (the CPU's maximum boost clock)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows += run_model(name, batch_sizes, args.rounds, forms, Path(tmp), limit)

    header = system_info(timm=timm.__version__, rounds=args.rounds, timing="median of interleaved rounds") | peak
    print("\n" + ", ".join(f"{k} {v}" for k, v in header.items()) + "\n")
    columns = ["model", "res", "batch", *(f"{f}_ms" for f in forms), "best_ours", "vs_timm_eager", "timm_best"]
    columns += ["vs_timm_best", "GMACs", "timm_eager_GMAC_s", "best_GMAC_s", "2x_needs_GMAC_s"]
    columns += ["timm_eager_pct_limit", "best_pct_limit", "2x_needs_pct_limit", "max_rel_diff"]
    print(markdown_table([{k: "" if v is None else v for k, v in r.items()} for r in rows], columns))
    for row in rows:
        if row["errors"]:
            print(f"{row['model']} batch {row['batch']}: {row['errors']}")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
