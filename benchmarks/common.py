"""What the benchmark scripts share: same-weights model pairs (ours vs timm) and the printed set-up line."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import timm
import torch

import mobilevit


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and layer scales, so that every folded term shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            C = m.num_features
            m.weight.data = 1 + 0.1 * torch.randn(C, generator=g)
            m.bias.data = 0.1 * torch.randn(C, generator=g)
            m.running_mean = 0.1 * torch.randn(C, generator=g)
            m.running_var = 0.5 + torch.rand(C, generator=g)
    for name, p in model.named_parameters():
        if "layer_scale" in name:
            p.data = 0.1 + 0.4 * torch.rand(p.shape, generator=g)
    return model


def same_weights(name: str, workdir: Path) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(ours, timm) in eval mode with the same weights, converted through a checkpoint file as a user would.

    timm is None where it has no such architecture; ours then has random weights.
    """
    if name not in timm.list_models():
        return mobilevit.create_model(name).eval(), None
    torch.manual_seed(0)
    ref = randomize(timm.create_model(name)).eval()
    path = workdir / f"{name}.pth"
    torch.save(ref.state_dict(), path)
    return mobilevit.create_model(name, pretrained=path).eval(), ref


def timing_args(description: str, models_help: str, batch_sizes: str, resolution: int) -> argparse.Namespace:
    """The command line of the scripts that time ours against an anchor (models, ``--batch-sizes``, ``--resolution``,
    ``--rounds``, ``--threads``, ``--json``), parsed; torch's thread count is set from ``--threads``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help=models_help)
    parser.add_argument("--batch-sizes", default=batch_sizes)
    parser.add_argument("--resolution", type=int, default=resolution)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed calls per implementation")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def setup_line(resolution: int, rounds: int) -> str:
    return (
        f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()}, fp32, {resolution}x{resolution}, median of {rounds} interleaved runs"
    )


def max_rel_diff(out: torch.Tensor, ref: torch.Tensor) -> str:
    """Largest logit difference relative to the reference's largest logit, formatted."""
    return f"{((out - ref).abs().max() / ref.abs().max()).item():.1e}"


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CACHE = Path("/tmp/mobilevit-bench")  # extracted data sets, reused across runs


def extract_once(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` (tar, tar.gz) into ``dest`` unless an earlier run finished doing so; returns ``dest``."""
    import tarfile

    done = dest / ".extracted"
    if done.is_file():
        return dest
    if not archive.is_file():
        raise SystemExit(f"{archive} not found: the benchmark needs the shared test data at ../shared")
    dest.mkdir(parents=True, exist_ok=True)
    print(f"extracting {archive} -> {dest}", flush=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    done.write_text(str(archive))
    return dest


IMAGENET_SAMPLES = SHARED_DATA / "imagenet-samples-100"


def upscaled_copies(source: Path, dest: Path, long_side: int, count: int | None = None, quality: int = 90) -> Path:
    """Large JPEG copies of a labelled folder's photos: a folder that ``mobilevit eval`` reads, made once.

    The first ``count`` files of ``source/labels.csv`` (all by default) are upscaled (PIL bicubic) to ``long_side``
    pixels on their longer side and a multiple of 8 on the shorter (the aspect kept within 4 pixels), as a camera's
    12-megapixel photos are 4000x3000, and saved as JPEG at ``quality`` under ``dest`` with their ``labels.csv`` rows.
    An earlier run with the same arguments is reused.
    """
    import csv

    from PIL import Image

    done = dest / ".done"
    recipe = f"{source} {long_side} {count} {quality} multiple of 8"
    if done.is_file() and done.read_text() == recipe:
        return dest
    if not (source / "labels.csv").is_file():
        raise SystemExit(f"{source}/labels.csv not found: the benchmark needs the shared test data at ../shared")
    with (source / "labels.csv").open(newline="") as f:
        header, *rows = list(csv.reader(f))
    rows = rows[:count]
    dest.mkdir(parents=True, exist_ok=True)
    print(f"writing {len(rows)} JPEGs upscaled to {long_side} px to {dest}", flush=True)
    for row in rows:
        with Image.open(source / row[0]) as img:
            img = img.convert("RGB")
            short = 8 * round(long_side * min(img.size) / max(img.size) / 8)
            size = (long_side, short) if img.width >= img.height else (short, long_side)
            img = img.resize(size, Image.Resampling.BICUBIC)
        img.save(dest / Path(row[0]).with_suffix(".jpg").name, quality=quality)
        row[0] = Path(row[0]).with_suffix(".jpg").name
    with (dest / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    done.write_text(recipe)
    return dest
