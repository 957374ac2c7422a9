"""The model table (params, MACs) and eager CPU latency of registered models, as rows of measured numbers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ..registry import create_model
from .profile import count_macs, count_params, measure_latency


def model_table(names: Iterable[str], macs: bool = True, resolution: int = 256) -> list[dict]:
    """One row per architecture: parameters and (optionally) MACs at ``resolution`` x ``resolution``."""
    rows = []
    for name in names:
        model = create_model(name).eval()
        row = {"model": name, "family": name.split("_", 1)[0]}
        row["params_M"] = count_params(model) / 1e6
        if macs:
            row[f"GMACs@{resolution}"] = count_macs(model, (resolution, resolution)) / 1e9
        rows.append(row)
    return rows


def latency_table(
    names: Iterable[str],
    batch_sizes: Sequence[int] = (1, 8),
    resolution: int = 256,
    repeats: int = 20,
    warmup: int = 3,
) -> list[dict]:
    """Eager fp32 latency of each model (random weights: speed does not depend on their values) per batch size."""
    rows = []
    for name in names:
        model = create_model(name).eval()
        for batch in batch_sizes:
            x = torch.randn(batch, 3, resolution, resolution)
            with torch.inference_mode():
                stats = measure_latency(lambda m=model, x=x: m(x), warmup=warmup, repeats=repeats)
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "median_ms": stats["median_ms"],
                    "p90_ms": stats["p90_ms"],
                    "img_per_s": 1e3 * batch / stats["median_ms"],
                    "threads": torch.get_num_threads(),
                }
            )
    return rows


def weights_table(patterns: Iterable[str] = (), macs: bool = False) -> list[dict]:
    """One row per pretrained weights entry: input size, published top-1, source, and the architecture's size."""
    from ..weights.entries import WEIGHTS, list_weights

    names = sorted({n for p in (patterns or ["*"]) for n in list_weights(p if "." in p or "*" in p else f"{p}.*")})
    arch_rows = {r["model"]: r for r in model_table(sorted({WEIGHTS[n].arch for n in names}), macs=macs)}
    rows = []
    for name in names:
        entry = WEIGHTS[name]
        pre = entry.preprocess
        row = {"weights": name, "input": f"{pre.input_size[0]}x{pre.input_size[1]}", "top1": entry.top1 or ""}
        row |= {k: v for k, v in arch_rows[entry.arch].items() if k not in ("model", "family")}
        row |= {"source": entry.source, "channels": pre.channel_order}
        rows.append(row)
    return rows
