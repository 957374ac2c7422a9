"""Ours vs timm on the same weights: fp32 CPU latency of every MobileViT v1/v2 variant, interleaved in one process.

For each variant, timm's model is built with random weights (and randomized BatchNorm statistics), its state dict is
converted and loaded into ours, the logits are checked to agree, and then both are timed round-robin. The ratio is
ours / timm (below 1.0: ours is faster). MobileViT v3 has no timm counterpart; its own latency is reported alone.

    python benchmarks/bench_mobilevit.py                      # every variant, batch 1 and 8
    python benchmarks/bench_mobilevit.py mobilevit_xxs --batch-sizes 1 --rounds 30 --json out.json
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

import mobilevit
from common import same_weights, setup_line, timing_args
from mobilevit.bench import compare_latency
from mobilevit.bench.report import markdown_table


def main() -> None:
    args = timing_args(__doc__, "default: every mobilevit* architecture", "1,8", 256)
    names = args.models or mobilevit.list_models("mobilevit*")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for name in names:
            ours, ref = same_weights(name, Path(tmp))
            for batch in batch_sizes:
                x = torch.randn(batch, 3, args.resolution, args.resolution)
                fns = {"ours": lambda o=ours, x=x: o(x)}
                row: dict = {"model": name, "batch": batch}
                if ref is not None:
                    row["max_abs_diff"] = f"{(ours(x) - ref(x)).abs().max().item():.1e}"
                    fns["timm"] = lambda r=ref, x=x: r(x)
                stats = compare_latency(fns, rounds=args.rounds)
                row["ours_ms"] = stats["ours"]["median_ms"]
                if ref is not None:
                    row["timm_ms"] = stats["timm"]["median_ms"]
                    row["ours/timm"] = row["ours_ms"] / row["timm_ms"]
                rows.append(row)
                print(json.dumps(row), flush=True)

    header = setup_line(args.resolution, args.rounds)
    print(f"\n{header}\n")
    print(markdown_table(rows, ["model", "batch", "ours_ms", "timm_ms", "ours/timm", "max_abs_diff"]))
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
