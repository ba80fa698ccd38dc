"""Pieces every reader shares: the error types, one example, and the malformed-row report.

Readers turn files into `RawRow`s (texts + the label as written), then `rows_to_examples`
checks the labels and builds `Example`s. Rows that cannot be used are not fatal: they are
collected in a `RowProblems`, reported once as a `DataWarning` naming the file and line, and
skipped, unless they are more than the share a caller allows (`skipped_rows_limit`; training
runs set their `max_skipped_share`): a file mostly broken is more likely the wrong file or the
wrong column than a few bad rows, so it is a `DataError`, as is a file with no usable row.
"""

from __future__ import annotations

import contextvars
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dynalora.errors import DataError

MAX_SHOWN_PROBLEMS = 5
_max_skipped_share = contextvars.ContextVar("max_skipped_share", default=1.0)


@contextmanager
def skipped_rows_limit(share: float) -> Iterator[None]:
    """Files read inside the block may skip at most this share of their rows (1: any share)."""
    token = _max_skipped_share.set(share)
    try:
        yield
    finally:
        _max_skipped_share.reset(token)


class DataWarning(UserWarning):
    """Rows skipped while reading a file (the message lists where and why)."""


@dataclass
class Example:
    """One labelled example: one or two texts and a class index (or a float score)."""

    texts: tuple[str, ...]
    label: int | float


@dataclass(frozen=True)
class RawRow:
    """A row as read from a file, before its label is checked. `where` is e.g. "line 12"."""

    where: str
    texts: tuple[str, ...]
    label: str


class RowProblems:
    """Collects the rows a reader skipped, so the user hears about them once, with locations."""

    def __init__(self, source: str | Path) -> None:
        self.source = str(source)
        self.items: list[tuple[str, str]] = []

    def add(self, where: str, message: str) -> None:
        self.items.append((where, message))

    def __len__(self) -> int:
        return len(self.items)

    def summary(self, limit: int = MAX_SHOWN_PROBLEMS) -> str:
        shown = "; ".join(f"{where}: {message}" for where, message in self.items[:limit])
        rest = len(self.items) - limit
        return shown + (f"; ... and {rest} more" if rest > 0 else "")

    def warn(self, kept: int) -> None:
        """Report the skipped rows; too large a share of them is an error (see the module doc)."""
        limit = _max_skipped_share.get()
        share = len(self.items) / max(1, len(self.items) + kept)
        if share > limit:
            raise DataError(
                f"{self.source}: {len(self.items)} of {len(self.items) + kept} rows are malformed "
                f"({share:.0%}, more than max_skipped_share={limit}); is it the right file and column? "
                f"{self.summary()}"
            )
        if self.items:
            warnings.warn(
                f"{self.source}: skipped {len(self.items)} malformed row(s), kept {kept}. "
                f"{self.summary()}",
                DataWarning,
                stacklevel=3,
            )

    def finish(self, examples: list[Example], hint: str = "") -> list[Example]:
        """Warn about skipped rows; refuse a file that gave nothing usable."""
        if not examples:
            detail = f" Problems: {self.summary()}." if self.items else " The file has no data rows."
            raise DataError(f"{self.source}: no valid rows.{detail}{hint}")
        self.warn(len(examples))
        return examples


def label_token(value: object) -> str:
    """The label as text, so JSON 1, 1.0 and "1" all compare equal to a label named "1"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def parse_score(token: str) -> float | None:
    try:
        score = float(token)
    except ValueError:
        return None
    return score if math.isfinite(score) else None


def rows_to_examples(
    rows: Iterable[RawRow],
    label_values: Sequence[str] | None,
    problems: RowProblems,
) -> list[Example]:
    """Build examples; label_values lists the allowed labels in index order (None: a score)."""
    index = None if label_values is None else {v: i for i, v in enumerate(label_values)}
    examples = []
    for row in rows:
        if index is None:
            score = parse_score(row.label)
            if score is None:
                problems.add(row.where, f"score {row.label!r} is not a finite number")
                continue
            examples.append(Example(row.texts, score))
        elif row.label in index:
            examples.append(Example(row.texts, index[row.label]))
        else:
            allowed = ", ".join(label_values or ())
            problems.add(row.where, f"unknown label {row.label!r} (expected one of {allowed})")
    return examples
