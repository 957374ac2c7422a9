"""Proof that fine-tuning works: the real MobileOne-S0 weights on ants vs bees (hymenoptera), CPU, ``mobilevit.train``.

The shared ``hymenoptera.tar`` (245 train, 153 val images) is extracted once into ``/tmp/mobilevit-bench``; the
ImageNet weights (``../shared/weights/mobileone_s0_reparam.safetensors``) get a new 2-class head and are trained by
:func:`mobilevit.train.train` in two modes:

- ``linear``: linear probe, backbone frozen, only the head trains (AdamW, lr 1e-3);
- ``full``: every weight trains with a modest learning rate (AdamW, lr 1e-4;
  docs/training.md compares other learning rates).

Both use random-resized-crop + flip at 224, batch 32, label smoothing 0.1, linear warmup over half an epoch then a
cosine to lr/100, and an EMA of the weights. The EMA momentum is 0.1, not cvnets' 0.0005: these runs take about 40
optimizer steps, and an average over 2,000 steps would still be the initial random head. Validation is the eval
transform of MobileOne (resize 256, center crop 224, ImageNet mean/std) after every epoch; the JSON report records
the goal of 0.90 val top-1 beside the runs.

    python benchmarks/finetune_hymenoptera.py                          # both modes, 5 epochs each (~2.5 min)
    python benchmarks/finetune_hymenoptera.py --modes linear --epochs 1  # smoke test (~20 s)
    python benchmarks/finetune_hymenoptera.py --modes full --lr full=5e-5  # another learning rate
    python benchmarks/finetune_hymenoptera.py --json hym.json --markdown hym.md
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch

from common import CACHE, SHARED_DATA, extract_once
from mobilevit.bench.report import markdown_table
from mobilevit.train import TrainConfig, from_dict, train

DEFAULT_WEIGHTS = SHARED_DATA.parent / "weights" / "mobileone_s0_reparam.safetensors"
MODES = {  # mode -> (frozen backbone, default peak lr, weight decay)
    "linear": (True, 1e-3, 0.01),
    "full": (False, 1e-4, 0.05),
}


def config(args: argparse.Namespace, mode: str, data: Path, output_dir: Path) -> TrainConfig:
    """The fine-tuning run of ``mode``: the shipped trainer with a small-data recipe."""
    frozen, lr, weight_decay = MODES[mode]
    lr = args.lr.get(mode, lr)
    return from_dict(
        {
            "model": {
                "name": "mobileone_s0",
                "num_classes": 2,
                "pretrained": str(args.weights),
                "freeze_backbone": frozen,
            },
            "data": {
                "train": str(data / "train"),
                "val": str(data / "val"),
                "num_workers": args.workers,
                "val_resize": 256,  # MobileOne's eval: resize 256, center crop 224 (crop_pct 0.875)
                "val_crop": args.resolution,
            },
            "sampler": {"kind": "fixed", "base_size": args.resolution, "batch_size": args.batch_size},
            "optimizer": {"lr": lr, "weight_decay": weight_decay},
            "schedule": {"warmup_epochs": 0.5, "warmup_init_lr": lr / 100, "min_lr": lr / 100},
            "augment": {"label_smoothing": 0.1},
            "ema": {"enabled": True, "momentum": args.ema_momentum},
            "epochs": args.epochs,
            "log_every": 1,
            "checkpoint_every": 10_000,  # only the end-of-epoch checkpoints
            "seed": args.seed,
            "output_dir": str(output_dir),
        }
    )


def run(cfg: TrainConfig, mode: str) -> dict:
    """Train, then read the per-epoch records the loop wrote to ``metrics.jsonl``."""
    result = train(cfg)
    records = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    return {
        "mode": mode,
        "lr": f"{cfg.optimizer.lr:g}",
        "epochs": len(epochs),
        "val_top1_per_epoch": " ".join(f"{r['val_top1']:.3f}" for r in epochs),
        "val_top1": result.val_top1,
        "val_top1_ema": result.val_top1_ema,
        "train_img_s": sum(r["images"] for r in epochs) / sum(r["seconds"] for r in epochs),
        "wall_s": result.seconds,
        "per_epoch": epochs,
        "output_dir": cfg.output_dir,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="linear,full", help="comma-separated: linear, full")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", action="append", default=[], metavar="MODE=LR", help="e.g. full=5e-5 (repeatable)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--ema-momentum", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's; 1 on a busy machine)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "hymenoptera.tar")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    try:
        args.lr = {mode: float(value) for mode, value in (item.split("=") for item in args.lr)}
    except ValueError:
        raise SystemExit(f"--lr takes MODE=LR, e.g. full=5e-5; got {args.lr}") from None
    if not args.weights.is_file():
        raise SystemExit(f"{args.weights} not found: the benchmark needs the shared MobileOne-S0 weights")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = extract_once(args.data, CACHE / "hymenoptera") / "hymenoptera_data"

    rows = []
    runs_dir = CACHE / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for mode in modes:
        output_dir = Path(tempfile.mkdtemp(prefix=f"hymenoptera-{mode}-", dir=runs_dir))
        row = run(config(args, mode, data, output_dir), mode)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "per_epoch"}), flush=True)

    setup = (
        f"mobileone_s0 (ImageNet weights) -> ants/bees, {args.resolution}x{args.resolution}, batch {args.batch_size}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.workers} data workers, CPU fp32"
    )
    columns = ["mode", "lr", "epochs", "val_top1_per_epoch", "val_top1", "val_top1_ema", "train_img_s", "wall_s"]
    table = markdown_table(rows, columns)
    print(f"\n{setup}\n\n{table}")
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "target_val_top1": 0.90, "runs": rows}, indent=2))
    if args.markdown:
        args.markdown.write_text(f"{setup}\n\n{table}\n")


if __name__ == "__main__":
    main()
