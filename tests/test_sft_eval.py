"""GSM8K answer parsing and scoring, held-out loss, and streamed generation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_chat_tokenizer, tiny_gpt2, tiny_llama

from dynalora.adapters import DynaLoraModel, LoraConfig
from dynalora.data import BucketBatcher
from dynalora.data.sft import SftRecord, encode_sft
from dynalora.llm.evaluate import (
    gsm8k_exact_match,
    predicted_answer,
    reference_answer,
    response_loss,
)
from dynalora.llm.generate import generate, generate_batch


def test_gsm8k_numbers_are_parsed_and_normalised():
    assert reference_answer("She sold 48/2 = <<48/2=24>>24 clips.\n#### 1,072") == "1072"
    assert reference_answer("#### -3.50") == "-3.5"
    assert reference_answer("no final answer") is None
    assert predicted_answer("so 5 + 7 = 12 apples, then 14 pears\n#### 72.") == "72"
    assert predicted_answer("It costs $1,250.00 in total.") == "1250"
    assert predicted_answer("Between 3 and 4, the answer is 18.") == "18"
    assert predicted_answer("#### I do not know, maybe 9") == "9"
    assert predicted_answer("no digits at all") is None


def test_response_loss_counts_response_tokens_only():
    tokenizer, model = tiny_chat_tokenizer(), tiny_llama()
    records = [SftRecord("1+1?", "2"), SftRecord("a long question here?", "a longer answer")]
    features, _ = encode_sft(records, tokenizer, max_length=64)
    result = response_loss(model, BucketBatcher(features, 2, shuffle=False, pad_token_id=tokenizer.pad_token_id))
    # by hand, one record at a time: next-token losses at the labelled positions
    total, count = 0.0, 0
    for f in features:
        ids = torch.tensor([f["input_ids"]])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0].log_softmax(-1)
        for t in range(1, len(f["labels"])):
            if f["labels"][t] != -100:
                total -= float(logp[t - 1, f["labels"][t]])
                count += 1
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


@pytest.mark.parametrize("model_fn,chat", [(tiny_llama, True), (tiny_gpt2, False)])
def test_streamed_pieces_make_up_the_returned_text(model_fn, chat):
    tokenizer, model = tiny_chat_tokenizer(chat=chat), model_fn()
    pieces: list[str] = []
    text = generate(model, tokenizer, "2+2?", max_new_tokens=12, on_text=pieces.append)
    assert len(pieces) >= 1 and "".join(pieces) == text
    assert generate(model, tokenizer, "2+2?", max_new_tokens=12, stream=False) == text  # greedy: repeatable
    sampled = {generate(model, tokenizer, "2+2?", max_new_tokens=12, stream=False, temperature=5.0)
               for _ in range(4)}
    assert len(sampled) > 1


def test_batched_generation_matches_one_at_a_time_and_scores_exact_match(monkeypatch):
    tokenizer, model = tiny_chat_tokenizer(), tiny_llama()
    prompts = ["1+2?", "a longer prompt, 7*6?"]
    together = generate_batch(model, tokenizer, prompts, max_new_tokens=6)
    alone = [generate(model, tokenizer, p, max_new_tokens=6, stream=False) for p in prompts]
    assert together == alone
    records = [SftRecord(p, f"x\n#### {n}") for p, n in zip(prompts, (3, 42))]
    answers = iter(["so it is 3", "#### 41"])
    monkeypatch.setattr("dynalora.llm.generate.generate_batch",
                        lambda m, t, ps, n: [next(answers) for _ in ps])
    result = gsm8k_exact_match(model, tokenizer, records)
    assert result["exact_match"] == 0.5 and [e["correct"] for e in result["examples"]] == [True, False]


def test_generation_uses_the_active_adapter():
    tokenizer = tiny_chat_tokenizer()
    wrapper = DynaLoraModel(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for adapter in wrapper.adapter_modules().values():
            adapter.lora_B.normal_(0, 2.0)
    with_adapter = generate(wrapper, tokenizer, "hello", max_new_tokens=8, stream=False)
    with wrapper.disable_adapters():
        base = generate(wrapper, tokenizer, "hello", max_new_tokens=8, stream=False)
    assert base == generate(tiny_llama(), tokenizer, "hello", max_new_tokens=8, stream=False)
    assert with_adapter != base
