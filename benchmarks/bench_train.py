"""Training throughput on CPU: ours vs timm on the same weights, and the multi-scale sampler vs a fixed 256 epoch.

1. **Model step.** For each ``NAME[:BATCH]``, timm's model gets random weights (randomized BatchNorm statistics); the
   state dict is converted and loaded into ours (``common.same_weights``), both go to train mode, each gets its own
   ``torch.optim.AdamW`` (lr 1e-4, weight decay 0.01), and one training step -- zero grads, forward, cross-entropy,
   backward, AdamW step -- on the same random batch is timed ``--steps`` times per round, ours and timm alternating
   for ``--rounds`` rounds in one process. Dropout is switched off in ours (cvnets' defaults, e.g. 0.1 / 0.05 in
   ``mobilevit_xxs``; timm's models have none) so that both compute the same thing; the first step's loss of each is
   reported as a check (same weights, same batch: they agree). Reported: median images/s of each, the ratio
   ours/timm (above 1.0: ours is faster), and the median process CPU seconds per step of each -- on a shared machine
   the CPU-time ratio is steadier than the wall-clock one.
2. **Multi-scale epoch.** :func:`mobilevit.train.train` -- the loop of ``mobilevit train``, with decoding, the train
   transform, EMA and checkpoints -- runs one epoch of ``mobilevit_xxs`` over ``--epoch-images`` synthetic 320x320
   JPEGs (written once into ``/tmp/mobilevit-bench``) with cvnets' variable-batch sampler (base 256, batch
   ``--ms-batch``, sizes 160-320, 5 scales: larger batches at smaller sizes) and with the fixed sampler (256 only).
   Reported: the epoch's training time and images/s from the loop's own epoch record, and, next to it, the model
   step's images/s of part 1 at the same size and batch (``loop/step``: the loop's efficiency; the epoch also decodes
   JPEGs in a worker process and keeps our default dropout, which the bare step turns off).

    python benchmarks/bench_train.py                                  # 6 models at 256 + both samplers (~10 min)
    python benchmarks/bench_train.py mobilevit_xxs:64 fastvit_t8 --rounds 7 --json train.json
    python benchmarks/bench_train.py --quick --threads 1              # smoke test at 128, tiny batches (~15 s)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common import CACHE, same_weights, setup_line
from mobilevit.bench.report import markdown_table
from mobilevit.data.samplers import BatchShape, variable_batch_shapes
from mobilevit.train import TrainConfig, from_dict, train

DEFAULT_MODELS = [
    "mobilevit_xxs:32",
    "mobilevit_s:16",
    "mobilevitv2_050:32",
    "mobilevitv2_100:16",
    "fastvit_t8:32",
    "mobileone_s0:32",
]


def parse_model(spec: str, default_batch: int) -> tuple[str, int]:
    name, _, batch = spec.partition(":")
    try:
        return name, int(batch) if batch else default_batch
    except ValueError:
        raise SystemExit(f"model spec {spec!r}: expected NAME or NAME:BATCH, e.g. mobilevit_s:16") from None


class Stepper:
    """One model with its own AdamW: ``step()`` runs one full training step on the fixed batch and returns the loss."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.model = model.train()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
        self.images, self.targets = images, targets

    def step(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(self.images), self.targets)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def model_step_row(name: str, batch: int, args: argparse.Namespace, workdir: Path) -> dict:
    ours, ref = same_weights(name, workdir)
    if ref is None:
        raise SystemExit(f"{name}: timm has no such architecture, nothing to compare with")
    if not args.keep_dropout:  # ours keeps cvnets' dropout defaults (e.g. 0.1 / 0.05 in mobilevit_xxs), timm has none
        for module in ours.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, args.resolution, args.resolution, generator=g)
    targets = torch.randint(0, ours.num_classes, (batch,), generator=g)
    steppers = {"ours": Stepper(ours, images, targets), "timm": Stepper(ref, images, targets)}
    first_loss = {k: s.step() for k, s in steppers.items()}  # also the warm-up
    wall: dict[str, list[float]] = {k: [] for k in steppers}
    cpu: dict[str, list[float]] = {k: [] for k in steppers}  # all threads of this process
    for _ in range(args.rounds):
        for key, stepper in steppers.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                stepper.step()
            wall[key].append((time.perf_counter() - t0) / args.steps)
            cpu[key].append((time.process_time() - c0) / args.steps)
    row = {"model": name, "batch": batch, "resolution": args.resolution}
    row |= {f"{k}_img_s": batch / statistics.median(v) for k, v in wall.items()}
    row["ours/timm"] = row["ours_img_s"] / row["timm_img_s"]
    row |= {f"{k}_cpu_s": statistics.median(v) for k, v in cpu.items()}
    row["cpu timm/ours"] = row["timm_cpu_s"] / row["ours_cpu_s"]  # above 1.0: ours needs less CPU per step
    row |= {f"{k}_loss0": v for k, v in first_loss.items()}
    return row


def synthetic_folder(n: int, size: int = 320) -> Path:
    """``n`` smooth random JPEGs in two class folders, written once (photo-like decode cost, no download)."""
    root = CACHE / f"synthetic-{n}-{size}"
    if (root / ".done").is_file():
        return root
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 13, (size, size, 3))
        pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    (root / ".done").write_text("ok")
    return root


def shapes(cfg: TrainConfig) -> list[BatchShape]:
    """The (height, width, batch) table of the config's sampler."""
    s = cfg.sampler
    if s.kind == "variable_batch":
        return variable_batch_shapes(s.base_size, s.batch_size, s.min_size, s.max_size, s.num_scales, s.divisor)
    return [BatchShape(s.base_size, s.base_size, s.batch_size)]


def epoch_row(kind: str, data: Path, args: argparse.Namespace, workdir: Path) -> dict:
    """One epoch of ``mobilevit.train.train`` with the ``kind`` sampler; numbers from its epoch record."""
    base = args.ms_base
    output = workdir / f"epoch-{kind}"
    cfg = from_dict(
        {
            "model": {"name": "mobilevit_xxs", "num_classes": 2},
            "data": {"train": str(data), "num_workers": args.workers},
            "sampler": {
                "kind": kind,
                "base_size": base,
                "batch_size": args.ms_batch,
                "min_size": base * 5 // 8,  # 160-320 around 256, as cvnets' ImageNet configs
                "max_size": base * 5 // 4,
                "num_scales": 5,
            },
            "epochs": 1,
            "log_every": 1,
            "checkpoint_every": 10**9,  # the end-of-epoch checkpoint only
            "output_dir": str(output),
        }
    )
    train(cfg)
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    epoch = next(r for r in records if r["event"] == "epoch")
    steps = [r for r in records if r["event"] == "step"]
    sizes = sorted({(s.height, s.width, s.batch_size) for s in shapes(cfg)})
    return {
        "sampler": kind,
        "images": epoch["images"],
        "batches": len(steps),
        "sizes (h, w, batch)": " ".join(f"{h}x{w}:{b}" for h, w, b in sizes),
        "epoch_s": epoch["seconds"],
        "img_s": epoch["images_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="NAME[:BATCH] (default: six models, batch 32 or 16)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch of a model given without :BATCH")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--epoch-images", type=int, default=512)
    parser.add_argument("--ms-base", type=int, default=256, help="base size of the multi-scale epoch")
    parser.add_argument("--ms-batch", type=int, default=32, help="batch at the base size")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes of the epoch runs")
    parser.add_argument("--keep-dropout", action="store_true", help="keep our models' default dropout in part 1")
    parser.add_argument("--skip-epochs", action="store_true", help="only the model-step comparison")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny batches at 128, 64-image epochs")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.resolution, args.rounds, args.steps, args.batch_size = 128, 2, 1, 8
        args.epoch_images, args.ms_base, args.ms_batch = 64, 128, 8
        args.models = args.models or ["mobilevit_xxs:8", "mobileone_s0:8"]
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    specs = [parse_model(s, args.batch_size) for s in (args.models or DEFAULT_MODELS)]

    step_rows, epoch_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, batch in specs:
            step_rows.append(model_step_row(name, batch, args, Path(tmp)))
            print(json.dumps(step_rows[-1]), flush=True)
        if not args.skip_epochs:
            data = synthetic_folder(args.epoch_images)
            for kind in ("variable_batch", "fixed"):
                epoch_rows.append(epoch_row(kind, data, args, Path(tmp)))
                print(json.dumps(epoch_rows[-1]), flush=True)
            # the fixed epoch next to the bare model step at the same size and batch: the loop's efficiency
            same = [
                r
                for r in step_rows
                if (r["model"], r["resolution"], r["batch"]) == ("mobilevit_xxs", args.ms_base, args.ms_batch)
            ]
            if same:
                epoch_rows[-1]["model_step_img_s"] = same[0]["ours_img_s"]
                epoch_rows[-1]["loop/step"] = epoch_rows[-1]["img_s"] / same[0]["ours_img_s"]

    setup = setup_line(args.resolution, args.rounds).replace("interleaved runs", f"interleaved rounds of {args.steps}")
    text = f"{setup}; training step = zero_grad + forward + cross-entropy + backward + AdamW\n\n"
    text += markdown_table(step_rows)
    if epoch_rows:
        text += (
            f"\n\nOne epoch of mobilevit.train over {args.epoch_images} synthetic 320x320 JPEGs, mobilevit_xxs, "
            f"{args.workers} data worker(s), base {args.ms_base}, batch {args.ms_batch} at the base size\n\n"
        )
        text += markdown_table(epoch_rows, list(dict.fromkeys(k for row in epoch_rows for k in row)))
    print(f"\n{text}")
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "model_step": step_rows, "epoch": epoch_rows}, indent=2))
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
