"""What `dynalora sft` writes beside the adapter to show what training changed.

* samples.jsonl  one line per held-out prompt: the base model's answer ("before") and the
                 trained adapter's ("after"); for GSM8K-style references (`#### <number>`)
                 also the extracted answers and whether each is right
                 and, per side, why the answer ended and whether it loops
* report.md      held-out loss / perplexity, exact match (with McNemar's paired test), the
                 share of answers that end properly and that loop, before and after; the
                 per-layer ranks the run ended with, and the first few answers side by side

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
from dynalora.llm.evaluate import is_gsm8k_style, score_answers
from dynalora.llm.generate import Generation, GenerationSettings, generate_many
from dynalora.llm.quality import find_loop, mcnemar, summarize

SAMPLES_FILE, REPORT_FILE = "samples.jsonl", "report.md"
SIDES = ("before", "after")


def answer_before_and_after(wrapper: DynaLoraModel, tokenizer: Any, records: Sequence[SftRecord],
                            settings: GenerationSettings, batch_size: int,
                            before: Sequence[Generation] | None = None) -> list[dict[str, Any]]:
    """Answers of the base model and of the active adapter to each record's prompt.

    Each sample holds where/prompt/response/before/after, and per side `<side>_stop` (eos,
    stop or length), `<side>_tokens` and `<side>_loops`; when every record has a `####`
    reference, also reference_answer and, per side, `<side>_answer` and `<side>_correct`.
    `before` (the base model's answers from an earlier run on the same prompts with the same
    generation settings, see `reuse_before`) is used instead of generating that side again.
    """
    contexts = [r.context() for r in records]
    if before is None:
        with wrapper.disable_adapters():
            before = generate_many(wrapper, tokenizer, contexts, settings, batch_size)
    outputs = {"before": before, "after": generate_many(wrapper, tokenizer, contexts, settings, batch_size)}
    decoding = settings.to_dict()  # kept with every sample: reusing "before" answers needs the same decoding
    samples = [{"where": r.where, "prompt": r.prompt, "response": r.response, "decoding": decoding} for r in records]
    for side, generations in outputs.items():
        for sample, generation in zip(samples, generations):
            sample.update({side: generation.text, f"{side}_stop": generation.stop_reason,
                           f"{side}_tokens": generation.new_tokens,
                           f"{side}_loops": find_loop(generation.text) is not None})
    if is_gsm8k_style(records):
        for side in SIDES:
            for sample, scored in zip(samples, score_answers(records, [g.text for g in outputs[side]])):
                sample["reference_answer"] = scored["reference"]
                sample[f"{side}_answer"] = scored["prediction"]
                sample[f"{side}_correct"] = scored["correct"]
    return samples


def reuse_before(baseline: Sequence[dict[str, Any]], records: Sequence[SftRecord],
                 settings: GenerationSettings) -> list[Generation]:
    """The "before" answers of earlier samples, which must be for the same prompts in order and
    decoded with the same `settings` (else before and after would not be compared alike)."""
    if len(baseline) < len(records) or any(b.get("prompt") != r.prompt for b, r in zip(baseline, records)):
        raise ValueError("baseline samples are not for the same held-out prompts (same data, seed and order)")
    wanted = settings.to_dict()
    saved = next((b.get("decoding") for b in baseline[: len(records)] if b.get("decoding") != wanted), wanted)
    if saved != wanted:
        differ = [k for k in wanted if not isinstance(saved, dict) or saved.get(k) != wanted[k]]
        raise ValueError("baseline samples were decoded with other generation settings "
                         f"({', '.join(differ)}; they record {saved!r}): write them again with these settings")
    try:
        return [Generation(b["before"], b["before_stop"], b["before_tokens"]) for b in baseline[: len(records)]]
    except (KeyError, TypeError) as err:
        raise ValueError(f"baseline samples lack the field {err} (write them with `dynalora sft` or "
                         "benchmarks/sft_generation.py)") from None


def generations(samples: Sequence[dict[str, Any]], side: str) -> list[Generation]:
    return [Generation(s[side], s[f"{side}_stop"], s[f"{side}_tokens"]) for s in samples]


def judge(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{"before": shares, "after": shares[, "mcnemar": paired test]} over the samples
    (see `dynalora.llm.quality.summarize`; exact match when they are scored)."""
    scored = bool(samples) and "before_correct" in samples[0]
    result: dict[str, Any] = {
        side: summarize(generations(samples, side), [s[f"{side}_correct"] for s in samples] if scored else None)
        for side in SIDES}
    if scored:
        result["mcnemar"] = mcnemar([s["before_correct"] for s in samples], [s["after_correct"] for s in samples])
    return result


def exact_match(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{"n", "before", "after"}: the share of scored samples answered right on each side."""
    n = len(samples)
    if n == 0 or "before_correct" not in samples[0]:
        raise ValueError("exact match needs samples scored against '#### <number>' references")
    return {"n": n, **{side: sum(s[f"{side}_correct"] for s in samples) / n for side in SIDES}}


def read_samples(path: str | Path) -> list[dict[str, Any]]:
    """The samples a run wrote (samples.jsonl), e.g. to reuse its "before" answers."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"{path}: cannot read the baseline samples ({err.strerror})") from None
    return [json.loads(line) for line in text.splitlines() if line.strip()]


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


def generation_rows(judged: dict[str, Any] | None) -> list[str]:
    """Table rows for the generation shares (and the McNemar line below the table)."""
    if not judged:
        return []
    before, after = judged["before"], judged["after"]
    n = before["n"]
    rows = [f"| answers that end (end-of-turn or `#### n`), n={n} | {before['ended']:.3f} | {after['ended']:.3f} |",
            f"| answers that loop, n={n} | {before['looping']:.3f} | {after['looping']:.3f} |",
            f"| mean new tokens, n={n} | {before['mean_new_tokens']:.1f} | {after['mean_new_tokens']:.1f} |"]
    if "mcnemar" in judged:
        test = judged["mcnemar"]
        rows += ["", f"Exact match on {n} held-out prompts: {before['correct']} right before, {after['correct']} "
                     f"after; {test['only_before']} right only before, {test['only_after']} only after "
                     f"(exact McNemar test p = {test['p_value']:.3g})."]
    if judged.get("settings"):
        rows += ["", "Generation settings: " + ", ".join(f"{k}={v}" for k, v in judged["settings"].items()
                                                          if v not in (None, []))]
    return rows


def chosen_by(metrics: dict[str, Any]) -> str:
    """How the saved adapter was chosen, in words: "best held-out loss" or, for a generation
    metric, its value on the fixed prompts answered at each evaluation."""
    metric = metrics.get("metric_for_best_model", "loss")
    if metric in ("loss", "perplexity"):
        return f"best held-out {metric}"
    n = metrics.get("eval_generation_samples")
    return f"best {metric} = {metrics['best_metric']:.3f} on {n} other held-out prompts answered at each evaluation"


def write_report(path: Path, metrics: dict[str, Any], base_model: str,
                 samples: Sequence[dict[str, Any]]) -> None:
    """report.md from metrics.json's content and the samples to show."""
    before, after = metrics["initial_metrics"], metrics["metrics"]
    lines = [f"# dynalora sft: {metrics['data']} ({metrics['method']})", "",
             f"Base model: {base_model}. {metrics['steps']} optimizer steps; held-out set of "
             f"{metrics['n_examples']} records. \"After\" is the saved adapter ({chosen_by(metrics)}, "
             f"step {metrics['best_step']}).", "",
             "| held-out | before (base model) | after |", "|---|---|---|",
             f"| loss | {before['loss']:.4f} | {after['loss']:.4f} |",
             f"| perplexity | {before['perplexity']:.3f} | {after['perplexity']:.3f} |"]
    if "exact_match" in metrics:
        em = metrics["exact_match"]
        lines.append(f"| exact match (n={em['n']}) | {em['before']:.3f} | {em['after']:.3f} |")
    lines += generation_rows(metrics.get("generation"))
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
