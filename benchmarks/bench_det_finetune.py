"""Proof that detection fine-tuning learns: SSDLite on Apple's MobileOne-S0 ImageNet weights, CPU, fixed budget, beside
torchvision's ``ssdlite320_mobilenet_v3_large``.

The data has known boxes and is built here from the shared photos (cached in ``/tmp/mobilevit-bench``): objects of
four categories are pasted, as whole rectangles, at random places and scales onto ``imagenet-calib-100`` photos
(ImageNet classes whose index ends in 5: none of the four among them), 1-3 objects per image, each overlapping the
others by at most IoU 0.1; the box is the pasted rectangle. **ant** and **bee**: the hymenoptera photos (scaled to
25-60% of the canvas on their longer side; ant vs bee is told apart only by the insect's look); **automobile** and
**cat**: CIFAR-10 photos (32x32, upscaled to 20-40% of the canvas). Train: 400 composites from hymenoptera's and
CIFAR-10's train splits on backgrounds 0-79; val: 100 from their val / test splits on backgrounds 80-99 (no photo
or background in both). ``--size`` square JPEGs in COCO format: ``{train,val}/images/`` + ``instances.json``.

Sides, each the same number of optimizer steps on the same images, batch, input size, augmentation (SSD's random
IoU crop, photometric distortion, flip, resize), optimizer (AdamW, no decay on norms and biases) and schedule (linear
warmup, cosine):

- ``ours``: ``mobilevit.train.train`` (what ``mobilevit train`` runs) with the ``ssdlite_mobileone_s0`` recipe (its
  budget, sizes, optimizer and schedule overridden as above), the backbone from
  ``../shared/weights/mobileone_s0_reparam.safetensors`` (Apple's folded S0) and frozen (``model.freeze_backbone``),
  a new head (the extra levels, the heads and the class predictors) trained;
- ``ours_full`` (not run by default): the same with the backbone trained too. Apple's file is the folded form, with
  no BatchNorm left in the backbone; trained with AdamW at 1e-4 to 1e-3 here, its features became nearly the same
  for every image within 50-100 steps (the detector then predicts the same boxes everywhere, val AP ~0);
  ``--set optimizer.backbone_lr_scale=0.01`` keeps its features (the backbone at 1/100 of the head's rate);
- ``ours_random``: a random backbone (train-time form, with BatchNorms), everything trained;
- ``torchvision``: a plain loop as torchvision's ``references/detection`` writes it over
  ``ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)``: random backbone and head
  (its ImageNet backbone is not available offline), its own loss (SSD matching, 3:1 hard negatives), torchvision v2
  transforms. So ``ours_random`` and ``torchvision`` have the same kind of start (random, everything trained); ``ours``
  shows what the ImageNet backbone adds.

Every model is scored on the val composites by the same evaluator, pycocotools through ``mobilevit eval --task
detection``: ours with ``--model ssdlite_mobileone_s0 --pretrained <its final/ folder>``, torchvision's detections
written as a COCO results file and scored with ``--results``. ``untrained``: each side's model before its first step
(the new head on the ImageNet backbone for ours), scored the same way. CPU time is the process' (all threads);
ours covers the whole ``train`` call (set-up, checkpoints, the runner's per-epoch validation of model and EMA).

    python benchmarks/bench_det_finetune.py                                    # ours, ours_random, torchvision
    python benchmarks/bench_det_finetune.py --sides ours --steps 4 --threads 1  # smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import Tensor, nn
from torchvision import tv_tensors
from torchvision.models.detection import ssdlite320_mobilenet_v3_large
from torchvision.ops import box_iou
from torchvision.transforms import v2

import mobilevit
from common import CACHE, SHARED_DATA, extract_once
from mobilevit.train import apply_overrides, load_recipe, train
from mobilevit.train.config import TrainConfig
from mobilevit.weights import save_pretrained

DEFAULT_WEIGHTS = SHARED_DATA.parent / "weights" / "mobileone_s0_reparam.safetensors"
BACKGROUNDS = SHARED_DATA / "imagenet-calib-100"
TRAIN_BACKGROUNDS = 80  # backgrounds 0-79 for train, the rest for val
CATEGORIES = ("ant", "bee", "automobile", "cat")  # category ids 1..4, the model's labels 1..4 (0: background)
CIFAR_PER_SPLIT = {"train": 150, "val": 60}  # CIFAR-10 photos of each class taken from its train / test split
COMPOSITES = {"train": 400, "val": 100}
ARCH = "ssdlite_mobileone_s0"
# our sides: (the backbone from Apple's ImageNet weights, the backbone frozen)
OUR_SIDES = {"ours": (True, True), "ours_full": (True, False), "ours_random": (False, False)}


# ---------------------------------------------------------------------------------------------------------------------
# data with known boxes


def cifar_photos(split: str) -> dict[str, list[Path]]:
    """The first ``CIFAR_PER_SPLIT[split]`` CIFAR-10 photos of automobile and cat (train split, or test for val),
    extracted once."""
    folder = "train" if split == "train" else "test"
    dest = CACHE / "cifar10-det"
    done = dest / f".{split}"
    if not done.is_file():
        archive = SHARED_DATA / "cifar10-jpeg.tar.gz"
        if not archive.is_file():
            raise SystemExit(f"{archive} not found: the benchmark needs the shared test data at ../shared")
        with tarfile.open(archive) as tar:
            members = [
                m for m in tar if m.isfile() and m.name.split("/")[:2] in ([folder, "automobile"], [folder, "cat"])
            ]
            members.sort(key=lambda m: m.name)
            counts: dict[str, int] = {}
            keep = []
            for m in members:
                kind = m.name.split("/")[1]
                if counts.get(kind, 0) < CIFAR_PER_SPLIT[split]:
                    counts[kind] = counts.get(kind, 0) + 1
                    keep.append(m)
            tar.extractall(dest, members=keep, filter="data")
        done.write_text("ok\n")
    return {kind: sorted((dest / folder / kind).iterdir())[: CIFAR_PER_SPLIT[split]] for kind in ("automobile", "cat")}


def object_photos(split: str) -> dict[str, list[Path]]:
    """Per category, the photos its objects are cut from."""
    hymenoptera = extract_once(SHARED_DATA / "hymenoptera.tar", CACHE / "hymenoptera") / "hymenoptera_data" / split
    return {
        "ant": sorted((hymenoptera / "ants").iterdir()),
        "bee": sorted((hymenoptera / "bees").iterdir()),
        **cifar_photos(split),
    }


def _overlap(box: tuple[int, int, int, int], boxes: list[tuple[int, tuple[int, int, int, int]]]) -> float:
    """The largest IoU of ``(x, y, w, h)`` ``box`` with ``boxes`` (0 without any)."""
    if not boxes:
        return 0.0
    corners = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in [box, *(b for _, b in boxes)]], dtype=torch.float64)
    return box_iou(corners[:1], corners[1:]).max().item()


def composite(background: Image.Image, objects: list[tuple[int, Image.Image]], size: int, rng: np.random.Generator):
    """``(image, [(category id, (x, y, w, h))])``: a random square crop of ``background`` at ``size``, each object
    scaled (insects to 25-60% of the side on their longer side, CIFAR photos to 20-40%) and pasted where it overlaps
    the earlier ones by IoU 0.1 at most (an object that finds no such place in 50 draws is left out)."""
    side = min(background.size)
    left = int(rng.integers(0, background.width - side + 1))
    top = int(rng.integers(0, background.height - side + 1))
    canvas = background.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    boxes: list[tuple[int, tuple[int, int, int, int]]] = []
    for category, photo in objects:
        low, high = (0.25, 0.6) if CATEGORIES[category - 1] in ("ant", "bee") else (0.2, 0.4)
        scale = rng.uniform(low, high) * size / max(photo.size)
        w, h = max(8, round(photo.width * scale)), max(8, round(photo.height * scale))
        for _ in range(50):
            box = (int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1)), w, h)
            if _overlap(box, boxes) <= 0.1:
                canvas.paste(photo.resize((w, h), Image.BILINEAR), box[:2])
                boxes.append((category, box))
                break
    return canvas, boxes


def build_split(root: Path, split: str, size: int, rng: np.random.Generator) -> None:
    """``root/split/images/*.jpg`` and ``root/split/instances.json``."""
    photos = object_photos(split)
    backgrounds = sorted(p for p in BACKGROUNDS.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    pool = backgrounds[:TRAIN_BACKGROUNDS] if split == "train" else backgrounds[TRAIN_BACKGROUNDS:]
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(COMPOSITES[split]):
        objects = []
        for _ in range(int(rng.integers(1, 4))):
            category = int(rng.integers(1, len(CATEGORIES) + 1))
            files = photos[CATEGORIES[category - 1]]
            with Image.open(files[int(rng.integers(len(files)))]) as photo:
                objects.append((category, photo.convert("RGB")))
        with Image.open(pool[int(rng.integers(len(pool)))]) as bg:
            image, boxes = composite(bg.convert("RGB"), objects, size, rng)
        name = f"{split}_{i:04d}.jpg"
        image.save(root / split / "images" / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for category, (x, y, w, h) in boxes:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": category, "bbox": [x, y, w, h],
                 "area": w * h, "iscrowd": 0}
            )  # fmt: skip
    categories = [{"id": k, "name": name} for k, name in enumerate(CATEGORIES, start=1)]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / split / "instances.json").write_text(json.dumps(data))


def build_data(size: int, seed: int = 0) -> Path:
    """The composites (cached): ``root/{train,val}/{images/, instances.json}``."""
    root = CACHE / f"det-composites-{size}-{seed}"
    if (root / "done").is_file():
        return root
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        build_split(root, split, size, rng)
    (root / "done").write_text("ok\n")
    return root


# ---------------------------------------------------------------------------------------------------------------------
# scoring: pycocotools through `mobilevit eval --task detection`, the same for every side


def coco_eval(data: Path, *args: str, threads: int) -> dict:
    """``mobilevit eval DATA --task detection --json ARGS`` in a subprocess: its JSON answer."""
    command = [sys.executable, "-m", "mobilevit.cli", "eval", str(data), "--task", "detection", "--json"]
    command += ["--no-progress", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def score_ours(folder: Path, data: Path, threads: int) -> dict:
    return coco_eval(
        data / "val", "--model", ARCH, "--pretrained", str(folder), "--threads", str(threads), threads=threads
    )


def score_results(results: list[dict], data: Path, workdir: Path, threads: int) -> dict:
    path = workdir / "results.json"
    path.write_text(json.dumps(results))
    return coco_eval(data / "val", "--results", str(path), threads=threads)


METRICS = ("AP", "AP50", "AP75", "AR100")


def brief(scores: dict) -> dict:
    return {key: round(scores[key], 4) for key in METRICS}


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
# our side: the library's runner


def our_config(args: argparse.Namespace, data: Path, out: Path, pretrained: bool, freeze: bool) -> TrainConfig:
    overrides = [
        f"model.name={ARCH}",
        f"model.freeze_backbone={str(freeze).lower()}",
        f"model.num_classes={len(CATEGORIES) + 1}",
        f"model.pretrained={args.weights if pretrained else 'none'}",
        f"data.train={data / 'train'}",
        f"data.val={data / 'val'}",
        "data.num_workers=0",
        f"data.val_crop={args.size}",
        "sampler.kind=fixed",
        f"sampler.base_size={args.size}",
        f"sampler.batch_size={args.batch_size}",
        f"max_iters={args.steps}",
        "epochs=1000",  # max_iters ends the run
        "accumulation_steps=1",
        "amp=false",
        "optimizer.name=adamw",
        f"optimizer.lr={args.lr}",
        f"optimizer.weight_decay={args.weight_decay}",
        "optimizer.no_decay_norm_bias=true",
        "schedule.name=cosine",
        f"schedule.warmup_iters={args.warmup}",
        "schedule.warmup_epochs=0",
        f"schedule.warmup_init_lr={args.lr / 100}",
        f"schedule.min_lr={args.min_lr}",
        "augment.hflip=0.5",
        "augment.randaugment=false",
        "augment.mixup_alpha=0",
        "augment.cutmix_alpha=0",
        "augment.random_erase=0",
        "detection.iou_crop=true",
        "detection.photometric=0.5",
        "ema.enabled=true",
        "ema.warmup=true",
        "log_every=1",
        "checkpoint_every=100000",
        f"seed={args.seed}",
        f"output_dir={out}",
        *args.set,
    ]
    return apply_overrides(load_recipe(ARCH), overrides)


def untrained_ours(args: argparse.Namespace, out: Path, pretrained: bool) -> Path:
    """The model ``ours`` starts from (the backbone's weights, a new head), saved for ``eval``."""
    torch.manual_seed(args.seed)
    weights = args.weights if pretrained else False
    model = mobilevit.create_model(ARCH, pretrained=weights, num_classes=len(CATEGORIES) + 1, allow_random_head=True)
    folded = mobilevit.reparameterize_model(model.eval())  # one layout per checkpoint, as the runner saves `final/`
    return save_pretrained(folded, out, labels=["background", *CATEGORIES])


def run_ours(args: argparse.Namespace, data: Path, out: Path, pretrained: bool, freeze: bool) -> dict:
    untrained = score_ours(untrained_ours(args, out / "untrained", pretrained), data, args.threads)
    cfg = our_config(args, data, out / "run", pretrained, freeze)
    torch.manual_seed(args.seed)
    with Clock() as clock:
        result = train(cfg)
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "step"]
    epochs = [r for r in records if r["event"] == "epoch"]
    return {
        "untrained": brief(untrained),
        "trained": brief(score_ours(out / "run" / "final", data, args.threads)),
        **clock.fields(),
        "steps": result.step,
        "first_loss": float(np.mean([r["loss"] for r in steps[:10]])),  # mean of the first / last 10 steps
        "last_loss": float(np.mean([r["loss"] for r in steps[-10:]])),
        "runner_val_AP": [round(r["val_AP"], 4) for r in epochs if r.get("val_AP") is not None],
        "runner_val_AP_ema": [round(r["val_AP_ema"], 4) for r in epochs if r.get("val_AP_ema") is not None],
    }


# ---------------------------------------------------------------------------------------------------------------------
# torchvision's side: its SSDLite and loss, a hand-written loop


class CocoBoxes(torch.utils.data.Dataset):
    """``(image [3, H, W] float in [0, 1], {"boxes" xyxy pixels, "labels"})`` of a composites split, transformed."""

    def __init__(self, root: Path, transform: v2.Transform | None = None) -> None:
        data = json.loads((root / "instances.json").read_text())
        self.root, self.transform, self.images = root, transform, data["images"]
        self.boxes: dict[int, list] = {image["id"]: [] for image in self.images}
        for a in data["annotations"]:
            self.boxes[a["image_id"]].append(a)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, dict]:
        info = self.images[i]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(Image.open(self.root / "images" / info["file_name"])))
        xywh = torch.tensor([a["bbox"] for a in self.boxes[info["id"]]], dtype=torch.float32).reshape(-1, 4)
        boxes = tv_tensors.BoundingBoxes(
            torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), format="XYXY", canvas_size=image.shape[-2:]
        )
        labels = torch.tensor([a["category_id"] for a in self.boxes[info["id"]]], dtype=torch.int64)
        target = {"boxes": boxes, "labels": labels, "image_id": info["id"]}
        return self.transform(image, target) if self.transform else (image, target)


def lr_at(step: int, args: argparse.Namespace, total: int) -> float:
    """Linear warmup from lr/100, then cosine to ``args.min_lr`` (the recipe's shape)."""
    if step < args.warmup:
        return args.lr / 100 + (args.lr - args.lr / 100) * step / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, total - args.warmup))
    return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def torchvision_model(size: int) -> nn.Module:
    """torchvision's SSDLite, random backbone and head, for the four categories, at ``size`` x ``size``."""
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=len(CATEGORIES) + 1)
    model.transform.min_size, model.transform.max_size, model.transform.fixed_size = (size,), size, (size, size)
    return model


@torch.no_grad()
def torchvision_results(model: nn.Module, data: Path) -> list[dict]:
    """COCO results rows of ``model``'s detections (its own post-processing) on the val composites."""
    model.eval()
    rows = []
    val = CocoBoxes(data / "val")
    for i in range(len(val)):
        image, target = val[i]
        found = model([image.float() / 255])[0]
        xywh = torch.cat([found["boxes"][:, :2], found["boxes"][:, 2:] - found["boxes"][:, :2]], 1)
        for box, label, score in zip(xywh.tolist(), found["labels"].tolist(), found["scores"].tolist(), strict=True):
            rows.append({"image_id": target["image_id"], "category_id": label, "bbox": box, "score": score})
    return rows


def run_torchvision(args: argparse.Namespace, data: Path, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = torchvision_model(args.size)
    untrained = score_results(torchvision_results(model, data), data, workdir, args.threads)
    transform = v2.Compose(
        [
            v2.RandomIoUCrop(),
            v2.RandomPhotometricDistort(p=0.5),
            v2.RandomHorizontalFlip(),
            v2.Resize((args.size, args.size)),
            v2.SanitizeBoundingBoxes(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    loader = torch.utils.data.DataLoader(
        CocoBoxes(data / "train", transform),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=lambda batch: tuple(zip(*batch, strict=True)),
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
            for images, targets in loader:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, args, args.steps)
                loss = sum(model(list(images), [{k: t[k] for k in ("boxes", "labels")} for t in targets]).values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                step += 1
                if step >= args.steps:
                    break
    return {
        "untrained": brief(untrained),
        "trained": brief(score_results(torchvision_results(model, data), data, workdir, args.threads)),
        **clock.fields(),
        "steps": step,
        "first_loss": float(np.mean(losses[:10])),
        "last_loss": float(np.mean(losses[-10:])),
    }


# ---------------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sides", default="ours,ours_random,torchvision", help="comma-separated: %(default)s, ours_full"
    )
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of every side")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=320, help="side of the composites and of the model's input")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--min-lr", type=float, default=1e-6)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup", type=int, default=20, help="warmup steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a training override for ours")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.weights.is_file():
        raise SystemExit(f"{args.weights}: Apple's MobileOne-S0 weights are needed (../shared/weights)")
    torch.set_num_threads(args.threads)
    data = build_data(args.size, args.seed)
    count = {s: json.loads((data / s / "instances.json").read_text()) for s in ("train", "val")}
    setup = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
        "versions": f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"mobilevit {mobilevit.__version__}",
        "data": ", ".join(
            f"{s}: {len(c['images'])} composites, {len(c['annotations'])} boxes" for s, c in count.items()
        )
        + f"; {args.size} px; categories {list(CATEGORIES)}",
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("json", "weights")},
        "weights": args.weights.name,
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        for side in args.sides.split(","):
            logging.info("--- %s", side)
            if side == "torchvision":
                results[side] = run_torchvision(args, data, workdir / side)
            elif side in OUR_SIDES:
                results[side] = run_ours(args, data, workdir / side, *OUR_SIDES[side])
            else:
                raise SystemExit(f"unknown side {side!r}")
            logging.info("%s: %s", side, json.dumps(results[side]))
    report = {"setup": setup, "results": results}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
