"""Reports of measurement results: markdown pipe tables (readable in a terminal and in the README), aligned text,
JSON and CSV, and the latency-vs-accuracy chart."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, UsageError

logger = logging.getLogger(__name__)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as a markdown table; ``columns`` picks and orders the keys (default: the first row's)."""
    if not rows:
        return ""
    columns = list(columns or rows[0])
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    numeric = [all(isinstance(row.get(c), (int, float)) for row in rows if row.get(c) is not None) for c in columns]
    lines += [
        "| "
        + " | ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(r, widths, numeric, strict=True))
        + " |"
        for r in cells
    ]
    return "\n".join(lines)


FORMATS: tuple[str, ...] = ("table", "json", "csv", "markdown")


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as space-aligned columns for a terminal (``None`` shows as ``-``)."""
    if not rows:
        return ""
    columns = list(columns or rows[0])
    cells = [["-" if row.get(c) is None else _cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [any(isinstance(row.get(c), (int, float)) for row in rows) for c in columns]
    lines = ["  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(columns, widths, numeric, strict=True))]
    lines += [
        "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(r, widths, numeric, strict=True)).rstrip()
        for r in cells
    ]
    return "\n".join(lines)


def format_report(header: dict[str, Any], rows: Sequence[dict[str, Any]], fmt: str = "table") -> str:
    """A benchmark report as text.

    Args:
        header: the run's settings and machine (versions, CPU, threads, measured peak).
        rows: measurement rows; their keys (in first-seen order) are the columns.
        fmt: ``table`` (aligned columns under a ``#`` header), ``json`` (``{"header": ..., "rows": [...]}``), ``csv``
            (rows only, one column per key), or ``markdown`` (a header list and a pipe table).
    """
    columns = list(dict.fromkeys(k for row in rows for k in row))
    if fmt == "json":
        return json.dumps({"header": header, "rows": list(rows)}, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
        return buffer.getvalue()
    if fmt == "markdown":
        lines = [f"- {k}: {_cell(v)}" for k, v in header.items()]
        table = markdown_table([{k: "" if v is None else v for k, v in row.items()} for row in rows], columns)
        return "\n".join(lines) + "\n\n" + table
    if fmt == "table":
        lines = [f"# {k}: {_cell(v)}" for k, v in header.items()]
        return "\n".join(lines) + "\n" + text_table(rows, columns)
    raise UsageError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


# --------------------------------------------------------------------------------------------------------------------
# Latency vs accuracy chart

FAMILY_LABELS = {
    "mobilevit": "MobileViT v1",
    "mobilevitv2": "MobileViT v2",
    "mobilevitv3": "MobileViT v3",
    "fastvit": "FastViT",
    "mobileone": "MobileOne",
}
TOP1_RULE = (
    "top-1: the highest published ImageNet-1k top-1 among the architecture's weights trained on ImageNet-1k only "
    "(no ImageNet-21k pre-training, no distillation) at the bench resolution, else at the weights' own resolution"
)


def published_top1(arch: str, resolution: int) -> tuple[str, float] | None:
    """(weights name, top-1 %) to plot for ``arch``; the rule is :data:`TOP1_RULE`. ``None``: nothing published."""
    from ..weights.entries import WEIGHTS

    entries = [e for e in WEIGHTS.values() if e.arch == arch and e.top1 is not None]
    plain = [e for e in entries if "22k" not in e.tag and "dist" not in e.tag] or entries
    same = [e for e in plain if e.preprocess.input_size == (resolution, resolution)]
    candidates = same or [e for e in plain if "384" not in e.tag] or plain
    if not candidates:
        return None
    best = max(candidates, key=lambda e: e.top1)
    return best.name, best.top1


def latency_accuracy_chart(
    rows: Sequence[dict[str, Any]], path: str | Path, title: str = "", backend: str | None = None
) -> list[dict[str, Any]]:
    """PNG of batch-1 latency (x) against published top-1 (y), one line per family, points labelled by variant.

    Args:
        rows: rows of :func:`mobilevit.bench.run.bench_table` including batch 1.
        path: the ``.png`` to write.
        title: chart title (e.g. the CPU and thread count).
        backend: plot this backend's latency; ``None``: each model's fastest backend.

    Returns:
        The plotted points: ``model``, ``backend``, ``median_ms`` and the ``weights`` whose ``top1`` was used.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise MissingDependencyError(
            "--chart needs matplotlib: pip install 'mobilevit[bench]' (or pip install matplotlib)"
        ) from error

    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("batch") != 1 or row.get("median_ms") is None or (backend and row["backend"] != backend):
            continue
        if row["model"] not in best or row["median_ms"] < best[row["model"]]["median_ms"]:
            best[row["model"]] = row
    if not best:
        raise UsageError(
            "the chart needs batch-1 latencies: include 1 in --batch-sizes" + (f" and {backend}" if backend else "")
        )
    lines: dict[str, list[tuple[float, float, str, str]]] = {}
    plotted: list[dict[str, Any]] = []
    for model, row in best.items():
        published = published_top1(model, row["resolution"])
        if published is None:
            logger.warning("%s: no published top-1, left out of the chart", model)
            continue
        weights, top1 = published
        variant = model.split("_", 1)[1] if "_" in model else model
        lines.setdefault(row["family"], []).append((row["median_ms"], top1, variant, row["backend"]))
        plotted.append({"model": model, "backend": row["backend"], "median_ms": row["median_ms"], "top1": top1})
        plotted[-1]["weights"] = weights
    if not lines:
        raise UsageError("none of the benched models has a published top-1 to plot")

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    for fam, points in sorted(lines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=FAMILY_LABELS.get(fam, fam))
        for ms, top1, variant, used in points:
            label = variant if backend else f"{variant} ({used})"
            ax.annotate(label, (ms, top1), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"batch-1 latency, ms ({backend or 'fastest benched backend per model'}; lower is better)")
    ax.set_ylabel("published ImageNet-1k top-1 (%)")
    ax.set_title(title or "latency vs accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.text(0.01, 0.005, TOP1_RULE, fontsize=5.5, wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return plotted
