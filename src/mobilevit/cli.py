"""``mobilevit`` command line: thin commands that call the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .errors import MobileViTError, UsageError, missing_optional_dependency

if TYPE_CHECKING:
    from pathlib import Path

    from tqdm import tqdm

    from .predict import Predictor
    from .runner import Runner
    from .segment import Segmentation, Segmenter


def _csv_ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _models(patterns: Sequence[str]) -> list[str]:
    """Architecture names from names or shell patterns; an unknown name raises with suggestions."""
    from .registry import get_config, list_models

    names: list[str] = []
    for pattern in patterns or ["*"]:
        if any(ch in pattern for ch in "*?["):
            matched = list_models(pattern)
            if not matched:
                raise UsageError(f"No model matches {pattern!r}. See `mobilevit list`.")
            names += matched
        else:
            get_config(pattern)
            names.append(pattern)
    return list(dict.fromkeys(names))


def _print(rows: list[dict], as_json: bool) -> None:
    from .bench.report import markdown_table

    print(json.dumps(rows, indent=2) if as_json else markdown_table(rows))


def cmd_list(args: argparse.Namespace) -> None:
    from .bench.run import model_table, weights_table

    if args.weights:
        _print(weights_table(args.models, macs=args.macs), args.json)
        return
    _print(model_table(_models(args.models), macs=args.macs, resolution=args.resolution), args.json)


def _predictor(args: argparse.Namespace) -> Predictor:
    import torch

    from .predict import load_predictor

    if args.threads:
        torch.set_num_threads(args.threads)  # eager; an onnxruntime session or OpenVINO model gets its own below
    pretrained = args.pretrained or not args.random_weights
    labels = _labels(args.labels)
    predictor = load_predictor(
        args.model,
        args.backend,
        pretrained=pretrained,
        threads=args.threads,
        batch_size=args.batch_size,
        labels=labels,
        fast_decode=args.fast_decode,
        allow_random_head=args.allow_random_head,
    )
    return predictor


def _labels(path: str | None) -> tuple[str, ...] | None:
    """Class names from ``--labels FILE`` (one per line, or a JSON list), or ``None``."""
    from .weights.entries import read_labels_file

    return read_labels_file(path) if path else None


def _progress(total: int, enabled: bool, desc: str) -> tqdm | None:
    if not enabled or total < 2:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    from .data.images import find_images

    files = find_images(args.paths)
    if not files:
        raise UsageError(f"No images found in {' '.join(args.paths)}")
    predictor = _predictor(args)
    bar = _progress(len(files), not args.no_progress, "predict")
    answers = predictor.predict_files(files, args.top_k, args.function, bar.update if bar is not None else None)

    return _report(args, bar, answers, predictor.task.describe, "classified")


def _report(
    args: argparse.Namespace,
    bar: tqdm | None,
    answers: Iterable[tuple[str, Any]],
    describe: Callable[[str, Any], tuple[dict, str]],
    verb: str,
) -> int:
    """One line per input as its answer arrives (a JSON object with ``--json``), an unreadable one reported in place;
    the exit code: 1 when any input failed."""
    failures = total = 0
    try:
        for path, answer in answers:
            total += 1
            if isinstance(answer, Exception):
                failures += 1
                record, text = {"file": path, "error": str(answer)}, f"{path}: ERROR {answer}"
            else:
                record, text = describe(path, answer)
            (bar.write if bar is not None and not args.json else print)(json.dumps(record) if args.json else text)
    except BaseException:  # the model failed (non-finite outputs) or the user interrupted: the error line only
        if bar is not None:
            bar.leave = False
            bar.close()
        raise
    if bar is not None:
        bar.close()
    if failures:
        print(f"{failures} of {total} inputs could not be {verb}", file=sys.stderr)
    return 1 if failures else 0


def _output_stems(files: list[Path]) -> list[str]:
    """The name each input's outputs start with: its stem, numbered from the second input of the same stem on."""
    seen: dict[str, int] = {}
    stems = []
    for path in files:
        n = seen[path.stem] = seen.get(path.stem, 0) + 1
        stems.append(path.stem if n == 1 else f"{path.stem}_{n}")
    return stems


def _segmenter(args: argparse.Namespace) -> Segmenter:
    import torch

    from .segment import load_segmenter

    if args.threads:
        torch.set_num_threads(args.threads)
    pretrained = args.pretrained or not args.random_weights
    labels = _labels(args.labels)
    options = {"batch_size": args.batch_size, "labels": labels, "allow_random_head": args.allow_random_head}
    return load_segmenter(args.model, args.backend, pretrained, args.threads, **options)


def cmd_segment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data.images import find_images

    files = find_images(args.paths)
    if not files:
        raise UsageError(f"No images found in {' '.join(args.paths)}")
    segmenter = _segmenter(args)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    bar = _progress(len(files), not args.no_progress, "segment")
    segmented = segmenter.segment_files(files, bar.update if bar is not None else None)
    results = zip(segmented, _output_stems(files), strict=True)
    stem = [""]  # the output name of the input being reported

    def answers() -> Iterator[tuple[str, Segmentation | Exception]]:
        for (path, answer), stem[0] in results:
            yield path, answer

    def describe(path: str, answer: Segmentation) -> tuple[dict, str]:
        return segmenter.task.describe(path, answer, segmenter.task.render(answer, output / stem[0]))

    return _report(args, bar, answers(), describe, "segmented")


def cmd_detect(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from .data.images import find_images
    from .runner import load_runner
    from .tasks import DETECTION

    files = find_images(args.paths)
    if not files:
        raise UsageError(f"No images found in {' '.join(args.paths)}")
    DETECTION.check_options(threshold=args.threshold)
    if args.threads:
        torch.set_num_threads(args.threads)
    runner = load_runner(
        args.model,
        args.backend,
        args.pretrained or not args.random_weights,
        args.threads,
        task=DETECTION,
        batch_size=args.batch_size,
        labels=_labels(args.labels),
        allow_random_head=args.allow_random_head,
    )
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    bar = _progress(len(files), not args.no_progress, "detect")
    found = runner.run_files(files, bar.update if bar is not None else None, threshold=args.threshold)
    stems = dict(zip(map(str, files), _output_stems(files), strict=True))

    def describe(path: str, answer: Any) -> tuple[dict, str]:
        return runner.task.describe(path, answer, runner.task.render(answer, output / stems[path]))

    return _report(args, bar, found, describe, "read")


def _eval_runner(args: argparse.Namespace) -> Runner:
    """The runner ``eval`` scores: of ``--task`` (a model of another task is refused), else of the model's own."""
    import torch

    from .segment import load_model
    from .tasks import get_task

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_model(
        args.model,
        args.backend,
        args.pretrained or not args.random_weights,
        args.threads,
        task=get_task(args.task) if args.task else None,
        batch_size=args.batch_size,
        labels=_labels(args.labels),
        allow_random_head=args.allow_random_head,
        fast_decode=args.fast_decode,
    )


def cmd_eval(args: argparse.Namespace) -> int:
    import os

    import torch.distributed as dist

    from .evaluate import evaluate_set
    from .predict import resolve_backend
    from .tasks.base import shard

    if args.results is not None:
        return _eval_results(args)
    if args.model is None:
        raise UsageError("eval needs --model (or, for detection, --results FILE)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")  # launched by torchrun: shard the images, sum the counts
    runner = _eval_runner(args)
    rank = dist.get_rank() if dist.is_initialized() else 0
    task = runner.task
    mine = len(shard(range(task.eval_total(args.data, args.split) or 0))[0])  # the bar counts rank 0's share
    bar = _progress(mine, not args.no_progress and rank == 0, "eval")
    scores = evaluate_set(runner, args.data, args.split, bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    summary = task.eval_summary(args.model, scores)
    backend = resolve_backend(args.model, args.backend)
    result = {"model": args.model, "weights": runner.source, "backend": backend, "task": task.name, **scores}
    if rank == 0:
        print(json.dumps(result) if args.json else summary)
        if not args.json:
            for failure in result["failed"]:
                print(f"skipped {failure['file']}: {failure['error']}", file=sys.stderr)
    if dist.is_initialized():
        dist.barrier()  # no rank tears gloo down while another still talks to it (that aborts the other)
        dist.destroy_process_group()
    return 1 if result["failed"] else 0


def _eval_results(args: argparse.Namespace) -> int:
    """``eval --results FILE``: the task's metric of a file of someone's results, no model run."""
    from .tasks import get_task

    if args.model is not None or args.task is None:
        raise UsageError("--results scores a results file instead of a model: give --task, and no --model")
    task = get_task(args.task)
    scores = task.score_results(args.data, args.results, args.split)
    result = {"results": args.results, "task": task.name, **scores}
    print(json.dumps(result) if args.json else task.eval_summary(args.results, result))
    return 0


def cmd_bench(args: argparse.Namespace) -> None:
    import importlib.util
    from pathlib import Path

    import torch

    from .bench import measure_peak_gmacs
    from .bench.report import format_report, latency_accuracy_chart
    from .bench.run import DEFAULT_RESOLUTION, bench_table, parse_backends, system_info

    names, backends = _models(args.models), parse_backends(args.backends)
    if args.chart and 1 not in args.batch_sizes:
        raise UsageError("--chart plots batch-1 latency: include 1 in --batch-sizes")
    needs = [
        ("onnxruntime" in backends, "onnxruntime"),
        ("openvino" in backends, "openvino"),
        ("executorch" in backends, "executorch"),
        ("litert" in backends, "litert_torch"),
        (args.chart, "matplotlib"),
    ]
    for needed, module in needs:
        if needed and importlib.util.find_spec(module) is None:
            raise UsageError(f"{module} is not installed (pip install {module}); it is needed for this run")
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = (lambda msg: print(msg, file=sys.stderr, flush=True)) if sys.stderr.isatty() else None
    peak = measure_peak_gmacs()
    rows = bench_table(
        names,
        backends,
        args.batch_sizes,
        args.resolution,
        args.repeats,
        3,
        peak["measured_peak_gmacs"],
        progress,
        fma_limit_gmacs=peak.get("fma_limit_gmacs"),
    )
    resolution = args.resolution or "per model (256; segmentation and detection: the preprocessing's, 512 and 320)"
    header = system_info(peak, backends=",".join(backends), resolution=resolution, repeats=args.repeats)
    text = format_report(header, rows, "json" if args.json else args.format)
    if args.output:
        Path(args.output).write_text(text + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text)
    if args.chart:
        size = args.resolution or DEFAULT_RESOLUTION
        title = f"{header['cpu']}, threads: {header['threads']}, fp32, {size}x{size}, batch 1"
        for point in latency_accuracy_chart(rows, args.chart, title):
            print(
                f"chart: {point['model']} {point['median_ms']:.2f} ms ({point['backend']}), "
                f"top-1 {point['top1']} from {point['weights']}",
                file=sys.stderr,
            )
        print(f"wrote {args.chart}", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    import dataclasses
    import functools

    from .serve import ModelSpec, ServeConfig, run
    from .serve.config import infer_backend, resolve_token

    if args.pretrained and len(args.model) > 1:
        raise UsageError("--pretrained applies to a single --model; with several, write --model NAME=CHECKPOINT")
    default = args.pretrained or not args.random_weights
    if args.labels and len(args.model) > 1:
        raise UsageError("--labels applies to a single --model")
    models = tuple(ModelSpec.parse(text, default) for text in args.model)
    if args.allow_random_head:
        models = tuple(dataclasses.replace(spec, allow_random_head=True) for spec in models)
    if args.labels:
        models = (dataclasses.replace(models[0], labels=_labels(args.labels)),)
    config = ServeConfig(
        models=models,
        host=args.host,
        port=args.port,
        token=resolve_token(args.token),  # "" is refused, not "no token"
        backend=args.backend or infer_backend(models),
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_body_mb=args.max_body_mb,
        max_pixels=args.max_pixels,
        timeout=args.timeout,
        body_timeout=args.body_timeout,
        header_timeout=args.header_timeout,
        max_connections=args.max_connections,
        queue_size=args.queue_size,
        threads=args.threads,
        fast_decode=args.fast_decode,
    )
    announce = functools.partial(print, file=sys.stderr, flush=True)  # where it listens, what it serves
    return run(config, log_level="info" if args.verbose else "warning", announce=announce)


def cmd_train(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from .train.build import data_paths
    from .train.config import apply_overrides, from_yaml, load_recipe
    from .train.loop import NonFiniteLossError, train

    cfg = load_recipe(args.recipe) if args.recipe else from_yaml(Path(args.config))
    train_data, val_data = data_paths(args.data)
    base = [f"data.train={train_data}", f"output_dir={args.output}"]
    if val_data is not None:
        base.append(f"data.val={val_data}")
    if args.pretrained:
        base.append(f"model.pretrained={args.pretrained}")
    if args.num_classes:
        base.append(f"model.num_classes={args.num_classes}")
    cfg = apply_overrides(cfg, base + list(args.overrides))
    show = not args.no_progress and int(os.environ.get("RANK", "0")) == 0
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(desc="train", unit="step", file=sys.stderr)

    def progress(info: dict) -> None:
        bar.update(1)  # type: ignore[union-attr]
        bar.set_postfix(  # type: ignore[union-attr]
            epoch=info["epoch"], loss=f"{info['loss']:.4f}", lr=f"{info['lr']:.2e}", img_s=f"{info['images_per_s']:.1f}"
        )

    try:
        result = train(cfg, resume=args.resume, progress=progress if bar is not None else None)
    except NonFiniteLossError as err:
        print(f"mobilevit train: {err}", file=sys.stderr)
        return 3
    finally:
        if bar is not None:
            bar.close()
    if int(os.environ.get("RANK", "0")) == 0:
        val = result.val_summary()
        print(
            f"done: {result.step} steps, {result.epoch} epochs, train loss {result.train_loss}, {val}, "
            f"{result.skipped} corrupt images skipped; checkpoint {result.checkpoint}, "
            f"weights {Path(result.output_dir) / 'final'}"
        )
    return 0


# the int8 flags of `export`: flag -> (quantize_onnx argument, static mode only)
INT8_FLAGS = {
    "quantize_method": ("method", True),
    "quantize_weights": ("per_channel", False),
    "quantize_activations": ("symmetric", True),
    "quantize_ops": ("op_types", False),
    "keep_fp32": ("keep_fp32", False),
    "equalize": ("equalize", True),
    "bias_correction": ("bias_correction", True),
}


def _int8_options(args: argparse.Namespace) -> dict[str, object]:
    """The ``quantize_onnx`` keyword arguments the int8 flags give (only those given), after checking that they go
    with ``--quantize int8`` and its mode."""
    given = {flag: getattr(args, flag) for flag in INT8_FLAGS if getattr(args, flag) is not None}
    flags = [*given, *(["calibration"] if args.calibration else [])]
    if flags and not args.quantize:
        names = ", ".join("--" + flag.replace("_", "-") for flag in flags)
        raise UsageError(f"{names} {'is' if len(flags) == 1 else 'are'} for --quantize int8")
    if args.quantize and args.quantize_mode == "static" and not args.calibration:
        raise UsageError(
            "static int8 quantization needs calibration images: --calibration DIR (or --quantize-mode dynamic)"
        )
    static_only = [f"--{flag.replace('_', '-')}" for flag in given if INT8_FLAGS[flag][1]]
    if args.quantize and args.quantize_mode == "dynamic" and static_only:
        raise UsageError(f"{', '.join(static_only)}: for --quantize-mode static only (dynamic calibrates nothing)")
    values = {
        "quantize_weights": lambda v: v == "per-channel",
        "quantize_activations": lambda v: v == "symmetric",
        "quantize_ops": _name_list,
        "keep_fp32": _name_list,
        "equalize": lambda v: None if v == "off" else v,
    }
    return {INT8_FLAGS[flag][0]: values.get(flag, lambda v: v)(value) for flag, value in given.items()}


# quantize_onnx arguments that ExecuTorch and LiteRT int8 take too (same-named Int8Options fields); the method there
# names an activation observer
PT2E_OPTIONS = ("keep_fp32", "equalize", "bias_correction")
PT2E_METHODS = {"histogram": "histogram", "minmax": "minmax", "moving-average": "moving_average"}


def _pt2e_options(int8: dict[str, object], fmt: str) -> object:
    """The :class:`~mobilevit.export.Int8Options` that the int8 flags give for an ExecuTorch or LiteRT export."""
    from .export import Int8Options

    onnx_only = [name for name in int8 if name not in (*PT2E_OPTIONS, "method")]
    if onnx_only:
        flags = [f"--{flag.replace('_', '-')}" for flag, (name, _) in INT8_FLAGS.items() if name in onnx_only]
        raise UsageError(f"--format {fmt}: {', '.join(flags)} {'is' if len(flags) == 1 else 'are'} for --format onnx")
    fields = {name: value for name, value in int8.items() if name in PT2E_OPTIONS}
    if "method" in int8:
        if int8["method"] not in PT2E_METHODS:
            choices = ", ".join(PT2E_METHODS)
            raise UsageError(
                f"--format {fmt}: --quantize-method {int8['method']} is for --format onnx ({choices} here)"
            )
        fields["observer"] = PT2E_METHODS[str(int8["method"])]
    return Int8Options(**fields)


def _name_list(text: str) -> tuple[str, ...]:
    """``"first,last"`` -> ``("first", "last")``; ``"none"`` -> ``()``."""
    return () if text.strip().lower() == "none" else tuple(part.strip() for part in text.split(",") if part.strip())


def _alpha(text: str) -> float | str:
    """``--equalize``: ``"off"`` or a number between 0 and 1."""
    if text.lower() == "off":
        return "off"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'off' or a number between 0 and 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected 'off' or a number between 0 and 1, got {text!r}")
    return value


def cmd_export(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from .export import (
        check_export,
        check_output_suffix,
        export_model,
        quantize_onnx,
        validate_coreml,
        written_atomically,
    )
    from .predict import warn_random_weights
    from .registry import create_model

    check_output_suffix(args.output, args.format)
    if args.quantize and args.format not in ("onnx", "executorch", "tflite"):
        raise UsageError("--quantize applies to --format onnx, executorch and tflite")
    if args.quantize and args.format != "onnx" and args.quantize_mode != "static":
        raise UsageError(f"--format {args.format} quantizes statically only: drop --quantize-mode")
    int8 = _int8_options(args)
    pt2e = _pt2e_options(int8, args.format) if args.quantize and args.format != "onnx" else None
    pretrained = args.pretrained or not args.random_weights
    if args.random_weights:
        warn_random_weights(args.model, "the exported file predicts nothing useful")
    model = create_model(args.model, pretrained=pretrained, allow_random_head=args.allow_random_head)
    options = {
        "input_size": tuple(args.input_size) if args.input_size else None,
        "dynamic": not args.static,
        "opset": args.opset,
        "precision": args.precision,
        "image_input": args.coreml_input == "image",
        "labels": _labels(args.labels),
    }
    # written under a temporary name and checked there: a failed export or check leaves no file behind
    with written_atomically(args.output) as path:
        if args.format == "coreml":
            export_model(model, "coreml", path, **options)
            s = validate_coreml(path)
            layout = f" {s.color_layout}" if s.color_layout else ""
            summary = (
                f"CoreML ML Program, {s.weight_dtype}); input {s.input_name}: {s.input_kind}{layout} {s.input_shape}, "
                f"{s.num_outputs} classes; spec checked (running it needs macOS)"
            )
        elif args.quantize and args.format != "onnx":
            export_model(model, args.format, path, quantize="int8", calibration=args.calibration, int8=pt2e, **options)
            summary = f"{args.format}, int8 static); measure its accuracy with `mobilevit eval`"
        elif args.quantize:
            with tempfile.TemporaryDirectory() as tmp:
                fp32 = export_model(model, "onnx", Path(tmp) / "fp32.onnx", **options)
                quantize_onnx(fp32, path, args.calibration, mode=args.quantize_mode, **int8)
            check_export(model, path)  # runs in onnxruntime; int8 logits on random input say nothing about accuracy
            summary = f"onnx, int8 {args.quantize_mode}); measure its accuracy with `mobilevit eval`"
        else:
            export_model(model, args.format, path, **options)
            parity = check_export(model, path)
            summary = f"{args.format}); max abs logit diff vs eager {parity.max_abs_diff:.2e} at {parity.input_shape}"
    print(f"wrote {args.output} ({summary}")
    return 0


_BENCH_DESCRIPTION = (
    "Backends: eager = the model as created (FastViT/MobileOne in their train-time, unfolded form); reparam = "
    "mobilevit.reparameterize_model (branches and BatchNorms folded); compile = torch.compile of the folded model "
    "(compile time reported as setup_s); onnxruntime = the folded model exported to ONNX and run by onnxruntime with "
    "the same thread count; openvino = the same ONNX file compiled by OpenVINO's CPU plugin (fp32, same thread count);"
    " executorch = the folded model exported to a .pte program (XNNPACK); litert = the folded model converted to "
    ".tflite (XNNPACK), batch 1 per call. pct_peak is against the measured dense peak: the fastest of a 2048x2048 fp32"
    " matmul, a 1x1 and a 3x3 convolution (one FMA per MAC; the 3x3 only when oneDNN ran it direct, not as Winograd), "
    "measured at the start; pct_fma_limit against the CPU's fp32 FMA limit (cores x FMAs per cycle x maximum clock), "
    "where /proc/cpuinfo and cpufreq's cpuinfo_max_freq tell them (virtual machines usually hide the clock: the report"
    " header then says so)."
)


def _weights_args(p: argparse.ArgumentParser) -> None:
    """``--pretrained`` and ``--random-weights`` of the commands that load one model."""
    p.add_argument("--pretrained", help="local checkpoint file or folder (default: the weights entry's file)")
    p.add_argument("--random-weights", action="store_true", help="no weights at all (testing only)")
    _random_head_arg(p)


def _random_head_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-random-head",
        action="store_true",
        help="load weights that leave the model's head random (a classification checkpoint given to a segmentation "
        "model, a checkpoint without a classifier): refused otherwise, as the outputs would mean nothing",
    )


def _predictor_args(
    p: argparse.ArgumentParser,
    segmentation: bool = False,
    model_required: bool = True,
    kind: str = "segmentation",
    family: str = "deeplabv3_*",
) -> None:
    """The model, weights, runtime and output options shared by ``predict``, ``eval`` and (without fast decoding)
    ``segment`` and ``detect`` (``kind`` and ``family``: the models it runs, in ``--model``'s help)."""
    from .predict import BACKENDS

    p.add_argument(
        "--model",
        required=model_required,
        help=f"{kind} architecture or arch.tag (see `mobilevit list --weights '{family}'`), saved folder, or "
        "a file from `mobilevit export` (.onnx, .pte, .tflite, TorchScript .pt)"
        if segmentation
        else "architecture, arch.tag (see `mobilevit list --weights`) or a file from `mobilevit export` (.onnx, .pte, "
        ".tflite, TorchScript .pt)",
    )
    _weights_args(p)
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="PyTorch, or the runtime of a file from `mobilevit export`: onnxruntime or OpenVINO (CPU, fp32) for "
        ".onnx, executorch for .pte, litert for .tflite, torchscript for a TorchScript .pt (default: by the file; "
        "onnxruntime for .onnx)",
    )
    p.add_argument("--threads", type=int, default=0, help="model intra-op threads (0: the runtime's default)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--labels", help="class names, one per line or a JSON list (default: the model's own)")
    p.add_argument("--json", action="store_true", help="JSON output (one object per input for predict and segment)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if not segmentation:
        p.add_argument(
            "--fast-decode",
            action="store_true",
            help="decode JPEGs twice the model's resize or larger DCT-downscaled: faster, approximate (default: "
            "exact; classification only)",
        )


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="*", help="names or patterns such as 'mobilevitv2_*' (default: all)")
    p.add_argument("--macs", action="store_true", help="also count MACs (takes a few seconds)")
    p.add_argument("--resolution", type=int, default=256, help="input size for the MAC count")
    p.add_argument("--weights", action="store_true", help="list the pretrained weights (arch.tag) instead")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_list)


def _predict_args(p: argparse.ArgumentParser) -> None:
    from .predict import ACTIVATIONS

    p.add_argument("paths", nargs="+", help="image files, folders (recursive) or glob patterns")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--function", choices=ACTIVATIONS, default="softmax")
    _predictor_args(p)
    p.set_defaults(func=cmd_predict)


def _eval_args(p: argparse.ArgumentParser) -> None:
    from .tasks import TASKS

    p.add_argument("data", help="; ".join(f"{name}: {task.data_help}" for name, task in TASKS.items()))
    p.add_argument(
        "--task",
        choices=list(TASKS),
        help="top-1/top-5; mIoU, per-class IoU and pixel accuracy; or COCO mAP (default: the model's own task)",
    )
    p.add_argument(
        "--split",
        help="the split of a set that has several (default: val): VOC's ImageSets/Segmentation/SPLIT.txt list, COCO's "
        "annotations/instances_SPLIT.json",
    )
    p.add_argument(
        "--results",
        metavar="FILE",
        help="score this file of detections (COCO results format) instead of a model (with --task detection)",
    )
    _predictor_args(p, model_required=False)
    p.set_defaults(func=cmd_eval)


def _segment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="image files, folders (recursive) or glob patterns")
    p.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="folder for each image's STEM_mask.png (palette PNG: the palette index is the class, at the image's "
        "size) and STEM_overlay.jpg (the image tinted by class, with a legend; .png for an image wider or taller than "
        "JPEG's 65,500 pixels); a repeated stem gets _2, _3, ...",
    )
    _predictor_args(p, segmentation=True)
    p.set_defaults(func=cmd_segment)


def _detect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="image files, folders (recursive) or glob patterns")
    p.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="folder for each image's STEM_boxes.jpg (the image with the boxes, labels and scores drawn); a repeated "
        "stem gets _2, _3, ...",
    )
    p.add_argument("--threshold", type=float, default=0.3, help="the lowest score of a detection shown (default 0.3)")
    _predictor_args(p, segmentation=True, kind="detection", family="ssdlite_*")
    p.set_defaults(func=cmd_detect)


def _bench_args(p: argparse.ArgumentParser) -> None:
    from .bench.run import BACKENDS, DEFAULT_BACKENDS

    p.add_argument("models", nargs="*", help="names or patterns (default: all)")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS), help=f"comma-separated: {', '.join(BACKENDS)}")
    p.add_argument("--batch-sizes", type=_csv_ints, default=[1, 8], help="comma-separated, e.g. 1,8")
    p.add_argument(
        "--resolution",
        type=int,
        help="square input size (default: 256 for classifiers; a segmentation model's or detector's preprocessing "
        "size: 512, 320)",
    )
    p.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (interleaved over backends)")
    p.add_argument("--threads", type=int, default=0, help="torch, onnxruntime and OpenVINO threads (default: torch's)")
    p.add_argument("--format", choices=["table", "json", "csv", "markdown"], default="table")
    p.add_argument("--output", help="write the report to this file instead of printing it")
    p.add_argument("--chart", help="also write a PNG of batch-1 latency vs published top-1 (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.set_defaults(func=cmd_bench)


def _serve_args(p: argparse.ArgumentParser) -> None:
    from .predict import BACKENDS

    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME[=CHECKPOINT]",
        help="arch or arch.tag, optionally =local checkpoint, or [NAME=]FILE.onnx|.pte|.tflite|.pt (TorchScript), or "
        "[NAME=]FOLDER "
        "written by save_pretrained; repeat to serve several (POST / uses the first)",
    )
    p.add_argument("--pretrained", help="local checkpoint for a single --model")
    _random_head_arg(p)
    p.add_argument("--labels", help="class names of a single --model, one per line or a JSON list")
    p.add_argument("--random-weights", action="store_true", help="no weights at all (protocol testing only)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (default: env MOBILEVIT_TOKEN, else none)")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="inference runtime of every model: eager, or onnxruntime or openvino for .onnx files, executorch for "
        ".pte, litert for .tflite, torchscript for TorchScript .pt (default: by the files, else eager)",
    )
    p.add_argument("--max-batch-size", type=int, default=16, help="requests per forward pass (1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body")
    p.add_argument("--max-pixels", type=int, default=25_000_000, help="largest image (width * height)")
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per request, once its body has arrived, before a 504"
    )
    p.add_argument(
        "--body-timeout", type=float, default=30.0, help="seconds a client may take to send its body before a 408"
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a client may take to send a request's line and headers before a 408 and the connection's end",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        help="connections open at once; beyond it a new one is answered 503 and closed (default: 1000, or what the "
        "open-file limit allows)",
    )
    p.add_argument("--queue-size", type=int, default=64, help="requests admitted per model before 503s")
    p.add_argument(
        "--threads", type=int, default=0, help="PyTorch/ONNX runtime threads (0: one per core; use 1 on shared cores)"
    )
    p.add_argument(
        "--fast-decode",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decode JPEGs twice the model's resize or larger DCT-downscaled (default); --no-fast-decode: "
        "bit-exact preprocessing of every image, as `mobilevit predict`",
    )
    p.set_defaults(func=cmd_serve)


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="architecture or arch.tag (see `mobilevit list --weights`)")
    _weights_args(p)
    from .export import FORMATS

    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument(
        "--output", required=True, help="file to write, named for its format (.onnx, .mlpackage, .pt, .pte, .tflite)"
    )
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="trace size (default: the weights')")
    p.add_argument("--opset", type=int, default=20, help="ONNX opset (18 or higher; 20 has a native Gelu)")
    p.add_argument("--labels", help="class names to record, one per line or a JSON list (default: the model's own)")
    p.add_argument("--static", action="store_true", help="fix the batch, height and width (default: dynamic)")
    p.add_argument("--quantize", choices=["int8"], help="write an int8 model (ONNX, ExecuTorch, LiteRT)")
    p.add_argument(
        "--quantize-mode", choices=["static", "dynamic"], default="static", help="ONNX int8: calibrated or not"
    )
    p.add_argument("--calibration", help="int8 static: folder of calibration images (not your evaluation images)")
    p.add_argument(
        "--quantize-method",
        choices=["minmax", "percentile", "entropy", "histogram", "moving-average"],
        help="int8 static: activation range estimate: ONNX minmax (default), percentile, entropy; ExecuTorch and "
        "LiteRT histogram (default), minmax, moving-average",
    )
    p.add_argument(
        "--quantize-weights", choices=["per-channel", "per-tensor"], help="int8: weight scales (default: per-channel)"
    )
    p.add_argument(
        "--quantize-activations",
        choices=["asymmetric", "symmetric"],
        help="int8 static: activation zero points (default: asymmetric)",
    )
    p.add_argument(
        "--quantize-ops", metavar="OPS", help="int8: quantize only these op types, e.g. Conv,Gemm,MatMul (default: all)"
    )
    p.add_argument(
        "--keep-fp32",
        metavar="NODES",
        help="int8: left in float: first, last and/or node names (ONNX) or module names (ExecuTorch, LiteRT), "
        "comma-separated, or none (default: first,last)",
    )
    p.add_argument(
        "--equalize",
        type=_alpha,
        metavar="ALPHA",
        help="int8 static: channel equalization strength 0-1, or off (default: 0.75 ONNX, 0.6 ExecuTorch/LiteRT)",
    )
    p.add_argument(
        "--bias-correction",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="int8 static: correct each bias for its weights' rounding (default: on)",
    )
    p.add_argument("--precision", choices=["float32", "float16"], default="float32", help="CoreML arithmetic")
    p.add_argument(
        "--coreml-input",
        choices=["image", "tensor"],
        default="image",
        help="CoreML: an image input with the preprocessing inside (default) or a preprocessed tensor",
    )
    p.set_defaults(func=cmd_export)


def _train_args(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--recipe", help="shipped recipe name, e.g. mobilevit_xxs")
    source.add_argument("--config", help="YAML config file (as written to OUTPUT/config.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optimizer.lr=0.001")
    p.add_argument(
        "--data",
        required=True,
        help="ImageFolder tree or CSV; a folder with train/ (and val/) splits; for a segmentation model a PASCAL VOC "
        "folder (its train and val splits) or images/ + masks/",
    )
    p.add_argument("--output", required=True, help="output folder: last.pt, metrics.jsonl, metrics.csv, final/")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt")
    p.add_argument("--pretrained", help="fine-tune from weights (arch.tag) or a checkpoint path")
    p.add_argument("--num-classes", type=int, help="classes the model outputs (a new head when fine-tuning)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def build_parser() -> argparse.ArgumentParser:
    """The ``mobilevit`` parser: one subcommand per ``cmd_*`` function."""
    parser = argparse.ArgumentParser(prog="mobilevit", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    _list_args(sub.add_parser("list", help="the model table: architectures, parameters and MACs"))
    _predict_args(sub.add_parser("predict", help="classify images"))
    _segment_args(sub.add_parser("segment", help="semantic segmentation: a class mask and an overlay per image"))
    _detect_args(sub.add_parser("detect", help="object detection: boxes, labels and scores, drawn on each image"))
    _eval_args(sub.add_parser("eval", help="accuracy on a labelled set: top-1/top-5, or mIoU for a segmentation model"))
    _bench_args(
        sub.add_parser(
            "bench",
            help="measure fp32 CPU latency, throughput and %% of this CPU's peak of models per backend on this machine",
            description=_BENCH_DESCRIPTION,
        )
    )
    _serve_args(sub.add_parser("serve", help="HTTP server compatible with the Hugging Face Inference API"))
    _export_args(
        sub.add_parser(
            "export",
            help="write the folded model as ONNX, CoreML, TorchScript, ExecuTorch or LiteRT, with preprocessing and "
            "labels",
        )
    )
    _train_args(sub.add_parser("train", help="train or fine-tune a model with a recipe (runs under torchrun too)"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.verbose:
        from .runtime.quiet import show_third_party_output

        show_third_party_output()  # what ExecuTorch, LiteRT and TensorFlow print, as they print it
    try:
        return args.func(args) or 0
    except (MobileViTError, OSError) as err:  # what a user can fix (files included); a bug shows its traceback
        return _user_error(args, err)
    except ModuleNotFoundError as err:
        missing = missing_optional_dependency(err)
        if missing is None:
            raise
        return _user_error(args, missing)


def _user_error(args: argparse.Namespace, err: BaseException) -> int:
    """One line naming the problem (with ``-v``, the traceback too); exit status 2."""
    if args.verbose:
        logging.getLogger(__name__).exception("details")
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    print(f"mobilevit {args.command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
