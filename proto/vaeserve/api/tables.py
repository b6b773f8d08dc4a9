"""Plain-text tables for terminals: the summaries of every command line (client, training, batch, benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, title: str | None = None) -> str:
    """Columns aligned: text to the left, numbers to the right."""
    cells = [[str(h) for h in headers]] + [[_text(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()

    out = [title] if title else []
    if any(cells[0]):
        out += [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 1e-2 else f"{value:.2f}" if abs(value) >= 100 else f"{value:.3f}"
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
