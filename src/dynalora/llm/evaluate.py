"""Evaluating instruction-tuned causal LMs: held-out loss / perplexity and GSM8K exact match.

Loss is averaged over response tokens (the labels that are not -100), summed over the whole
split before dividing, so long answers weigh by their length as they do in training.
GSM8K answers end with `#### <number>`; a generation is scored by the number after its last
`####` if it wrote one, else by the last number in it (commas and a trailing `.` removed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from dynalora.data.sft import SftRecord

NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def _model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: batch[k].to(device) for k in ("input_ids", "attention_mask") if k in batch}


def token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> tuple[torch.Tensor, int]:
    """(cross-entropy of next-token predictions on labelled positions, number of them).

    Position t predicts token t+1; labels of -100 (prompt, padding) count for nothing.
    reduction "mean" averages over the labelled tokens of the batch, "sum" adds them up.
    """
    shifted_logits, shifted_labels = logits[:, :-1].float(), labels[:, 1:]
    count = int((shifted_labels != -100).sum())
    loss = nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]), shifted_labels.reshape(-1),
        ignore_index=-100, reduction="sum")
    if reduction == "mean":
        loss = loss / max(count, 1)
    return loss, count


@torch.no_grad()
def response_loss_sum(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> tuple[float, int]:
    """(summed response-token cross-entropy, number of response tokens) over `batches`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for batch in batches:
            logits = model(**_model_inputs(batch, device)).logits
            loss_sum, tokens = token_loss(logits, batch["labels"].to(device), reduction="sum")
            total += float(loss_sum)
            count += tokens
    finally:
        model.train(was_training)
    return total, count


def loss_summary(total: float, count: int) -> dict[str, float]:
    """{"loss": mean response-token cross-entropy, "perplexity": exp(loss), "tokens": count}."""
    if count == 0:
        raise ValueError("no response tokens to evaluate (every label is -100)")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": float(count)}


def response_loss(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """{"loss": mean response-token cross-entropy, "perplexity": exp(loss), "tokens": count}."""
    return loss_summary(*response_loss_sum(model, batches))


def _clean_number(token: str) -> str | None:
    token = token.replace(",", "").replace("$", "").rstrip(".")
    if not token or token in ("-", "."):
        return None
    try:
        value = float(token)
    except ValueError:
        return None
    # 72, 72.0 and 72.00 are the same answer
    return str(int(value)) if value.is_integer() else repr(value)


def reference_answer(answer: str) -> str | None:
    """The final number of a GSM8K reference answer (`... #### 72`)."""
    if "####" not in answer:
        return None
    match = NUMBER.search(answer.rsplit("####", 1)[1])
    return _clean_number(match.group()) if match else None


def predicted_answer(text: str) -> str | None:
    """The number after the last `####` in a generation, else the last number in it."""
    if "####" in text:
        match = NUMBER.search(text.rsplit("####", 1)[1])
        if match:
            return _clean_number(match.group())
    numbers = NUMBER.findall(text)
    return _clean_number(numbers[-1]) if numbers else None


def generate_answers(model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 256,
                     batch_size: int = 8) -> list[str]:
    """Greedy answers to `prompts`, generated `batch_size` at a time."""
    from dynalora.llm.generate import generate_batch

    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts += generate_batch(model, tokenizer, list(prompts[start : start + batch_size]), max_new_tokens)
    return texts


def is_gsm8k_style(records: Sequence[SftRecord]) -> bool:
    """Whether every record's response ends in a `#### <number>` reference (exact match applies)."""
    return bool(records) and all(reference_answer(r.response) is not None for r in records)


def score_answers(records: Sequence[SftRecord], texts: Sequence[str]) -> list[dict[str, Any]]:
    """[{prompt, reference, prediction, generation, correct}] for generations of the records.

    Records without a `####` reference are an error.
    """
    references = [reference_answer(r.response) for r in records]
    missing = [r.where for r, ref in zip(records, references) if ref is None]
    if missing:
        raise ValueError(f"GSM8K references need '#### <number>'; missing in {missing[:5]}")
    examples = []
    for record, reference, text in zip(records, references, texts):
        prediction = predicted_answer(text)
        examples.append({"prompt": record.prompt, "reference": reference, "prediction": prediction,
                         "generation": text, "correct": prediction == reference})
    return examples


def gsm8k_exact_match(model: nn.Module, tokenizer: Any, records: Sequence[SftRecord],
                      max_new_tokens: int = 256, batch_size: int = 8) -> dict[str, Any]:
    """Greedy answers (with `GenerationSettings`' default penalty) to the records' questions, scored on
    the final number.

    Returns {"exact_match": share correct, "n": count, "examples": [{prompt, reference,
    prediction, generation, correct}]}. Records without a `####` reference are an error.
    """
    score_answers(records, [""] * len(records))  # fail on a missing reference before generating
    texts = generate_answers(model, tokenizer, [r.prompt for r in records], max_new_tokens, batch_size)
    examples = score_answers(records, texts)
    correct = sum(e["correct"] for e in examples)
    return {"exact_match": correct / max(len(examples), 1), "n": len(examples), "examples": examples}
