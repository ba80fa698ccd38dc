"""The selection split: a fixed, stratified slice of a task's training set for choosing things.

GLUE's test labels are hidden, so papers report the dev set; a comparison that also picks
checkpoints, learning rates or early-stopping points on dev reports a maximum over noisy
draws, not a test figure. The selection split takes that job: every choice a run makes is
made on it, and dev is evaluated once, at the end, on the model it chose.

The split depends on the task's training rows only (a fixed seed, not the run's seed), so
every method and every seed trains on the same rows and chooses on the same rows. It is
stratified: by class for classification, by score bin for regression (STS-B scores 0-5 in
`REGRESSION_BINS` equal-width bins), so its label mix matches the training set's.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from dynalora.data.base import DataError, Example

SELECTION_SEED = 20240601  # fixed: the split must not move with the run's seed
SELECTION_FRACTION = 0.15
SELECTION_CAP = 1000  # big tasks (SST-2, QNLI): a thousand rows already resolve ~1-point differences
SELECTION_MIN = 32  # below this a selection score is noise; tiny data sets still get a split
REGRESSION_BINS = 5


def selection_size(n_rows: int, fraction: float = SELECTION_FRACTION, cap: int = SELECTION_CAP) -> int:
    """How many of `n_rows` training rows go to the selection split."""
    if n_rows < 2:
        raise DataError(f"a selection split needs at least 2 training rows, got {n_rows}")
    wanted = min(cap, max(SELECTION_MIN, round(fraction * n_rows)))
    return min(wanted, n_rows // 2)  # the larger part always stays for training


def strata(examples: list[Example], regression: bool) -> list[int | float]:
    """The stratum of each example: its class, or its score bin (regression)."""
    if not regression:
        return [e.label for e in examples]
    scores = np.array([float(e.label) for e in examples])
    low, high = scores.min(), scores.max()
    if high == low:
        return [0] * len(examples)
    edges = np.linspace(low, high, REGRESSION_BINS + 1)[1:-1]
    return np.digitize(scores, edges).tolist()


def allocate(counts: dict, total: int) -> dict:
    """Largest-remainder shares of `total` over the strata, proportional to their counts."""
    n = sum(counts.values())
    exact = {k: total * c / n for k, c in counts.items()}
    shares = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(counts, key=lambda k: (-(exact[k] - shares[k]), str(k)))
    for k in by_remainder[: total - sum(shares.values())]:
        shares[k] += 1
    return shares


def selection_indices(examples: list[Example], regression: bool, fraction: float = SELECTION_FRACTION,
                      cap: int = SELECTION_CAP, seed: int = SELECTION_SEED) -> list[int]:
    """Sorted row indices of the selection split of `examples` (the full training split)."""
    groups: dict = defaultdict(list)
    for i, key in enumerate(strata(examples, regression)):
        groups[key].append(i)
    shares = allocate({k: len(v) for k, v in groups.items()}, selection_size(len(examples), fraction, cap))
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for key in sorted(groups, key=str):  # a fixed order, so the draws do not depend on dict order
        rows = groups[key]
        chosen.extend(rows[i] for i in rng.permutation(len(rows))[: shares[key]])
    return sorted(chosen)


def split_for_selection(examples: list[Example], regression: bool, fraction: float = SELECTION_FRACTION,
                        cap: int = SELECTION_CAP) -> tuple[list[Example], list[Example]]:
    """(training rows, selection rows): a partition of `examples`, both in file order."""
    picked = set(selection_indices(examples, regression, fraction, cap))
    train = [e for i, e in enumerate(examples) if i not in picked]
    selection = [e for i, e in enumerate(examples) if i in picked]
    return train, selection
