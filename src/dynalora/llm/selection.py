"""Choosing the SFT checkpoint (and stopping early) by what the model generates, not only by loss.

    SftConfig(..., metric_for_best_model="exact_match", eval_generation_samples=32)

transformers' names: `metric_for_best_model` is what every evaluation is judged by (an
`eval_` prefix is accepted and dropped, as transformers adds one), `greater_is_better` its
direction (default: from the metric). The held-out loss stays the default. A generation
metric is measured at each evaluation on the same few held-out prompts, answered greedily
with the report's generation settings (`GenerationJudge`):

* exact_match    the final number is right (GSM8K-style references, `#### <number>`)
* ended          the answer stopped by itself or wrote the answer marker before the limit
* stopped        the answer stopped by itself (end-of-turn/EOS or a stop string)
* answer_marker  the answer wrote `#### <number>`
* looping        the answer loops (lower is better; see dynalora.llm.quality.find_loop)

Those prompts (`pick_selection_records`) are fixed: a constant-seeded draw, the same for every
evaluation and every run seed, and never a prompt that appears in the training file. Because
they chose the checkpoint, the report after training judges the other held-out prompts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dynalora.data.sft import SftRecord
from dynalora.distributed import current, gather_objects
from dynalora.errors import ConfigError
from dynalora.llm.evaluate import is_gsm8k_style, score_answers
from dynalora.llm.generate import GenerationSettings, generate_many
from dynalora.llm.quality import summarize

# name -> greater is better
LOSS_METRICS = {"loss": False, "perplexity": False}
GENERATION_METRICS = {"exact_match": True, "ended": True, "stopped": True, "answer_marker": True, "looping": False}
METRICS = {**LOSS_METRICS, **GENERATION_METRICS}
DEFAULT_GENERATION_PROMPTS = 32  # small: every evaluation generates this many answers
SELECTION_SEED = 20240615  # a constant, never the run's seed: every seed's run is judged on the same prompts
# Report settings that also decide the generation metric: fixed for a run that selects by one.
GENERATION_FIELDS = ("max_new_tokens", "repetition_penalty", "penalize_prompt", "no_repeat_ngram_size", "stop")


def metric_name(name: str) -> str:
    """`name` as one of METRICS (an `eval_` prefix dropped), or a one-line ConfigError."""
    metric = name[len("eval_"):] if name.startswith("eval_") else name
    if metric not in METRICS:
        raise ConfigError(f"metric_for_best_model={name!r}: must be one of {tuple(METRICS)}")
    return metric


def greater_is_better(metric: str, given: bool | None) -> bool:
    """The direction of `metric`: `given` when set, else the metric's own (loss: lower)."""
    return METRICS[metric] if given is None else given


def prompt_key(record: SftRecord) -> str:
    """What identifies a prompt: the text a model answers (the turns before the last answer)."""
    return json.dumps(record.context(), sort_keys=True, ensure_ascii=False)


def pick_selection_records(candidates: Sequence[SftRecord], n: int,
                           training: Sequence[SftRecord] = ()) -> list[SftRecord]:
    """`n` of `candidates` (fewer if there are fewer), drawn with a constant seed, leaving out
    every prompt that `training` holds: the same records whatever the run's seed."""
    seen = {prompt_key(r) for r in training}
    usable = [r for r in candidates if prompt_key(r) not in seen]
    order = torch.randperm(len(usable), generator=torch.Generator().manual_seed(SELECTION_SEED)).tolist()
    return [usable[i] for i in sorted(order[:n])]


def check_metric_data(metric: str, records: Sequence[SftRecord]) -> None:
    """A ConfigError when the held-out prompts cannot give `metric` (exact match needs references)."""
    if metric == "exact_match" and not is_gsm8k_style(records):
        where = next((r.where for r in records if not is_gsm8k_style([r])), "")
        raise ConfigError(f"metric_for_best_model='exact_match': the held-out answers do not all end in "
                          f"'#### <number>' (e.g. {where}); exact match needs GSM8K-style reference answers")


class GenerationJudge:
    """Answers the fixed selection prompts with the model as it is and measures the shares:
    {"exact_match" (when the references allow), "ended", "stopped", "answer_marker",
    "looping", "mean_new_tokens", "generation_n"}."""

    def __init__(self, tokenizer: Any, records: Sequence[SftRecord], settings: GenerationSettings,
                 batch_size: int) -> None:
        if not records:
            raise ValueError("no held-out prompts to judge generation on")
        self.tokenizer, self.records = tokenizer, list(records)
        self.settings, self.batch_size = settings, batch_size
        self.scored = is_gsm8k_style(self.records)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        # Data-parallel: process r answers prompts r, r + W, ... and all answers are gathered,
        # so every process judges the same answers (and makes the same choice) for a W-th of
        # the work; alone, this is every prompt in order.
        process = current()
        mine = self.records[process.rank::process.world_size]
        parts = gather_objects(generate_many(model, self.tokenizer, [r.context() for r in mine], self.settings,
                                             self.batch_size) if mine else [])
        answers = [parts[i % process.world_size][i // process.world_size] for i in range(len(self.records))]
        correct = None
        if self.scored:
            correct = [s["correct"] for s in score_answers(self.records, [a.text for a in answers])]
        shares = summarize(answers, correct)
        shares.pop("correct", None)
        shares["generation_n"] = shares.pop("n")
        return shares
