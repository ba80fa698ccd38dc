"""Run folders that survive concurrency and faults: one writer (a lock), results published
whole (`best/`, swapped in), litter from a kill tidied at the next start."""

from dynalora.runs.errors import RunFolderBusy, RunFolderError
from dynalora.runs.folder import RunFolder, check_output_folder, check_writable_folder
from dynalora.runs.lock import RunLock, is_main_process
from dynalora.runs.publish import BEST, publish, reading, results_folder, tidy

__all__ = ["BEST", "RunFolder", "RunFolderBusy", "RunFolderError", "RunLock", "check_output_folder", "check_writable_folder",
           "is_main_process", "publish", "reading", "results_folder", "tidy"]
