"""The two token-mixer claims of the papers, measured on this CPU with our modules.

(a) MobileViT v2 (arXiv 2206.02680, Fig. 1): multi-head self-attention costs O(k^2) in the number of tokens k,
    separable self-attention O(k). Module latency of ``MultiHeadAttention`` (v1/v3) vs ``SeparableSelfAttention``
    (v2) at width 256, batch 1, as k grows.
(b) FastViT (arXiv 2303.14189, Fig. 3): RepMixer, re-parameterized into one depthwise convolution, is faster than the
    pooling token mixer (PoolFormer's ``avgpool(x) - x``) it replaces, increasingly so at high resolution. Module
    latency on FastViT's first-stage feature map (64 channels, input/4) for inputs from 224 to 1024.

    python benchmarks/bench_token_mixers.py --out docs/figures     # writes two PNG charts and prints the tables
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mobilevit.bench import compare_latency
from mobilevit.bench.report import markdown_table
from mobilevit.layers.attention import MultiHeadAttention, SeparableSelfAttention
from mobilevit.models.fastvit import RepMixer


class PoolMixer(nn.Module):
    """PoolFormer's token mixer: ``avgpool3x3(x) - x`` (the input is added back by the block's skip)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False) - x


def attention_rows(dim: int, tokens: list[int], rounds: int) -> list[dict]:
    mha, sep = MultiHeadAttention(dim, num_heads=4).eval(), SeparableSelfAttention(dim).eval()
    rows = []
    for k in tokens:
        x = torch.randn(1, k, dim)
        stats = compare_latency(
            {"mha": lambda x=x: mha(x), "separable": lambda x=x: sep(x[:, None])},  # [1, k, C] / [1, 1, k, C]
            rounds=rounds,
        )
        rows.append(
            {
                "tokens_k": k,
                "mha_ms": stats["mha"]["median_ms"],
                "separable_ms": stats["separable"]["median_ms"],
                "mha/separable": stats["mha"]["median_ms"] / stats["separable"]["median_ms"],
            }
        )
    return rows


def mixer_rows(dim: int, sizes: list[int], rounds: int) -> list[dict]:
    repmixer = RepMixer(dim, kernel_size=3).eval()
    repmixer.reparameterize()  # inference form: one depthwise 3x3 convolution
    pool = PoolMixer().eval()
    rows = []
    for size in sizes:
        x = torch.randn(1, dim, size // 4, size // 4).contiguous(memory_format=torch.channels_last)
        stats = compare_latency({"repmixer": lambda x=x: repmixer(x), "pooling": lambda x=x: pool(x)}, rounds=rounds)
        rows.append(
            {
                "input": size,
                "feature_map": f"{size // 4}x{size // 4}",
                "repmixer_ms": stats["repmixer"]["median_ms"],
                "pooling_ms": stats["pooling"]["median_ms"],
                "pooling/repmixer": stats["pooling"]["median_ms"] / stats["repmixer"]["median_ms"],
            }
        )
    return rows


def plot(rows: list[dict], x: str, series: dict[str, str], xlabel: str, title: str, path: Path, logx: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for key, label in series.items():
        ax.plot([r[x] for r in rows], [r[key] for r in rows], marker="o", label=label)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("latency (ms, median, log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    with torch.inference_mode():
        attn = attention_rows(256, [64, 256, 1024, 2048, 4096, 8192], args.rounds)
        mix = mixer_rows(64, [224, 320, 448, 512, 640, 768, 896, 1024], args.rounds)
    setup = f"torch {torch.__version__}, {threads} threads, fp32, batch 1, median of {args.rounds} interleaved runs"
    plot(
        attn,
        "tokens_k",
        {"mha_ms": "multi-head self-attention (v1/v3)", "separable_ms": "separable self-attention (v2)"},
        "tokens k",
        f"MobileViT attention, width 256 ({setup.split(', fp32')[0]})",
        args.out / "attention_vs_tokens.png",
        logx=True,
    )
    plot(
        mix,
        "input",
        {"repmixer_ms": "RepMixer (re-parameterized)", "pooling_ms": "pooling mixer"},
        "input resolution (feature map = input/4, 64 channels)",
        f"FastViT token mixers ({setup.split(', fp32')[0]})",
        args.out / "repmixer_vs_pooling.png",
        logx=False,
    )
    print(f"{setup}\n\n(a) attention\n\n{markdown_table(attn)}\n\n(b) token mixers\n\n{markdown_table(mix)}")
    (args.out / "token_mixers.json").write_text(
        json.dumps({"setup": setup, "attention": attn, "mixers": mix}, indent=2)
    )


if __name__ == "__main__":
    main()
