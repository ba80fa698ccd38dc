"""SFT data: reading presets, response-only labels, the boundary fallback, truncation, packing."""

from __future__ import annotations

import json

import pytest
from conftest import DATA_DIR, tiny_chat_tokenizer

from dynalora.data import BucketBatcher, DataError, DataWarning
from dynalora.data.sft import (
    SftRecord,
    encode_sft,
    encode_sft_record,
    format_conversation,
    format_prompt,
    load_sft_records,
    pack_features,
)


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def response_start_char(tokenizer, record):
    """The formatted conversation and where the response begins in it."""
    full = format_conversation(tokenizer, record.prompt, record.response)
    return full, full.rfind(record.response)


def test_presets_are_detected_and_alpaca_input_is_appended(tmp_path):
    gsm = load_sft_records(write_jsonl(tmp_path / "g.jsonl", [{"question": "Q?", "answer": "A\n#### 3"}]))
    assert gsm == [SftRecord("Q?", "A\n#### 3", "g.jsonl line 1")]
    alpaca = load_sft_records(write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Sum these", "input": "1 2", "output": "3"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
    ]))
    assert [r.prompt for r in alpaca] == ["Sum these\n\n1 2", "Say hi"]
    generic = tmp_path / "p.json"
    generic.write_text(json.dumps([{"prompt": "p", "response": "r"}]))
    assert load_sft_records(generic)[0].response == "r"
    custom = load_sft_records(write_jsonl(tmp_path / "c.jsonl", [{"q": "x", "a": "y"}]),
                              prompt_field="q", response_field="a")
    assert (custom[0].prompt, custom[0].response) == ("x", "y")
    with pytest.raises(DataError, match="prompt_field"):
        load_sft_records(write_jsonl(tmp_path / "u.jsonl", [{"q": "x", "a": "y"}]))


def test_malformed_records_are_reported_with_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"question": "ok", "answer": "1"},
        "{not json",
        {"question": "no answer"},
        {"question": "", "answer": "2"},
        {"question": "fine", "answer": "3"},
    ])
    with pytest.warns(DataWarning) as caught:
        records = load_sft_records(path)
    assert [r.prompt for r in records] == ["ok", "fine"]
    message = str(caught[0].message)
    assert "skipped 3" in message and "line 2" in message and "line 3" in message and "line 4" in message
    with pytest.raises(DataError, match="no usable records"):
        load_sft_records(write_jsonl(tmp_path / "bad.jsonl", [{"question": "x"}]), preset="gsm8k")


@pytest.mark.parametrize("chat", [True, False])
def test_labels_cover_exactly_the_response_tokens(chat):
    tokenizer = tiny_chat_tokenizer(chat=chat)
    record = SftRecord("What is 2+2?", "It is 4.")
    features, report = encode_sft([record], tokenizer, max_length=200)
    ids, labels = features[0]["input_ids"], features[0]["labels"]
    assert report.offset_masks == 0
    full, start = response_start_char(tokenizer, record)
    offsets = tokenizer(full, add_special_tokens=not chat, return_offsets_mapping=True)["offset_mapping"]
    expected = [i for i, (s, e) in enumerate(offsets) if s >= start]  # response + end-of-turn marks
    if not chat:
        expected.append(len(offsets))  # the EOS the plain template appends
        assert ids[-1] == tokenizer.eos_token_id
    assert [i for i, lab in enumerate(labels) if lab != -100] == expected
    assert all(labels[i] == ids[i] for i in expected)
    assert tokenizer.decode([ids[i] for i in expected], skip_special_tokens=True) == record.response
    # the unmasked part starts with the response itself, right after the prompt
    assert tokenizer.decode(ids[: expected[0]]) == format_prompt(tokenizer, record.prompt)


def test_offset_fallback_when_tokens_merge_across_the_boundary():
    # "\n" ends the plain prompt and "4" starts the response: the merge "\n4" makes the prompt's
    # tokens no prefix of the conversation's, so the boundary must come from character offsets.
    tokenizer = tiny_chat_tokenizer(chat=False, merges=[("\n", "4")])
    record = SftRecord("2+2?", "4 apples")
    ids, start, fallback = encode_sft_record(tokenizer, record)
    assert fallback
    merged = tokenizer.convert_tokens_to_ids("\n4")
    assert ids[start] == merged  # the straddling token is predicted: it carries the response's "4"
    assert tokenizer.decode(ids[start + 1 :], skip_special_tokens=True) == " apples"
    features, report = encode_sft([record], tokenizer, max_length=100)
    assert report.offset_masks == 1
    assert features[0]["labels"][:start] == [-100] * start and -100 not in features[0]["labels"][start:]


def test_template_that_rewrites_the_prompt_uses_the_response_position():
    tokenizer = tiny_chat_tokenizer()
    # add_generation_prompt output is NOT a prefix of the full conversation here
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
        "{% if not add_generation_prompt %}<|end|>{% endif %}{% else %}<|assistant|>{{ m['content'] }}"
        "<|end|>{% endif %}{% endfor %}{% if add_generation_prompt %} <|assistant|>{% endif %}")
    record = SftRecord("hello", "world")
    ids, start, fallback = encode_sft_record(tokenizer, record)
    assert fallback
    assert tokenizer.decode(ids[start:], skip_special_tokens=True) == "world"
    assert tokenizer.convert_ids_to_tokens(ids[start - 1]) == "<|assistant|>"


def test_truncation_is_reported_and_empty_responses_dropped():
    tokenizer = tiny_chat_tokenizer()
    short = SftRecord("hi", "yo", "f line 1")
    long_answer = SftRecord("hi", "a much longer answer than fits", "f line 2")
    long_prompt = SftRecord("x" * 40, "lost", "f line 3")
    with pytest.warns(DataWarning, match="2 of 3 SFT records exceed max_length=20"):
        features, report = encode_sft([short, long_answer, long_prompt], tokenizer, max_length=20)
    assert (report.kept, report.truncated, report.dropped_no_response) == (2, 2, 1)
    assert report.truncated_where == ["f line 2", "f line 3"]
    assert all(len(f["input_ids"]) <= 20 for f in features)
    assert any(lab != -100 for lab in features[1]["labels"])  # the kept part of the answer trains
    assert report.to_dict()["truncated"] == 2


def test_batches_pad_labels_with_minus_100_and_packing_keeps_masks():
    tokenizer = tiny_chat_tokenizer()
    records = [SftRecord("a", "b"), SftRecord("a longer prompt", "and a longer answer")]
    features, _ = encode_sft(records, tokenizer, max_length=64)
    batch = next(iter(BucketBatcher(features, batch_size=2, shuffle=False, pad_token_id=tokenizer.pad_token_id)))
    short = int(batch["index"].tolist().index(0))
    n = len(features[0]["input_ids"])
    assert (batch["labels"][short, n:] == -100).all()
    assert (batch["input_ids"][short, n:] == tokenizer.pad_token_id).all()
    assert (batch["attention_mask"][short, n:] == 0).all()
    packed = pack_features(features, max_length=64)
    assert len(packed) == 1
    assert packed[0]["labels"] == features[0]["labels"] + features[1]["labels"]
    assert len(pack_features(features, max_length=n + 1)) == 2  # examples are never split


@pytest.mark.integration
def test_gsm8k_file_reads_with_its_preset():
    path = DATA_DIR / "gsm8k" / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"GSM8K not found at {path}")
    records = load_sft_records(path, max_records=5)
    assert len(records) == 5 and all("####" in r.response for r in records)
