"""Ours vs timm on the same weights: fp32 CPU latency of every MobileViT v1/v2 variant, interleaved in one process.

For each variant, timm's model is built with random weights (and randomized BatchNorm statistics), its state dict is
converted and loaded into ours, the logits are checked to agree, and then both are timed round-robin. The ratio is
ours / timm (below 1.0: ours is faster). MobileViT v3 has no timm counterpart; its own latency is reported alone.

    python benchmarks/bench_mobilevit.py                      # every variant, batch 1 and 8
    python benchmarks/bench_mobilevit.py mobilevit_xxs --batch-sizes 1 --rounds 30 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import timm
import torch

import mobilevit
from mobilevit.bench import compare_latency
from mobilevit.bench.report import markdown_table


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics so that the comparison exercises them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            C = m.num_features
            m.weight.data = 1 + 0.1 * torch.randn(C, generator=g)
            m.bias.data = 0.1 * torch.randn(C, generator=g)
            m.running_mean = 0.1 * torch.randn(C, generator=g)
            m.running_var = 0.5 + torch.rand(C, generator=g)


def pair(name: str, workdir: Path) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(ours, timm) with the same weights; timm is None where it has no such variant."""
    if name not in timm.list_models():
        return mobilevit.create_model(name).eval(), None
    torch.manual_seed(0)
    ref = timm.create_model(name).eval()
    randomize_batchnorm(ref)
    path = workdir / f"{name}.pth"
    torch.save(ref.state_dict(), path)
    return mobilevit.create_model(name, pretrained=path).eval(), ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="default: every mobilevit* architecture")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed calls per implementation")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models or mobilevit.list_models("mobilevit*")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for name in names:
            ours, ref = pair(name, Path(tmp))
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

    header = (
        f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, fp32, {args.resolution}x{args.resolution}, "
        f"median of {args.rounds} interleaved runs"
    )
    print(f"\n{header}\n")
    print(markdown_table(rows, ["model", "batch", "ours_ms", "timm_ms", "ours/timm", "max_abs_diff"]))
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
