"""Training text and generation prompt are the same tokens; the loss covers every assistant
turn with its end-of-turn mark and nothing else (prompt/response and `messages` records)."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_chat_tokenizer, tiny_llama

from dynalora.data import DataError
from dynalora.data.chat import prompt_ids
from dynalora.data.sft import SftRecord, encode_sft, load_sft_records, strip_calculator
from dynalora.llm.generate import end_of_turn_ids, generate_many

# SmolLM2's template shape: a default system prompt when none is given, <|end|> closes turns
SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|system|>You help.<|end|>\n{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")
BOS_TEMPLATE = "{{ bos_token }}" + SYSTEM_TEMPLATE  # Llama-3 style: the template writes BOS itself


def chat_tokenizer(template: str, bos_by_tokenizer: bool):
    """The tiny character tokenizer with a BOS token, which the tokenizer itself may add to plain
    text (like Llama's add_bos_token) while the template may or may not write it."""
    from tokenizers import processors

    tokenizer = tiny_chat_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<bos>"})
    bos = tokenizer.bos_token_id
    if bos_by_tokenizer:
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", bos)])
    tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize("template,bos_by_tokenizer", [
    (SYSTEM_TEMPLATE, False), (SYSTEM_TEMPLATE, True), (BOS_TEMPLATE, True), (BOS_TEMPLATE, False)])
def test_training_and_generation_tokens_are_identical_up_to_the_response(template, bos_by_tokenizer):
    tokenizer = chat_tokenizer(template, bos_by_tokenizer)
    record = SftRecord("What is 2+2?", "2+2 = 4\n#### 4")
    features, _ = encode_sft([record], tokenizer, max_length=200)
    ids, labels = features[0]["input_ids"], features[0]["labels"]
    start = next(i for i, label in enumerate(labels) if label != -100)
    generation = prompt_ids(tokenizer, record.prompt)
    assert ids[:start] == generation  # system prompt, user turn, assistant header, BOS: all the same
    bos = tokenizer.bos_token_id
    wants_bos = bos_by_tokenizer or template == BOS_TEMPLATE
    assert ids.count(bos) == int(wants_bos) and (ids[0] == bos) == wants_bos  # BOS exactly once, first
    assert tokenizer.decode(generation).count("You help.") == 1
    # what a batched generation feeds the model is that prompt, left-padded
    model = tiny_llama()
    seen = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"][0].tolist()), with_kwargs=True)
    generate_many(model, tokenizer, [record.prompt])
    assert seen[0] == generation


@pytest.mark.parametrize("chat", [True, False])
def test_end_of_turn_is_in_the_loss(chat):
    tokenizer = tiny_chat_tokenizer(chat=chat)
    features, _ = encode_sft([SftRecord("hi", "hello there")], tokenizer, max_length=100)
    labels = features[0]["labels"]
    trained = [t for t in labels if t != -100]
    stop = set(end_of_turn_ids(tokenizer))
    assert trained[-1] in stop  # the last trained token tells the model to stop
    assert tokenizer.decode(trained, skip_special_tokens=True) == "hello there"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hey"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]


@pytest.mark.parametrize("chat", [True, False])
def test_messages_records_mask_exactly_the_assistant_turns(tmp_path, chat):
    sharegpt = [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
                for m in CONVERSATION]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}, {"conversations": sharegpt}])
    records = load_sft_records(path)
    assert records[0] == records[1].__class__(*[getattr(records[1], f) for f in ("prompt", "response")],
                                              records[0].where, records[0].messages)
    assert (records[0].prompt, records[0].response) == ("2+2?", "4")
    assert records[0].context() == CONVERSATION[:4]
    tokenizer = tiny_chat_tokenizer(chat=chat)
    features, _ = encode_sft(records, tokenizer, max_length=300)
    assert features[0] == features[1]  # both layouts give the same tokens and labels
    ids, labels = features[0]["input_ids"], features[0]["labels"]
    # the trained stretches, decoded: each assistant answer followed by its end-of-turn mark
    stretches, current = [], []
    for token, label in zip(ids, labels):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            stretches.append(current)
            current = []
    if current:
        stretches.append(current)
    end = "<|end|>" if chat else tokenizer.eos_token
    assert [tokenizer.decode(s) for s in stretches] == [f"hey{end}", f"4{end}"]
    # the context of the last answer is exactly what precedes its stretch
    start = labels.index(ids[len(ids) - len(stretches[-1])], len(ids) - len(stretches[-1]))
    assert ids[:start] == prompt_ids(tokenizer, records[0].context())


def test_bad_conversations_are_reported_with_their_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": "not a list"}])
    with pytest.warns(UserWarning) as caught:
        records = load_sft_records(path)
    assert len(records) == 1
    message = str(caught[0].message)
    assert "line 2" in message and "wizard" in message and "line 3" in message and "no assistant" in message
    with pytest.raises(DataError, match="no usable records"):
        load_sft_records(write_jsonl(tmp_path / "none.jsonl", [{"messages": []}]))


def test_gsm8k_calculator_annotations_can_be_stripped(tmp_path):
    answer = "She sold 48/2 = <<48/2=24>>24 clips.\n#### 24"
    assert strip_calculator(answer) == "She sold 48/2 = 24 clips.\n#### 24"
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q<<1>>?", "answer": answer}])
    kept, stripped = (load_sft_records(path, strip_calculator_annotations=False),
                      load_sft_records(path, strip_calculator_annotations=True))
    assert kept[0].response == answer and stripped[0].response == strip_calculator(answer)
    assert stripped[0].prompt == "Q<<1>>?"  # only answers are touched
    # by default only GSM8K's layout is stripped: elsewhere << >> can be real text
    assert load_sft_records(path)[0].response == strip_calculator(answer)
    named = load_sft_records(path, prompt_field="question", response_field="answer")  # the same layout, by name
    assert named[0].response == strip_calculator(answer)
    code = "std::cout << x; std::cin >> y;"
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "I/O in C++?", "input": "", "output": code}])
    assert load_sft_records(alpaca)[0].response == code
