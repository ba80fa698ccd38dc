"""Data: the GLUE task registry and readers, user tables, tokenisation, length-bucketed batches."""

from dynalora.data.base import DataError, DataWarning, Example
from dynalora.data.batching import BucketBatcher, encode
from dynalora.data.glue import DATA_DIR_ENV, load_split
from dynalora.data.tables import load_table
from dynalora.data.tasks import TASKS, TaskSpec, get_task

__all__ = [
    "DATA_DIR_ENV",
    "TASKS",
    "BucketBatcher",
    "DataError",
    "DataWarning",
    "Example",
    "TaskSpec",
    "encode",
    "get_task",
    "load_split",
    "load_table",
]
