"""FastViT and MobileOne: train-time vs re-parameterized, ours vs timm's re-parameterized model, same weights.

timm's model gets random weights with randomized BatchNorm statistics and layer scales; the same state dict is loaded
into ours; both are folded (ours by ``mobilevit.reparameterize_model``, timm's by ``timm.utils.reparameterize_model``),
the folded logits are checked to agree, and the four forms are timed round-robin in one process.

    python benchmarks/bench_reparam.py                       # every fastvit / mobileone variant, batch 1 and 8
    python benchmarks/bench_reparam.py mobileone_s0 --batch-sizes 1 --rounds 30
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from timm.utils import reparameterize_model as timm_reparameterize

import mobilevit
from common import max_rel_diff, same_weights, setup_line
from mobilevit.bench import compare_latency
from mobilevit.bench.report import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="default: every fastvit* and mobileone* architecture")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models or mobilevit.list_models("fastvit*") + mobilevit.list_models("mobileone*")

    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for name in names:
            ours, ref = same_weights(name, Path(tmp))
            ours_rep, ref_rep = mobilevit.reparameterize_model(ours), timm_reparameterize(ref)
            for batch in [int(b) for b in args.batch_sizes.split(",")]:
                x = torch.randn(batch, 3, args.resolution, args.resolution)
                stats = compare_latency(
                    {
                        "ours": lambda m=ours, x=x: m(x),
                        "ours_rep": lambda m=ours_rep, x=x: m(x),
                        "timm_rep": lambda m=ref_rep, x=x: m(x),
                    },
                    rounds=args.rounds,
                )
                row = {"model": name, "batch": batch}
                row |= {f"{k}_ms": v["median_ms"] for k, v in stats.items()}
                row["ours_rep/timm_rep"] = row["ours_rep_ms"] / row["timm_rep_ms"]
                row["rel_diff"] = max_rel_diff(ours_rep(x), ref_rep(x))
                rows.append(row)
                print(json.dumps(row), flush=True)

    header = setup_line(args.resolution, args.rounds)
    print(f"\n{header}\n\n{markdown_table(rows)}")
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
