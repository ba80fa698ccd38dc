"""Reading labelled text tables: GLUE-style TSV, CSV, JSON Lines and JSON lists of records.

TSV files are split on tabs with no quoting at all: GLUE text holds literal `"` characters
(MRPC, SST-2) that a CSV parser would treat as quotes and merge rows. CSV files use normal
CSV quoting, since that is how tools write them. Lines are split on "\\n" only (not
`str.splitlines`, which also breaks on characters such as U+2028 that can occur in text).
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from dynalora.data.base import (
    DataError,
    DataWarning,
    Example,
    RawRow,
    RowProblems,
    label_token,
    rows_to_examples,
)

Column = str | int
TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json")


def read_text(path: str | Path) -> str:
    """The file's text; a leading UTF-8 BOM (as in GLUE's MRPC files) is dropped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err}); save the file as UTF-8") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err})") from None


def numbered_lines(text: str) -> Iterable[tuple[int, str]]:
    """(1-based line number, line) for non-blank lines, with any "\\r" line ending removed."""
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line


def read_tsv(path: str | Path, has_header: bool) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """The header (stripped names, or None) and the numbered data rows, split on tabs only."""
    lines = list(numbered_lines(read_text(path)))
    header = None
    if has_header:
        if not lines:
            raise DataError(f"{path}: the file is empty (expected a header line and data rows)")
        header = [name.strip() for name in lines[0][1].split("\t")]
        lines = lines[1:]
    return header, [(number, line.split("\t")) for number, line in lines]


def read_csv(path: str | Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty (expected a header line and data rows)")
        # line_num is where the record ends, which is the right line for multi-line quoted text
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as err:
        raise DataError(f"{path}, line {reader.line_num}: broken CSV ({err})") from None
    return [name.strip() for name in header], rows


def column_positions(
    path: str | Path, header: list[str] | None, columns: Sequence[Column]
) -> list[int]:
    """Map column names (or positions, for files without a header) to positions."""
    positions = []
    for column in columns:
        if isinstance(column, int):
            positions.append(column)
        elif header is None:
            raise DataError(f"{path}: column {column!r} named, but the file has no header")
        elif column in header:
            positions.append(header.index(column))
        else:
            raise DataError(
                f"{path}: no column {column!r} in the header; the columns are {header}. "
                "Name the text and label columns as they appear in the header line."
            )
    return positions


def delimited_rows(
    rows: Iterable[tuple[int, list[str]]],
    positions: Sequence[int],
    n_columns: int,
    problems: RowProblems,
) -> list[RawRow]:
    """Rows with the expected number of fields, as (texts..., label); the last position is the label."""
    kept = []
    for number, fields in rows:
        if len(fields) != n_columns:
            problems.add(f"line {number}", f"expected {n_columns} tab/comma-separated columns, found {len(fields)}")
            continue
        values = [fields[p] for p in positions]
        kept.append(RawRow(f"line {number}", tuple(values[:-1]), values[-1].strip()))
    return kept


def delimited_file_rows(
    path: str | Path,
    columns: Sequence[Column],
    problems: RowProblems,
    has_header: bool = True,
    n_columns: int | None = None,
) -> list[RawRow]:
    """Rows of a .csv (CSV quoting) or any other delimited file (plain tabs); label column last.

    A row must have as many fields as the header (or `n_columns` for a headerless file).
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        header, numbered = read_csv(path)
    else:
        header, numbered = read_tsv(path, has_header)
    positions = column_positions(path, header, columns)
    expected = len(header) if header is not None else (n_columns or max(positions) + 1)
    return delimited_rows(numbered, positions, expected, problems)


def record_rows(
    records: Iterable[tuple[str, object]],
    columns: Sequence[str],
    problems: RowProblems,
) -> list[RawRow]:
    """Rows from JSON objects; `columns` are the text keys followed by the label key."""
    kept = []
    for where, record in records:
        if not isinstance(record, dict):
            problems.add(where, f"expected a JSON object, found {type(record).__name__}")
            continue
        missing = list(dict.fromkeys(c for c in columns if record.get(c) is None))  # a column named twice: once
        if missing:
            problems.add(where, f"missing field(s) {missing}")
            continue
        texts = tuple(str(record[c]) for c in columns[:-1])
        kept.append(RawRow(where, texts, label_token(record[columns[-1]])))
    return kept


def json_records(path: Path, problems: RowProblems) -> list[tuple[str, object]]:
    text = read_text(path)
    if path.suffix.lower() == ".jsonl":
        records = []
        for number, line in numbered_lines(text):
            try:
                records.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as err:
                problems.add(f"line {number}", f"invalid JSON ({err.msg})")
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    return [(f"record {i}", record) for i, record in enumerate(data)]


def discover_labels(rows: Sequence[RawRow], source: str | Path) -> tuple[str, ...]:
    """Sorted unique labels; numerically when they are all integers (so "10" follows "9").
    An empty label is no class: such rows are skipped (and reported) like other bad rows."""
    values = {row.label for row in rows} - {""}
    try:
        ordered = sorted(values, key=int)
    except ValueError:
        ordered = sorted(values)
    if len(ordered) < 2:
        raise DataError(
            f"{source}: found {len(ordered)} distinct label value(s) {ordered}; a classifier needs at "
            "least two. Pass the label names explicitly, or use regression for scores."
        )
    return tuple(ordered)


def warn_if_label_looks_wrong(labels: Sequence[str], n_rows: int, path: Path, column: str) -> None:
    """More than one class per 10 rows looks like a text or id column read as the label."""
    if len(labels) > max(2, n_rows / 10):
        warnings.warn(f"{path}: the label column {column!r} has {len(labels)} distinct values in {n_rows} rows "
                      "(more than one class per 10 rows); is it really the label? For scores use regression "
                      "(--regression)", DataWarning, stacklevel=3)


def load_table(
    path: str | Path,
    text_columns: Sequence[str],
    label_column: str,
    labels: Sequence[str] | None = None,
    regression: bool = False,
) -> tuple[list[Example], tuple[str, ...] | None]:
    """Read a CSV / TSV / JSONL / JSON table of texts and labels.

    Returns the examples and the label names in index order (None for regression). Labels are
    `labels` when given (rows with other values are skipped with a warning), else the sorted
    distinct values found in the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")
    text_columns = list(text_columns)
    if not 1 <= len(text_columns) <= 2:
        raise DataError(f"text_columns must name one or two columns, got {text_columns}")
    if regression and labels is not None:
        raise DataError("labels were given for a regression table; pass one or the other")
    problems = RowProblems(path)
    columns = [*text_columns, label_column]
    if suffix in (".jsonl", ".json"):
        rows = record_rows(json_records(path, problems), columns, problems)
    else:
        rows = delimited_file_rows(path, columns, problems)
    if regression:
        label_names = None
    elif labels is not None:
        label_names = tuple(label_token(v) for v in labels)
    else:
        label_names = discover_labels(rows, path) if rows else ()
        warn_if_label_looks_wrong(label_names, len(rows), path, label_column)
    examples = rows_to_examples(rows, label_names, problems)
    return problems.finish(examples), label_names


# Columns that hold no text to classify (row ids), skipped when guessing the text columns.
ID_COLUMNS = ("idx", "id", "index", "Unnamed: 0")
# Well-known text column names, in the order they are looked for (pairs first).
KNOWN_TEXT_COLUMNS = (("sentence1", "sentence2"), ("question", "sentence"), ("premise", "hypothesis"),
                      ("text",), ("sentence",))


def table_columns(path: str | Path) -> list[str]:
    """The column names of a table: its header, or the keys of its first JSON record (a .jsonl
    file: only its first line is parsed; the table is read in full later, by load_table)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        first_line = next((line for _, line in numbered_lines(read_text(path))), "")
        try:
            first = json.loads(first_line) if first_line else None
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line 1: invalid JSON ({err.msg})") from None
        return list(first) if isinstance(first, dict) else []
    if suffix == ".json":
        records = json_records(path, RowProblems(path))
        first = next((record for _, record in records if isinstance(record, dict)), None)
        return list(first) if first is not None else []
    header = next(csv.reader(io.StringIO(read_text(path), newline="")), None) if suffix == ".csv" else \
        read_tsv(path, has_header=True)[0]
    return [name.strip() for name in header or []]


def guess_text_columns(path: str | Path, label_column: str) -> list[str]:
    """The text columns of a table nobody named, as transformers' run_glue finds them: a
    known pair or name (sentence1/sentence2, question/sentence, premise/hypothesis, text,
    sentence), else the one or two columns beside the label (row ids left out)."""
    columns = [c for c in table_columns(path) if c != label_column and c not in ID_COLUMNS]
    for known in KNOWN_TEXT_COLUMNS:
        if all(c in columns for c in known):
            return list(known)
    if 1 <= len(columns) <= 2:
        return columns
    raise DataError(f"{path}: which column(s) hold the text? The file has {columns} besides the label "
                    f"{label_column!r}; name one or two with --text-columns")
