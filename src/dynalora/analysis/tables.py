"""Small tables written as CSV and Markdown (and printed), shared by the analyses and the bench."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from dynalora.files import atomic_path


def fmt(value: object, digits: int = 4) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 10 ** -digits):
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict], columns: list[str], digits: int = 4) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in columns})
    return buffer.getvalue()


def write_table(rows: list[dict], columns: list[str], stem: str | Path, title: str | None = None,
                digits: int = 4) -> str:
    """Write `stem.csv` and `stem.md` atomically; return the Markdown text."""
    stem = Path(stem)
    text = (f"## {title}\n\n" if title else "") + markdown_table(rows, columns, digits)
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        tmp.write_text(csv_text(rows, columns))
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text(text)
    return text
