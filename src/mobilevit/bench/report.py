"""Plain-text tables for measurement results (markdown pipe tables, readable in a terminal and in the README)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
