"""Judging generations: the loop detector, the answer marker, ends, McNemar; generation options."""

from __future__ import annotations

import itertools

import pytest
from conftest import tiny_chat_tokenizer, tiny_llama

from dynalora.adapters.config import ConfigError
from dynalora.cli.main import main
from dynalora.llm.generate import (
    Generation,
    GenerationSettings,
    generate,
    generate_many,
)
from dynalora.llm.quality import ends_properly, find_loop, has_answer_marker, mcnemar, summarize
from dynalora.llm.report import generation_rows, judge
from dynalora.llm.sft import SftConfig

GOOD = ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n"
        "#### 72")
# a long correct answer whose phrases recur (not back to back): no loop
RECURRING = ("The total cost of 20 candles is 20 * 2 = 40. The total cost of the wax is 10. The total cost "
             "of the wicks is 5. The total cost of everything is 40 + 10 + 5 = 55.\n#### 55")
LOOPS = {
    "1 + 1 +": "Chad has 6.50 + 2 + 2 + 1 " + "+ 1 " * 30,
    "#####": "Net Profit = $400 - $200 = $200\n" + "#####\n" * 20,
    "= 180 / 3 = 560 / 3": "James runs 560 meters / 3 sprints " + "= 180 / 3 = 560 / 3 " * 5,
    "Candy has": "Candy has " + "15 * 45 * 50 = " * 8,
}


def test_loop_detector_on_hand_made_texts():
    assert find_loop(GOOD) is None and find_loop(RECURRING) is None and find_loop("") is None
    assert find_loop("She will need 16 eggs.\nShe will need 16 eggs.") is None  # said twice: not a loop
    for text in LOOPS.values():
        assert find_loop(text) is not None, text
    assert find_loop("+ 1 " * 30) == "+ 1"
    assert find_loop("a b c " * 3, min_words=9) == "a b c" and find_loop("a b c " * 3) is None


def test_answer_marker_and_ends():
    assert has_answer_marker(GOOD) and has_answer_marker("so #### -3") and has_answer_marker("####$5")
    assert not has_answer_marker("#####\n#####") and not has_answer_marker("the answer is 72")
    assert ends_properly(Generation("the answer is 72", "eos", 5))
    assert ends_properly(Generation(GOOD + "\n#### 72\n#### 72", "length", 256))  # answered, then rambled
    assert not ends_properly(Generation(LOOPS["1 + 1 +"], "length", 256))
    shares = summarize([Generation(GOOD, "eos", 30), Generation(LOOPS["#####"], "length", 64)], [True, False])
    assert shares == {"n": 2, "ended": 0.5, "stopped": 0.5, "answer_marker": 0.5, "looping": 0.5,
                      "mean_new_tokens": 47.0, "exact_match": 0.5, "correct": 1}


def test_mcnemar_counts_discordant_pairs():
    result = mcnemar([True, True, False, False, True], [True, False, True, True, True])
    assert (result["only_before"], result["only_after"]) == (1, 2)
    assert result["p_value"] == pytest.approx(1.0)  # 1 vs 2 discordant: no evidence
    strong = mcnemar([False] * 12, [True] * 12)
    assert strong["p_value"] == pytest.approx(2 * 0.5 ** 12)
    assert mcnemar([True], [True])["p_value"] == 1.0
    samples = [{"before": "x", "before_stop": "eos", "before_tokens": 1, "before_correct": b,
                "after": "y", "after_stop": "length", "after_tokens": 9, "after_correct": a}
               for b, a in ((True, False), (False, True), (False, True))]
    judged = judge(samples)
    assert judged["before"]["correct"] == 1 and judged["after"]["correct"] == 2
    assert judged["mcnemar"]["only_after"] == 2
    assert any("McNemar" in row for row in generation_rows(judged))


def test_batched_generation_reports_why_each_answer_ended():
    tokenizer, model = tiny_chat_tokenizer(), tiny_llama()
    prompts = ["1+2?", "a longer prompt, 7*6?", "x"]
    plain = GenerationSettings(max_new_tokens=12, repetition_penalty=1.0)  # (the penalty delays the random model's end)
    free = generate_many(model, tokenizer, prompts, plain, batch_size=2)
    assert [g.stop_reason for g in free] == ["length", "length", "eos"]  # the random model ends "x" early
    assert [g.new_tokens for g in free][:2] == [12, 12] and free[2].new_tokens < 12
    # the same answers one at a time: batching (left padding, sorting by length) changes nothing
    assert [g.text for g in free] == [generate(model, tokenizer, p, stream=False, settings=plain) for p in prompts]
    stop = free[0].text[3:5]  # a piece of the first answer ends it there
    cut = generate_many(model, tokenizer, prompts[:1],
                        GenerationSettings(max_new_tokens=12, repetition_penalty=1.0, stop=[stop]))[0]
    assert cut.stop_reason == "stop" and cut.text == free[0].text[: free[0].text.index(stop) + len(stop)]


def repeated_pairs(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(ids) - 1 - len(set(itertools.pairwise(ids)))


def test_repetition_options_change_greedy_answers():
    tokenizer, model = tiny_chat_tokenizer(), tiny_llama()
    plain = generate_many(model, tokenizer, ["abc"], GenerationSettings(max_new_tokens=30, repetition_penalty=1.0))
    plain = plain[0].text
    assert find_loop(" ".join(plain), min_words=9)  # the random model loops ("R@4R@4R@4...")
    for options in ({"repetition_penalty": 5.0}, {"no_repeat_ngram_size": 2}):
        changed = generate_many(model, tokenizer, ["abc"], GenerationSettings(max_new_tokens=30, **options))[0].text
        assert changed != plain, options
        assert repeated_pairs(tokenizer, changed) < repeated_pairs(tokenizer, plain), options


@pytest.mark.parametrize("field,value", [("max_new_tokens", -1), ("max_new_tokens", 0), ("temperature", -0.5),
                                         ("top_p", 0.0), ("top_p", 1.5), ("repetition_penalty", 0.0),
                                         ("no_repeat_ngram_size", -2), ("stop", [""])])
def test_bad_generation_values_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        GenerationSettings(**{field: value})


def test_generate_cli_rejects_bad_values_in_one_line(tmp_path, capsys):
    for flags, field in ((["--max-new-tokens", "-3"], "max_new_tokens"), (["--temperature", "-1"], "temperature"),
                         (["--top-p", "2"], "top_p"), (["--repetition-penalty", "-1"], "repetition_penalty")):
        assert main(["generate", "--no-adapter", "--prompt", "x", *flags]) == 2
        err = capsys.readouterr().err
        assert field in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err



def test_the_default_penalty_is_the_same_in_generate_and_in_the_sft_report(capsys):
    """The report must judge the answers users get from `dynalora generate`: the same mild
    answer-only penalty (1.05, chosen on held-out training problems: docs/results/sft-gsm8k-v2/COMMAND.md)."""
    default = GenerationSettings()
    assert default.repetition_penalty == 1.05 and default.penalize_prompt is False
    report = SftConfig(data="x.jsonl")
    assert report.generation_settings() == GenerationSettings(max_new_tokens=report.max_new_tokens)
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert f"default: {default.repetition_penalty:g}" in " ".join(capsys.readouterr().out.split())


def greedy_with_penalty(model, ids: list[int], penalty: float, steps: int, count_prompt: bool) -> list[int]:
    """A plain greedy loop (no KV cache): each step divides positive scores / multiplies negative
    scores of the tokens already written by `penalty`, counting the prompt's tokens or not."""
    import torch

    out: list[int] = []
    for _ in range(steps):
        with torch.no_grad():
            scores = model(torch.tensor([ids + out])).logits[0, -1].clone()
        seen = torch.tensor(sorted(set((ids if count_prompt else []) + out)), dtype=torch.long)
        if len(seen):
            picked = scores[seen]
            scores[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
        out.append(int(scores.argmax()))
    return out


def test_the_repetition_penalty_counts_the_answer_only_unless_asked_to_count_the_prompt():
    """Answer-only by default, so a question's own numbers stay cheap to write (counting them broke
    SmolLM2's arithmetic); --penalize-prompt restores transformers' behaviour. Both are checked
    against a hand-written greedy loop, on every row of a left-padded batch, where no penalty,
    the answer-only penalty and the prompt-counting one give three different answers."""
    from dynalora.data.sft import prompt_ids
    from dynalora.llm.generate import end_of_turn_ids

    tokenizer, model = tiny_chat_tokenizer(), tiny_llama()
    model.eval()
    prompts, steps, ends = ["hello world", "x"], 20, set(end_of_turn_ids(tokenizer))  # "x" is left-padded
    answers = {}
    for penalty, count_prompt in ((1.0, False), (3.0, False), (3.0, True)):
        settings = GenerationSettings(max_new_tokens=steps, repetition_penalty=penalty, penalize_prompt=count_prompt)
        got = generate_many(model, tokenizer, prompts, settings, batch_size=2)
        for prompt, generation in zip(prompts, got):
            expected = greedy_with_penalty(model, prompt_ids(tokenizer, prompt), penalty, steps, count_prompt)
            cut = next((i for i, t in enumerate(expected) if t in ends), len(expected))
            assert generation.text == tokenizer.decode(expected[:cut], skip_special_tokens=True), (prompt, penalty)
        answers[penalty, count_prompt] = got[0].text
    assert len(set(answers.values())) == 3, answers


def test_generate_cli_decodes_with_the_default_penalty_unless_told_otherwise(monkeypatch, capsys):
    import dynalora.llm.generate as generation
    import dynalora.llm.models as models

    seen = []
    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: (None, None))
    monkeypatch.setattr(generation, "generate", lambda *a, settings, **k: seen.append(settings) or "")
    for flags in ([], ["--repetition-penalty", "1"], ["--penalize-prompt"]):
        assert main(["generate", "--no-adapter", "--prompt", "x", *flags]) == 0
    default = GenerationSettings()
    assert (seen[0].repetition_penalty, seen[0].penalize_prompt) == (default.repetition_penalty, False)
    assert seen[1].repetition_penalty == 1.0
    assert (seen[2].repetition_penalty, seen[2].penalize_prompt) == (default.repetition_penalty, True)
