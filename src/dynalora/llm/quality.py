"""Judging answers by what was generated: does it end, does it loop, is the number right.

* `find_loop(text)`  the repeating stretch if the text loops: some run of words repeated back
  to back at least `min_repeats` times, covering at least `min_words` words ("1 + 1 + 1 + ...",
  "#####\\n#####\\n...", "= 180 / 3 = 560 / 3 = 180 / 3 ..."). A phrase that merely recurs
  in a long answer is not a loop; the same words over and over until the token limit are.
* `has_answer_marker(text)`  GSM8K's `#### <number>` is present.
* `ends_properly(generation)`  the model stopped by itself (end-of-turn/EOS or a stop string)
  or wrote the answer marker before the token limit cut it.
* `summarize(...)`  shares over a set of generations; `mcnemar(...)`  the exact paired test
  of two systems' right/wrong answers on the same prompts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from dynalora.llm.generate import Generation

WORD = re.compile(r"\S+")
ANSWER_MARKER = re.compile(r"####\s*-?\$?\d")


def find_loop(text: str, max_period: int = 20, min_repeats: int = 3, min_words: int = 12) -> str | None:
    """The repeated unit if `text` loops (see the module doc), else None.

    A period p repeats when words[i] == words[i + p] for a stretch of consecutive i; the stretch
    plus one period is the looping span, which must hold `min_repeats` periods and `min_words`.
    """
    words = WORD.findall(text)
    for period in range(1, max_period + 1):
        run = 0
        for i in range(len(words) - period):
            run = run + 1 if words[i] == words[i + period] else 0
            span = run + period
            if span >= period * min_repeats and span >= min_words:
                start = i + 1 - run
                return " ".join(words[start : start + period])
    return None


def has_answer_marker(text: str) -> bool:
    return ANSWER_MARKER.search(text) is not None


def ends_properly(generation: Generation) -> bool:
    """Stopped by itself, or gave the answer marker before the limit (then only the tail is lost)."""
    return generation.stop_reason in ("eos", "stop") or has_answer_marker(generation.text)


def summarize(generations: Sequence[Generation], correct: Sequence[bool] | None = None) -> dict[str, Any]:
    """{"n", "ended", "stopped", "answer_marker", "looping", "mean_new_tokens"[, "exact_match"]}:
    shares over the generations (ended = ends_properly; stopped = end-of-turn/EOS/stop string)."""
    n = len(generations)
    if n == 0:
        raise ValueError("no generations to summarize")
    result: dict[str, Any] = {
        "n": n,
        "ended": sum(ends_properly(g) for g in generations) / n,
        "stopped": sum(g.stop_reason != "length" for g in generations) / n,
        "answer_marker": sum(has_answer_marker(g.text) for g in generations) / n,
        "looping": sum(find_loop(g.text) is not None for g in generations) / n,
        "mean_new_tokens": sum(g.new_tokens for g in generations) / n,
    }
    if correct is not None:
        result["exact_match"] = sum(bool(c) for c in correct) / n
        result["correct"] = sum(bool(c) for c in correct)
    return result


def mcnemar(before: Sequence[bool], after: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test on paired right/wrong outcomes: {"only_before", "only_after", "p_value"}.

    Only the discordant pairs carry information; under "no difference" each is equally likely
    to favour either side, so the two-sided p-value is a binomial test at 1/2 on them.
    """
    from scipy.stats import binomtest

    if len(before) != len(after):
        raise ValueError(f"paired outcomes differ in length: {len(before)} and {len(after)}")
    only_before = sum(bool(b) and not a for b, a in zip(before, after))
    only_after = sum(bool(a) and not b for b, a in zip(before, after))
    discordant = only_before + only_after
    p_value = 1.0 if discordant == 0 else float(binomtest(only_after, discordant, 0.5).pvalue)
    return {"only_before": only_before, "only_after": only_after, "p_value": p_value}
