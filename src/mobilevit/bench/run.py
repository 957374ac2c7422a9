"""The model table (params, MACs) and CPU latency of registered models per backend, as rows of measured numbers."""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError
from ..registry import create_model
from ..reparam import reparameterize_model
from ..runtime import FILE_FORMATS, formats_run_by
from ..tasks import task_of
from ..weights.entries import resize_size_for
from ..weights.pretrained import model_io
from .profile import compare_latency, count_macs, count_params

logger = logging.getLogger(__name__)


def model_table(names: Iterable[str], macs: bool = True, resolution: int = 256) -> list[dict]:
    """One row per architecture: parameters and (optionally) MACs at ``resolution`` x ``resolution``.

    The models are built on the meta device: shapes without storage or initialisation, which both counts need only
    (building all of them on the CPU takes most of a minute, nearly all of it drawing random weights).
    """
    rows = []
    for name in names:
        with torch.device("meta"):
            model = create_model(name).eval()
        row = {"model": name, "family": family(name)}
        row["params_M"] = count_params(model) / 1e6
        if macs:
            row[f"GMACs@{resolution}"] = count_macs(model, (resolution, resolution)) / 1e9
        rows.append(row)
    return rows


def weights_table(patterns: Iterable[str] = (), macs: bool = False) -> list[dict]:
    """One row per pretrained weights entry: input size, published metric, source, and the architecture's size.

    The metric is ImageNet top-1 (``top1``) for a classifier, PASCAL VOC 2012 val mean IoU (``mIoU``) for a
    segmentation model and MS-COCO val box mAP@[0.5:0.95] (``mAP``) for a detector, each in its own column; ``mIoU``
    and ``mAP`` are there only when an entry with that metric is listed.
    """
    from ..weights.entries import WEIGHTS, list_weights

    names = sorted({n for p in (patterns or ["*"]) for n in list_weights(p if "." in p or "*" in p else f"{p}.*")})
    arch_rows = {r["model"]: r for r in model_table(sorted({WEIGHTS[n].arch for n in names}), macs=macs)}
    metrics = {
        column: metric
        for column, metric in (("mIoU", "miou"), ("mAP", "box_map"))
        if any(getattr(WEIGHTS[n], metric) is not None for n in names)
    }
    rows = []
    for name in names:
        entry = WEIGHTS[name]
        pre = entry.preprocess
        row = {"weights": name, "input": f"{pre.input_size[0]}x{pre.input_size[1]}", "top1": entry.top1 or ""}
        row |= {column: getattr(entry, metric) or "" for column, metric in metrics.items()}
        row |= {k: v for k, v in arch_rows[entry.arch].items() if k not in ("model", "family")}
        row |= {"source": entry.source, "channels": pre.channel_order}
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Backends: the same model run seven ways

BACKENDS: tuple[str, ...] = ("eager", "reparam", "compile", "onnxruntime", "openvino", "executorch", "litert")
# compile (tens of seconds of inductor compilation per model and batch size), onnxruntime and openvino (an export per
# model, ~10 s, shared by the two), executorch and litert (an export each, 10-60 s) are opt-in: the default answers
# "how fast is this model" in seconds, the others "which runtime to deploy"
DEFAULT_BACKENDS: tuple[str, ...] = ("eager", "reparam")
DEFAULT_RESOLUTION = 256  # a classifier's bench size when none is given (segmentation models: their preprocessing's)
# the exported file each runtime backend runs: the export format of the one format table (onnxruntime and openvino
# share one ONNX file)
EXPORT_FORMATS: dict[str, str] = {b: formats_run_by(b)[0].name for b in BACKENDS if formats_run_by(b)}
COLUMNS = (
    "model",
    "family",
    "backend",
    "batch",
    "resolution",
    "params_M",
    "GMACs",
    "median_ms",
    "p90_ms",
    "img_per_s",
    "GMAC_per_s",
    "pct_peak",
    "pct_fma_limit",
    "setup_s",
    "error",
)


def parse_backends(text: str | Sequence[str]) -> list[str]:
    """``"eager,reparam"`` (or a list) -> validated backend names, in the given order."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise UsageError(
            f"unknown backend(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(BACKENDS)}"
        )
    return list(dict.fromkeys(names))


def family(name: str) -> str:
    """``mobilevit`` (v1), ``mobilevitv2``, ``mobilevitv3``, ``fastvit``, ``mobileone`` or ``deeplabv3``, from an
    architecture name."""
    return name.split("_", 1)[0]


def bench_size(model: nn.Module, resolution: int | None = None) -> tuple[int, int]:
    """The (H, W) ``model`` is timed at: ``resolution`` square when given, else :data:`DEFAULT_RESOLUTION` square for
    a classifier and the preprocessing's input size for a segmentation model or a detector (512x512 for DeepLabV3,
    320x320 for SSDLite: the sizes their published mIoU and COCO mAP were measured at)."""
    if resolution is not None:
        return resolution, resolution
    return task_of(model).bench_size(model_io(model).preprocess, DEFAULT_RESOLUTION)


@dataclass
class Backend:
    """One way to run a model: ``forward(x)`` returns the logits.

    Attributes:
        name: one of :data:`BACKENDS`.
        forward: runs a ``[B, 3, H, W]`` float32 batch.
        module: the PyTorch module whose parameters and MACs this backend executes (train-time for eager, folded
            for the others).
        setup_s: seconds spent preparing it (folding; export and session creation or compilation).
        exported: for a runtime backend (:data:`EXPORT_FORMATS`), the file it runs and the seconds its export took
            (onnxruntime and openvino share the ONNX file, see :func:`make_backend`).
    """

    name: str
    forward: Callable[[torch.Tensor], object]
    module: nn.Module
    setup_s: float = 0.0
    exported: tuple[Path, float] | None = None


def make_backend(
    name: str,
    model: nn.Module,
    folded: nn.Module,
    input_size: tuple[int, int],
    workdir: Path,
    exported: tuple[Path, float] | None = None,
) -> Backend:
    """Prepare backend ``name`` for ``model`` (eval mode) and its folded copy ``folded``.

    ``exported``: the ``Backend.exported`` of a runtime backend already prepared for this model with a file of the
    format ``name`` runs (:data:`EXPORT_FORMATS`); ``name`` then runs that file instead of exporting again (the
    ``setup_s`` of both count its export time). A file with a fixed batch (LiteRT, some ExecuTorch programs) runs
    a batch one image at a time, as the predictor does.

    Raises whatever the backend raises when it cannot handle the model (an export error, a missing runtime).
    """
    t0 = time.perf_counter()
    if name == "eager":
        return Backend(name, model, model)
    if name == "reparam":
        return Backend(name, folded, folded)
    if name == "compile":
        # compilation happens on the first call for each input shape: the caller times that call as setup_s
        return Backend(name, torch.compile(folded, dynamic=False), folded)
    if name in EXPORT_FORMATS:
        from ..export import export_model
        from ..segment import load_model

        fmt = EXPORT_FORMATS[name]
        if exported is None:
            file = workdir / f"{type(model).__name__}_{id(model)}{FILE_FORMATS[fmt].suffixes[0]}"
            # a file of one fixed size must record a preprocessing that crops it, or the predictor refuses it
            pre = model_io(folded).preprocess
            resize = resize_size_for(min(input_size), pre.crop_pct)
            preprocess = dataclasses.replace(pre, input_size=input_size, resize_size=resize)
            path = export_model(folded, fmt, file, input_size=input_size, preprocess=preprocess)
            exported = (path, time.perf_counter() - t0)
        path, export_s = exported
        t1 = time.perf_counter()
        # the predictor of the file's task (a segmenter for a segmentation model), with PyTorch's CPU budget
        runtime = load_model(path, name, threads=torch.get_num_threads())
        return Backend(name, runtime.forward, folded, export_s + time.perf_counter() - t1, exported)
    raise UsageError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def _prepare(
    name: str,
    model: nn.Module,
    backends: Sequence[str],
    input_size: tuple[int, int],
    workdir: Path,
    progress: Callable[[str], None] | None,
) -> tuple[dict[str, Backend], dict[str, str]]:
    """The backends of model ``name`` (``model``, in eval mode) that could be prepared, and an error line for each
    that could not.

    The folding time counts in the ``setup_s`` of reparam and compile; both ONNX runtimes share one export.
    """
    t0 = time.perf_counter()
    folded = reparameterize_model(model).eval()
    fold_s = time.perf_counter() - t0
    ready: dict[str, Backend] = {}
    errors: dict[str, str] = {}
    for backend in backends:
        if progress:
            progress(f"{name}: preparing {backend}")
        fmt = EXPORT_FORMATS.get(backend)
        exported = next((b.exported for b in ready.values() if b.exported and EXPORT_FORMATS[b.name] == fmt), None)
        try:
            ready[backend] = make_backend(backend, model, folded, input_size, workdir, exported)
        except Exception as error:  # one backend failing for one model must not end the run
            logger.warning("%s: backend %s failed: %s", name, backend, error)
            errors[backend] = _first_line(error)
            continue
        if backend in ("reparam", "compile"):
            ready[backend].setup_s += fold_s
    return ready, errors


def _first_calls(
    name: str,
    ready: dict[str, Backend],
    errors: dict[str, str],
    x: torch.Tensor,
    progress: Callable[[str], None] | None,
) -> tuple[dict[str, Callable[[], object]], dict[str, float]]:
    """One untimed call of each ready backend on ``x``: the callables to time and each backend's setup seconds.

    A backend whose call fails gets its error line in ``errors`` and is left out. For compile, the first call at a
    batch size is where inductor compiles: its time counts as setup.
    """
    fns: dict[str, Callable[[], object]] = {}
    setup: dict[str, float] = {}
    for backend, runner in ready.items():
        if backend in errors:
            continue
        if progress:
            progress(f"{name}: first call of {backend} at batch {x.shape[0]}")
        t0 = time.perf_counter()
        try:
            runner.forward(x)
        except Exception as error:  # e.g. inductor cannot compile this model
            logger.warning("%s: backend %s failed at batch %d: %s", name, backend, x.shape[0], error)
            errors[backend] = _first_line(error)
            continue
        first_s = time.perf_counter() - t0
        setup[backend] = runner.setup_s + (first_s if backend == "compile" else 0.0)
        fns[backend] = lambda f=runner.forward, x=x: f(x)
    return fns, setup


def _timed_row(
    row: dict,
    stats: dict[str, float],
    counts: tuple[float, float],
    setup_s: float,
    peak_gmacs: float | None,
    fma_limit_gmacs: float | None,
) -> dict:
    """``row`` completed with one backend's timings ``stats``, its ``(params_M, GMACs)`` and setup seconds, and the
    percentages of ``peak_gmacs`` and ``fma_limit_gmacs`` (``None`` where that number is unknown)."""
    params_m, gmacs = counts
    median, batch = stats["median_ms"], row["batch"]
    row |= {"params_M": params_m, "GMACs": gmacs, "median_ms": median, "p90_ms": stats["p90_ms"]}
    row["img_per_s"] = batch * 1e3 / median
    row["GMAC_per_s"] = gmacs * batch / (median / 1e3)
    row["pct_peak"] = 100 * row["GMAC_per_s"] / peak_gmacs if peak_gmacs else None
    row["pct_fma_limit"] = 100 * row["GMAC_per_s"] / fma_limit_gmacs if fma_limit_gmacs else None
    row["setup_s"] = setup_s
    row["error"] = None
    return row


def bench_table(
    names: Iterable[str],
    backends: Sequence[str] = DEFAULT_BACKENDS,
    batch_sizes: Sequence[int] = (1, 8),
    resolution: int | None = None,
    repeats: int = 20,
    warmup: int = 3,
    peak_gmacs: float | None = None,
    progress: Callable[[str], None] | None = None,
    fma_limit_gmacs: float | None = None,
) -> list[dict]:
    """fp32 CPU latency of each model under each backend and batch size, at the current ``torch.get_num_threads()``.

    For one model and batch size, the backends are timed round-robin (``repeats`` rounds, see
    :func:`~mobilevit.bench.profile.compare_latency`), so a slow-down of the machine hits them equally. Random weights:
    speed does not depend on their values. A backend that fails for a model (export or compile error) gets rows with
    ``error`` set and no timings, and the run goes on.

    Args:
        names: architecture names.
        backends: names from :data:`BACKENDS`.
        batch_sizes: batch sizes to time.
        resolution: square input size; ``None``: :func:`bench_size`'s (256 for a classifier, 512 for DeepLabV3, 320
            for SSDLite).
        repeats: timed calls per backend.
        warmup: untimed calls per backend before timing (after the first call, which is the compile for ``compile``).
        peak_gmacs: the measured dense peak (:func:`~mobilevit.bench.profile.measure_peak_gmacs`) for ``pct_peak``.
        progress: called with a short message before each step (the CLI's progress display).
        fma_limit_gmacs: the CPU's fp32 FMA limit (:func:`~mobilevit.bench.profile.fp32_fma_limit`) for
            ``pct_fma_limit``; ``None`` where it cannot be read.

    Returns:
        One row per (model, backend, batch) with the keys of :data:`COLUMNS`: ``params_M`` and ``GMACs`` (batch 1) of
        the module the backend runs; ``img_per_s = batch * 1000 / median_ms``; ``GMAC_per_s = GMACs * batch /
        (median_ms / 1000)``; ``pct_peak = 100 * GMAC_per_s / peak_gmacs`` (can pass 100: a network's kernels can beat
        the measured dense ones); ``pct_fma_limit = 100 * GMAC_per_s / fma_limit_gmacs`` (cannot, at the counted MACs,
        unless a kernel does fewer multiplications than counted, e.g. a Winograd convolution); ``setup_s`` the
        preparation time (compile: the first call at this batch size, where inductor compiles).
    """
    backends = parse_backends(backends)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mobilevit-bench-") as tmp:
        for name in names:
            model = create_model(name).eval()
            input_size = bench_size(model, resolution)
            ready, errors = _prepare(name, model, backends, input_size, Path(tmp), progress)
            modules = {id(b.module): b.module for b in ready.values()}  # eager's train-time form, the folded one
            counts = {key: (count_params(m) / 1e6, count_macs(m, input_size) / 1e9) for key, m in modules.items()}
            for batch in batch_sizes:
                x = torch.randn(batch, 3, *input_size, generator=torch.Generator().manual_seed(0))
                with torch.inference_mode():
                    fns, setup = _first_calls(name, ready, errors, x, progress)
                    if progress:
                        progress(f"{name}: timing {', '.join(fns)} at batch {batch}")
                    stats = compare_latency(fns, rounds=repeats, warmup=warmup) if fns else {}
                for backend in backends:
                    row = {"model": name, "family": family(name), "backend": backend, "batch": batch}
                    row["resolution"] = input_size[0] if input_size[0] == input_size[1] else "{}x{}".format(*input_size)
                    if backend in stats:
                        counted = counts[id(ready[backend].module)]
                        row = _timed_row(row, stats[backend], counted, setup[backend], peak_gmacs, fma_limit_gmacs)
                    else:
                        row |= {c: None for c in COLUMNS if c not in row} | {"error": errors.get(backend, "not run")}
                    rows.append(row)
    return rows


def system_info(peak: dict | None = None, **settings: object) -> dict:
    """The header of a benchmark report: versions, CPU, threads, the run's settings, and ``peak``: the measured dense
    peak beside the fp32 FMA limit (:func:`~mobilevit.bench.profile.measure_peak_gmacs`)."""
    import importlib.metadata
    import platform

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    try:
        openvino_version = importlib.metadata.version("openvino")  # without importing it
    except importlib.metadata.PackageNotFoundError:
        openvino_version = None
    info = {
        "mobilevit": importlib.metadata.version("mobilevit"),
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "openvino": openvino_version,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": cpu_model_name(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "dtype": "float32",
    }
    return info | dict(settings) | (peak or {})


def cpu_model_name() -> str:
    """The ``model name`` line of ``/proc/cpuinfo`` (Linux), else what :mod:`platform` says."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
