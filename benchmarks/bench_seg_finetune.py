"""Proof that segmentation fine-tuning learns: DeepLabV3 on Apple's MobileOne-S0 ImageNet weights, CPU, fixed budget.

The data has known ground truth and is built here from the shared photos (cached in ``/tmp/mobilevit-bench``):
every hymenoptera photo (``hymenoptera.tar``: 245 train, 153 val; ants and bees) is scaled to 35-70% of a square
background, cut to an ellipse and pasted at a random place onto a photo of ``imagenet-calib-100`` (ImageNet classes
whose index ends in 5: no ant or bee class among them); the mask is the pasted ellipse, **class 1 = ant, 2 = bee**,
0 = background. Train: each train photo twice, on backgrounds 0-79; val: each val photo once, on backgrounds 80-99
(no photo or background in both). Images are ``--size`` square JPEGs, masks palette PNGs, in the ``images/`` +
``masks/`` layout ``mobilevit train`` reads.

Two sides train for the same number of optimizer steps on the same images, batch, crop, augmentation (random
scale 0.5-2.0 of the crop, pad, crop, flip), optimizer, schedule and input normalization, from the same tensors
(``../shared/weights/mobileone_s0_reparam.safetensors``, Apple's folded S0; the backbone trains in that folded form on
both sides):

- ``ours``: ``mobilevit.train.train`` with the ``deeplabv3_mobileone_s0`` recipe (its budget and sizes overridden),
  ``deeplabv3_mobileone_s0`` (ml-cvnets' DeepLabV3 head: ASPP at rates 6/12/18 -> dropout -> 1x1);
- ``plain``: a hand-written torch loop in the style of torchvision's ``references/segmentation``: timm's
  ``mobileone_s0`` (``features_only``, output stride 16, folded with timm's own ``reparameterize_model``) under
  torchvision's ``DeepLabHead`` (ASPP at rates 6/12/18, the rates for output stride 16 -> 3x3 conv -> 1x1), data
  through torchvision's v2 joint transforms. The backbone tensors are converted once by our loader (timm cannot
  read Apple's file); before training, the script checks that timm's backbone gives our backbone's features.

Both final models are then scored by one function here, with torchmetrics' ``MulticlassJaccardIndex`` on the val
composites at their own size (also our runner's own logged val mIoU is reported beside). CPU time is the process'
(``time.process_time``, all threads; data loading runs in the main process on both sides): the plain loop's covers
its training steps, ours the whole ``train`` call (model and data set-up, checkpoints, the final save, and the
runner's per-epoch validation of the model and its EMA, which ``train_cpu_min`` leaves out).

    python benchmarks/bench_seg_finetune.py                        # both sides, 300 steps each
    python benchmarks/bench_seg_finetune.py --sides ours --steps 4  # smoke test
    python benchmarks/bench_seg_finetune.py --sides ours,plain,ours_random --json seg.json
    python benchmarks/bench_seg_finetune.py --sides ours --set model.classifier_init_std=none  # the Kaiming head init
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
import torchmetrics
import torchvision
from PIL import Image, ImageDraw
from timm.utils.model import reparameterize_model as timm_reparameterize
from torch import Tensor, nn
from torchvision import tv_tensors
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.transforms import v2

import mobilevit
from common import CACHE, SHARED_DATA, extract_once
from mobilevit.data.segmentation import voc_palette
from mobilevit.train import apply_overrides, load_recipe, train
from mobilevit.train import loop as train_loop

DEFAULT_WEIGHTS = SHARED_DATA.parent / "weights" / "mobileone_s0_reparam.safetensors"
BACKGROUNDS = SHARED_DATA / "imagenet-calib-100"
CLASSES = ("background", "ant", "bee")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # MobileOne's ImageNet normalization, both sides
TRAIN_BACKGROUNDS = 80  # backgrounds 0-79 for train, the rest for val


# ---------------------------------------------------------------------------------------------------------------------
# data with known ground truth


def _square(photo: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """A random square crop of ``photo`` covering its shorter side, resized to ``size``."""
    side = min(photo.size)
    left, top = rng.integers(0, photo.width - side + 1), rng.integers(0, photo.height - side + 1)
    return photo.crop((int(left), int(top), int(left) + side, int(top) + side)).resize((size, size), Image.BILINEAR)


def composite(insect: Image.Image, background: Image.Image, label: int, size: int, rng: np.random.Generator):
    """``(image, mask)``: ``insect`` scaled to 35-70% of the square background, cut to an ellipse, pasted at a random
    place; the mask holds ``label`` on the ellipse, 0 elsewhere."""
    canvas = _square(background, size, rng)
    scale = rng.uniform(0.35, 0.7) * size / max(insect.size)
    w, h = max(8, round(insect.width * scale)), max(8, round(insect.height * scale))
    patch = insect.resize((w, h), Image.BILINEAR)
    ellipse = Image.new("L", (w, h), 0)
    ImageDraw.Draw(ellipse).ellipse((0, 0, w - 1, h - 1), fill=255)
    x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    canvas.paste(patch, (x, y), ellipse)
    mask = np.zeros((size, size), np.uint8)
    mask[y : y + h, x : x + w][np.asarray(ellipse) > 0] = label
    return canvas, mask


def build_data(size: int, seed: int = 0) -> Path:
    """The composites (cached): ``root/{train,val}/{images,masks}``."""
    root = CACHE / f"seg-composites-{size}-{seed}"
    if (root / "done").is_file():
        return root
    hymenoptera = extract_once(SHARED_DATA / "hymenoptera.tar", CACHE / "hymenoptera") / "hymenoptera_data"
    backgrounds = sorted(p for p in BACKGROUNDS.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    rng = np.random.default_rng(seed)
    palette = voc_palette().tobytes()
    for split, copies, pool in (
        ("train", 2, backgrounds[:TRAIN_BACKGROUNDS]),
        ("val", 1, backgrounds[TRAIN_BACKGROUNDS:]),
    ):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        photos = [
            (p, label)
            for label, kind in ((1, "ants"), (2, "bees"))
            for p in sorted((hymenoptera / split / kind).iterdir())
        ]
        for copy in range(copies):
            for photo, label in photos:
                with Image.open(photo) as insect, Image.open(pool[int(rng.integers(len(pool)))]) as bg:
                    image, mask = composite(insect.convert("RGB"), bg.convert("RGB"), label, size, rng)
                stem = f"{photo.stem}_{copy}"
                image.save(root / split / "images" / f"{stem}.jpg", quality=95)
                png = Image.fromarray(mask, "L").convert("P")
                png.putpalette(palette)
                png.save(root / split / "masks" / f"{stem}.png")
    (root / "done").write_text("ok\n")
    return root


def val_pairs(root: Path) -> list[tuple[Path, Path]]:
    images = sorted((root / "val" / "images").iterdir())
    return [(p, root / "val" / "masks" / f"{p.stem}.png") for p in images]


# ---------------------------------------------------------------------------------------------------------------------
# scoring, the same for both sides


@torch.no_grad()
def score(predict: Callable[[Tensor], Tensor], pairs: list[tuple[Path, Path]]) -> dict:
    """mIoU (torchmetrics, macro over the 3 classes), per-class IoU and pixel accuracy of ``predict`` (a normalized
    ``[1, 3, H, W]`` image -> ``[1, 3, H, W]`` logits at the image's size) on the val composites."""
    jaccard = torchmetrics.classification.MulticlassJaccardIndex(num_classes=len(CLASSES), average="none")
    accuracy = torchmetrics.classification.MulticlassAccuracy(num_classes=len(CLASSES), average="micro")
    normalize = v2.Normalize(MEAN, STD)
    for image_path, mask_path in pairs:
        image = v2.functional.pil_to_tensor(Image.open(image_path).convert("RGB")).float().div(255)
        target = torch.from_numpy(np.asarray(Image.open(mask_path)).astype(np.int64))[None]
        prediction = predict(normalize(image)[None]).argmax(1)
        jaccard.update(prediction, target)
        accuracy.update(prediction, target)
    per_class = jaccard.compute().tolist()
    return {
        "miou": float(np.mean(per_class)),
        "class_iou": dict(zip(CLASSES, per_class, strict=True)),
        "pixel_accuracy": float(accuracy.compute()),
    }


class Clock:
    """Wall and process CPU time (all threads) of a block, and the 1-minute load average at its start and end."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu, self.load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        self.load_end = os.getloadavg()[0]

    def fields(self) -> dict:
        return {
            "wall_min": round(self.wall / 60, 2),
            "cpu_min": round(self.cpu / 60, 2),
            "load_avg_1min": [round(self.load_start, 2), round(self.load_end, 2)],
        }


# ---------------------------------------------------------------------------------------------------------------------
# our side: the library's runner and recipe


def our_config(args: argparse.Namespace, data: Path, out: Path, pretrained: bool):
    overrides = [
        f"data.train={data / 'train'}",
        f"data.val={data / 'val'}",
        "data.num_workers=0",
        f"data.val_crop={args.size}",  # the val composites are already square: scored at their own size
        f"sampler.base_size={args.crop}",
        f"sampler.batch_size={args.batch_size}",
        f"max_iters={args.steps}",
        "accumulation_steps=1",  # the VOC recipe accumulates 2 batches per step; one batch per step, as the plain loop
        "segmentation.scale_range=[0.5,2.0]",
        "amp=false",
        "epochs=1000",  # max_iters ends the run
        f"optimizer.lr={args.lr}",
        f"optimizer.weight_decay={args.weight_decay}",
        f"schedule.warmup_iters={args.warmup}",
        f"schedule.warmup_init_lr={args.lr / 100}",
        f"schedule.min_lr={args.min_lr}",
        "log_every=1",
        "checkpoint_every=100000",
        f"seed={args.seed}",
        f"output_dir={out}",
        "model.num_classes=3",
        f"model.pretrained={args.weights if pretrained else 'none'}",
        *args.set,
    ]
    return apply_overrides(load_recipe("deeplabv3_mobileone_s0"), overrides)


@contextlib.contextmanager
def validation_cpu_seconds() -> Iterator[list[float]]:
    """The process CPU seconds of each of the runner's per-epoch validations (the model's and its EMA's), so that the
    training time can be told apart: the runner's validation method is wrapped for the duration."""
    seconds: list[float] = []
    original = train_loop._Trainer.validate

    def timed(self: Any) -> dict:
        start = time.process_time()
        try:
            return original(self)
        finally:
            seconds.append(time.process_time() - start)

    train_loop._Trainer.validate = timed
    try:
        yield seconds
    finally:
        train_loop._Trainer.validate = original


def run_ours(args: argparse.Namespace, data: Path, out: Path, pretrained: bool = True) -> dict:
    cfg = our_config(args, data, out, pretrained)
    torch.manual_seed(args.seed)
    with validation_cpu_seconds() as validation, Clock() as clock:
        result = train(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    model = mobilevit.create_model(out / "final").eval()

    def predict(x: Tensor) -> Tensor:
        return model.upsample_logits(model(x), x.shape[-2:])

    steps = [r for r in records if r["event"] == "step"]
    return {
        **score(predict, val_pairs(data)),
        **clock.fields(),
        "validation_cpu_min": round(sum(validation) / 60, 2),
        "train_cpu_min": round((clock.cpu - sum(validation)) / 60, 2),  # cpu_min without the per-epoch validation
        "steps": result.step,
        "first_loss": float(np.mean([r["loss"] for r in steps[:10]])),  # mean of the first / last 10 steps
        "last_loss": float(np.mean([r["loss"] for r in steps[-10:]])),
        "runner_val_miou": [round(r["val_miou"], 4) for r in epochs],
        "runner_val_miou_ema": [round(r["val_miou_ema"], 4) for r in epochs if r.get("val_miou_ema") is not None],
    }


# ---------------------------------------------------------------------------------------------------------------------
# the plain side: timm backbone, torchvision head and transforms, a hand-written loop


class PlainPairs(torch.utils.data.Dataset):
    """``images/`` + ``masks/`` read with PIL, augmented with torchvision v2 joint transforms."""

    def __init__(self, root: Path, transform: v2.Transform) -> None:
        self.images = sorted((root / "images").iterdir())
        self.root, self.transform = root, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image = tv_tensors.Image(v2.functional.pil_to_tensor(Image.open(self.images[i]).convert("RGB")))
        mask = tv_tensors.Mask(
            torch.from_numpy(np.array(Image.open(self.root / "masks" / f"{self.images[i].stem}.png")))
        )
        image, mask = self.transform(image, mask)
        return image, mask.long()


class TimmDeepLab(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = DeepLabHead(backbone.feature_info.channels()[-1], num_classes, atrous_rates=(6, 12, 18))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.backbone(x)[-1])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def timm_backbone(weights: Path) -> nn.Module:
    """timm's S0 at output stride 16, folded, holding the tensors of ``weights`` (checked against our backbone)."""
    backbone = timm_reparameterize(
        timm.create_model("mobileone_s0", features_only=True, output_stride=16, out_indices=(4,))
    )
    ours = mobilevit.create_model("mobileone_s0", pretrained=weights).state_dict()
    tensors = {k.replace("stages.", "stages_", 1): v for k, v in ours.items() if not k.startswith("head.")}
    backbone.load_state_dict(tensors, strict=True)
    reference = mobilevit.create_model("deeplabv3_mobileone_s0", pretrained=weights, num_classes=3).backbone.eval()
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        diff = (backbone.eval()(x)[-1] - reference(x)[-1]).abs().max().item()
    logging.info("timm backbone vs ours, same input: largest feature difference %.2e", diff)
    if diff > 1e-3:
        raise SystemExit(f"timm's backbone does not reproduce ours ({diff}): not the same weights")
    return backbone


def lr_at(step: int, args: argparse.Namespace, total: int) -> float:
    """Linear warmup from lr/100, then cosine to ``args.min_lr`` (the recipe's shape)."""
    if step < args.warmup:
        return args.lr / 100 + (args.lr - args.lr / 100) * step / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, total - args.warmup))
    return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def run_plain(args: argparse.Namespace, data: Path) -> dict:
    torch.manual_seed(args.seed)
    model = TimmDeepLab(timm_backbone(args.weights), len(CLASSES))
    crop = args.crop
    transform = v2.Compose(
        [
            v2.RandomResize(round(0.5 * crop), round(2.0 * crop) + 1),
            v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}),
            v2.RandomHorizontalFlip(),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    loader = torch.utils.data.DataLoader(
        PlainPairs(data / "train", transform), batch_size=args.batch_size, shuffle=True, drop_last=True
    )
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    losses, step = [], 0
    with Clock() as clock:
        model.train()
        while step < args.steps:
            for images, masks in loader:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, args, args.steps)
                loss = F.cross_entropy(model(images), masks, ignore_index=255)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                step += 1
                if step >= args.steps:
                    break
    model.eval()
    return {
        **score(model, val_pairs(data)),
        **clock.fields(),
        "steps": step,
        "first_loss": float(np.mean(losses[:10])),
        "last_loss": float(np.mean(losses[-10:])),
    }


# ---------------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", default="ours,plain", help="comma-separated: ours, plain, ours_random")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of every side")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=160, help="side of the composites")
    parser.add_argument("--crop", type=int, default=128, help="training crop")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--min-lr", type=float, default=1e-6)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup", type=int, default=10, help="warmup steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override for our sides (repeatable)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.weights.is_file():
        raise SystemExit(f"{args.weights}: Apple's MobileOne-S0 weights are needed (../shared/weights)")
    torch.set_num_threads(args.threads)
    data = build_data(args.size, args.seed)
    setup = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
        "versions": f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
        f"torchmetrics {torchmetrics.__version__}",
        "data": f"{len(list((data / 'train' / 'images').iterdir()))} train / {len(val_pairs(data))} val composites, "
        f"{args.size} px; classes {list(CLASSES)}",
        **{k: v for k, v in vars(args).items() if k not in ("json", "weights")},
        "weights": args.weights.name,
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sides.split(","):
            logging.info("--- %s", side)
            if side == "plain":
                results[side] = run_plain(args, data)
            elif side in ("ours", "ours_random"):
                results[side] = run_ours(args, data, Path(tmp) / side, pretrained=side == "ours")
            else:
                raise SystemExit(f"unknown side {side!r}")
            logging.info("%s: %s", side, json.dumps(results[side]))
    report = {"setup": setup, "results": results}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
