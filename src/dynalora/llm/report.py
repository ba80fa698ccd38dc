"""What `dynalora sft` writes beside the adapter to show what training changed.

* samples.jsonl  one line per held-out prompt: the base model's answer ("before") and the
                 trained adapter's ("after"); for GSM8K-style references (`#### <number>`)
                 also the extracted answers and whether each is right
* report.md      held-out loss / perplexity and exact match before and after, the per-layer
                 ranks the run ended with, and the first few answers side by side

"Before" is the same model with its adapters switched off (the base weights never train), so
both sides come from one model in memory; "after" is whichever adapter is active.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dynalora.adapters import DynaLoraModel
from dynalora.allocation.plot import short_layer_name
from dynalora.data.sft import SftRecord
from dynalora.files import atomic_path
from dynalora.llm.evaluate import generate_answers, is_gsm8k_style, score_answers

SAMPLES_FILE, REPORT_FILE = "samples.jsonl", "report.md"
SIDES = ("before", "after")


def answer_before_and_after(wrapper: DynaLoraModel, tokenizer: Any, records: Sequence[SftRecord],
                            max_new_tokens: int, batch_size: int) -> list[dict[str, Any]]:
    """Greedy answers of the base model and of the active adapter to each record's prompt.

    Each sample holds where/prompt/response/before/after; when every record has a `####`
    reference, also reference_answer and, per side, `<side>_answer` and `<side>_correct`.
    """
    prompts = [r.prompt for r in records]
    with wrapper.disable_adapters():
        texts = {"before": generate_answers(wrapper, tokenizer, prompts, max_new_tokens, batch_size)}
    texts["after"] = generate_answers(wrapper, tokenizer, prompts, max_new_tokens, batch_size)
    samples = [{"where": r.where, "prompt": r.prompt, "response": r.response,
                "before": texts["before"][i], "after": texts["after"][i]} for i, r in enumerate(records)]
    if is_gsm8k_style(records):
        for side in SIDES:
            for sample, scored in zip(samples, score_answers(records, texts[side])):
                sample["reference_answer"] = scored["reference"]
                sample[f"{side}_answer"] = scored["prediction"]
                sample[f"{side}_correct"] = scored["correct"]
    return samples


def exact_match(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{"n", "before", "after"}: the share of scored samples answered right on each side."""
    n = len(samples)
    if n == 0 or "before_correct" not in samples[0]:
        raise ValueError("exact match needs samples scored against '#### <number>' references")
    return {"n": n, **{side: sum(s[f"{side}_correct"] for s in samples) / n for side in SIDES}}


def write_samples(path: Path, samples: Sequence[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for sample in samples:
            handle.write(json.dumps(sample, ensure_ascii=False) + "\n")


def rank_grid(ranks: dict[str, int]) -> list[str]:
    """Markdown table lines: one row per layer index, one column per module, plus the means."""
    rows: dict[str, dict[str, int]] = {}
    columns: list[str] = []
    for name, r in ranks.items():
        index, _, module = short_layer_name(name).rpartition(".")
        rows.setdefault(index or "-", {})[module] = r
        if module not in columns:
            columns.append(module)
    order = sorted(rows, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    lines = ["| layer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for index in order:
        lines.append(f"| {index} | " + " | ".join(str(rows[index].get(c, "")) for c in columns) + " |")
    means = []
    for column in columns:
        values = [rows[i][column] for i in order if column in rows[i]]
        means.append(f"{sum(values) / len(values):.1f}")
    lines.append("| mean | " + " | ".join(means) + " |")
    return lines


def _fenced(text: str) -> list[str]:
    # four backticks: a model's answer may itself hold a ``` block
    return ["````text", text.strip() or "(empty)", "````"]


def _verdict(sample: dict[str, Any], side: str) -> str:
    if f"{side}_correct" not in sample:
        return ""
    mark = "right" if sample[f"{side}_correct"] else "wrong"
    return f" (answer {sample[f'{side}_answer']}, {mark})"


def write_report(path: Path, metrics: dict[str, Any], base_model: str,
                 samples: Sequence[dict[str, Any]]) -> None:
    """report.md from metrics.json's content and the samples to show."""
    before, after = metrics["initial_metrics"], metrics["metrics"]
    lines = [f"# dynalora sft: {metrics['data']} ({metrics['method']})", "",
             f"Base model: {base_model}. {metrics['steps']} optimizer steps; held-out set of "
             f"{metrics['n_examples']} records. \"After\" is the saved adapter (best held-out loss, "
             f"step {metrics['best_step']}).", "",
             "| held-out | before (base model) | after |", "|---|---|---|",
             f"| loss | {before['loss']:.4f} | {after['loss']:.4f} |",
             f"| perplexity | {before['perplexity']:.3f} | {after['perplexity']:.3f} |"]
    if "exact_match" in metrics:
        em = metrics["exact_match"]
        lines.append(f"| exact match (n={em['n']}) | {em['before']:.3f} | {em['after']:.3f} |")
    ranks = metrics.get("ranks") or {}
    if ranks:
        lines += ["", f"## Ranks per layer ({sum(ranks.values())} in all, {len(ranks)} layers)", "",
                  *rank_grid(ranks)]
    if samples:
        lines += ["", "## Answers before and after training"]
    for number, sample in enumerate(samples, start=1):
        lines += ["", f"### {number}. {sample['where']}", "", "Prompt:", *_fenced(sample["prompt"]),
                  "", "Reference:", *_fenced(sample["response"])]
        for side in SIDES:
            lines += ["", f"{side.capitalize()}{_verdict(sample, side)}:", *_fenced(sample[side])]
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
