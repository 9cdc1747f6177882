"""Plain-text tables for the terminal: each column padded to its widest cell.

``predict`` and ``diff`` print their tables through this, so both line up the same way.
"""

from __future__ import annotations

from collections.abc import Sequence


def align_columns(rows: Sequence[Sequence[object]], gap: str = "  ") -> list[str]:
    """The rows as lines, each cell left-aligned to its column's widest cell, trailing spaces cut."""
    if not rows:
        return []
    widths = [max(len(str(row[i])) for row in rows if i < len(row)) for i in range(max(len(r) for r in rows))]
    return [gap.join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
