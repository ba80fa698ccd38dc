"""Text generation with the chat template, streamed token by token as it is produced.

    text = generate(model, tokenizer, "What is 17 * 3?")            # prints as it goes

Greedy decoding by default (reproducible); pass `temperature` (and optionally `top_p`) to
sample. Works on a plain transformers model and on a `DynaLoraModel` (with whichever adapters
are active, mixed, or disabled).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import TextStreamer

from dynalora.data.sft import format_prompt, has_chat_template


class CallbackStreamer(TextStreamer):
    """transformers' TextStreamer, sending each finished piece of text to a callback."""

    def __init__(self, tokenizer: Any, callback: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.callback = callback

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.callback(text)


def print_piece(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def generation_kwargs(tokenizer: Any, max_new_tokens: int, temperature: float | None,
                      top_p: float | None) -> dict[str, Any]:
    """Arguments for `model.generate`: greedy unless a temperature > 0 is given."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens}")
    if temperature is not None and temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    sample = temperature is not None and temperature > 0
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sample,
                              "pad_token_id": tokenizer.pad_token_id}
    # Overriding every sampling knob keeps a model's own generation_config (which may ask for
    # sampling) from changing what "greedy" means here.
    kwargs.update(temperature=temperature if sample else None, top_p=top_p if sample else None,
                  top_k=None)
    stop = end_of_turn_ids(tokenizer)
    if stop:
        kwargs["eos_token_id"] = stop
    return kwargs


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an answer: EOS, and the chat template's end-of-turn mark if distinct."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    if has_chat_template(tokenizer):
        for mark in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            token_id = tokenizer.convert_tokens_to_ids(mark)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id not in ids:
                ids.append(token_id)
    return ids


@torch.no_grad()
def generate(model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int = 128,
             stream: bool = True, temperature: float | None = None, top_p: float | None = None,
             on_text: Callable[[str], None] | None = None) -> str:
    """The model's answer to `prompt` (formatted as a user turn), streamed while it is made.

    stream=True sends each piece of text to `on_text` (default: print to stdout) as soon as it
    is complete words; the full answer is returned either way.
    """
    device = next(model.parameters()).device
    text = format_prompt(tokenizer, prompt)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not has_chat_template(tokenizer))
    inputs = {k: v.to(device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    kwargs = generation_kwargs(tokenizer, max_new_tokens, temperature, top_p)
    if stream:
        kwargs["streamer"] = CallbackStreamer(tokenizer, on_text or print_piece)
    was_training = model.training
    model.eval()
    try:
        output = model.generate(**inputs, **kwargs)
    finally:
        model.train(was_training)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def generate_batch(model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 128,
                   temperature: float | None = None, top_p: float | None = None) -> list[str]:
    """Answers to several prompts in one left-padded batch (no streaming)."""
    device = next(model.parameters()).device
    texts = [format_prompt(tokenizer, p) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # new tokens must follow each prompt directly
    try:
        inputs = tokenizer(texts, return_tensors="pt", padding=True,
                           add_special_tokens=not has_chat_template(tokenizer))
    finally:
        tokenizer.padding_side = side
    inputs = {k: v.to(device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    was_training = model.training
    model.eval()
    try:
        output = model.generate(**inputs, **generation_kwargs(tokenizer, max_new_tokens, temperature, top_p))
    finally:
        model.train(was_training)
    width = inputs["input_ids"].shape[1]
    return [tokenizer.decode(row[width:], skip_special_tokens=True) for row in output]
