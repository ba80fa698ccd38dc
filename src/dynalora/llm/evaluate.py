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
def response_loss(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """{"loss": mean response-token cross-entropy, "perplexity": exp(loss), "tokens": count}."""
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
    if count == 0:
        raise ValueError("no response tokens to evaluate (every label is -100)")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": float(count)}


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


def gsm8k_exact_match(model: nn.Module, tokenizer: Any, records: Sequence[SftRecord],
                      max_new_tokens: int = 256, batch_size: int = 8) -> dict[str, Any]:
    """Greedy answers to the records' questions, scored on the final number.

    Returns {"exact_match": share correct, "n": count, "examples": [{prompt, reference,
    prediction, generation, correct}]}. Records without a `####` reference are an error.
    """
    from dynalora.llm.generate import generate_batch

    references = [reference_answer(r.response) for r in records]
    missing = [r.where for r, ref in zip(records, references) if ref is None]
    if missing:
        raise ValueError(f"GSM8K references need '#### <number>'; missing in {missing[:5]}")
    examples = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        texts = generate_batch(model, tokenizer, [r.prompt for r in chunk], max_new_tokens)
        for record, reference, text in zip(chunk, references[start:], texts):
            prediction = predicted_answer(text)
            examples.append({"prompt": record.prompt, "reference": reference, "prediction": prediction,
                             "generation": text, "correct": prediction == reference})
    correct = sum(e["correct"] for e in examples)
    return {"exact_match": correct / max(len(examples), 1), "n": len(examples), "examples": examples}
