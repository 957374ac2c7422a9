"""End-to-end classification throughput (decode + preprocess + model): ``mobilevit eval``'s path vs timm's.

Both sides get the same files, the same batch size and the same torch threads. Ours is the Predictor that
``mobilevit eval`` runs (threaded decode ahead of the folded model); timm's is its own best practice: its eval
transform, a ``DataLoader`` with worker processes, and ``timm.utils.reparameterize_model``. Weights are random (speed
does not depend on them); runs alternate, and the median of ``--rounds`` passes over the images is reported.

    python benchmarks/bench_eval.py                       # mobileone_s0, mobilevit_xxs, fastvit_t8 over 100 photos
    python benchmarks/bench_eval.py mobilevitv2_050 --images path/to/folder --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.utils import reparameterize_model as timm_reparameterize

from common import setup_line
from mobilevit.bench.report import markdown_table
from mobilevit.data.images import find_images
from mobilevit.predict import Predictor
from mobilevit.weights.entries import get_weights

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples-100"


class _Files(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], transform: object) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(Image.open(self.files[i]).convert("RGB"))


def timm_pass(model: torch.nn.Module, loader: torch.utils.data.DataLoader) -> int:
    n = 0
    with torch.inference_mode():
        for batch in loader:
            model(batch).softmax(-1).topk(5)
            n += len(batch)
    return n


def ours_pass(predictor: Predictor, files: list[Path]) -> int:
    return sum(1 for _ in predictor.predict_files(files, top_k=5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["mobileone_s0", "mobilevit_xxs", "fastvit_t8"])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="timm DataLoader processes / our decode threads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    files = find_images([args.images])
    if not files:
        raise SystemExit(f"no images under {args.images}")

    rows = []
    for name in args.models:
        entry = get_weights(name)
        ours = Predictor.from_pretrained(name, pretrained=False, batch_size=args.batch_size, workers=args.workers)
        ref = timm_reparameterize(timm.create_model(name)).eval()
        cfg = resolve_data_config({}, model=timm.create_model(name))
        loader = torch.utils.data.DataLoader(
            _Files(files, create_transform(**cfg)),
            batch_size=args.batch_size,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
        )
        timm_pass(ref, loader)  # warm up both (worker start-up, first-call allocations)
        ours_pass(ours, files[: args.batch_size])
        times: dict[str, list[float]] = {"ours": [], "timm": []}
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            ours_pass(ours, files)
            times["ours"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            timm_pass(ref, loader)
            times["timm"].append(time.perf_counter() - t0)
        row = {"model": name, "weights_preprocess": entry.name, "images": len(files), "batch": args.batch_size}
        row["ours_img_s"] = len(files) / statistics.median(times["ours"])
        row["timm_img_s"] = len(files) / statistics.median(times["timm"])
        row["ours/timm"] = row["ours_img_s"] / row["timm_img_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    header = setup_line(0, args.rounds).replace("0x0", "eval transform size")
    print(f"\n{header}; timm DataLoader workers = our decode threads = {args.workers}\n\n{markdown_table(rows)}")
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
