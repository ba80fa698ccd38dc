"""Instruction-tuning (SFT) data: prompt/response or multi-turn records, response-only labels.

    records = load_sft_records("gsm8k/train.jsonl")             # preset detected: gsm8k
    features, report = encode_sft(records, tokenizer, max_length=256)
    batches = BucketBatcher(features, batch_size=4, shuffle=True, pad_token_id=tokenizer.pad_token_id)

Each feature holds `input_ids`, `attention_mask` and `labels`, with labels -100 on the prompt
(and, once batched, on padding), so the loss counts the response tokens only. The prompt is
formatted with the tokenizer's chat template when it has one (user turn = prompt, assistant
turn = response), else with a plain "### Instruction / ### Response" template; generation
renders prompts with the same code (`dynalora.data.chat`).

Records come as prompt/response fields (presets gsm8k, alpaca, generic) or as conversations:
`{"messages": [{"role": "user", "content": ...}, ...]}` (OpenAI style) or ShareGPT's
`{"conversations": [{"from": "human", "value": ...}, ...]}`; every assistant turn trains.
GSM8K's calculator annotations (`<<48/2=24>>`) can be stripped from responses
(`strip_calculator`): they are tool calls for a calculator the model never gets at generation.

Truncation is never silent: `SftEncodeReport` counts the truncated records and the ones dropped
because none of their response survived, and `encode_sft` warns about both.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dynalora.data.base import DataError, DataWarning, RowProblems
from dynalora.data.chat import (
    PLAIN_PROMPT,
    Message,
    assistant_spans,
    check_messages,
    has_chat_template,
    prompt_ids,
    render,
    tokenize,
)
from dynalora.data.tables import json_records

__all__ = ["PLAIN_PROMPT", "PRESETS", "SftRecord", "encode_sft", "encode_sft_record", "format_conversation",
           "format_prompt", "has_chat_template", "load_sft_records", "pack_features", "prompt_ids",
           "strip_calculator"]

# preset name -> (prompt field, response field, optional input field appended to the prompt)
PRESETS: dict[str, tuple[str, str, str | None]] = {
    "gsm8k": ("question", "answer", None),
    "alpaca": ("instruction", "output", "input"),
    "generic": ("prompt", "response", None),
}
CONVERSATION_FIELDS = ("messages", "conversations")  # OpenAI style, ShareGPT style
CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator calls, e.g. <<48/2=24>>


@dataclass(frozen=True)
class SftRecord:
    """One instruction example; `where` locates it in its file (e.g. "line 12").

    A multi-turn record keeps its whole conversation in `messages`; `prompt` and `response`
    are then its last user turn and its last assistant turn (what generation is judged on).
    """

    prompt: str
    response: str
    where: str = ""
    messages: tuple[tuple[str, str], ...] | None = None  # (role, content) pairs

    def conversation(self) -> list[Message]:
        """All turns as role/content dicts (a prompt/response record: one user, one assistant)."""
        if self.messages is None:
            return [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.response}]
        return [{"role": r, "content": c} for r, c in self.messages]

    def context(self) -> str | list[Message]:
        """What a model answers when judged: the prompt, or the turns before the last answer."""
        if self.messages is None:
            return self.prompt
        turns = self.conversation()
        last = max(i for i, m in enumerate(turns) if m["role"] == "assistant")
        return turns[:last]


def strip_calculator(text: str) -> str:
    """GSM8K text without its calculator annotations: "48/2 = <<48/2=24>>24" -> "48/2 = 24"."""
    return CALCULATOR.sub("", text)


@dataclass
class SftEncodeReport:
    """What encoding did to the records, for the run log."""

    records: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_no_response: int = 0
    offset_masks: int = 0  # records whose prompt/response boundary needed the offset fallback
    max_length: int = 0
    truncated_where: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["truncated_where"] = self.truncated_where[:20]
        return data


# -- reading ------------------------------------------------------------------------------------
def detect_preset(record: dict[str, Any]) -> str:
    """The preset whose fields the record has (alpaca before generic: it is the more specific),
    or "messages" for conversation records."""
    if any(key in record for key in CONVERSATION_FIELDS):
        return "messages"
    for name in ("gsm8k", "alpaca", "generic"):
        prompt, response, _ = PRESETS[name]
        if prompt in record and response in record:
            return name
    known = "; ".join(f"{n}: {p}/{r}" for n, (p, r, _) in PRESETS.items())
    raise DataError(
        f"cannot tell the prompt and response fields from the keys {sorted(record)}; known "
        f"layouts are {known}; messages or conversations (a list of turns). Name them with "
        "prompt_field= and response_field="
    )


def load_sft_records(
    path: str | Path,
    prompt_field: str | None = None,
    response_field: str | None = None,
    input_field: str | None = None,
    preset: str | None = None,
    max_records: int | None = None,
    strip_calculator_annotations: bool | None = None,
) -> list[SftRecord]:
    """Read a JSONL file (or a JSON list) of prompt/response or conversation records.

    Fields come from `preset` (gsm8k, alpaca, generic, messages), from the explicit field
    names, or are detected from the first record's keys. With an input field (Alpaca's
    `input`), a non-empty input is appended to the instruction on a new paragraph. Malformed
    records (bad JSON, not an object, missing or non-text fields, turns without a known role)
    are skipped and reported with their line numbers. `strip_calculator_annotations` removes
    GSM8K's `<<a=b>>` calls from every answer; None (the default): only when the layout is
    gsm8k (given, detected, or the gsm8k fields named explicitly), since in other data such
    spans may be real text (C++'s `cout << x; cin >> y`).
    """
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise DataError(f"{path}: SFT data must be .jsonl or .json (a list of records)")
    problems = RowProblems(path)
    raw = json_records(path, problems)
    if preset is not None and preset not in (*PRESETS, "messages"):
        raise DataError(f"unknown SFT preset {preset!r}; known: {[*sorted(PRESETS), 'messages']}")
    if preset is None and (prompt_field is None or response_field is None):
        first = next((r for _, r in raw if isinstance(r, dict)), None)
        if first is None:
            raise DataError(f"{path}: no JSON object records. {problems.summary()}")
        preset = detect_preset(first)
    fields = PRESETS.get(preset or "", (None, None, None))
    keys = (prompt_field or fields[0], response_field or fields[1], input_field or fields[2])
    if strip_calculator_annotations is None:
        strip_calculator_annotations = preset == "gsm8k" or keys[:2] == PRESETS["gsm8k"][:2]
    records = []
    for where, record in raw:
        parsed = _parse_conversation(record) if preset == "messages" else _parse_record(record, *keys)
        if isinstance(parsed, str):
            problems.add(where, parsed)
            continue
        if strip_calculator_annotations:
            parsed = [(role, strip_calculator(text) if role == "assistant" else text) for role, text in parsed]
        records.append(_record(parsed, f"{path.name} {where}", multi_turn=preset == "messages"))
        if max_records is not None and len(records) >= max_records:
            break
    if not records:
        detail = f" Problems: {problems.summary()}." if len(problems) else ""
        what = "conversation turns" if preset == "messages" else f"fields {keys[0]!r}/{keys[1]!r}"
        raise DataError(f"{path}: no usable records ({what}).{detail}")
    problems.warn(len(records))
    return records


def _record(turns: list[tuple[str, str]], where: str, multi_turn: bool) -> SftRecord:
    if not multi_turn:
        return SftRecord(turns[0][1], turns[1][1], where)
    last = max(i for i, (role, _) in enumerate(turns) if role == "assistant")
    users = [text for role, text in turns[:last] if role == "user"]
    return SftRecord(users[-1] if users else "", turns[last][1], where, tuple(turns))


def _parse_conversation(record: object) -> list[tuple[str, str]] | str:
    if not isinstance(record, dict):
        return f"expected a JSON object, found {type(record).__name__}"
    key = next((k for k in CONVERSATION_FIELDS if k in record), None)
    if key is None:
        return f"missing field {CONVERSATION_FIELDS[0]!r} (or {CONVERSATION_FIELDS[1]!r})"
    messages = check_messages(record[key])
    if isinstance(messages, str):
        return f"{key}: {messages}"
    return [(m["role"], m["content"]) for m in messages]


def _parse_record(record: object, prompt_key: str, response_key: str,
                  input_key: str | None) -> list[tuple[str, str]] | str:
    """[("user", prompt), ("assistant", response)], or why the record cannot be used."""
    if not isinstance(record, dict):
        return f"expected a JSON object, found {type(record).__name__}"
    missing = [k for k in (prompt_key, response_key) if k not in record]
    if missing:
        return f"missing field(s) {missing}"
    bad = [k for k in (prompt_key, response_key) if not isinstance(record[k], str) or not record[k].strip()]
    if bad:
        return f"field(s) {bad} must be non-empty text"
    prompt = record[prompt_key]
    extra = record.get(input_key) if input_key else None
    if isinstance(extra, str) and extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    return [("user", prompt), ("assistant", record[response_key])]


# -- formatting and masking ----------------------------------------------------------------------
def format_prompt(tokenizer: Any, prompt: str) -> str:
    """The text a model sees before it answers: the chat template's user turn plus the
    generation prompt (the assistant header), or the plain template."""
    return render(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def format_conversation(tokenizer: Any, prompt: str, response: str) -> str:
    """The full training text: prompt and response (with the template's end-of-turn marks)."""
    if has_chat_template(tokenizer):
        return render(tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])
    return PLAIN_PROMPT.format(prompt=prompt) + response


def _tokenize(tokenizer: Any, text: str, chat: bool) -> list[int]:
    return tokenize(tokenizer, text)["input_ids"]


def response_start(tokenizer: Any, prompt_text: str, full_text: str, response: str,
                   full_ids: list[int], chat: bool) -> tuple[int, bool]:
    """Index of the first response token in `full_ids`, and whether the fallback was needed.

    Normally the tokenized prompt is a prefix of the tokenized conversation and the boundary is
    its length. Tokenizers may merge characters across the boundary, and templates may render
    the user turn differently once an answer follows; then the boundary is found by character
    offsets: the response begins where `prompt_text` ends (or, if the conversation does not
    start with it, at the last occurrence of the response), and the first response token is the
    first one that ends after that character (a token straddling it is counted as response).
    """
    prompt_ids = _tokenize(tokenizer, prompt_text, chat)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        return len(prompt_ids), False
    if full_text.startswith(prompt_text):
        char = len(prompt_text)
    else:
        char = full_text.rfind(response)
        if char < 0:
            raise DataError("the chat template does not keep the response text verbatim")
    try:
        offsets = tokenize(tokenizer, full_text, with_offsets=True)["offset_mapping"] or None
    except (NotImplementedError, ValueError, TypeError):
        offsets = None
    if offsets is None:  # slow tokenizers: count the tokens of the text before the boundary
        return min(len(_tokenize(tokenizer, full_text[:char], chat)), len(full_ids)), True
    for index, (start, end) in enumerate(offsets):
        if end > char and end > start:
            return index, True
    return len(full_ids), True


def eos_needed(tokenizer: Any, chat: bool, full_ids: list[int]) -> bool:
    """The plain template must end the response with EOS, or the model never learns to stop."""
    eos = getattr(tokenizer, "eos_token_id", None)
    return not chat and eos is not None and (not full_ids or full_ids[-1] != eos)


def encode_sft_record(tokenizer: Any, record: SftRecord) -> tuple[list[int], int, bool]:
    """(token ids of the whole conversation, index of the first response token, fallback used).

    For a multi-turn record use `encode_labels` (several assistant spans)."""
    chat = has_chat_template(tokenizer)
    prompt_text = format_prompt(tokenizer, record.prompt)
    full_text = format_conversation(tokenizer, record.prompt, record.response)
    ids = _tokenize(tokenizer, full_text, chat)
    start, fallback = response_start(tokenizer, prompt_text, full_text, record.response, ids, chat)
    if eos_needed(tokenizer, chat, ids):
        ids.append(tokenizer.eos_token_id)
    return ids, start, fallback


def encode_labels(tokenizer: Any, record: SftRecord) -> tuple[list[int], list[int], bool]:
    """(token ids, labels: the ids on assistant tokens and -100 elsewhere, offset fallback used)."""
    if record.messages is None:
        ids, start, fallback = encode_sft_record(tokenizer, record)
        return ids, [-100] * start + ids[start:], fallback
    ids, spans = assistant_spans(tokenizer, record.conversation())
    labels = [-100] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return ids, labels, False


def encode_sft(records: Sequence[SftRecord], tokenizer: Any, max_length: int = 512,
               warn: bool = True) -> tuple[list[dict[str, list[int]]], SftEncodeReport]:
    """Features with response-only labels, truncated to `max_length` tokens (reported).

    A conversation longer than max_length loses the end of its response; one whose prompt
    alone fills max_length has no response token left and is dropped.
    """
    if max_length < 2:
        raise DataError(f"max_length must be at least 2, got {max_length}")
    report = SftEncodeReport(records=len(records), max_length=max_length)
    features = []
    for record in records:
        ids, labels, fallback = encode_labels(tokenizer, record)
        report.offset_masks += fallback
        if len(ids) > max_length:
            report.truncated += 1
            report.truncated_where.append(record.where)
            ids, labels = ids[:max_length], labels[:max_length]
        if all(label == -100 for label in labels):
            report.dropped_no_response += 1
            continue
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    report.kept = len(features)
    if warn and (report.truncated or report.dropped_no_response):
        where = ", ".join(report.truncated_where[:5])
        warnings.warn(
            f"{report.truncated} of {report.records} SFT records exceed max_length={max_length} "
            f"tokens and were truncated (e.g. {where}); {report.dropped_no_response} lost their "
            "whole response and were dropped. Raise max_length to keep them.",
            DataWarning, stacklevel=2)
    if not features:
        raise DataError(f"no SFT record kept a response token within max_length={max_length}")
    return features, report


def pack_features(features: Sequence[dict[str, list[int]]], max_length: int,
                  ) -> list[dict[str, list[int]]]:
    """Concatenate examples into rows of at most `max_length` tokens (fewer padding tokens).

    Examples are kept whole (never split across rows) and placed greedily in order; their
    labels keep masking each prompt. Attention is not blocked between examples of one row
    (plain concatenation, as in most SFT packing); each example ends with its end-of-turn or
    EOS token, which marks the switch.
    """
    rows: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for feature in features:
        if current["input_ids"] and len(current["input_ids"]) + len(feature["input_ids"]) > max_length:
            rows.append(current)
            current = {"input_ids": [], "attention_mask": [], "labels": []}
        for key in current:
            current[key].extend(feature[key])
    if current["input_ids"]:
        rows.append(current)
    return rows
