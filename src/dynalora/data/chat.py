"""Conversations as tokens: one renderer for training and for generation, and assistant masks.

A prompt is answered after exactly the tokens it was trained on: `prompt_ids` (generation) and
`conversation_ids` (training) both render with the tokenizer's chat template, its default
system prompt included, tokenize without the tokenizer's own special tokens (the template
writes them), and add the BOS token once when the tokenizer would add one but the template
did not. Without a chat template the plain "### Instruction / ### Response" layout is used
and the tokenizer adds its special tokens; each answer then ends with EOS, so the model learns
to stop.

Multi-turn conversations (`messages` records) train on every assistant turn, end-of-turn mark
included; system and user turns are context only (label -100).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dynalora.data.base import DataError

PLAIN_PROMPT = "### Instruction:\n{prompt}\n\n### Response:\n"
Message = dict[str, str]
ROLES = ("system", "user", "assistant")


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as text: the chat template, or the plain layout (a system message
    becomes a first paragraph; each assistant turn is followed by EOS as text)."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    eos = tokenizer.eos_token or ""
    parts = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system":
            parts.append(content + "\n\n")
        elif role == "user":
            parts.append(PLAIN_PROMPT.format(prompt=content))
        else:
            parts.append(content + eos + "\n\n")
    text = "".join(parts)
    if messages and messages[-1]["role"] == "assistant":
        text = text[: -2]  # no blank line after the last answer
    return text


def tokenize(tokenizer: Any, text: str, with_offsets: bool = False) -> dict[str, Any]:
    """Token ids of rendered text (and character offsets if asked), BOS exactly once."""
    chat = has_chat_template(tokenizer)
    kwargs = {"return_offsets_mapping": True} if with_offsets else {}
    encoded = tokenizer(text, add_special_tokens=not chat, **kwargs)
    ids, offsets = list(encoded["input_ids"]), list(encoded.get("offset_mapping") or [])
    bos = getattr(tokenizer, "bos_token_id", None)
    if chat and bos is not None and adds_bos(tokenizer) and (not ids or ids[0] != bos):
        # the model was pretrained with BOS first; a template that omits it must not drop it
        ids, offsets = [bos, *ids], ([(0, 0), *offsets] if with_offsets else offsets)
    return {"input_ids": ids, "offset_mapping": offsets}


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS before plain text (what the model saw in pretraining)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def prompt_ids(tokenizer: Any, prompt: str | Sequence[Message]) -> list[int]:
    """The tokens a model answers after: a user message (or a conversation ending in one)
    rendered with the generation prompt (the assistant header)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return tokenize(tokenizer, render(tokenizer, messages, add_generation_prompt=True))["input_ids"]


def check_messages(messages: object) -> list[Message] | str:
    """The messages as role/content dicts, or why they cannot be used (for the row report)."""
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"message {i} is not an object"
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        role = {"human": "user", "gpt": "assistant", "model": "assistant", "bot": "assistant"}.get(role, role)
        if role not in ROLES:
            return f"message {i} has role {role!r}; expected one of {ROLES} (or human/gpt)"
        if not isinstance(content, str):
            return f"message {i} has no text content"
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        return "no assistant message with text to learn from"
    return out


def _token_at(offsets: Sequence[tuple[int, int]], char: int) -> int:
    """Index of the first token ending after `char` (a token straddling it counts as later)."""
    for index, (start, end) in enumerate(offsets):
        if end > char and end > start:
            return index
    return len(offsets)


def assistant_spans(tokenizer: Any, messages: Sequence[Message]) -> tuple[list[int], list[tuple[int, int]]]:
    """(token ids of the whole conversation, [start, end) token spans of its assistant turns).

    Each span begins after the assistant header and ends where the next turn's rendering begins,
    so it holds the answer and the template's end-of-turn mark (the plain layout: EOS).
    Boundaries come from rendering each prefix of the conversation: the text up to a turn must
    be a prefix of the whole text, which is true of every chat template that does not rewrite
    earlier turns.
    """
    full = render(tokenizer, messages)
    encoded = tokenize(tokenizer, full, with_offsets=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    if len(offsets) != len(ids):
        raise DataError("multi-turn records need a fast tokenizer (one that reports character offsets)")
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if not full.startswith(upto) or not upto.startswith(before):
            raise DataError("the chat template rewrites earlier turns; cannot find the assistant turns")
        end_char = len(full) if i == len(messages) - 1 else len(upto)
        start, end = _token_at(offsets, len(before)), _token_at(offsets, end_char)
        if not has_chat_template(tokenizer) and i == len(messages) - 1:
            end = len(ids)
        spans.append((start, end))
    return ids, spans
