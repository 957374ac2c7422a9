"""Proof that training from scratch works: ``mobilevit_xxs`` on CIFAR-10 for a fixed CPU time budget, ours vs timm.

Two implementations train the same architecture with the same recipe for the same wall-time budget:

- ``ours``: :func:`mobilevit.train.train` (the loop of ``mobilevit train``) on our ``mobilevit_xxs``;
- ``timm``: ``timm.create_model("mobilevit_xxs", num_classes=10)`` in a minimal plain PyTorch loop written here
  (forward, label-smoothed cross-entropy, backward, AdamW step, learning rate set per step, weight EMA).

Shared by both: the training images (the shared ``cifar10-jpeg.tar.gz``, extracted once into ``/tmp/mobilevit-bench``),
the per-sample train transform (:func:`mobilevit.data.augment.train_transform`: random-resized-crop of area 0.35-1 to
64x64 -- MobileViT's stride 32 leaves a 2x2 map for the last transformer at 64, which patch size 2 needs -- then a
horizontal flip, [0, 1] RGB), batch 128, AdamW (lr 2e-3, betas 0.9/0.999, weight decay 0.05, none on norms and biases),
label smoothing 0.1, linear warmup over the first 3% of steps from lr/100, cosine to lr/100, and an EMA of the weights.
The EMA momentum is ``10 / total steps`` (an average over the last ~10% of the run), since cvnets' 0.0005 assumes
hundreds of thousands of steps. Dropout is off in both (timm's default; ours would otherwise use cvnets' 0.1 before
the classifier and 0.05 after projections). The same torch threads and DataLoader worker processes serve both.

The budget and the schedule. A cosine schedule must know its length before the first step, so each run first
*calibrates*: it trains ``--calibration-steps`` steps of a throwaway model (same loop, same data) and times the steps
after the first quarter (start-up excluded). ``total steps = budget x measured steps/s``; the real run then trains
exactly that many steps with warmup + cosine over them. Its actual training time is reported next to the budget (they
differ by how far the machine's speed drifts from the calibration). The faster implementation gets more steps (more
images) in the same budget: that is the point of the comparison.

The learning curve. Both runs keep ``--curve-points`` snapshots of the model and the EMA at evenly spaced steps (ours:
the loop's own checkpoint ``last.pt`` written every ``total / points`` steps, copied aside; timm: state dicts copied in
memory); the time spent copying is excluded from the time axis. After training, every snapshot is evaluated on a
balanced subset of the test set (``--curve-test-images``, default 2,000) and the final model and EMA on the full
10,000 test images, with the same eval transform (resize 64, no crop). Results: a JSON file, a markdown table and a
PNG of test accuracy vs training time and of the training loss.

Threads. torch's intra-op threads wait for each other at every op: when another process (or the DataLoader worker)
takes a core, a 2-thread step can slow down 30-70x (measured here: 9 s instead of 0.13 s per step on a busy 2-core
machine). Run on a quiet machine, or pass ``--threads 1`` (both implementations get the same setting).

    python benchmarks/train_cifar10.py                            # ours then timm, 30 min each (~65 min in all)
    python benchmarks/train_cifar10.py --impl ours --budget-minutes 60 --json cifar.json --png cifar.png
    python benchmarks/train_cifar10.py --threads 1 --budget-minutes 1 --batch-size 64 --calibration-steps 16 \\
        --train-images 5000 --curve-test-images 500 --final-test-images 2000 --curve-points 5   # smoke test (~4 min)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Subset

import mobilevit
from common import CACHE, SHARED_DATA, extract_once
from mobilevit.bench.report import markdown_table
from mobilevit.data.augment import train_transform
from mobilevit.data.transforms import eval_transform
from mobilevit.train import AugmentConfig, TrainConfig, from_dict, train
from mobilevit.weights.entries import get_weights

ARCH = "mobilevit_xxs"
NUM_CLASSES = 10
AUGMENT = AugmentConfig(rrc_scale=(0.35, 1.0), interpolation="bilinear", hflip=0.5, label_smoothing=0.1)


@dataclass(frozen=True)
class Plan:
    """The schedule of one budgeted run, fixed before its first step."""

    steps_per_s: float  # measured by the calibration
    total_steps: int
    warmup_steps: int
    ema_momentum: float
    snapshot_every: int


@dataclass
class Tracker:
    """Training time (minus the pauses for snapshots), per-step loss and the learning-curve snapshots of a run."""

    start: float = field(default_factory=time.perf_counter)
    paused: float = 0.0
    steps: list[tuple[int, float, float]] = field(default_factory=list)  # (step, seconds, loss)
    snapshots: list[tuple[int, float, Any]] = field(default_factory=list)  # (step, seconds, state or file)

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def step(self, step: int, loss: float) -> None:
        self.steps.append((step, self.seconds(), loss))

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.paused += time.perf_counter() - t0

    def steps_per_s(self) -> float:
        """Step rate after the first quarter of the steps (DataLoader start-up and first-call costs excluded)."""
        warm = self.steps[len(self.steps) // 4]
        last = self.steps[-1]
        return (last[0] - warm[0]) / (last[1] - warm[1])


# -- data ---------------------------------------------------------------------------------------------------------


def evenly_spaced(n_total: int, n: int | None) -> list[int]:
    """``n`` indices spread over ``range(n_total)`` (class-balanced for a class-sorted list); all when ``n`` is None."""
    if n is None or n >= n_total:
        return list(range(n_total))
    return [i * n_total // n for i in range(n)]


def write_csv(samples: list[tuple[str, int]], path: Path) -> Path:
    """A ``file, class index`` list that ``mobilevit.train`` reads as a dataset (absolute paths)."""
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(samples)
    return path


def eval_loader(root: Path, n: int | None, args: argparse.Namespace) -> DataLoader:
    """Test images (``n`` of them, balanced, or all) through the eval transform: resize 64, [0, 1] RGB."""
    pre = replace(
        get_weights(ARCH).preprocess,
        input_size=(args.resolution, args.resolution),
        resize_size=args.resolution,
        crop_pct=1.0,
        interpolation="bilinear",
    )
    dataset = torchvision.datasets.ImageFolder(str(root), transform=eval_transform(pre))
    subset = Subset(dataset, evenly_spaced(len(dataset), n))
    return DataLoader(subset, batch_size=256, num_workers=args.workers)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = count = 0
    for images, targets in loader:
        correct += int((model(images).argmax(-1) == targets).sum())
        count += len(targets)
    return correct / count


# -- the two implementations ----------------------------------------------------------------------------------------


def ours_config(args: argparse.Namespace, train_data: Path, plan: Plan, output_dir: Path) -> TrainConfig:
    steps_per_epoch = math.ceil(args.num_train / args.batch_size)
    return from_dict(
        {
            # no dropout, as timm's mobilevit_xxs (ours defaults to cvnets' 0.1 classifier / 0.05 projection dropout)
            "model": {"name": ARCH, "num_classes": NUM_CLASSES, "drop_rate": 0.0, "proj_drop_rate": 0.0},
            "data": {"train": str(train_data), "val": None, "num_workers": args.workers},
            "sampler": {"kind": "fixed", "base_size": args.resolution, "batch_size": args.batch_size},
            "optimizer": {"lr": args.lr, "weight_decay": args.weight_decay, "no_decay_norm_bias": True},
            "schedule": {"warmup_iters": plan.warmup_steps, "warmup_init_lr": args.lr / 100, "min_lr": args.lr / 100},
            "augment": {
                "rrc_scale": list(AUGMENT.rrc_scale),
                "interpolation": AUGMENT.interpolation,
                "hflip": AUGMENT.hflip,
                "label_smoothing": AUGMENT.label_smoothing,
            },
            "ema": {"enabled": True, "momentum": plan.ema_momentum},
            "epochs": math.ceil(plan.total_steps / steps_per_epoch),
            "max_iters": plan.total_steps,
            "channels_last": args.channels_last,
            "checkpoint_every": plan.snapshot_every,
            "log_every": 1,  # the progress callback then sees each step's own loss
            "seed": args.seed,
            "output_dir": str(output_dir),
        }
    )


def run_ours(args: argparse.Namespace, train_data: Path, plan: Plan, max_steps: int | None = None) -> Tracker:
    """``mobilevit.train.train`` for ``plan.total_steps`` steps (or only ``max_steps``: the calibration)."""
    runs = CACHE / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    output_dir = Path(tempfile.mkdtemp(prefix="cifar10-ours-", dir=runs))
    cfg = ours_config(args, train_data, plan, output_dir)
    if max_steps is not None:
        cfg = replace(cfg, max_iters=max_steps, checkpoint_every=10**9)
    snapshots = output_dir / "snapshots"
    snapshots.mkdir()
    tracker = Tracker()
    pending: list[tuple[int, float]] = []  # the loop writes last.pt right after the progress call of that step

    def keep(step: int, seconds: float) -> None:
        with tracker.pause():
            path = snapshots / f"step_{step:06d}.pt"
            shutil.copyfile(output_dir / "last.pt", path)
            tracker.snapshots.append((step, seconds, path))

    def progress(info: dict[str, Any]) -> None:
        if pending:
            keep(*pending.pop())
        tracker.step(info["step"], info["loss"])
        if max_steps is None and info["step"] % plan.snapshot_every == 0:
            pending.append((info["step"], tracker.seconds()))

    result = train(cfg, progress=progress)
    if pending:
        keep(*pending.pop())
    if max_steps is None and (not tracker.snapshots or tracker.snapshots[-1][0] != result.step):
        keep(result.step, tracker.seconds())  # last.pt holds the final step
    logging.info("ours: %d steps in %.0f s, output %s", result.step, tracker.seconds(), output_dir)
    return tracker


def load_ours(path: Path) -> tuple[nn.Module, nn.Module]:
    state = torch.load(path, map_location="cpu", weights_only=False)  # the training state file of mobilevit.train
    model, ema = (
        mobilevit.create_model(ARCH, num_classes=NUM_CLASSES, drop_rate=0.0, proj_drop_rate=0.0) for _ in range(2)
    )
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    return model, ema


def run_timm(args: argparse.Namespace, train_data: Path, plan: Plan, max_steps: int | None = None) -> Tracker:
    """timm's model in a minimal loop with the same recipe; ``max_steps`` cuts it short (the calibration)."""
    tracker = Tracker()  # started before any set-up, as for ours (train() builds its model and data)
    torch.manual_seed(args.seed)
    model = timm.create_model(ARCH, num_classes=NUM_CLASSES)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    decay = [p for p in model.parameters() if p.ndim > 1]  # weights; norms and biases (1-D) get no decay
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.999),
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=AUGMENT.label_smoothing)
    # the same files as ours: the train/ tree, or the same balanced subset
    dataset = torchvision.datasets.ImageFolder(
        str(args.root / "train"), transform=train_transform(AUGMENT, args.resolution)
    )
    dataset = Subset(dataset, evenly_spaced(len(dataset), args.train_images))
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    lr_at = schedule(args.lr, plan.total_steps, plan.warmup_steps)
    stop = plan.total_steps if max_steps is None else max_steps
    step = 0
    model.train()
    while step < stop:
        for images, targets in loader:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), plan.ema_momentum)
                for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
                    b_ema.copy_(b)
            step += 1
            tracker.step(step, float(loss.detach()))
            if max_steps is None and (step % plan.snapshot_every == 0 or step == stop):
                with tracker.pause():
                    state = (copy.deepcopy(model.state_dict()), copy.deepcopy(ema.state_dict()))
                tracker.snapshots.append((step, tracker.seconds(), state))
            if step >= stop:
                break
    logging.info("timm: %d steps in %.0f s", step, tracker.seconds())
    return tracker


def load_timm(state: tuple[dict, dict]) -> tuple[nn.Module, nn.Module]:
    model, ema = (timm.create_model(ARCH, num_classes=NUM_CLASSES) for _ in range(2))
    model.load_state_dict(state[0])
    ema.load_state_dict(state[1])
    return model, ema


def schedule(peak: float, total: int, warmup: int) -> Callable[[int], float]:
    """Linear warmup from peak/100, then cosine to peak/100 (the same shape as mobilevit.train's schedule)."""
    low = peak / 100

    def lr_at(step: int) -> float:
        if step < warmup:
            return low + (peak - low) * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * progress))

    return lr_at


IMPLS: dict[str, tuple[Callable[..., Tracker], Callable[[Any], tuple[nn.Module, nn.Module]]]] = {
    "ours": (run_ours, load_ours),
    "timm": (run_timm, load_timm),
}


def make_plan(args: argparse.Namespace, steps_per_s: float) -> Plan:
    total = max(1, round(args.budget_minutes * 60 * steps_per_s))
    return Plan(
        steps_per_s=steps_per_s,
        total_steps=total,
        warmup_steps=round(0.03 * total),
        ema_momentum=min(1.0, 10 / total),
        snapshot_every=max(1, total // args.curve_points),
    )


# -- report ---------------------------------------------------------------------------------------------------------


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for result, color in zip(results, ["tab:blue", "tab:orange"], strict=False):
        curve = result["curve"]
        minutes = [p["minutes"] for p in curve]
        acc_ax.plot(minutes, [p["top1"] for p in curve], "-o", color=color, label=f"{result['impl']}")
        acc_ax.plot(minutes, [p["top1_ema"] for p in curve], "--", color=color, label=f"{result['impl']} EMA")
        loss = result["loss_curve"]
        loss_ax.plot([p[0] for p in loss], [p[1] for p in loss], color=color, label=result["impl"])
    acc_ax.set(xlabel="training time (min)", ylabel="test top-1 (subset)", title=f"{ARCH} on CIFAR-10, CPU")
    loss_ax.set(xlabel="training time (min)", ylabel="train loss (moving mean)", title="training loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def moving_mean(steps: list[tuple[int, float, float]], points: int = 50) -> list[tuple[float, float]]:
    """(minutes, mean loss) over ``points`` windows of the per-step losses."""
    width = max(1, len(steps) // points)
    out = []
    for i in range(0, len(steps) - width + 1, width):
        window = steps[i : i + width]
        out.append((window[-1][1] / 60, sum(s[2] for s in window) / len(window)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default="ours,timm", help="comma-separated: ours, timm (each gets the budget)")
    parser.add_argument("--budget-minutes", type=float, default=30.0)
    parser.add_argument(
        "--resolution", type=int, default=64, help="a multiple of 64 (2x2 map at MobileViT's last stage)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes (2 cores: keep it small)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last for both implementations")
    parser.add_argument("--calibration-steps", type=int, default=24)
    parser.add_argument("--curve-points", type=int, default=10)
    parser.add_argument("--curve-test-images", type=int, default=2000)
    parser.add_argument("--final-test-images", type=int, help="default: the whole test set (10,000)")
    parser.add_argument("--train-images", type=int, help="a balanced subset of the 50,000 (smoke tests)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "cifar10-jpeg.tar.gz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--png", type=Path)
    args = parser.parse_args()
    impls = [i.strip() for i in args.impl.split(",") if i.strip()]
    if not impls or any(i not in IMPLS for i in impls):
        raise SystemExit(f"--impl: choose from {list(IMPLS)}, got {args.impl!r}")
    if args.resolution % 64:
        raise SystemExit(f"--resolution must be a multiple of 64 for {ARCH}, got {args.resolution}")
    if args.calibration_steps < 4:
        raise SystemExit("--calibration-steps must be at least 4")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("mobilevit.train.checkpoint").setLevel(logging.WARNING)
    logging.getLogger("mobilevit.train.loop").setLevel(logging.WARNING)
    root = args.root = extract_once(args.data, CACHE / "cifar10")

    # the training list: the whole train/ tree, or a balanced subset written as a CSV that both sides read alike
    train_samples = torchvision.datasets.ImageFolder(str(root / "train")).samples
    indices = evenly_spaced(len(train_samples), args.train_images)
    args.num_train = len(indices)
    train_data = root / "train"
    if len(indices) < len(train_samples):
        train_data = write_csv([train_samples[i] for i in indices], root / f"train_subset_{len(indices)}.csv")
    curve_loader = eval_loader(root / "test", args.curve_test_images, args)
    final_loader = eval_loader(root / "test", args.final_test_images, args)

    results = []
    for impl in impls:
        run, load = IMPLS[impl]
        probe = Plan(1.0, 10**6, 0, 0.01, 10**6)  # the calibration's own schedule does not matter
        steps_per_s = run(args, train_data, probe, max_steps=args.calibration_steps).steps_per_s()
        plan = make_plan(args, steps_per_s)
        logging.info(
            "%s: %.3f steps/s measured -> %d steps in %.1f min",
            impl,
            steps_per_s,
            plan.total_steps,
            args.budget_minutes,
        )
        tracker = run(args, train_data, plan)
        train_seconds = tracker.steps[-1][1]
        curve = []
        for step, seconds, snapshot in tracker.snapshots:
            model, ema = load(snapshot)
            point = {"step": step, "minutes": seconds / 60, "images": step * args.batch_size}
            point |= {"top1": evaluate(model, curve_loader), "top1_ema": evaluate(ema, curve_loader)}
            curve.append(point)
            logging.info("%s curve: %s", impl, point)
        model, ema = load(tracker.snapshots[-1][2])
        images = plan.total_steps * args.batch_size
        results.append(
            {
                "impl": impl,
                "img_s": images / train_seconds,  # start-up, checkpoints and all
                "img_s_steady": tracker.steps_per_s() * args.batch_size,  # after the first quarter of the steps
                "images_seen": images,
                "epochs_seen": images / args.num_train,
                "steps": plan.total_steps,
                "budget_min": args.budget_minutes,
                "train_min": train_seconds / 60,
                "test_top1": evaluate(model, final_loader),
                "test_top1_ema": evaluate(ema, final_loader),
                "plan": plan.__dict__,
                "curve": curve,
                "loss_curve": moving_mean(tracker.steps),
            }
        )
        print(json.dumps({k: v for k, v in results[-1].items() if k not in ("curve", "loss_curve")}), flush=True)

    test_images = len(final_loader.dataset)
    setup = (
        f"{ARCH} from scratch on CIFAR-10 ({args.num_train} train images) at {args.resolution}x{args.resolution}, "
        f"batch {args.batch_size}, AdamW lr {args.lr:g} wd {args.weight_decay:g}, budget {args.budget_minutes:g} min "
        f"each; torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
        f"{args.workers} data workers; test top-1 over {test_images} images"
    )
    columns = [
        "impl",
        "img_s",
        "img_s_steady",
        "images_seen",
        "epochs_seen",
        "steps",
        "train_min",
        "test_top1",
        "test_top1_ema",
    ]
    table = markdown_table(results, columns)
    print(f"\n{setup}\n\n{table}")
    if len(results) == 2:
        print(f"\nimages/s ours/timm: {results[0]['img_s'] / results[1]['img_s']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "results": results}, indent=2))
    if args.markdown:
        args.markdown.write_text(f"{setup}\n\n{table}\n")
    if args.png:
        plot(results, args.png)


if __name__ == "__main__":
    main()
