"""Text generation with the chat template: one prompt streamed, or many in left-padded batches.

    text = generate(model, tokenizer, "What is 17 * 3?")            # prints as it goes
    outs = generate_batch(model, tokenizer, prompts, GenerationSettings(max_new_tokens=256))
    outs[0].text, outs[0].stop_reason                                # "eos", "stop" or "length"

Greedy decoding by default (reproducible) with a mild repetition penalty on the answer's own
tokens (measured: see GenerationSettings); `temperature` (and optionally `top_p`) samples.
`repetition_penalty` and `no_repeat_ngram_size` are transformers' own logits processors (the
penalty counts only the answer's tokens unless `penalize_prompt`); stop
strings end a row as soon as its text contains one (the text is cut after it). Works on a plain
transformers model and on a `DynaLoraModel` (with whichever adapters are active, mixed, or off).

The prompt is rendered by `dynalora.data.sft.prompt_ids`, the same function that renders it
for training, so the tokens a model answers after are exactly those it was trained to answer
after (chat template, system prompt, generation prompt, BOS).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TextStreamer

from dynalora.adapters.config import check
from dynalora.data.sft import has_chat_template, prompt_ids

END_OF_TURN_MARKS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


@dataclass
class GenerationSettings:
    """How answers are decoded (the fields are `dynalora generate`'s flags of the same names)."""

    max_new_tokens: int = 256
    temperature: float | None = None  # None or 0: greedy
    top_p: float | None = None
    # > 1 discourages tokens already in the answer (1 or None: no penalty). 1.05 was chosen on
    # held-out GSM8K *training* problems (the smallest of 1.05/1.1/1.2 that ended the adapters'
    # greedy loops) and then checked on 200 test problems: loops 5.5-12% -> 0.5-1.5%, answers that
    # end 47.5-71% -> 68.5-97.5%, exact match within noise (base 5 -> 3, LoRA 1 -> 4, dynamic 3 -> 5;
    # docs/results/sft-gsm8k-v2/COMMAND.md, "Decoding").
    repetition_penalty: float | None = 1.05
    # Whether the penalty also counts the prompt's tokens (transformers' `generate` does). Off by
    # default: counted, the question's own numbers and the chat template's end-of-turn marks become
    # expensive to write, which measurably broke arithmetic and endings (COMMAND.md, "Decoding").
    penalize_prompt: bool = False
    no_repeat_ngram_size: int | None = None  # never repeat an n-gram of this many tokens
    stop: list[str] = field(default_factory=list)  # end an answer at the first of these strings

    def __post_init__(self) -> None:
        # bool is an int subclass: True is no token count
        check(isinstance(self.max_new_tokens, int) and not isinstance(self.max_new_tokens, bool)
              and self.max_new_tokens > 0, "max_new_tokens", "must be a positive integer", self.max_new_tokens)
        check(self.temperature is None or self.temperature >= 0, "temperature", "must be >= 0", self.temperature)
        check(self.top_p is None or 0 < self.top_p <= 1, "top_p", "must be in (0, 1]", self.top_p)
        check(self.repetition_penalty is None or self.repetition_penalty > 0, "repetition_penalty",
              "must be > 0 (1 means no penalty)", self.repetition_penalty)
        check(isinstance(self.penalize_prompt, bool), "penalize_prompt", "must be true or false",
              self.penalize_prompt)
        check(self.no_repeat_ngram_size is None or (isinstance(self.no_repeat_ngram_size, int)
                                                    and self.no_repeat_ngram_size > 0),
              "no_repeat_ngram_size", "must be a positive integer", self.no_repeat_ngram_size)
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        check(all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings", self.stop)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Generation:
    """One answer: its text (special tokens removed, cut after a stop string), why it ended
    ("eos": end-of-turn or EOS, "stop": a stop string, "length": max_new_tokens), and how many
    tokens the model produced for it."""

    text: str
    stop_reason: str
    new_tokens: int


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


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an answer: EOS, and the chat template's end-of-turn mark if distinct."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    if has_chat_template(tokenizer):
        for mark in END_OF_TURN_MARKS:
            token_id = tokenizer.convert_tokens_to_ids(mark)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id not in ids:
                ids.append(token_id)
    return ids


def generation_kwargs(tokenizer: Any, settings: GenerationSettings, prompt_length: int) -> dict[str, Any]:
    """Arguments for `model.generate` on prompts left-padded to `prompt_length` tokens: greedy
    unless a temperature > 0 is given."""
    sample = settings.temperature is not None and settings.temperature > 0
    kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "do_sample": sample,
                              "pad_token_id": tokenizer.pad_token_id}
    # Overriding every knob keeps a model's own generation_config (which may ask for sampling
    # or a penalty) from changing what "greedy" or "no penalty" means here.
    kwargs.update(temperature=settings.temperature if sample else None,
                  top_p=settings.top_p if sample else None, top_k=None,
                  repetition_penalty=settings.repetition_penalty if settings.penalize_prompt else None,
                  no_repeat_ngram_size=settings.no_repeat_ngram_size)
    if settings.repetition_penalty not in (None, 1.0) and not settings.penalize_prompt:
        # transformers' own processor, told to skip the prompt (every row's prompt ends at the
        # same position: the rows are left-padded)
        kwargs["logits_processor"] = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(
            float(settings.repetition_penalty), prompt_ignore_length=prompt_length)])
    stop = end_of_turn_ids(tokenizer)
    if stop:
        kwargs["eos_token_id"] = stop
    if settings.stop:  # transformers matches stop strings on the decoded text; it needs the tokenizer
        kwargs.update(stop_strings=list(settings.stop), tokenizer=tokenizer)
    return kwargs


def _settings(settings: GenerationSettings | None, overrides: dict[str, Any]) -> GenerationSettings:
    given = {k: v for k, v in overrides.items() if v is not None}
    if settings is None:
        return GenerationSettings(**given)
    return GenerationSettings(**{**settings.to_dict(), **given}) if given else settings


def finish(tokenizer: Any, new_ids: Sequence[int], settings: GenerationSettings, ends: set[int]) -> Generation:
    """The answer in `new_ids` (generated tokens, padding included): cut at the first end-of-turn
    token or after the first stop string, and labelled with why it ended."""
    ids = [int(i) for i in new_ids]
    cut = next((i for i, token in enumerate(ids) if token in ends), None)
    kept = ids if cut is None else ids[:cut]
    text = tokenizer.decode(kept, skip_special_tokens=True)
    hits = [(text.find(s) + len(s)) for s in settings.stop if s in text]
    if hits:
        return Generation(text[: min(hits)], "stop", len(kept))
    return Generation(text, "eos" if cut is not None else "length", len(ids) if cut is None else cut + 1)


def _prepare(model: nn.Module, tokenizer: Any, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Left-padded prompt ids (new tokens must follow each prompt directly) on the model's device."""
    rows = [prompt_ids(tokenizer, p) for p in prompts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    device = next(model.parameters()).device
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def _run(model: nn.Module, inputs: dict[str, torch.Tensor], kwargs: dict[str, Any]) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return model.generate(**inputs, **kwargs)
    finally:
        model.train(was_training)


def generate(model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int | None = None,
             stream: bool = True, temperature: float | None = None, top_p: float | None = None,
             on_text: Callable[[str], None] | None = None,
             settings: GenerationSettings | None = None) -> str:
    """The model's answer to `prompt` (formatted as a user turn), streamed while it is made.

    stream=True sends each piece of text to `on_text` (default: print to stdout) as soon as it
    is complete words; the full answer is returned either way. Keyword values override
    `settings` (default 128 new tokens here).
    """
    settings = _settings(settings or GenerationSettings(max_new_tokens=128),
                         {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p})
    inputs = _prepare(model, tokenizer, [prompt])
    kwargs = generation_kwargs(tokenizer, settings, inputs["input_ids"].shape[1])
    if stream:
        kwargs["streamer"] = CallbackStreamer(tokenizer, on_text or print_piece)
    output = _run(model, inputs, kwargs)
    return finish(tokenizer, output[0, inputs["input_ids"].shape[1]:], settings,
                  set(end_of_turn_ids(tokenizer))).text


def generate_batch(model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int | None = None,
                   temperature: float | None = None, top_p: float | None = None,
                   settings: GenerationSettings | None = None) -> list[str]:
    """Answers to several prompts in one left-padded batch (no streaming)."""
    settings = _settings(settings, {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p})
    return [g.text for g in generate_many(model, tokenizer, prompts, settings, batch_size=len(prompts) or 1)]


def generate_many(model: nn.Module, tokenizer: Any, prompts: Sequence[str],
                  settings: GenerationSettings | None = None, batch_size: int = 16,
                  on_batch: Callable[[int], None] | None = None) -> list[Generation]:
    """Answers to `prompts`, `batch_size` at a time, each with why it ended.

    Prompts are sorted by length so each batch pads little (answers come back in input order);
    a batch ends when every row has hit end-of-turn/EOS, a stop string or max_new_tokens.
    `on_batch(done)` is called after each batch (progress).
    """
    settings = settings or GenerationSettings()
    ends = set(end_of_turn_ids(tokenizer))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: dict[int, Generation] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        inputs = _prepare(model, tokenizer, [prompts[i] for i in chunk])
        width = inputs["input_ids"].shape[1]
        output = _run(model, inputs, generation_kwargs(tokenizer, settings, width))
        for row, index in enumerate(chunk):
            results[index] = finish(tokenizer, output[row, width:], settings, ends)
        if on_batch is not None:
            on_batch(len(results))
    return [results[i] for i in range(len(prompts))]
