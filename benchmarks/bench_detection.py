"""SSDLite detection end to end: ours vs torchvision's ``ssdlite320_mobilenet_v3_large``, fp32 CPU, 320x320, batch 1.

One call per model is what a user's program does for one photo: decode the JPEG, preprocess (resize the whole image
to 320x320, normalise), run the model, decode the boxes and run NMS, boxes in the photo's pixels. Each call is timed
in three parts:

- ``pre``: decode + preprocess. Ours: ``Runner.load_input`` (PIL, the resize of the model's preprocessing);
  torchvision: ``torchvision.io.decode_image`` and the model's own ``GeneralizedRCNNTransform``-style ``transform``
  (resize to 320x320, normalise);
- ``model``: the network and its anchors. Ours: ``Runner.logits`` (the folded PyTorch model as ``mobilevit detect``
  runs it, or the file ``mobilevit export`` writes, in onnxruntime); torchvision: backbone, head, anchor generator;
- ``post``: everything after the model. Ours: the detection task's post-processing (softmax, box decoding, per-class
  threshold and top-k, ``torchvision.ops.batched_nms``, scaling to the photo); torchvision: its
  ``postprocess_detections`` and ``transform.postprocess`` (the same steps in its own code).

torchvision's parts are the calls of its ``SSD.forward`` in eval mode, made one by one; the script checks once that
they give ``model([image])``'s boxes. The implementations are timed round-robin (a settle call, then a timed call,
per turn; every implementation gets the same photo in a round), from ``../shared/data/det-mini/images`` (85 indoor
640x480 JPEGs). ``after_model`` is the median share of a call spent after the model; ``vs_tv`` is the median total over
torchvision's.

Weights are random on both sides (no detection weights are available offline); the speed of the network does not
depend on them, but the post-processing does: with random weights every class scores about 1/num_classes on every
anchor, above both models' confidence thresholds (ours 0.01, torchvision's 0.001), so NMS would get
``top_k x classes`` boxes (~30,000), far more than a trained detector gives it. So that the post-processing does a
trained detector's work, each model's class predictors are rescaled (logit spread ``SPREAD``) and their background
logit raised so that about ``--candidates`` (anchor, class) pairs per image pass the model's own threshold, as
calibrated on the first photo (the same number for every model); ``--candidates 0`` keeps the raw random scores (the
worst case). The rows give the mean number of detections each model returns after NMS.

    python benchmarks/bench_detection.py --threads 2                       # every model, eager and onnxruntime
    python benchmarks/bench_detection.py ssdlite_mobilevit_xxs --backends eager --rounds 5   # a quick check
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.io import ImageReadMode, decode_image
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

import mobilevit
from common import SHARED_DATA
from mobilevit.bench.report import markdown_table
from mobilevit.export import export_model
from mobilevit.runner import Runner, output_rows
from mobilevit.tasks.detection import CONFIDENCE_THRESHOLD

MODELS = (
    "ssdlite_mobilevit_xxs",
    "ssdlite_mobilevit_xs",
    "ssdlite_mobilevit_s",
    "ssdlite_mobilevitv2_050",
    "ssdlite_mobilevitv2_100",
)
IMAGES = SHARED_DATA / "det-mini" / "images"
SIZE = 320  # the input size of every published SSDLite-MobileViT checkpoint and of torchvision's SSDLite
SPREAD = 2.0  # std of the class logits after rescaling: some anchors clearly above the others, as after training
TORCHVISION = "torchvision ssdlite320_mobilenet_v3_large"

Timed = tuple[tuple[float, float, float], int]  # (pre, model, post) seconds, detections


# ---------------------------------------------------------------------------------------------------------------------
# trained-like scores for random weights


def candidates(logits: Tensor, threshold: float) -> int:
    """(anchor, class) pairs of ``[A, C]`` logits (column 0 the background) whose probability is above ``threshold``."""
    return int((logits.softmax(-1)[:, 1:] > threshold).sum())


def calibrate(convs: list[nn.Conv2d], num_classes: int, logits: Tensor, threshold: float, target: int) -> int:
    """Rescale the class predictors ``convs`` (each ``[anchors * num_classes]`` outputs, anchor-major) so that their
    ``[A, C]`` ``logits`` have a spread of ``SPREAD``, and raise the background's bias until about ``target`` pairs pass
    ``threshold``; returns the count the calibrated logits give."""
    scale = SPREAD / logits.std().item()
    logits = logits * scale
    low, high = -50.0, 50.0  # the background offset: more offset, fewer candidates
    for _ in range(60):
        mid = (low + high) / 2
        shifted = torch.cat([logits[:, :1] + mid, logits[:, 1:]], dim=1)
        low, high = (mid, high) if candidates(shifted, threshold) > target else (low, mid)
    with torch.no_grad():
        for conv in convs:
            conv.weight.mul_(scale)
            conv.bias.mul_(scale)
            conv.bias.view(-1, num_classes)[:, 0] += high  # [anchors * C] -> [anchors, C]
    return candidates(torch.cat([logits[:, :1] + high, logits[:, 1:]], dim=1), threshold)


def calibrate_ours(model: nn.Module, x: Tensor, target: int) -> int:
    with torch.no_grad():
        logits = model.eval()(x[None]).logits[0]
    return calibrate(list(model.classifier), model.num_classes, logits, CONFIDENCE_THRESHOLD, target)


def calibrate_torchvision(model: nn.Module, image: Tensor, target: int) -> int:
    with torch.no_grad():
        images, _ = model.transform([image])
        features = list(model.backbone(images.tensors).values())
        logits = model.head(features)["cls_logits"][0]
    convs = [block[-1] for block in model.head.classification_head.module_list]
    return calibrate(convs, model.head.classification_head.num_columns, logits, model.score_thresh, target)


# ---------------------------------------------------------------------------------------------------------------------
# the two pipelines


class Ours:
    """Our runner, one photo at a time, in three timed parts."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def __call__(self, path: Path) -> Timed:
        t0 = time.perf_counter()
        x, image = self.runner.load_input(path)
        t1 = time.perf_counter()
        outputs = self.runner.logits(x[None])
        t2 = time.perf_counter()
        detection = self.runner.postprocess(output_rows(outputs)[0], image)
        t3 = time.perf_counter()
        return (t1 - t0, t2 - t1, t3 - t2), len(detection)


class Torchvision:
    """torchvision's SSD ``forward`` in eval mode, call by call, one photo at a time, in three timed parts."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    def detect(self, path: Path) -> tuple[dict[str, Tensor], tuple[float, float, float]]:
        m = self.model
        t0 = time.perf_counter()
        image = decode_image(str(path), mode=ImageReadMode.RGB).float().div_(255)  # the weights' transforms
        original_size = [tuple(image.shape[-2:])]
        images, _ = m.transform([image])
        t1 = time.perf_counter()
        features = list(m.backbone(images.tensors).values())
        head_outputs = m.head(features)
        anchors = m.anchor_generator(images, features)
        t2 = time.perf_counter()
        detections = m.postprocess_detections(head_outputs, anchors, images.image_sizes)
        detections = m.transform.postprocess(detections, images.image_sizes, original_size)
        t3 = time.perf_counter()
        return detections[0], (t1 - t0, t2 - t1, t3 - t2)

    @torch.inference_mode()
    def __call__(self, path: Path) -> Timed:
        detection, times = self.detect(path)
        return times, len(detection["scores"])

    @torch.inference_mode()
    def check(self, path: Path) -> None:
        """The parts compute what ``model([image])`` computes."""
        ours, _ = self.detect(path)
        ref = self.model([decode_image(str(path), mode=ImageReadMode.RGB).float().div_(255)])[0]
        if not (torch.equal(ours["labels"], ref["labels"]) and torch.allclose(ours["boxes"], ref["boxes"])):
            raise SystemExit("torchvision's forward, called part by part, does not give model([image])'s boxes")


def check_same(name: str, exported: Runner, eager: Runner, photo: Path) -> None:
    """The exported file computes the eager model's raw outputs (relative to the largest logit) on ``photo``."""
    x = eager.load_input(photo)[0][None]
    out, ref = exported.logits(x), eager.logits(x)
    for key in ("logits", "boxes", "anchors"):
        diff = ((out[key] - ref[key]).abs().max() / ref[key].abs().max()).item()
        if diff > 1e-4:
            raise SystemExit(f"{name}: the ONNX file's {key} differ from eager by {diff:.1e} of their scale")


# ---------------------------------------------------------------------------------------------------------------------


def build(args: argparse.Namespace, first: Path, workdir: Path) -> dict[tuple[str, str], Callable[[Path], Timed]]:
    """Every (model, backend) pipeline, and torchvision's; the calibrated candidate count of each is logged."""
    pipelines: dict[tuple[str, str], Callable[[Path], Timed]] = {}
    torch.manual_seed(0)
    tv = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    image = decode_image(str(first), mode=ImageReadMode.RGB).float().div_(255)
    if args.candidates:
        print(f"{TORCHVISION}: {calibrate_torchvision(tv, image, args.candidates)} candidates", flush=True)
    pipelines[(TORCHVISION, "eager")] = Torchvision(tv)
    pipelines[(TORCHVISION, "eager")].check(first)
    for name in args.models:
        torch.manual_seed(0)
        model = mobilevit.create_model(name).eval()
        runner = Runner.from_model(model, pretrained=False, batch_size=1, fold=False)
        if args.candidates:
            count = calibrate_ours(model, runner.load_input(first)[0], args.candidates)
            print(f"{name}: {count} candidates", flush=True)
        eager = Runner.from_model(model, pretrained=False, batch_size=1)  # folded, as `mobilevit detect` runs it
        if "eager" in args.backends:
            pipelines[(name, "eager")] = Ours(eager)
        if "onnxruntime" in args.backends:
            try:
                path = export_model(model, "onnx", workdir / f"{name}.onnx", input_size=(SIZE, SIZE))
                exported = Runner.from_exported(path, batch_size=1, threads=args.threads)
                check_same(name, exported, eager, first)
                pipelines[(name, "onnxruntime")] = Ours(exported)
            except Exception as err:  # a model that does not export is left out, saying why
                print(f"{name}: onnxruntime left out: {type(err).__name__}: {str(err).splitlines()[0]}", flush=True)
    return pipelines


def measure(pipelines: dict, photos: list[Path], rounds: int, warmup: int = 2) -> dict:
    """Round-robin: per round, one photo; each pipeline makes a settle call, then a timed call."""
    for fn in pipelines.values():
        for photo in photos[:warmup]:
            fn(photo)
    calls: dict = {key: [] for key in pipelines}
    for r in range(rounds):
        photo = photos[r % len(photos)]
        for key, fn in pipelines.items():
            fn(photo)
            calls[key].append(fn(photo))
    return calls


def summarize(key: tuple[str, str], calls: list[Timed]) -> dict:
    pre, model, post = ([1e3 * t[i] for t, _ in calls] for i in range(3))
    total = [a + b + c for a, b, c in zip(pre, model, post, strict=True)]
    return {
        "model": key[0],
        "backend": key[1],
        "detections": round(statistics.mean(n for _, n in calls), 1),
        "pre_ms": statistics.median(pre),
        "model_ms": statistics.median(model),
        "post_ms": statistics.median(post),
        "total_ms": statistics.median(total),
        "after_model": f"{statistics.median(c / t for c, t in zip(post, total, strict=True)):.0%}",
    }


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(MODELS), help="ssdlite_* models (default: %(default)s)")
    parser.add_argument("--backends", default="eager,onnxruntime", help="ours: eager, onnxruntime (comma-separated)")
    parser.add_argument("--rounds", type=int, default=20, help="timed calls per implementation")
    parser.add_argument("--threads", type=int, default=2, help="torch's and onnxruntime's threads")
    parser.add_argument("--candidates", type=int, default=1000, help="calibrated pairs above threshold; 0: raw")
    parser.add_argument("--images", type=Path, default=IMAGES, help="a folder of JPEGs")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := set(args.backends) - {"eager", "onnxruntime"}:
        raise SystemExit(f"unknown backend(s) {sorted(unknown)}: choose from eager, onnxruntime")
    photos = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not photos:
        raise SystemExit(f"no JPEGs in {args.images}: the benchmark needs the shared test data at ../shared")
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pipelines = build(args, photos[0], Path(tmp))
        built = time.perf_counter()
        calls = measure(pipelines, photos, args.rounds)
    rows = [summarize(key, c) for key, c in calls.items()]
    reference = rows[0]["total_ms"]
    for row in rows:
        row["vs_tv"] = round(row["total_ms"] / reference, 2)

    import onnxruntime

    setup = (
        f"{time.strftime('%Y-%m-%d')}, {cpu_name()}, {platform.machine()}, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads, fp32, "
        f"{SIZE}x{SIZE}, batch 1, median of {args.rounds} interleaved calls on {len(photos)} photos, random weights "
        + (f"calibrated to ~{args.candidates} candidates per image" if args.candidates else "(raw scores)")
        + f"; set-up (models, exports, checks) {built - start:.0f} s, timing {time.perf_counter() - built:.0f} s"
    )
    print(f"\n{setup}\n")
    columns = ["model", "backend", "pre_ms", "model_ms", "post_ms", "total_ms", "after_model", "vs_tv", "detections"]
    print(markdown_table(rows, columns))
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
