"""Loading a GLUE split from a local folder (the GLUE download layout) or from the Hub."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dynalora.data.base import DataError, Example, RowProblems, rows_to_examples
from dynalora.data.tables import delimited_file_rows
from dynalora.data.tasks import TASKS, TaskSpec, get_task, normalize_name
from dynalora.errors import MissingDependencyError

DATA_DIR_ENV = "DYNALORA_DATA_DIR"
HUB_DATASET = "nyu-mll/glue"  # the Hub id that "glue" redirects to


def load_split(
    task: str | TaskSpec,
    split: str,
    data_dir: str | Path | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> list[Example]:
    """The examples of one split ("train", "dev"; MNLI also "dev_matched"/"dev_mismatched").

    data_dir is the GLUE root (holding e.g. MRPC/train.tsv), its parent holding glue/, or the
    task folder itself. Without it, $DYNALORA_DATA_DIR is used, and failing that the Hub.
    max_samples keeps a seeded random subset (GLUE files can be sorted, so not the first N),
    in file order.
    """
    spec = get_task(task)
    file_name, hub_split = spec.split_source(split)
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    if data_dir is None:
        examples = load_from_hub(spec, hub_split, file_name)
    else:
        examples = read_glue_file(spec, find_task_dir(spec, Path(data_dir), file_name) / file_name)
    return subsample(examples, max_samples, seed)


def read_glue_file(spec: TaskSpec, path: Path) -> list[Example]:
    if not path.is_file():
        raise DataError(f"{spec.name}: data file not found: {path}")
    problems = RowProblems(path)
    columns = [*spec.file_text_columns, spec.file_label_column]
    rows = delimited_file_rows(path, columns, problems, spec.has_header, spec.n_columns)
    return problems.finish(rows_to_examples(rows, spec.label_values, problems))


def find_task_dir(spec: TaskSpec, root: Path, file_name: str) -> Path:
    """The task folder under `root`; folder names match loosely ("SST-2", "sst2", "sst_2")."""
    layout = f"<data-dir>/{spec.dir_name}/{file_name} (the layout of the GLUE download script)"
    if root.is_file():
        raise DataError(f"{root} is a file; pass the folder that holds the GLUE tasks: {layout}")
    if not root.is_dir():
        raise DataError(f"data directory not found: {root.resolve()}; expected {layout}. Pass the folder "
                        "that holds your GLUE copy (--data-dir DIR, or `make train DATA_DIR=DIR`), or leave "
                        "--data-dir out to download from the Hugging Face Hub")
    names = {normalize_name(n) for n in (spec.name, spec.dir_name, *spec.aliases)}
    for base in (root, root / "glue"):
        if base.is_dir():
            for child in sorted(base.iterdir()):
                if child.is_dir() and normalize_name(child.name) in names:
                    return child
    # root may be the task folder itself, under any name except another task's
    other = next((t for t in TASKS.values() if normalize_name(root.name) == normalize_name(t.dir_name)), None)
    if (root / file_name).is_file() and (other is None or other.name == spec.name):
        return root
    if other is not None and other.name != spec.name:
        raise DataError(f"{root} is the {other.dir_name} folder, but the task is {spec.name}; "
                        f"expected {layout}")
    raise DataError(f"no {spec.dir_name} folder found in {root}; expected {layout}")


def load_from_hub(spec: TaskSpec, hub_split: str, file_name: str) -> list[Example]:
    """The split from the Hugging Face Hub; any failure becomes one DataError that says what to do."""
    hint = (f"Pass --data-dir (or set {DATA_DIR_ENV}) to a local GLUE folder laid out as "
            f"<data-dir>/{spec.dir_name}/{file_name}.")
    try:
        from datasets import load_dataset
    except ImportError:
        raise MissingDependencyError("no data directory was given, and loading GLUE from the Hub needs the "
                        f"`datasets` package (pip install 'dynalora[hub]'). {hint}") from None
    try:
        records = load_dataset(HUB_DATASET, spec.hub_name, split=hub_split)
        examples = [hub_example(spec, record) for record in records]
    except Exception as err:  # network, auth, changed schema: all have the same fix
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataError(f"no data directory was given and GLUE {spec.name!r} ({hub_split}) could not be "
                        f"loaded from the Hugging Face Hub ({type(err).__name__}: {reason}). {hint}") from err
    examples = [e for e in examples if e is not None]
    if not examples:
        raise DataError(f"GLUE {spec.name!r} ({hub_split}) from the Hub has no labelled rows. {hint}")
    return examples


def hub_example(spec: TaskSpec, record: dict) -> Example | None:
    """An Example from a Hub row; None for unlabelled rows (label -1, as in the test splits)."""
    texts = tuple(str(record[field]) for field in spec.text_fields)
    if spec.is_regression:
        return Example(texts, float(record["label"]))
    label = int(record["label"])
    return Example(texts, label) if 0 <= label < spec.num_labels else None


def subsample(examples: list[Example], max_samples: int | None, seed: int) -> list[Example]:
    if max_samples is not None and max_samples < 1:
        raise DataError(f"max_samples must be a positive integer, got {max_samples}")
    if max_samples is None or max_samples >= len(examples):
        return examples
    keep = np.random.default_rng(seed).choice(len(examples), size=max_samples, replace=False)
    return [examples[i] for i in sorted(keep)]
