"""Paired statistics over seeds: each arm minus the reference arm, seed by seed.

Seed k gives every arm the same data order and head initialisation, so the difference of
two arms at one seed removes the noise they share; the seeds are the sample. For n paired
differences d: the mean, the 95% t-interval mean ± t(0.975, n-1) * sd / sqrt(n), and the
two-sided Wilcoxon signed-rank p (exact for small n, as scipy computes it). With fewer than
MIN_T pairs there is no interval (at n=2 the t-interval is mean ± 12.7 sd/sqrt(2): a width
that says nothing); below MIN_WILCOXON pairs the smallest p the test can give is
2/2^n >= 0.125, so it is reported as "n too small" (at n=5 the floor is 0.0625: all five
seeds on one side; the report says so). A seed where both arms score the same (a difference
of exactly 0, which happens with accuracy on small dev sets) carries no sign: the exact test
runs on the other differences (Wilcoxon's treatment, scipy's default; the normal
approximation that keeps zeros in the ranking is not trustworthy at n = 5), and the p text
says how many were 0, so the reader sees the test ran on fewer seeds than n.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

MIN_T = 3
MIN_WILCOXON = 5
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Paired:
    n: int
    mean: float
    low: float  # NaN when n < MIN_T
    high: float
    wilcoxon_p: float  # NaN when n < MIN_WILCOXON
    nonzero: int = 0  # differences that are not exactly 0

    def interval_text(self, scale: float = 100.0, digits: int = 2) -> str:
        if self.n < MIN_T:
            return "n too small"
        return f"[{self.low * scale:+.{digits}f}, {self.high * scale:+.{digits}f}]"

    def p_text(self) -> str:
        if self.n < MIN_WILCOXON:
            return "n too small"
        ties = "" if self.nonzero == self.n else f" ({self.n - self.nonzero} zero, tested on {self.nonzero})"
        return f"{self.wilcoxon_p:.3f}{ties}"


def paired(differences: list[float]) -> Paired:
    """Mean, 95% t-interval and Wilcoxon p of paired differences (arm minus reference)."""
    # Rounded: scores that tie in exact arithmetic differ in the last bits after x100 and a
    # subtraction, and the test would then see no tie (nor a zero).
    d = [round(float(x), 9) for x in differences]
    n = len(d)
    nonzero = sum(x != 0 for x in d)
    if n == 0:
        return Paired(0, math.nan, math.nan, math.nan, math.nan)
    mean = statistics.fmean(d)
    low = high = math.nan
    if n >= MIN_T:
        half = stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * statistics.stdev(d) / math.sqrt(n)
        low, high = mean - half, mean + half
    p = math.nan
    if n >= MIN_WILCOXON:
        p = 1.0 if nonzero == 0 else float(stats.wilcoxon([x for x in d if x != 0]).pvalue)
    return Paired(n, mean, low, high, p, nonzero)
