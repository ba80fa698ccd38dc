"""The packaged SmolLM2-135M-Instruct loads from its GGUF file and takes a LoRA training step."""

from __future__ import annotations

import pytest
import torch
from conftest import DATA_DIR

from dynalora.adapters import DynaLoraModel, LoraConfig
from dynalora.data import BucketBatcher
from dynalora.data.sft import encode_sft, load_sft_records
from dynalora.llm.evaluate import token_loss
from dynalora.llm.models import PACKAGED, load_causal_lm, packaged_gguf, sft_targets


@pytest.mark.integration
def test_smollm2_loads_from_gguf_and_trains_one_step():
    try:
        packaged_gguf()
    except ValueError as err:
        pytest.skip(str(err))
    path = DATA_DIR / "gsm8k" / "train.jsonl"
    if not path.is_file():
        pytest.skip(f"GSM8K not found at {path}")
    model, tokenizer = load_causal_lm()
    assert model.config.model_type == "llama" and model.dynalora_source == PACKAGED
    assert next(model.parameters()).dtype == torch.float32 and tokenizer.chat_template
    features, _ = encode_sft(load_sft_records(path, max_records=2), tokenizer, max_length=256)
    batch = next(iter(BucketBatcher(features, 2, shuffle=False, pad_token_id=tokenizer.pad_token_id)))
    # the response-only labels start right after the template's assistant header
    first = batch["labels"][0].ne(-100).nonzero()[0, 0]
    assert tokenizer.decode(batch["input_ids"][0, first - 3 : first]).endswith("assistant\n")

    torch.manual_seed(0)
    wrapper = DynaLoraModel(model, LoraConfig(r=4, alpha=8, target_modules=sft_targets(model)))
    assert len(wrapper.lora_layers()) == 7 * model.config.num_hidden_layers
    params = [p for p in wrapper.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    loss, _ = token_loss(wrapper(**inputs).logits, batch["labels"])
    assert 0.0 < loss.item() < 10.0  # an instruction model already predicts GSM8K answers decently
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after, _ = token_loss(wrapper(**inputs).logits, batch["labels"])
    assert after.item() < loss.item()
