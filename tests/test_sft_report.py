"""What `dynalora sft` shows beside the adapter: before/after answers, exact match, report.md."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_chat_tokenizer, tiny_llama

from dynalora.adapters import DynaLoraModel, LoraAdapter
from dynalora.adapters.config import ConfigError
from dynalora.cli.main import main
from dynalora.llm.evaluate import predicted_answer, reference_answer
from dynalora.llm.generate import generate_batch
from dynalora.llm.report import rank_grid
from dynalora.llm.sft import REPORT_FIELDS, SftConfig, train_sft
from dynalora.training.api import check_resumable

GSM8K_STYLE = [{"question": f"{a}+{b}?", "answer": f"{a}+{b}={a + b}\n#### {a + b}"}
               for a in range(1, 5) for b in range(1, 4)]
PLAIN = [{"question": f"double {n}", "answer": str(2 * n)} for n in range(8)]
NEW_TOKENS = 6


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(data, out, **kw) -> SftConfig:
    settings = {"data": str(data), "eval_data": str(data), "output": str(out), "model": "tiny",
                "max_length": 48, "batch_size": 4, "lr": 5e-3, "progress": False, "dropout": 0.0,
                "warmup_ratio": 0.0, "max_new_tokens": NEW_TOKENS, "generation_samples": 0, **kw}
    return SftConfig(**settings)


class SpoilLastStep:
    """Replaces the adapter's B by noise on the last step, so the last evaluation is not the best one and
    the saved adapter (an earlier step) differs from the model left in memory."""

    def __init__(self, model, last_step: int) -> None:
        self.model, self.last_step = model, last_step

    def after_optimizer_step(self, step: int) -> None:
        if step == self.last_step:
            with torch.no_grad():
                for module in self.model.modules():
                    if isinstance(module, LoraAdapter) and module.r:
                        module.lora_B.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))


def read_samples(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_answers_come_from_the_base_model_and_the_saved_adapter(tmp_path):
    data, out = write_jsonl(tmp_path / "gsm.jsonl", GSM8K_STYLE), tmp_path / "run"
    model, tokenizer = tiny_llama(), tiny_chat_tokenizer()
    options = {"t_warmup": 1, "delta_t": 1, "t_final": 5}
    cfg = config(data, out, method="dynamic", epochs=2, eval_every=1, samples=2, exact_match_samples=4,
                 method_options=options)
    metrics = train_sft(cfg, [SpoilLastStep(model, 6)], model=model, tokenizer=tokenizer)
    assert metrics["steps"] == 6 and metrics["best_step"] < 6  # the saved adapter is not the final state

    samples = read_samples(out)
    assert [s["prompt"] for s in samples] == [f"{a}+{b}?" for a, b in ((1, 1), (1, 2), (1, 3), (2, 1))]
    prompts = [s["prompt"] for s in samples]
    saved = DynaLoraModel.from_pretrained(tiny_llama(), out)
    assert [s["before"] for s in samples] == generate_batch(tiny_llama(), tokenizer, prompts, NEW_TOKENS)
    assert [s["after"] for s in samples] == generate_batch(saved, tokenizer, prompts, NEW_TOKENS)
    spoiled = generate_batch(model, tokenizer, prompts, NEW_TOKENS)  # still the trained, spoiled adapter
    assert spoiled != [s["after"] for s in samples]
    # the saved adapter was loaded beside the trained one for the answers, then dropped again
    assert {name for m in model.modules() if hasattr(m, "adapters") for name in m.adapters} == {"default"}

    for sample in samples:
        assert sample["reference_answer"] == reference_answer(sample["response"])
        for side in ("before", "after"):
            assert sample[f"{side}_answer"] == predicted_answer(sample[side])
            assert sample[f"{side}_correct"] == (sample[f"{side}_answer"] == sample["reference_answer"])
    em = json.loads((out / "metrics.json").read_text())["exact_match"]
    assert em == metrics["exact_match"]
    assert em == {"n": 4, **{side: sum(s[f"{side}_correct"] for s in samples) / 4 for side in ("before", "after")}}

    report = (out / "report.md").read_text()
    assert f"| loss | {metrics['initial_metrics']['loss']:.4f} | {metrics['metrics']['loss']:.4f} |" in report
    assert f"| exact match (n=4) | {em['before']:.3f} | {em['after']:.3f} |" in report
    assert "### 2." in report and "### 3." not in report  # --samples 2 shown of the 4 answered
    assert samples[1]["after"].strip() in report
    ranks = metrics["ranks"]
    layer0 = [ranks[f"model.layers.0.{p}"] for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                     "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                     "mlp.down_proj")]
    assert "| 0 | " + " | ".join(map(str, layer0)) + " |" in report
    assert (out / "allocation.json").is_file() and (out / "allocation.png").is_file()


def test_exact_match_only_for_gsm8k_style_answers(tmp_path):
    data, out = write_jsonl(tmp_path / "plain.jsonl", PLAIN), tmp_path / "run"
    metrics = train_sft(config(data, out, epochs=1), model=tiny_llama(), tokenizer=tiny_chat_tokenizer())
    samples = read_samples(out)
    assert len(samples) == 3 and "exact_match" not in metrics  # default --samples 3, nothing to score
    assert all("before_correct" not in s for s in samples)
    assert "exact match" not in (out / "report.md").read_text()

    with pytest.raises(ConfigError, match="exact_match_samples=2"):
        train_sft(config(data, tmp_path / "refused", exact_match_samples=2), model=tiny_llama(),
                  tokenizer=tiny_chat_tokenizer())
    assert not (tmp_path / "refused").exists()  # refused before any training

    quiet = tmp_path / "quiet"
    train_sft(config(data, quiet, samples=0), model=tiny_llama(), tokenizer=tiny_chat_tokenizer())
    assert not (quiet / "samples.jsonl").exists()
    report = (quiet / "report.md").read_text()
    assert "| perplexity |" in report and "## Answers" not in report


def test_report_settings_do_not_block_a_resume(tmp_path):
    saved = config(tmp_path / "d.jsonl", tmp_path / "run").to_dict()
    changed = config(tmp_path / "d.jsonl", tmp_path / "run", samples=10, exact_match_samples=50, max_new_tokens=99)
    check_resumable(changed, saved, tmp_path, also_free=REPORT_FIELDS)
    with pytest.raises(ConfigError, match="lr"):
        check_resumable(changed.replace(lr=1e-3), saved, tmp_path, also_free=REPORT_FIELDS)



def test_a_run_started_under_an_older_default_resumes_with_it(tmp_path):
    """Runs saved strip_calculator=True before its default became None (gsm8k layout only):
    resuming without the flag keeps stripping, as the run started; a value given is checked."""
    saved = {**config(tmp_path / "d.jsonl", tmp_path / "run").to_dict(), "strip_calculator": True}
    resumed = config(tmp_path / "d.jsonl", tmp_path / "run")
    assert resumed.strip_calculator is None
    check_resumable(resumed, saved, tmp_path, also_free=REPORT_FIELDS)
    assert resumed.strip_calculator is True
    with pytest.raises(ConfigError, match="strip_calculator"):
        check_resumable(config(tmp_path / "d.jsonl", tmp_path / "run", strip_calculator=False), saved, tmp_path,
                        also_free=REPORT_FIELDS)


def test_bad_sample_counts_are_one_line_cli_errors(tmp_path, capsys):
    data = write_jsonl(tmp_path / "plain.jsonl", PLAIN)
    assert main(["sft", "--data", str(data), "--samples", "-1", "--output", str(tmp_path / "x")]) == 2
    assert "samples" in capsys.readouterr().err
    assert main(["sft", "--data", str(data), "--max-new-tokens", "0", "--output", str(tmp_path / "x")]) == 2
    assert "max_new_tokens" in capsys.readouterr().err


def test_rank_grid_orders_layers_by_number_and_averages_columns():
    ranks = {f"model.layers.{i}.self_attn.{m}": r for i, (q, v) in enumerate([(8, 4), (2, 6), (5, 5)] * 4)
             for m, r in (("q_proj", q), ("v_proj", v))}
    lines = rank_grid(ranks)
    assert lines[0] == "| layer | q_proj | v_proj |"
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| {i}" for i in range(12)] + ["| mean"]
    assert lines[2 + 10] == "| 10 | 2 | 6 |" and lines[-1] == "| mean | 5.0 | 5.0 |"


def test_generation_is_judged_before_and_after_and_the_baseline_can_be_reused(tmp_path, monkeypatch):
    data, out = write_jsonl(tmp_path / "gsm.jsonl", GSM8K_STYLE), tmp_path / "run"
    metrics = train_sft(config(data, out, generation_samples=10), model=tiny_llama(), tokenizer=tiny_chat_tokenizer())
    samples = read_samples(out)
    assert len(samples) == 10 and metrics["exact_match"]["n"] == 10
    judged = metrics["generation"]
    for side in ("before", "after"):
        assert judged[side]["n"] == 10
        assert judged[side]["looping"] == sum(s[f"{side}_loops"] for s in samples) / 10
        assert judged[side]["stopped"] == sum(s[f"{side}_stop"] != "length" for s in samples) / 10
        assert judged[side]["exact_match"] == metrics["exact_match"][side]
    assert judged["settings"]["max_new_tokens"] == NEW_TOKENS
    assert "answers that loop, n=10" in (out / "report.md").read_text()

    # a second run reuses the base model's answers instead of generating them again
    calls = []
    from dynalora.llm import report

    real = report.generate_many
    monkeypatch.setattr("dynalora.llm.report.generate_many", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = train_sft(config(data, tmp_path / "again", generation_samples=10, baseline_samples=str(out / "samples.jsonl")),
                      model=tiny_llama(), tokenizer=tiny_chat_tokenizer())
    assert len(calls) == 1  # only the "after" side was generated
    assert [s["before"] for s in read_samples(tmp_path / "again")] == [s["before"] for s in samples]
    assert again["generation"]["before"] == judged["before"]
    calls.clear()
    # answers for other prompts are refused before any training
    with pytest.raises(ConfigError, match=r"baseline_samples: .*same held-out prompts"):
        train_sft(config(data, tmp_path / "other", generation_samples=10, seed=3,
                         baseline_samples=str(out / "samples.jsonl"), eval_data=None),
                  model=tiny_llama(), tokenizer=tiny_chat_tokenizer())
    assert not (tmp_path / "other" / "metrics.json").exists() and not calls
    # and so are answers decoded otherwise: before and after must be compared alike
    with pytest.raises(ConfigError, match=r"baseline_samples: .*other generation settings \(repetition_penalty"):
        train_sft(config(data, tmp_path / "penalised", generation_samples=10, repetition_penalty=1.3,
                         baseline_samples=str(out / "samples.jsonl")),
                  model=tiny_llama(), tokenizer=tiny_chat_tokenizer())
    assert not (tmp_path / "penalised" / "metrics.json").exists() and not calls
    with pytest.raises(ConfigError, match=r"baseline_samples: .*cannot read"):
        train_sft(config(data, tmp_path / "none", baseline_samples=str(tmp_path / "missing.jsonl")),
                  model=tiny_llama(), tokenizer=tiny_chat_tokenizer())
