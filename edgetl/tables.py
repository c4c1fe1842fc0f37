"""Plain aligned text tables, for every human-readable report (CLI verbs, `edgetl info`, bench, demo).

In the core rather than the CLI so that library code (the runtime's benchmark, the bundle's info page)
formats its text without importing the command-line layer above it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def format_table(headers: list[str], rows: Iterable[Iterable[Any]]) -> str:
    """A plain aligned text table (no extra dependency)."""
    str_rows = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in str_rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in str_rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)
